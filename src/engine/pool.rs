//! Tiered buffer pool.
//!
//! Size classes come from `[engine] tiers`. A [`Lease`] holds one buffer and a share of the
//! global memory cap (a semaphore counted in KiB); both go back on `Drop`, so a disconnect never
//! leaks a buffer. When the cap is reached, `lease` waits (backpressure) rather than growing.
//! Idle buffers count against the cap too: leased plus idle bytes never exceed it (idle ones
//! are freed first), so the pool's whole footprint is bounded by `memory_cap`.
//! Up to `max_idle_per_tier` returned buffers are kept per tier for reuse (a hit); otherwise a
//! new buffer is allocated (a miss).
//!
//! A reserve of an eighth of the cap serves small whole-file reads ([`BufferPool::try_lease_small`])
//! when the cap is exhausted, so clients that hold buffers without reading them (slow readers
//! of large files) cannot stall the small downloads of everybody else. Streaming transfers
//! never take from the reserve.

use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Pool metrics (labels: tier size in bytes, a closed set from config).
#[derive(Clone)]
pub struct PoolMetrics {
    leases: IntCounterVec,
    hits: IntCounterVec,
    misses: IntCounterVec,
    idle: IntGaugeVec,
    bytes_in_use: IntGauge,
    bytes_cap: IntGauge,
}

impl PoolMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let leases = IntCounterVec::new(
            Opts::new("sluice_pool_leases_total", "Buffer leases by tier"),
            &["tier"],
        )?;
        let hits = IntCounterVec::new(
            Opts::new(
                "sluice_pool_hits_total",
                "Leases served from an idle buffer",
            ),
            &["tier"],
        )?;
        let misses = IntCounterVec::new(
            Opts::new(
                "sluice_pool_misses_total",
                "Leases that allocated a new buffer",
            ),
            &["tier"],
        )?;
        let idle = IntGaugeVec::new(
            Opts::new("sluice_pool_idle_buffers", "Idle buffers kept for reuse"),
            &["tier"],
        )?;
        let bytes_in_use = IntGauge::new(
            "sluice_pool_in_use_bytes",
            "Bytes of buffers currently leased",
        )?;
        let bytes_cap = IntGauge::new("sluice_pool_cap_bytes", "Global cap on leased bytes")?;
        registry.register(Box::new(leases.clone()))?;
        registry.register(Box::new(hits.clone()))?;
        registry.register(Box::new(misses.clone()))?;
        registry.register(Box::new(idle.clone()))?;
        registry.register(Box::new(bytes_in_use.clone()))?;
        registry.register(Box::new(bytes_cap.clone()))?;
        Ok(Self {
            leases,
            hits,
            misses,
            idle,
            bytes_in_use,
            bytes_cap,
        })
    }
}

struct Tier {
    size: usize,
    label: String,
    idle: Mutex<Vec<Vec<u8>>>,
}

struct Inner {
    tiers: Vec<Tier>,
    max_idle: usize,
    cap: Arc<Semaphore>,
    cap_bytes: i64,
    /// For small whole-file reads once the cap is exhausted (see the module docs).
    reserve: Arc<Semaphore>,
    idle_bytes: std::sync::atomic::AtomicI64,
    metrics: PoolMetrics,
}

/// The pool (cheap to clone).
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

/// One leased buffer. `len()` bytes of it are filled; the rest is spare capacity.
pub struct Lease {
    buf: Vec<u8>,
    len: usize,
    tier: usize,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

fn kib(n: usize) -> u32 {
    u32::try_from(n.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl BufferPool {
    /// `tiers` ascending, in bytes; `cap` bytes total.
    pub fn new(tiers: &[usize], max_idle: usize, cap: usize, metrics: PoolMetrics) -> Self {
        metrics.bytes_cap.set(cap as i64);
        let tiers = tiers
            .iter()
            .map(|&size| Tier {
                size,
                label: size.to_string(),
                idle: Mutex::new(Vec::new()),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                tiers,
                max_idle,
                cap: Arc::new(Semaphore::new(kib(cap) as usize)),
                cap_bytes: cap as i64,
                reserve: Arc::new(Semaphore::new(kib(cap / 8) as usize)),
                idle_bytes: std::sync::atomic::AtomicI64::new(0),
                metrics,
            }),
        }
    }

    /// Tier sizes, ascending.
    pub fn tier_sizes(&self) -> Vec<usize> {
        self.inner.tiers.iter().map(|t| t.size).collect()
    }

    pub fn tier_count(&self) -> usize {
        self.inner.tiers.len()
    }

    pub fn tier_size(&self, tier: usize) -> usize {
        let t = tier.min(self.inner.tiers.len().saturating_sub(1));
        self.inner.tiers.get(t).map(|t| t.size).unwrap_or(16 * 1024)
    }

    /// Fill idle lists up front (optional preallocation).
    pub fn preallocate(&self, per_tier: usize) {
        for t in &self.inner.tiers {
            if let Ok(mut idle) = t.idle.lock() {
                while idle.len() < per_tier.min(self.inner.max_idle)
                    && self
                        .inner
                        .idle_bytes
                        .load(std::sync::atomic::Ordering::Relaxed)
                        + t.size as i64
                        <= self.inner.cap_bytes
                {
                    idle.push(vec![0u8; t.size]);
                    self.inner
                        .idle_bytes
                        .fetch_add(t.size as i64, std::sync::atomic::Ordering::Relaxed);
                }
                self.inner
                    .metrics
                    .idle
                    .with_label_values(&[&t.label])
                    .set(idle.len() as i64);
            }
        }
    }

    /// Lease a buffer of tier `tier` (clamped to the largest), waiting while the global cap is
    /// exhausted.
    pub async fn lease(&self, tier: usize) -> Lease {
        let tier = tier.min(self.inner.tiers.len().saturating_sub(1));
        let size = self.tier_size(tier);
        // The semaphore is owned by the pool and never closed; config validation makes the cap
        // hold at least two of the largest tier, so this wait always ends.
        #[allow(clippy::expect_used)]
        let permit = self
            .inner
            .cap
            .clone()
            .acquire_many_owned(kib(size))
            .await
            .expect("pool semaphore is never closed");
        self.take(tier, permit)
    }

    /// Lease from tier `tier`, or, when the cap leaves no room for it, from the largest smaller
    /// tier that fits right now; otherwise wait up to `timeout` for the requested tier.
    /// `None` after the timeout: the caller fails the request (503) instead of queueing
    /// forever behind clients that hold buffers.
    pub async fn lease_or_smaller(
        &self,
        tier: usize,
        timeout: std::time::Duration,
    ) -> Option<Lease> {
        let tier = tier.min(self.inner.tiers.len().saturating_sub(1));
        for t in (0..=tier).rev() {
            if let Some(l) = self.try_lease(t) {
                return Some(l);
            }
        }
        tokio::time::timeout(timeout, self.lease(0)).await.ok()
    }

    /// Whether more than half of the cap is leased (transfers then stop reading ahead).
    pub fn under_pressure(&self) -> bool {
        let cap = self.inner.metrics.bytes_cap.get();
        self.inner.metrics.bytes_in_use.get() * 2 > cap
    }

    /// Lease without waiting; `None` when the cap is exhausted.
    pub fn try_lease(&self, tier: usize) -> Option<Lease> {
        let tier = tier.min(self.inner.tiers.len().saturating_sub(1));
        let size = self.tier_size(tier);
        let permit = self
            .inner
            .cap
            .clone()
            .try_acquire_many_owned(kib(size))
            .ok()?;
        Some(self.take(tier, permit))
    }

    /// Lease without waiting for a small whole-file read: from the cap, or when the cap is
    /// exhausted, from the reserve. `None` when neither has room.
    pub fn try_lease_small(&self, tier: usize) -> Option<Lease> {
        if let Some(l) = self.try_lease(tier) {
            return Some(l);
        }
        let tier = tier.min(self.inner.tiers.len().saturating_sub(1));
        let permit = self
            .inner
            .reserve
            .clone()
            .try_acquire_many_owned(kib(self.tier_size(tier)))
            .ok()?;
        Some(self.take(tier, permit))
    }

    fn take(&self, tier: usize, permit: OwnedSemaphorePermit) -> Lease {
        let inner = &self.inner;
        let t = &inner.tiers[tier];
        let reused = t.idle.lock().ok().and_then(|mut v| {
            let b = v.pop();
            if b.is_some() {
                inner
                    .idle_bytes
                    .fetch_sub(t.size as i64, std::sync::atomic::Ordering::Relaxed);
            }
            inner
                .metrics
                .idle
                .with_label_values(&[&t.label])
                .set(v.len() as i64);
            b
        });
        inner.metrics.leases.with_label_values(&[&t.label]).inc();
        let buf = match reused {
            Some(b) => {
                inner.metrics.hits.with_label_values(&[&t.label]).inc();
                b
            }
            None => {
                inner.metrics.misses.with_label_values(&[&t.label]).inc();
                vec![0u8; t.size]
            }
        };
        inner.metrics.bytes_in_use.add(t.size as i64);
        if reused_none_over_cap(inner) {
            trim_idle(inner);
        }
        Lease {
            buf,
            len: 0,
            tier,
            pool: self.inner.clone(),
            _permit: permit,
        }
    }

    /// Bytes currently leased.
    pub fn in_use_bytes(&self) -> i64 {
        self.inner.metrics.bytes_in_use.get()
    }
}

impl Lease {
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn is_full(&self) -> bool {
        self.len == self.buf.len()
    }
    pub fn tier(&self) -> usize {
        self.tier
    }
    /// Copy as much of `src` as fits; returns how many bytes were taken.
    pub fn fill_from(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&src[..n]);
        self.len += n;
        n
    }
    /// The whole buffer for a reader to fill; then call [`Lease::set_len`].
    pub fn spare_mut(&mut self, max: usize) -> &mut [u8] {
        let end = max.min(self.buf.len());
        &mut self.buf[..end]
    }
    pub fn set_len(&mut self, n: usize) {
        self.len = n.min(self.buf.len());
    }
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

fn reused_none_over_cap(inner: &Inner) -> bool {
    let idle = inner.idle_bytes.load(std::sync::atomic::Ordering::Relaxed);
    inner.metrics.bytes_in_use.get() + idle > inner.cap_bytes
}

/// Free idle buffers, largest tiers first, until leased + idle bytes fit the cap again.
fn trim_idle(inner: &Inner) {
    for t in inner.tiers.iter().rev() {
        if let Ok(mut idle) = t.idle.lock() {
            while !idle.is_empty() && reused_none_over_cap(inner) {
                idle.pop();
                inner
                    .idle_bytes
                    .fetch_sub(t.size as i64, std::sync::atomic::Ordering::Relaxed);
            }
            inner
                .metrics
                .idle
                .with_label_values(&[&t.label])
                .set(idle.len() as i64);
        }
        if !reused_none_over_cap(inner) {
            return;
        }
    }
}

/// The store reads ranges into leases.
impl crate::storage::IoBuf for Lease {
    fn capacity(&self) -> usize {
        Lease::capacity(self)
    }
    fn spare_mut(&mut self, n: usize) -> &mut [u8] {
        Lease::spare_mut(self, n)
    }
    fn set_len(&mut self, n: usize) {
        Lease::set_len(self, n)
    }
    fn filled(&self) -> &[u8] {
        self.as_ref()
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let t = &self.pool.tiers[self.tier];
        self.pool.metrics.bytes_in_use.sub(t.size as i64);
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut idle) = t.idle.lock() {
            let idle_bytes = self
                .pool
                .idle_bytes
                .load(std::sync::atomic::Ordering::Relaxed);
            let fits = self.pool.metrics.bytes_in_use.get() + idle_bytes + t.size as i64
                <= self.pool.cap_bytes;
            if idle.len() < self.pool.max_idle && fits {
                idle.push(buf);
                self.pool
                    .idle_bytes
                    .fetch_add(t.size as i64, std::sync::atomic::Ordering::Relaxed);
            }
            self.pool
                .metrics
                .idle
                .with_label_values(&[&t.label])
                .set(idle.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cap: usize) -> BufferPool {
        let r = Registry::new();
        BufferPool::new(
            &[16 * 1024, 64 * 1024],
            2,
            cap,
            PoolMetrics::register(&r).unwrap(),
        )
    }

    #[tokio::test]
    async fn lease_returns_on_drop_and_is_reused() {
        let p = pool(1024 * 1024);
        let mut l = p.lease(1).await;
        assert_eq!(l.capacity(), 64 * 1024);
        assert_eq!(l.fill_from(b"abc"), 3);
        assert_eq!(l.as_ref(), b"abc");
        assert_eq!(p.in_use_bytes(), 64 * 1024);
        drop(l);
        assert_eq!(p.in_use_bytes(), 0);
        let _l2 = p.lease(1).await;
        let m = &p.inner.metrics;
        assert_eq!(m.hits.with_label_values(&["65536"]).get(), 1);
        assert_eq!(m.misses.with_label_values(&["65536"]).get(), 1);
    }

    #[tokio::test]
    async fn cap_blocks_until_a_lease_returns() {
        let p = pool(128 * 1024);
        let a = p.lease(1).await;
        let b = p.lease(1).await;
        assert!(p.try_lease(0).is_none(), "cap must be enforced");
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.lease(1).await.capacity() });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, 64 * 1024);
        drop(b);
    }

    #[tokio::test]
    async fn small_reads_use_the_reserve_when_the_cap_is_held() {
        // Cap 256 KiB: a reserve of 32 KiB, two 16 KiB buffers.
        let p = pool(256 * 1024);
        let held: Vec<Lease> = vec![
            p.lease(1).await,
            p.lease(1).await,
            p.lease(1).await,
            p.lease(1).await,
        ];
        assert!(
            p.try_lease(0).is_none(),
            "cap exhausted by streaming leases"
        );
        let a = p.try_lease_small(0).expect("reserve serves a small read");
        let b = p.try_lease_small(0).expect("reserve serves a second one");
        assert!(p.try_lease_small(0).is_none(), "reserve is bounded");
        drop(a);
        assert!(p.try_lease_small(0).is_some());
        drop((b, held));
    }

    #[tokio::test]
    async fn idle_list_is_bounded() {
        let p = pool(1024 * 1024);
        let ls: Vec<Lease> = vec![p.lease(0).await, p.lease(0).await, p.lease(0).await];
        drop(ls);
        let idle = p.inner.tiers[0].idle.lock().unwrap().len();
        assert_eq!(idle, 2);
    }

    #[tokio::test]
    async fn leased_plus_idle_never_exceed_the_cap() {
        // Cap 128 KiB: two 64 KiB leases returned leave 128 KiB idle; a 16 KiB miss then
        // frees idle memory instead of growing past the cap.
        let p = pool(128 * 1024);
        drop(vec![p.lease(1).await, p.lease(1).await]);
        assert_eq!(
            p.inner
                .idle_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            128 * 1024
        );
        let _small = p.lease(0).await;
        let idle = p
            .inner
            .idle_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(idle + 16 * 1024 <= 128 * 1024, "idle {idle}");
    }

    #[tokio::test]
    async fn tier_is_clamped() {
        let p = pool(1024 * 1024);
        assert_eq!(p.lease(9).await.capacity(), 64 * 1024);
    }
}
