//! Adaptive sizing: the decision inputs (live per-transfer figures), the priors (client
//! strategy from the User-Agent, per-client history) and the decisions (next buffer tier,
//! chunk advice for resumable protocols). Pure: no I/O, no clock reads (callers pass
//! durations and instants in), so every rule is unit-tested.
//!
//! The rule, per transfer:
//! 1. Start from the client's history (its last measured throughput) if it has one, else from
//!    the strategy prior (mobile / desktop / server), never above what the transfer's known
//!    length needs.
//! 2. After every buffer, update a throughput EWMA from how fast that buffer filled (upload) or
//!    drained (download: the client's pace, see [`super::meter`]). The desired buffer holds
//!    `target_buffer_time` of transfer at that rate; the tier climbs one step per decision
//!    towards it and drops to it at once (a buffer larger than the pace only holds memory).
//! 3. A stall (one wait on the client longer than `stall_threshold`) steps at least one tier
//!    down: a client that stops and starts should not pin large buffers. Waiting on the disk more than
//!    on the client steps one tier up: larger reads/writes amortise the system calls.
//! 4. In `fixed` mode every buffer uses the configured tier.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How a client was first guessed from its User-Agent (a closed set: a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    Mobile,
    Desktop,
    Server,
}

impl Strategy {
    pub fn label(self) -> &'static str {
        match self {
            Strategy::Mobile => "mobile",
            Strategy::Desktop => "desktop",
            Strategy::Server => "server",
        }
    }
}

/// Live network quality of a transfer (a closed set: a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Quality {
    Poor,
    Fair,
    Good,
    Excellent,
}

impl Quality {
    pub const ALL: [Quality; 4] = [
        Quality::Poor,
        Quality::Fair,
        Quality::Good,
        Quality::Excellent,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Quality::Poor => "poor",
            Quality::Fair => "fair",
            Quality::Good => "good",
            Quality::Excellent => "excellent",
        }
    }

    fn down(self) -> Self {
        match self {
            Quality::Excellent => Quality::Good,
            Quality::Good => Quality::Fair,
            Quality::Fair | Quality::Poor => Quality::Poor,
        }
    }
}

/// Tunables, from `[engine]` of the config.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Tier sizes, ascending.
    pub tiers: Vec<usize>,
    /// `Some(tier)` = fixed mode.
    pub fixed: Option<usize>,
    pub target_buffer_time: Duration,
    pub stall_threshold: Duration,
    /// Throughput floors (bytes/s) of excellent, good, fair; below fair is poor.
    pub quality_floors: [f64; 3],
    pub mobile_agents: Vec<String>,
    pub server_agents: Vec<String>,
    /// Starting buffer size per strategy: mobile, desktop, server.
    pub start_buffer: [usize; 3],
    /// Chunk advice without history: mobile, desktop, server.
    pub start_chunk: [u64; 3],
    /// Chunk advice with history holds this much transfer time...
    pub chunk_target_time: Duration,
    /// ...within these bounds.
    pub chunk_min: u64,
    pub chunk_max: u64,
}

impl Policy {
    /// Smallest tier that holds `bytes`, else the largest.
    pub fn tier_at_least(&self, bytes: f64) -> usize {
        let last = self.tiers.len().saturating_sub(1);
        self.tiers
            .iter()
            .position(|&t| t as f64 >= bytes)
            .unwrap_or(last)
    }

    /// Largest tier not above `bytes` (at least tier 0).
    pub fn tier_at_most(&self, bytes: usize) -> usize {
        self.tiers.iter().rposition(|&t| t <= bytes).unwrap_or(0)
    }

    fn strategy_index(s: Strategy) -> usize {
        match s {
            Strategy::Mobile => 0,
            Strategy::Desktop => 1,
            Strategy::Server => 2,
        }
    }

    /// Guess the strategy from a User-Agent: configured substrings, case-insensitive; mobile
    /// wins over server; no match (or no header) = desktop.
    pub fn classify(&self, user_agent: Option<&str>) -> Strategy {
        let Some(ua) = user_agent else {
            return Strategy::Desktop;
        };
        let ua = ua.to_ascii_lowercase();
        let hit = |list: &[String]| list.iter().any(|m| ua.contains(&m.to_ascii_lowercase()));
        if hit(&self.mobile_agents) {
            Strategy::Mobile
        } else if hit(&self.server_agents) {
            Strategy::Server
        } else {
            Strategy::Desktop
        }
    }

    /// Quality class of a throughput; a stalled transfer is one class lower.
    pub fn quality(&self, bytes_per_sec: f64, stalled: bool) -> Quality {
        let [ex, good, fair] = self.quality_floors;
        let q = if bytes_per_sec >= ex {
            Quality::Excellent
        } else if bytes_per_sec >= good {
            Quality::Good
        } else if bytes_per_sec >= fair {
            Quality::Fair
        } else {
            Quality::Poor
        };
        if stalled {
            q.down()
        } else {
            q
        }
    }

    /// First tier of a transfer.
    pub fn start_tier(&self, strategy: Strategy, history: Option<f64>, len: Option<u64>) -> usize {
        if let Some(t) = self.fixed {
            return t;
        }
        let wanted = match history {
            // History says how fast the client was, not how fast it is now (another network,
            // another direction): it starts at most at 64 KiB, and the live figures climb.
            Some(rate) => self
                .tier_at_least(rate * self.target_buffer_time.as_secs_f64())
                .min(self.tier_at_most(HISTORY_START_MAX)),
            None => self.tier_at_most(self.start_buffer[Self::strategy_index(strategy)]),
        };
        match len {
            Some(n) => wanted.min(self.tier_at_least(n as f64)),
            None => wanted,
        }
    }

    /// Chunk size a resumable-upload client is advised to send.
    pub fn chunk_advice(&self, strategy: Strategy, history: Option<f64>) -> u64 {
        match history {
            Some(rate) => ((rate * self.chunk_target_time.as_secs_f64()) as u64)
                .clamp(self.chunk_min, self.chunk_max),
            None => self.start_chunk[Self::strategy_index(strategy)]
                .clamp(self.chunk_min, self.chunk_max),
        }
    }
}

/// What one decision did to the tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Same,
    Up,
    Down,
}

/// Per-transfer live figures and the tier they imply.
#[derive(Debug, Clone)]
pub struct TransferState {
    pub tier: usize,
    pub bytes: u64,
    /// EWMA of bytes/s over buffers.
    pub rate: Option<f64>,
    pub client_wait: Duration,
    pub disk_wait: Duration,
    pub stalls: u32,
    /// Number of buffers observed.
    pub buffers: u64,
    /// The rate measures the client itself (a download behind a socket that backed up).
    pub paced: bool,
}

const EWMA_ALPHA: f64 = 0.3;

/// The largest first buffer a client's history can ask for.
const HISTORY_START_MAX: usize = 64 * 1024;

/// Until a transfer has moved this much, or its client's pace was measured behind a full
/// socket, it climbs no higher than [`EARLY_TIER_MAX`]: the first bytes come from (or go into)
/// the kernel's socket buffers at memory speed, which says nothing about the client.
const EARLY_BYTES: u64 = 1024 * 1024;
const EARLY_TIER_MAX: usize = 64 * 1024;

impl TransferState {
    pub fn new(tier: usize) -> Self {
        Self {
            tier,
            bytes: 0,
            rate: None,
            client_wait: Duration::ZERO,
            disk_wait: Duration::ZERO,
            stalls: 0,
            buffers: 0,
            paced: false,
        }
    }

    /// Count one buffer's bytes without a decision.
    pub fn count(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        self.buffers += 1;
    }

    /// Record one buffer: `bytes` moved, `active` the time it took to fill (upload) or drain
    /// (download) it, `client_wait` the longest single wait on the client within it, and
    /// `disk_wait` the time spent waiting for storage. Returns the tier change for the next
    /// buffer.
    pub fn observe(
        &mut self,
        p: &Policy,
        bytes: usize,
        active: Duration,
        client_wait: Duration,
        disk_wait: Duration,
    ) -> Change {
        self.bytes += bytes as u64;
        self.buffers += 1;
        self.client_wait += client_wait;
        self.disk_wait += disk_wait;
        let secs = active.as_secs_f64().max(1e-6);
        let sample = bytes as f64 / secs;
        self.rate = Some(match self.rate {
            None => sample,
            Some(r) => r + EWMA_ALPHA * (sample - r),
        });
        let stalled = client_wait > p.stall_threshold;
        if stalled {
            self.stalls += 1;
        }
        if p.fixed.is_some() {
            return Change::Same;
        }
        let old = self.tier;
        let last = p.tiers.len().saturating_sub(1);
        let want = p.tier_at_least(self.rate.unwrap_or(0.0) * p.target_buffer_time.as_secs_f64());
        if stalled {
            self.tier = self.tier.saturating_sub(1).min(want);
        } else if disk_wait > client_wait && disk_wait > Duration::from_micros(200) {
            self.tier = (self.tier + 1).min(last);
        } else if want > self.tier {
            self.tier += 1;
        } else {
            // Down at once: a buffer larger than the client's pace only holds memory while
            // it fills or drains.
            self.tier = want;
        }
        if self.tier > old && !self.paced && self.bytes < EARLY_BYTES {
            self.tier = self.tier.min(p.tier_at_most(EARLY_TIER_MAX).max(old));
        }
        match self.tier.cmp(&old) {
            std::cmp::Ordering::Greater => Change::Up,
            std::cmp::Ordering::Less => Change::Down,
            std::cmp::Ordering::Equal => Change::Same,
        }
    }

    pub fn quality(&self, p: &Policy) -> Option<Quality> {
        self.rate.map(|r| p.quality(r, self.stalls > 0))
    }
}

/// Bounded, expiring per-client history of measured throughput.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<IpAddr, (f64, Instant)>,
}

impl History {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            entries: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Last throughput of `ip`, unless expired.
    pub fn get(&self, ip: IpAddr, now: Instant) -> Option<f64> {
        self.entries
            .get(&ip)
            .filter(|(_, at)| now.saturating_duration_since(*at) <= self.ttl)
            .map(|(r, _)| *r)
    }

    /// Blend a finished transfer's throughput into the client's record.
    pub fn record(&mut self, ip: IpAddr, rate: f64, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let blended = match self.get(ip, now) {
            Some(old) => old + 0.5 * (rate - old),
            None => rate,
        };
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.capacity {
            self.evict(now);
        }
        self.entries.insert(ip, (blended, now));
    }

    /// Drop expired entries; if still full, drop the oldest tenth.
    fn evict(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, (_, at)| now.saturating_duration_since(*at) <= ttl);
        if self.entries.len() >= self.capacity {
            let mut ages: Vec<(IpAddr, Instant)> = self
                .entries
                .iter()
                .map(|(ip, (_, at))| (*ip, *at))
                .collect();
            ages.sort_by_key(|(_, at)| *at);
            let n = (self.capacity / 10).max(1);
            for (ip, _) in ages.into_iter().take(n) {
                self.entries.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: usize = 1024;

    fn policy() -> Policy {
        Policy {
            tiers: vec![16 * K, 64 * K, 256 * K, 1024 * K],
            fixed: None,
            target_buffer_time: Duration::from_millis(20),
            stall_threshold: Duration::from_millis(500),
            quality_floors: [50e6, 5e6, 512e3],
            mobile_agents: vec!["Conversations".into(), "Monal".into(), "Android".into()],
            server_agents: vec!["curl".into(), "python".into()],
            start_buffer: [64 * K, 256 * K, 1024 * K],
            start_chunk: [4 << 20, 16 << 20, 64 << 20],
            chunk_target_time: Duration::from_secs(10),
            chunk_min: 1 << 20,
            chunk_max: 100 << 20,
        }
    }

    #[test]
    fn user_agent_prior_mobile_desktop_server() {
        let p = policy();
        assert_eq!(
            p.classify(Some("Conversations/2.16.1 (Android 14)")),
            Strategy::Mobile
        );
        assert_eq!(p.classify(Some("Monal-iOS/6.4")), Strategy::Mobile);
        assert_eq!(p.classify(Some("curl/7.88.1")), Strategy::Server);
        assert_eq!(
            p.classify(Some("Mozilla/5.0 (X11; Linux x86_64)")),
            Strategy::Desktop
        );
        assert_eq!(p.classify(None), Strategy::Desktop);
    }

    #[test]
    fn quality_classes_by_throughput_and_stall_demotes() {
        let p = policy();
        assert_eq!(p.quality(100e6, false), Quality::Excellent);
        assert_eq!(p.quality(10e6, false), Quality::Good);
        assert_eq!(p.quality(1e6, false), Quality::Fair);
        assert_eq!(p.quality(10e3, false), Quality::Poor);
        assert_eq!(p.quality(100e6, true), Quality::Good);
        assert_eq!(p.quality(10e3, true), Quality::Poor);
    }

    #[test]
    fn start_tier_from_prior_history_and_length() {
        let p = policy();
        assert_eq!(p.start_tier(Strategy::Mobile, None, None), 1);
        assert_eq!(p.start_tier(Strategy::Server, None, None), 3);
        // A 4 KiB file never gets more than the smallest tier.
        assert_eq!(p.start_tier(Strategy::Server, None, Some(4096)), 0);
        // History: 1 MB/s × 20 ms = 20 KB → 64 KiB tier, whatever the prior.
        assert_eq!(p.start_tier(Strategy::Server, Some(1e6), None), 1);
        assert_eq!(p.start_tier(Strategy::Mobile, Some(1e3), None), 0);
        // ...but a fast history starts at 64 KiB at most: the live figures climb from there.
        assert_eq!(p.start_tier(Strategy::Mobile, Some(1e9), None), 1);
        let fixed = Policy {
            fixed: Some(2),
            ..policy()
        };
        assert_eq!(fixed.start_tier(Strategy::Mobile, Some(1.0), Some(1)), 2);
    }

    #[test]
    fn fast_transfer_climbs_one_step_at_a_time_to_the_largest_tier() {
        let p = policy();
        let mut t = TransferState::new(0);
        let mut changes = Vec::new();
        for _ in 0..5 {
            // 16 KiB filled in 10 µs ≈ 1.6 GB/s.
            changes.push(t.observe(
                &p,
                16 * K,
                Duration::from_micros(10),
                Duration::ZERO,
                Duration::ZERO,
            ));
        }
        // Up to 64 KiB at once; above it only after the first MiB (the socket buffers' burst).
        assert_eq!(changes[..2], [Change::Up, Change::Same]);
        assert_eq!(t.tier, 1);
        while t.bytes + ((64 * K) as u64) < EARLY_BYTES {
            t.observe(
                &p,
                64 * K,
                Duration::from_micros(40),
                Duration::ZERO,
                Duration::ZERO,
            );
        }
        assert_eq!(t.tier, 1);
        let mut later = Vec::new();
        for _ in 0..3 {
            later.push(t.observe(
                &p,
                256 * K,
                Duration::from_micros(160),
                Duration::ZERO,
                Duration::ZERO,
            ));
        }
        assert_eq!(later, [Change::Up, Change::Up, Change::Same]);
        assert_eq!(t.tier, 3);
        assert_eq!(t.quality(&p), Some(Quality::Excellent));
    }

    #[test]
    fn a_paced_client_climbs_at_once() {
        let p = policy();
        let mut t = TransferState::new(0);
        t.paced = true;
        for _ in 0..3 {
            t.observe(
                &p,
                16 * K,
                Duration::from_micros(10),
                Duration::ZERO,
                Duration::ZERO,
            );
        }
        assert_eq!(t.tier, 3);
    }

    #[test]
    fn slow_transfer_descends_to_small_buffers() {
        let p = policy();
        let mut t = TransferState::new(3);
        // 1 MiB in 5 s ≈ 200 KB/s → 4 KB per 20 ms → smallest tier.
        for _ in 0..4 {
            t.observe(
                &p,
                1024 * K,
                Duration::from_secs(5),
                Duration::from_millis(100),
                Duration::ZERO,
            );
        }
        assert_eq!(t.tier, 0);
        assert_eq!(t.quality(&p), Some(Quality::Poor));
    }

    #[test]
    fn a_wrong_large_start_is_dropped_after_one_buffer() {
        let p = policy();
        let mut t = TransferState::new(3);
        // 1 MiB in 3 s ≈ 350 KB/s → 7 KB per 20 ms: straight to the smallest tier.
        let c = t.observe(
            &p,
            1024 * K,
            Duration::from_secs(3),
            Duration::from_millis(100),
            Duration::ZERO,
        );
        assert_eq!((c, t.tier), (Change::Down, 0));
        // Climbing back is one step per buffer.
        let c = t.observe(
            &p,
            16 * K,
            Duration::from_micros(20),
            Duration::ZERO,
            Duration::ZERO,
        );
        assert_eq!((c, t.tier), (Change::Up, 1));
    }

    #[test]
    fn stall_steps_down_even_when_fast_on_average() {
        let p = policy();
        let mut t = TransferState::new(3);
        let c = t.observe(
            &p,
            1024 * K,
            Duration::from_millis(1),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        assert_eq!(c, Change::Down);
        assert_eq!(t.stalls, 1);
    }

    #[test]
    fn disk_bound_transfer_steps_up() {
        let p = policy();
        let mut t = TransferState::new(1);
        t.bytes = EARLY_BYTES;
        // Slow-ish rate would say "stay", but the disk is the bottleneck.
        let c = t.observe(
            &p,
            64 * K,
            Duration::from_millis(50),
            Duration::from_micros(10),
            Duration::from_millis(5),
        );
        assert_eq!(c, Change::Up);
    }

    #[test]
    fn fixed_mode_never_changes() {
        let p = Policy {
            fixed: Some(2),
            ..policy()
        };
        let mut t = TransferState::new(2);
        assert_eq!(
            t.observe(
                &p,
                16 * K,
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::ZERO
            ),
            Change::Same
        );
        assert_eq!(t.tier, 2);
    }

    #[test]
    fn chunk_advice_from_history_is_clamped() {
        let p = policy();
        assert_eq!(p.chunk_advice(Strategy::Mobile, None), 4 << 20);
        assert_eq!(p.chunk_advice(Strategy::Desktop, Some(1e6)), 10_000_000);
        assert_eq!(p.chunk_advice(Strategy::Desktop, Some(1e3)), 1 << 20);
        assert_eq!(p.chunk_advice(Strategy::Desktop, Some(1e9)), 100 << 20);
    }

    #[test]
    fn history_expires_blends_and_is_bounded() {
        let mut h = History::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        h.record(ip, 100.0, t0);
        h.record(ip, 200.0, t0);
        assert_eq!(h.get(ip, t0), Some(150.0));
        assert_eq!(h.get(ip, t0 + Duration::from_secs(61)), None);
        for i in 0..50u8 {
            h.record(
                IpAddr::from([198, 51, 100, i]),
                1.0,
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(h.len() <= 10);
        // The newest entry survives eviction.
        assert_eq!(
            h.get(
                IpAddr::from([198, 51, 100, 49]),
                t0 + Duration::from_secs(1)
            ),
            Some(1.0)
        );
    }
}
