//! Rate limits: token buckets (governor's GCRA) per client address (IPv6 by /64) and per
//! uploader where the grant names one, separately for uploads, resumable creations and
//! downloads. A refusal is 429 with `Retry-After`. Memory is bounded: keys idle long enough to
//! be full again are dropped by [`RateLimits::evict_idle`] (a tracked task calls it), and the
//! time comes from the injected clock.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::clock::SharedClock;
use crate::config::RateLimitConfig;

/// governor's view of the injected clock.
#[derive(Clone)]
struct GovClock(SharedClock);

impl governor::clock::Clock for GovClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.0.since_epoch()
    }
}

type Keyed<K> = RateLimiter<
    K,
    DefaultKeyedStateStore<K>,
    GovClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

/// What is being limited (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Upload,
    Creation,
    Download,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Upload => "upload",
            Kind::Creation => "creation",
            Kind::Download => "download",
        }
    }

    pub const ALL: [Kind; 3] = [Kind::Upload, Kind::Creation, Kind::Download];
}

/// One kind's limiters by address and by uploader (`None` = off).
struct Pair {
    by_ip: Option<Keyed<IpAddr>>,
    by_uploader: Option<Keyed<String>>,
}

pub struct RateLimits {
    clock: GovClock,
    /// Addresses never limited (a local proxy that carries every client, when it is not
    /// configured as trusted).
    exempt: Vec<ipnet::IpNet>,
    upload: Pair,
    creation: Pair,
    download: Pair,
}

/// A refusal: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
    /// Whether the address (else the uploader) ran out.
    pub by_ip: bool,
}

/// `per_minute` requests a minute on average, up to `burst` at once; `None` when 0 (off).
fn quota(per_minute: u32, burst: u32) -> Option<Quota> {
    let per = NonZeroU32::new(per_minute)?;
    let burst = NonZeroU32::new(burst.max(1))?;
    Some(Quota::per_minute(per).allow_burst(burst))
}

fn keyed<K: Hash + Eq + Clone>(q: Option<Quota>, clock: &GovClock) -> Option<Keyed<K>> {
    q.map(|q| RateLimiter::new(q, DefaultKeyedStateStore::default(), clock.clone()))
}

fn check<K: Hash + Eq + Clone>(
    l: &Option<Keyed<K>>,
    key: &K,
    clock: &GovClock,
) -> Result<(), Duration> {
    let Some(l) = l else { return Ok(()) };
    l.check_key(key)
        .map_err(|not_until| not_until.wait_time_from(governor::clock::Clock::now(clock)))
}

impl RateLimits {
    /// Take a token, counting a refusal in the metrics and turning it into the 429.
    pub fn take(
        &self,
        metrics: &crate::metrics::Metrics,
        kind: Kind,
        ip: Option<IpAddr>,
        uploader: Option<&str>,
    ) -> Result<(), crate::error::ApiError> {
        let r = match uploader {
            Some(u) => self.check_uploader(kind, u),
            None => self.check_ip(kind, ip),
        };
        r.map_err(|l| {
            metrics
                .rate_limited
                .with_label_values(&[kind.label(), if l.by_ip { "address" } else { "uploader" }])
                .inc();
            crate::error::ApiError::RateLimited {
                retry_after: l.retry_after.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    pub fn new(cfg: &RateLimitConfig, exempt: Vec<ipnet::IpNet>, clock: SharedClock) -> Self {
        let clock = GovClock(clock);
        let pair = |ip: (u32, u32), user: (u32, u32)| Pair {
            by_ip: keyed(quota(ip.0, ip.1), &clock),
            by_uploader: keyed(quota(user.0, user.1), &clock),
        };
        Self {
            upload: pair(
                (cfg.uploads_per_minute, cfg.uploads_burst),
                (cfg.uploader_uploads_per_minute, cfg.uploader_uploads_burst),
            ),
            creation: pair(
                (cfg.creations_per_minute, cfg.creations_burst),
                (
                    cfg.uploader_creations_per_minute,
                    cfg.uploader_creations_burst,
                ),
            ),
            download: pair((cfg.downloads_per_minute, cfg.downloads_burst), (0, 0)),
            exempt,
            clock,
        }
    }

    fn pair(&self, kind: Kind) -> &Pair {
        match kind {
            Kind::Upload => &self.upload,
            Kind::Creation => &self.creation,
            Kind::Download => &self.download,
        }
    }

    /// Take one token for `kind` from the client address (grouped: IPv6 by /64). An unknown
    /// address (a unix-socket peer without forwarding headers) is not limited.
    pub fn check_ip(&self, kind: Kind, ip: Option<IpAddr>) -> Result<(), Limited> {
        let Some(ip) = ip else { return Ok(()) };
        let key = crate::net::limit_key(ip);
        if self
            .exempt
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&key))
        {
            return Ok(());
        }
        check(&self.pair(kind).by_ip, &key, &self.clock).map_err(|retry_after| Limited {
            retry_after,
            by_ip: true,
        })
    }

    /// Take one token for `kind` from the uploader the grant names.
    pub fn check_uploader(&self, kind: Kind, uploader: &str) -> Result<(), Limited> {
        check(
            &self.pair(kind).by_uploader,
            &uploader.to_owned(),
            &self.clock,
        )
        .map_err(|retry_after| Limited {
            retry_after,
            by_ip: false,
        })
    }

    /// Drop keys whose buckets are full again (idle clients): memory stays bounded by the
    /// clients active within one refill period.
    pub fn evict_idle(&self) {
        for k in Kind::ALL {
            let p = self.pair(k);
            if let Some(l) = &p.by_ip {
                l.retain_recent();
                l.shrink_to_fit();
            }
            if let Some(l) = &p.by_uploader {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }

    /// Keys held (for tests and metrics).
    pub fn keys(&self) -> usize {
        Kind::ALL
            .iter()
            .map(|k| {
                let p = self.pair(*k);
                p.by_ip.as_ref().map_or(0, |l| l.len())
                    + p.by_uploader.as_ref().map_or(0, |l| l.len())
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limits(clock: &std::sync::Arc<ManualClock>) -> RateLimits {
        let cfg = RateLimitConfig {
            uploads_per_minute: 60,
            uploads_burst: 3,
            uploader_uploads_per_minute: 6,
            uploader_uploads_burst: 2,
            ..RateLimitConfig::default()
        };
        RateLimits::new(&cfg, Vec::new(), clock.clone())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn burst_then_refill_on_the_clock() {
        let clock = ManualClock::new();
        let l = limits(&clock);
        for _ in 0..3 {
            l.check_ip(Kind::Upload, ip("192.0.2.1")).unwrap();
        }
        let refused = l.check_ip(Kind::Upload, ip("192.0.2.1")).unwrap_err();
        assert!(refused.by_ip);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        // Another address has its own bucket; an IPv6 /64 shares one.
        l.check_ip(Kind::Upload, ip("192.0.2.2")).unwrap();
        for _ in 0..3 {
            l.check_ip(Kind::Upload, ip("2001:db8::1")).unwrap();
        }
        assert!(l.check_ip(Kind::Upload, ip("2001:db8::ffff")).is_err());
        clock.advance(Duration::from_secs(1));
        l.check_ip(Kind::Upload, ip("192.0.2.1")).unwrap();
        assert!(l.check_ip(Kind::Upload, ip("192.0.2.1")).is_err());
    }

    #[test]
    fn uploaders_have_their_own_buckets_and_off_means_off() {
        let clock = ManualClock::new();
        let l = limits(&clock);
        l.check_uploader(Kind::Upload, "a@x").unwrap();
        l.check_uploader(Kind::Upload, "a@x").unwrap();
        let r = l.check_uploader(Kind::Upload, "a@x").unwrap_err();
        assert!(!r.by_ip);
        assert_eq!(r.retry_after, Duration::from_secs(10));
        l.check_uploader(Kind::Upload, "b@x").unwrap();
        // Downloads and creations are off in this config; unknown addresses are not limited.
        for _ in 0..1000 {
            l.check_ip(Kind::Download, ip("192.0.2.1")).unwrap();
        }
        l.check_ip(Kind::Upload, None).unwrap();
    }

    #[test]
    fn idle_keys_are_evicted() {
        let clock = ManualClock::new();
        let l = limits(&clock);
        for i in 0..100u8 {
            l.check_ip(Kind::Upload, ip(&format!("198.51.100.{i}")))
                .unwrap();
        }
        assert_eq!(l.keys(), 100);
        clock.advance(Duration::from_secs(60));
        l.evict_idle();
        assert_eq!(l.keys(), 0);
    }
}
