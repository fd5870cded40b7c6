//! Time as an injected dependency: session expiry and the hot cache's re-validation (and later
//! retention, quotas and rate limits) ask a [`Clock`] for "now", so tests move time forward by
//! hand instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time since the epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn since_epoch(&self) -> Duration;

    fn now_secs(&self) -> u64 {
        self.since_epoch().as_secs()
    }

    fn now_millis(&self) -> u64 {
        u64::try_from(self.since_epoch().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn since_epoch(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock that only moves when told to (tests); millisecond resolution.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Starts at the system time, so persisted timestamps look ordinary.
    pub fn new() -> Arc<Self> {
        let ms = u64::try_from(SystemClock.since_epoch().as_millis()).unwrap_or(0);
        Arc::new(Self(AtomicU64::new(ms)))
    }

    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn since_epoch(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// The clock a component holds.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new();
        let t = c.since_epoch();
        assert_eq!(c.since_epoch(), t);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.since_epoch(), t + Duration::from_millis(1500));
        assert_eq!(c.now_secs(), (t + Duration::from_millis(1500)).as_secs());
    }
}
