//! The upload pipeline's storage side: each full buffer is written to the staged object (at
//! most one write in flight, in order) while it is hashed, on the receiving task when small,
//! else in parallel on the blocking pool. A small buffer the store can take at once (the page
//! cache) is written on the receiving task too.

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::pool::Lease;
use super::{EngineError, Hashers, Sink};
use crate::storage::Staged;

/// Buffers smaller than this are hashed on the receiving task (a blocking hop costs more than
/// hashing them); larger ones on the blocking pool, in parallel with their write.
const SPLIT_HASH_MIN: usize = 32 * 1024;

/// `spawn_blocking`, tracked when a tracker is given.
fn spawn_blocking_tracked<F, R>(
    tracker: &Option<tokio_util::task::TaskTracker>,
    f: F,
) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match tracker {
        Some(t) => t.spawn_blocking(f),
        None => tokio::task::spawn_blocking(f),
    }
}

/// `spawn`, tracked when a tracker is given.
fn spawn_tracked<F>(tracker: &Option<tokio_util::task::TaskTracker>, f: F) -> JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tracker {
        Some(t) => t.spawn(f),
        None => tokio::spawn(f),
    }
}

/// The upload's storage side: at most one hash and one write in flight, in order.
pub(super) struct WritePipe {
    tracker: Option<tokio_util::task::TaskTracker>,
    staged: Staged,
    offset: u64,
    hasher: Option<Hashers>,
    written: u64,
    hash_task: Option<JoinHandle<Hashers>>,
    write_task: Option<JoinHandle<io::Result<()>>>,
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, EngineError> {
    r.map_err(|e| EngineError::Io(io::Error::other(e)))
}

impl WritePipe {
    pub(super) fn new(sink: Sink) -> Self {
        Self {
            tracker: sink.tracker,
            staged: sink.staged,
            offset: sink.offset,
            hasher: Some(Hashers {
                file: sink.hasher,
                chunk: sink.chunk,
            }),
            written: sink.written,
            hash_task: None,
            write_task: None,
        }
    }

    /// Wait until the previous buffer is hashed and written; returns how long that took.
    pub(super) async fn ready(&mut self) -> Result<Duration, EngineError> {
        let t = Instant::now();
        if let Some(h) = self.hash_task.take() {
            self.hasher = Some(joined(h.await)?);
        }
        if let Some(w) = self.write_task.take() {
            joined(w.await)??;
        }
        Ok(t.elapsed())
    }

    /// Hand a full buffer to the store (and the hasher). Call [`WritePipe::ready`] first.
    pub(super) fn dispatch(&mut self, buf: Lease) {
        let Some(mut hasher) = self.hasher.take() else {
            // ready() was not awaited: a programming error; keep the data path honest.
            self.write_task = Some(tokio::spawn(async {
                Err(io::Error::other("engine write pipeline misuse"))
            }));
            return;
        };
        let data = Bytes::from_owner(buf);
        let n = data.len() as u64;
        if data.len() < SPLIT_HASH_MIN {
            hasher.update(&data);
            self.hasher = Some(hasher);
        } else {
            let for_hash = data.clone();
            self.hash_task = Some(spawn_blocking_tracked(&self.tracker, move || {
                hasher.update(&for_hash);
                hasher
            }));
        }
        let (obj, offset) = (self.staged.object().clone(), self.offset);
        self.offset += n;
        self.written += n;
        // A small buffer goes straight into the page cache when that needs no wait (a small
        // upload then crosses no thread for its bytes); the rest takes the usual way.
        let done = if data.len() < SPLIT_HASH_MIN {
            obj.write_now(offset, &data)
        } else {
            0
        };
        if done == data.len() {
            return;
        }
        let (offset, data) = (offset + done as u64, data.slice(done..));
        self.write_task = Some(if obj.blocking_writes() {
            // One hop: the write runs on the blocking pool itself.
            spawn_blocking_tracked(&self.tracker, move || obj.write_blocking(offset, &data))
        } else {
            spawn_tracked(
                &self.tracker,
                async move { obj.write_at(offset, data).await },
            )
        });
    }

    pub(super) async fn finish(mut self) -> Result<Sink, EngineError> {
        self.ready().await?;
        match self.hasher.take() {
            Some(hashers) => Ok(Sink {
                staged: self.staged,
                offset: self.offset,
                hasher: hashers.file,
                chunk: hashers.chunk,
                written: self.written,
                tracker: self.tracker.take(),
            }),
            None => Err(EngineError::Io(io::Error::other("engine lost its sink"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::pool::{BufferPool, PoolMetrics};
    use crate::engine::Sink;
    use crate::storage::{MemStorage, Store};

    #[tokio::test]
    async fn small_buffers_written_partly_at_once_arrive_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::catalog::sqlite::SqliteCatalog::open(&dir.path().join("c.sqlite3"), false)
            .unwrap();
        let store = MemStorage::new(Arc::new(c));
        let staged = store.stage().await.unwrap();
        let reader = staged.reader();
        let metrics = PoolMetrics::register(&prometheus::Registry::new()).unwrap();
        let pool = BufferPool::new(&[16 * 1024, 64 * 1024], 4, 1 << 20, metrics);
        let mut pipe = WritePipe::new(Sink::new(staged));
        let mut all = Vec::new();
        // Small buffers (half taken at once by the memory store, the rest written after) and
        // one large one (never written at once), one after the other.
        for (i, tier) in [0usize, 0, 1, 0].into_iter().enumerate() {
            let mut b = pool.lease(tier).await;
            let bytes: Vec<u8> = (0..b.capacity() - 7).map(|k| (k + i * 31) as u8).collect();
            assert_eq!(b.fill_from(&bytes), bytes.len());
            all.extend_from_slice(&bytes);
            pipe.ready().await.unwrap();
            pipe.dispatch(b);
        }
        let sink = pipe.finish().await.unwrap();
        assert_eq!(sink.written, all.len() as u64);
        let mut got = Vec::new();
        for start in (0..all.len()).step_by(16 * 1024) {
            let n = (all.len() - start).min(16 * 1024);
            let b = reader
                .read_at(start as u64, n, Box::new(pool.lease(0).await))
                .await
                .unwrap();
            got.extend_from_slice(b.filled());
        }
        assert_eq!(got, all);
        let mut h = sha2::Sha256::default();
        sha2::Digest::update(&mut h, &all);
        assert_eq!(
            sha2::Digest::finalize(sink.hasher),
            sha2::Digest::finalize(h)
        );
    }
}
