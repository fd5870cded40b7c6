//! One transfer's live figures: feeds [`TransferState`] decisions, exports them, keeps the
//! active-transfers gauge under the right quality label, and on drop (also on disconnect)
//! records the throughput into the client's history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::adaptive::{Change, TransferState};
use super::{Client, Shared};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// Transfers smaller than this say more about latency than throughput: not recorded.
const HISTORY_MIN_BYTES: u64 = 256 * 1024;

pub struct Transfer {
    shared: Arc<Shared>,
    dir: Direction,
    client: Client,
    state: TransferState,
    started: Instant,
    quality_label: &'static str,
}

impl Transfer {
    pub fn new(shared: Arc<Shared>, dir: Direction, client: Client, tier: usize) -> Self {
        let quality_label = "unknown";
        shared
            .metrics
            .active
            .with_label_values(&[dir.label(), client.strategy.label(), quality_label])
            .inc();
        Self {
            shared,
            dir,
            client,
            state: TransferState::new(tier),
            started: Instant::now(),
            quality_label,
        }
    }

    pub fn tier(&self) -> usize {
        self.state.tier
    }

    /// The engine runs in fixed mode (one buffer size, no adaptive rules).
    pub fn fixed(&self) -> bool {
        self.shared.policy.fixed.is_some()
    }

    /// Record one buffer without a sizing decision (its figures say nothing about the pace).
    pub fn count(&mut self, bytes: usize, client_wait: Duration, disk_wait: Duration) {
        self.record_buffer(bytes, client_wait, disk_wait);
        self.state.count(bytes);
    }

    /// From here the figures measure the client itself (its socket backed up): forget the
    /// rate measured before, and let the tier follow the new one from the start.
    pub fn paced(&mut self) {
        self.state.rate = None;
        self.state.paced = true;
    }

    fn record_buffer(&self, bytes: usize, client_wait: Duration, disk_wait: Duration) {
        let m = &self.shared.metrics;
        let d = self.dir.label();
        m.buffer_bytes.with_label_values(&[d]).observe(bytes as f64);
        m.wait_seconds
            .with_label_values(&[d, "client"])
            .inc_by(client_wait.as_secs_f64());
        m.wait_seconds
            .with_label_values(&[d, "disk"])
            .inc_by(disk_wait.as_secs_f64());
    }

    /// Record one buffer and return the tier for the next.
    pub fn observe(
        &mut self,
        bytes: usize,
        active: Duration,
        client_wait: Duration,
        disk_wait: Duration,
    ) -> usize {
        self.record_buffer(bytes, client_wait, disk_wait);
        let m = &self.shared.metrics;
        let d = self.dir.label();
        let stalls_before = self.state.stalls;
        match self
            .state
            .observe(&self.shared.policy, bytes, active, client_wait, disk_wait)
        {
            Change::Up => m.tier_changes.with_label_values(&[d, "up"]).inc(),
            Change::Down => m.tier_changes.with_label_values(&[d, "down"]).inc(),
            Change::Same => {}
        }
        if self.state.stalls > stalls_before {
            m.stalls.with_label_values(&[d]).inc();
        }
        if let Some(q) = self.state.quality(&self.shared.policy) {
            let label = q.label();
            if label != self.quality_label {
                let s = self.client.strategy.label();
                m.active
                    .with_label_values(&[d, s, self.quality_label])
                    .dec();
                m.active.with_label_values(&[d, s, label]).inc();
                self.quality_label = label;
            }
        }
        self.state.tier
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let m = &self.shared.metrics;
        let (d, s) = (self.dir.label(), self.client.strategy.label());
        m.active
            .with_label_values(&[d, s, self.quality_label])
            .dec();
        if self.state.bytes >= HISTORY_MIN_BYTES {
            let rate = self.state.bytes as f64 / self.started.elapsed().as_secs_f64().max(1e-6);
            m.throughput.with_label_values(&[d, s]).observe(rate);
            if let (Some(ip), Ok(mut h)) = (self.client.ip, self.shared.history.lock()) {
                h.record(ip, rate, Instant::now());
                m.history_clients.set(h.len() as i64);
            }
        }
    }
}
