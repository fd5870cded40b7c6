//! Hot small files in memory: published files never change, so a small file that was just
//! read whole into a pool buffer (by the engine) can answer the next GETs without a blocking
//! hop. Bounded in bytes (the buffers are pool leases, so they count against the pool cap and
//! are dropped when the pool is under pressure) and in age (an entry is re-validated against
//! the disk after `ttl`, so a file an operator deleted by hand disappears within that time).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::SharedClock;

use bytes::Bytes;

use crate::storage::FileMeta;

struct Entry {
    meta: FileMeta,
    data: Bytes,
    /// When it was cached (the clock's time since the epoch).
    at: Duration,
}

pub struct HotCache {
    max_bytes: usize,
    ttl: Duration,
    clock: SharedClock,
    inner: Mutex<(HashMap<String, Entry>, usize)>,
}

impl HotCache {
    pub fn new(max_bytes: usize, ttl: Duration, clock: SharedClock) -> Self {
        Self {
            max_bytes,
            ttl,
            clock,
            inner: Mutex::new((HashMap::new(), 0)),
        }
    }

    pub fn get(&self, key: &str) -> Option<(FileMeta, Bytes)> {
        let g = self.inner.lock().ok()?;
        let e = g.0.get(key)?;
        (self.clock.since_epoch().saturating_sub(e.at) < self.ttl)
            .then(|| (e.meta.clone(), e.data.clone()))
    }

    /// Remember a whole small file; the oldest entries make room.
    pub fn put(&self, key: &str, meta: &FileMeta, data: &Bytes) {
        if self.max_bytes == 0 || data.len() > self.max_bytes / 4 {
            return;
        }
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let (map, bytes) = &mut *g;
        if let Some(old) = map.remove(key) {
            *bytes -= old.data.len();
        }
        while *bytes + data.len() > self.max_bytes {
            let Some(oldest) = map.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(e) = map.remove(&oldest) {
                *bytes -= e.data.len();
            }
        }
        *bytes += data.len();
        map.insert(
            key.to_owned(),
            Entry {
                meta: meta.clone(),
                data: data.clone(),
                at: self.clock.since_epoch(),
            },
        );
    }

    /// Forget one file (it was removed).
    pub fn remove(&self, key: &str) {
        if let Ok(mut g) = self.inner.lock() {
            let (map, bytes) = &mut *g;
            if let Some(e) = map.remove(key) {
                *bytes -= e.data.len();
            }
        }
    }

    /// Drop everything (memory pressure).
    pub fn clear(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.0.clear();
            g.1 = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: u64) -> FileMeta {
        FileMeta {
            size: n,
            sha256: "00".into(),
            content_type: "text/plain".into(),
            uploaded_at: 0,
            uploader: None,
            expires_at: None,
        }
    }

    #[test]
    fn bounded_by_bytes_oldest_out_and_expires() {
        let clock = crate::clock::ManualClock::new();
        let c = HotCache::new(4096, Duration::from_millis(50), clock.clone());
        for i in 0..5 {
            c.put(&format!("k{i}"), &meta(1000), &Bytes::from(vec![0u8; 1000]));
            clock.advance(Duration::from_millis(1));
        }
        assert!(c.get("k0").is_none(), "oldest evicted");
        assert!(c.get("k4").is_some());
        // Too large for the cache: not kept.
        c.put("big", &meta(2000), &Bytes::from(vec![0u8; 2000]));
        assert!(c.get("big").is_none());
        clock.advance(Duration::from_millis(45));
        assert!(c.get("k4").is_some(), "within the ttl");
        clock.advance(Duration::from_millis(5));
        assert!(c.get("k4").is_none(), "expired");
    }
}
