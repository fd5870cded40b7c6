//! Prometheus metrics owned by the application state (no globals: each test gets fresh
//! counters) and the `/metrics` text encoding.
//!
//! Names follow `sluice_<subsystem>_<what>_<unit>`; labels come from closed sets only (route,
//! method, status class, reason, result, direction, tier), never a path, name, IP or id.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric of the HTTP and upload layers (engine and pool metrics register themselves
/// into the same registry).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upload_bytes: IntCounter,
    pub download_bytes: IntCounter,
    pub auth_failures: IntCounterVec,
    pub uploads: IntCounterVec,
    pub uploads_in_flight: IntGauge,
    pub downloads_in_flight: IntGauge,
    pub connections_open: IntGauge,
    /// Connections closed by the server's own limits, by reason (`per_client`: the client
    /// address already holds its share; `first_bytes`: nothing sent within the header-read
    /// timeout; `send_rate`: the client read the response too slowly).
    pub connections_closed: IntCounterVec,
    pub range_requests: IntCounterVec,
    /// Stored files removed, by reason (expired, quota, admin, erasure, missing).
    pub deletions: IntCounterVec,
    /// Uploads refused before their body, by kind (cap, reserve, daily_quota, stored_quota).
    pub refusals: IntCounterVec,
    pub sweep_duration: prometheus::Histogram,
    pub stored_files: IntGauge,
    pub stored_bytes: IntGauge,
    pub free_bytes: IntGauge,
    /// TLS certificate reloads by result (ok, error).
    pub tls_reloads: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    /// Requests refused by a rate limit, by kind (upload, creation, download) and key
    /// (address, uploader).
    pub rate_limited: IntCounterVec,
    /// Configuration reloads (SIGHUP) by result (ok, error).
    pub config_reloads: IntCounterVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_http_requests_total",
                "HTTP requests by route, method and status class",
            ),
            &["route", "method", "class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_http_request_duration_seconds",
                "Time to produce the response head, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0,
            ]),
            &["route"],
        )?;
        let upload_bytes = IntCounter::new(
            "sluice_upload_bytes_total",
            "Bytes received in upload bodies and written to staging",
        )?;
        let download_bytes = IntCounter::new(
            "sluice_download_bytes_total",
            "Bytes of file content scheduled in download responses",
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "sluice_auth_failures_total",
                "Refused upload grants by reason",
            ),
            &["reason"],
        )?;
        let uploads = IntCounterVec::new(
            Opts::new("sluice_uploads_total", "Finished upload attempts by result"),
            &["result"],
        )?;
        let uploads_in_flight =
            IntGauge::new("sluice_uploads_in_flight", "Upload bodies being received")?;
        let downloads_in_flight =
            IntGauge::new("sluice_downloads_in_flight", "Download bodies being sent")?;
        let connections_open = IntGauge::new("sluice_connections_open", "Open client connections")?;
        let range_requests = IntCounterVec::new(
            Opts::new(
                "sluice_download_range_requests_total",
                "GET requests carrying Range, by outcome (full, single, multi, unsatisfiable)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(range_requests.clone()))?;
        // Closed label sets start at zero so dashboards and alerts see every series.
        for r in [
            "missing",
            "bad_mac",
            "expired",
            "bad_expires",
            "mode_disabled",
            "bearer_missing",
            "bearer_invalid",
            "slot_mismatch",
            "size_mismatch",
        ] {
            auth_failures.with_label_values(&[r]);
        }
        for r in [
            "created",
            "unauthorized",
            "conflict",
            "too_large",
            "aborted",
            "rejected",
        ] {
            uploads.with_label_values(&[r]);
        }
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "sluice_connections_closed_total",
                "Connections the server closed because of a limit, by reason",
            ),
            &["reason"],
        )?;
        for r in ["per_client", "first_bytes", "send_rate"] {
            connections_closed.with_label_values(&[r]);
        }
        let deletions = IntCounterVec::new(
            Opts::new("sluice_deletions_total", "Stored files removed, by reason"),
            &["reason"],
        )?;
        for r in crate::catalog::DeleteReason::ALL {
            deletions.with_label_values(&[r.as_str()]);
        }
        let refusals = IntCounterVec::new(
            Opts::new(
                "sluice_upload_refusals_total",
                "Uploads refused for space or quota before their body was read, by kind",
            ),
            &["kind"],
        )?;
        for r in crate::ops::space::Refusal::ALL {
            refusals.with_label_values(&[r.label()]);
        }
        let sweep_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "sluice_expiry_sweep_duration_seconds",
                "Duration of expiry sweeps",
            )
            .buckets(vec![0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0]),
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "sluice_tls_certificate_reloads_total",
                "TLS certificate reloads (SIGHUP or changed files), by result",
            ),
            &["result"],
        )?;
        for r in ["ok", "error"] {
            tls_reloads.with_label_values(&[r]);
        }
        let tls_handshake_failures = IntCounter::new(
            "sluice_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out",
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "sluice_rate_limited_total",
                "Requests refused by a rate limit, by kind and key",
            ),
            &["kind", "by"],
        )?;
        for k in crate::ratelimit::Kind::ALL {
            for by in ["address", "uploader"] {
                rate_limited.with_label_values(&[k.label(), by]);
            }
        }
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "sluice_config_reloads_total",
                "Configuration reloads (SIGHUP), by result",
            ),
            &["result"],
        )?;
        for r in ["ok", "error"] {
            config_reloads.with_label_values(&[r]);
        }
        let stored_files = IntGauge::new("sluice_stored_files", "Live stored files")?;
        let stored_bytes = IntGauge::new("sluice_stored_bytes", "Bytes of live stored files")?;
        let free_bytes = IntGauge::new(
            "sluice_storage_free_bytes",
            "Free bytes on the storage filesystem",
        )?;
        for r in ["full", "single", "multi", "unsatisfiable"] {
            range_requests.with_label_values(&[r]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upload_bytes.clone()))?;
        registry.register(Box::new(download_bytes.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(uploads.clone()))?;
        registry.register(Box::new(uploads_in_flight.clone()))?;
        registry.register(Box::new(downloads_in_flight.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_closed.clone()))?;
        registry.register(Box::new(deletions.clone()))?;
        registry.register(Box::new(refusals.clone()))?;
        registry.register(Box::new(sweep_duration.clone()))?;
        registry.register(Box::new(stored_files.clone()))?;
        registry.register(Box::new(stored_bytes.clone()))?;
        registry.register(Box::new(free_bytes.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_duration,
            upload_bytes,
            download_bytes,
            auth_failures,
            uploads,
            uploads_in_flight,
            downloads_in_flight,
            connections_open,
            connections_closed,
            range_requests,
            deletions,
            refusals,
            sweep_duration,
            stored_files,
            stored_bytes,
            free_bytes,
            tls_reloads,
            tls_handshake_failures,
            rate_limited,
            config_reloads,
        })
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Increments a gauge now and decrements it on drop (disconnect-safe accounting).
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(g: &IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics() {
        let m = Metrics::new().unwrap();
        m.requests
            .with_label_values(&["upload", "PUT", "2xx"])
            .inc();
        {
            let _g = GaugeGuard::new(&m.uploads_in_flight);
            assert_eq!(m.uploads_in_flight.get(), 1);
        }
        assert_eq!(m.uploads_in_flight.get(), 0);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(
            "sluice_http_requests_total{class=\"2xx\",method=\"PUT\",route=\"upload\"} 1"
        ));
    }
}
