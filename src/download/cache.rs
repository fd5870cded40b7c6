//! Hot small files in memory: published files never change, so a small file that was just
//! read whole into a pool buffer (by the engine) can answer the next GETs without a blocking
//! hop. Bounded in bytes (the buffers are pool leases, so they count against the pool cap and
//! are dropped when the pool is under pressure) and in age (an entry is re-validated against
//! the disk after `ttl`, so a file an operator deleted by hand disappears within that time).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::storage::FileMeta;

struct Entry {
    meta: FileMeta,
    data: Bytes,
    at: Instant,
}

pub struct HotCache {
    max_bytes: usize,
    ttl: Duration,
    inner: Mutex<(HashMap<String, Entry>, usize)>,
}

impl HotCache {
    pub fn new(max_bytes: usize, ttl: Duration) -> Self {
        Self {
            max_bytes,
            ttl,
            inner: Mutex::new((HashMap::new(), 0)),
        }
    }

    pub fn get(&self, key: &str) -> Option<(FileMeta, Bytes)> {
        let g = self.inner.lock().ok()?;
        let e = g.0.get(key)?;
        (e.at.elapsed() < self.ttl).then(|| (e.meta.clone(), e.data.clone()))
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
                at: Instant::now(),
            },
        );
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
        }
    }

    #[test]
    fn bounded_by_bytes_oldest_out_and_expires() {
        let c = HotCache::new(4096, Duration::from_millis(50));
        for i in 0..5 {
            c.put(&format!("k{i}"), &meta(1000), &Bytes::from(vec![0u8; 1000]));
        }
        assert!(c.get("k0").is_none(), "oldest evicted");
        assert!(c.get("k4").is_some());
        // Too large for the cache: not kept.
        c.put("big", &meta(2000), &Bytes::from(vec![0u8; 2000]));
        assert!(c.get("big").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get("k4").is_none(), "expired");
    }
}
