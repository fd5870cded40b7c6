//! The download body: a sequence of in-memory parts and file ranges, streamed with positioned
//! reads (`pread`) into leased pool buffers on the blocking pool. Each frame hands its lease to
//! hyper through `Bytes::from_owner`, so the buffer goes back to the pool when hyper has written
//! it (or when the client disconnects and the body is dropped).

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::pool::{BufferPool, Lease};
use super::EngineMetrics;

/// One piece of a response body.
#[derive(Debug, Clone)]
pub enum Segment {
    /// Bytes already in memory (multipart headers, boundaries).
    Bytes(Bytes),
    /// `len` bytes of the file from `offset`.
    File { offset: u64, len: u64 },
}

impl Segment {
    pub fn len(&self) -> u64 {
        match self {
            Segment::Bytes(b) => b.len() as u64,
            Segment::File { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type ReadFuture = Pin<Box<dyn Future<Output = io::Result<Lease>> + Send>>;

/// Streams segments; see the module docs.
pub struct FileBody {
    pool: BufferPool,
    tier: usize,
    file: Option<Arc<File>>,
    segments: VecDeque<Segment>,
    pending: Option<ReadFuture>,
    remaining: u64,
    metrics: EngineMetrics,
    _guard: Option<crate::metrics::GaugeGuard>,
}

impl FileBody {
    pub(super) fn new(
        pool: BufferPool,
        tier: usize,
        file: Option<File>,
        segments: Vec<Segment>,
        metrics: EngineMetrics,
        guard: Option<crate::metrics::GaugeGuard>,
    ) -> Self {
        let remaining = segments.iter().map(Segment::len).sum();
        Self {
            pool,
            tier,
            file: file.map(Arc::new),
            segments: segments.into(),
            pending: None,
            remaining,
            metrics,
            _guard: guard,
        }
    }

    fn start_read(&mut self, offset: u64, len: usize) -> io::Result<()> {
        let file = self
            .file
            .clone()
            .ok_or_else(|| io::Error::other("file segment without a file"))?;
        let pool = self.pool.clone();
        let tier = self.tier;
        self.metrics
            .buffer_bytes
            .with_label_values(&["download"])
            .observe(len as f64);
        self.pending = Some(Box::pin(async move {
            let mut lease = pool.lease(tier).await;
            let task = tokio::task::spawn_blocking(move || {
                file.read_exact_at(lease.spare_mut(len), offset)?;
                lease.set_len(len);
                Ok::<_, io::Error>(lease)
            });
            task.await.map_err(io::Error::other)?
        }));
        Ok(())
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(fut) = this.pending.as_mut() {
                let res = match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                this.pending = None;
                return Poll::Ready(Some(res.map(|lease| {
                    this.remaining = this.remaining.saturating_sub(lease.len() as u64);
                    Frame::data(Bytes::from_owner(lease))
                })));
            }
            let chunk_max = this.pool.tier_size(this.tier) as u64;
            match this.segments.front_mut() {
                None => return Poll::Ready(None),
                Some(Segment::Bytes(b)) => {
                    let b = std::mem::take(b);
                    this.segments.pop_front();
                    if b.is_empty() {
                        continue;
                    }
                    this.remaining = this.remaining.saturating_sub(b.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Some(Segment::File { offset, len }) => {
                    if *len == 0 {
                        this.segments.pop_front();
                        continue;
                    }
                    let n = (*len).min(chunk_max);
                    let off = *offset;
                    *offset += n;
                    *len -= n;
                    // n ≤ tier size, which fits in usize.
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    if let Err(e) = this.start_read(off, n) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.segments.iter().all(Segment::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
