//! Engine metrics: decision inputs (throughput, waits, stalls) and outputs (buffer sizes, tier
//! changes), active transfers per client class, append sizes and errors. Labels are closed
//! sets: direction, strategy, quality, change, on, kind.

use prometheus::{
    CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::adaptive::Quality;

#[derive(Clone)]
pub struct EngineMetrics {
    pub buffer_bytes: HistogramVec,
    pub throughput: HistogramVec,
    pub tier_changes: IntCounterVec,
    pub stalls: IntCounterVec,
    pub wait_seconds: CounterVec,
    pub active: IntGaugeVec,
    pub append_bytes: Histogram,
    pub errors: IntCounterVec,
    pub history_clients: IntGauge,
}

impl EngineMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let buffer_bytes = HistogramVec::new(
            HistogramOpts::new(
                "sluice_engine_buffer_size_bytes",
                "Buffer size chosen for each read or write",
            )
            .buckets(prometheus::exponential_buckets(4096.0, 2.0, 10)?),
            &["direction"],
        )?;
        let throughput = HistogramVec::new(
            HistogramOpts::new(
                "sluice_engine_transfer_throughput_bytes_per_second",
                "Throughput of each finished transfer of at least 256 KiB",
            )
            .buckets(prometheus::exponential_buckets(16.0 * 1024.0, 4.0, 10)?),
            &["direction", "strategy"],
        )?;
        let tier_changes = IntCounterVec::new(
            Opts::new(
                "sluice_engine_buffer_changes_total",
                "Adaptive buffer tier changes, by direction and change (up, down)",
            ),
            &["direction", "change"],
        )?;
        let stalls = IntCounterVec::new(
            Opts::new(
                "sluice_engine_stalls_total",
                "Waits on the client longer than the stall threshold",
            ),
            &["direction"],
        )?;
        let wait_seconds = CounterVec::new(
            Opts::new(
                "sluice_engine_wait_seconds_total",
                "Time transfers spent waiting, on the client or on the disk",
            ),
            &["direction", "on"],
        )?;
        let active = IntGaugeVec::new(
            Opts::new(
                "sluice_engine_active_transfers",
                "Transfers in progress by direction, client strategy and live quality",
            ),
            &["direction", "strategy", "quality"],
        )?;
        let append_bytes = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_engine_append_size_bytes",
                "Bytes received per request body (whole PUTs and resumable appends)",
            )
            .buckets(prometheus::exponential_buckets(1024.0, 4.0, 12)?),
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "sluice_engine_errors_total",
                "Transfer errors by direction and kind",
            ),
            &["direction", "kind"],
        )?;
        let history_clients = IntGauge::new(
            "sluice_engine_history_clients",
            "Clients with a remembered throughput",
        )?;
        r.register(Box::new(buffer_bytes.clone()))?;
        r.register(Box::new(throughput.clone()))?;
        r.register(Box::new(tier_changes.clone()))?;
        r.register(Box::new(stalls.clone()))?;
        r.register(Box::new(wait_seconds.clone()))?;
        r.register(Box::new(active.clone()))?;
        r.register(Box::new(append_bytes.clone()))?;
        r.register(Box::new(errors.clone()))?;
        r.register(Box::new(history_clients.clone()))?;
        for d in ["upload", "download"] {
            for c in ["up", "down"] {
                tier_changes.with_label_values(&[d, c]);
            }
            stalls.with_label_values(&[d]);
            for on in ["client", "disk"] {
                wait_seconds.with_label_values(&[d, on]);
            }
            for s in ["mobile", "desktop", "server"] {
                for q in Quality::ALL.iter().map(|q| q.label()).chain(["unknown"]) {
                    active.with_label_values(&[d, s, q]);
                }
            }
        }
        Ok(Self {
            buffer_bytes,
            throughput,
            tier_changes,
            stalls,
            wait_seconds,
            active,
            append_bytes,
            errors,
            history_clients,
        })
    }
}
