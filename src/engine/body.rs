//! The download body: a sequence of in-memory parts and file ranges, streamed with ranged reads
//! through the store (positioned reads, never read-and-discard) into leased pool buffers, with
//! up to `read_ahead` reads in flight ahead of the socket. Each frame hands its lease to hyper
//! through `Bytes::from_owner`, so the buffer returns to the pool once hyper has written it, or
//! when the client disconnects and the body is dropped.
//!
//! With the connection's [`SendMeter`], once the socket has backed up (the client drains slower
//! than we read) the body measures the client's pace from the bytes the kernel took over 100 ms
//! windows and sizes the next buffer from it; reads run ahead of the socket only for a client
//! that takes the largest buffers without backing it up, else the next read starts when hyper
//! asks for the next frame, so a slow reader holds one buffer.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

use super::meter::{SendMeter, SendReading};
use super::pool::BufferPool;
use super::transfer::Transfer;
use crate::storage::{buf_bytes, Buf, RangeRead};

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

enum Pending {
    Bytes(Bytes),
    Read(JoinHandle<io::Result<Buf>>),
}

/// With a send meter, the pace is measured over windows of at least this long or this many
/// bytes taken by the kernel: frame by frame, a socket with room accepts a frame in
/// microseconds, which says nothing about the client.
const PACE_WINDOW: Duration = Duration::from_millis(100);
const PACE_WINDOW_BYTES: u64 = 256 * 1024;

/// The connection's send meter, as one body reads it.
struct Paced {
    meter: Arc<SendMeter>,
    /// The reading at the previous frame.
    last: SendReading,
    /// The current window's start, the bytes sent by then, and the longest wait on the client
    /// within it.
    window: (Instant, u64, Duration),
    /// The socket has backed up since this body started.
    backed_up_once: bool,
}

/// Streams segments; see the module docs.
pub struct FileBody {
    pool: BufferPool,
    transfer: Transfer,
    file: Option<Arc<dyn RangeRead>>,
    segments: VecDeque<Segment>,
    pending: VecDeque<Pending>,
    read_ahead: usize,
    lease_timeout: Duration,
    remaining: u64,
    /// When the previous frame was handed to hyper.
    last_yield: Option<Instant>,
    /// When we started waiting on the front read.
    disk_wait_since: Option<Instant>,
    /// The connection's send meter, as this body reads it.
    meter: Option<Paced>,
    /// No read-ahead: the next read starts when hyper asks for the next frame. With a send
    /// meter, reading ahead is for clients that take the largest buffers and did not back up
    /// their socket since the previous frame; a slower one gains nothing from it and would
    /// hold more buffers.
    reads_on_demand: bool,
    _guard: Option<crate::metrics::GaugeGuard>,
}

impl FileBody {
    pub(super) fn new(
        pool: BufferPool,
        transfer: Transfer,
        file: Option<Arc<dyn RangeRead>>,
        segments: Vec<Segment>,
        (read_ahead, lease_timeout): (usize, Duration),
        guard: Option<crate::metrics::GaugeGuard>,
        meter: Option<Arc<SendMeter>>,
    ) -> Self {
        let remaining = segments.iter().map(Segment::len).sum();
        let reads_on_demand = meter.is_some();
        Self {
            pool,
            transfer,
            file,
            segments: segments.into(),
            pending: VecDeque::new(),
            read_ahead: read_ahead.max(1),
            lease_timeout,
            remaining,
            last_yield: None,
            disk_wait_since: None,
            meter: meter.map(|meter| {
                let last = meter.read();
                Paced {
                    window: (Instant::now(), last.sent, Duration::ZERO),
                    last,
                    meter,
                    backed_up_once: false,
                }
            }),
            reads_on_demand,
            _guard: guard,
        }
    }

    /// Queue work until `read_ahead` reads are in flight or the segments run out.
    fn fill_pipeline(&mut self) -> io::Result<()> {
        // Under memory pressure, or behind a client slower than us, no read-ahead: one buffer
        // per transfer in our hands.
        let depth = if self.reads_on_demand || self.pool.under_pressure() {
            1
        } else {
            self.read_ahead
        };
        while self
            .pending
            .iter()
            .filter(|p| matches!(p, Pending::Read(_)))
            .count()
            < depth
        {
            let chunk_max = self.pool.tier_size(self.transfer.tier()) as u64;
            match self.segments.front_mut() {
                None => return Ok(()),
                Some(Segment::Bytes(b)) => {
                    let b = std::mem::take(b);
                    self.segments.pop_front();
                    if !b.is_empty() {
                        self.pending.push_back(Pending::Bytes(b));
                    }
                }
                Some(Segment::File { offset, len }) => {
                    if *len == 0 {
                        self.segments.pop_front();
                        continue;
                    }
                    let n = (*len).min(chunk_max);
                    let off = *offset;
                    *offset += n;
                    *len -= n;
                    // n ≤ a tier size, which fits in usize.
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    let file = self
                        .file
                        .clone()
                        .ok_or_else(|| io::Error::other("file segment without a file"))?;
                    let pool = self.pool.clone();
                    let tier = self.transfer.tier();
                    let lease_timeout = self.lease_timeout;
                    self.pending
                        .push_back(Pending::Read(tokio::spawn(async move {
                            // Waiting forever behind clients that hold buffers would let a
                            // few non-reading clients stall everyone: give up after a while.
                            let lease = tokio::time::timeout(lease_timeout, pool.lease(tier))
                                .await
                                .map_err(|_| {
                                    io::Error::new(
                                        io::ErrorKind::TimedOut,
                                        "no transfer buffer became free in time",
                                    )
                                })?;
                            file.read_at(off, n, Box::new(lease)).await
                        })));
                }
            }
        }
        Ok(())
    }

    fn yielded(&mut self, bytes: usize, disk_wait: Duration) {
        let now = Instant::now();
        // Time since the previous frame left: how fast the client drains us.
        let (active, client_wait) = match self.last_yield {
            Some(t) => {
                let gap = now.saturating_duration_since(t);
                (gap, gap.saturating_sub(disk_wait))
            }
            None => (disk_wait.max(Duration::from_micros(1)), Duration::ZERO),
        };
        self.last_yield = Some(now);
        let Some(paced) = self.meter.as_mut() else {
            self.transfer.observe(bytes, active, client_wait, disk_wait);
            return;
        };
        let reading = paced.meter.read();
        let backed_up = reading.backed_up_since(&paced.last);
        paced.last = reading;
        // Reading ahead hides the disk from a client faster than it: one that takes the
        // largest buffers without backing up its socket (fixed mode: one that does not back
        // it up).
        let top = self.pool.tier_count().saturating_sub(1);
        self.reads_on_demand = backed_up || (!self.transfer.fixed() && self.transfer.tier() < top);
        if backed_up && !paced.backed_up_once {
            // The socket backed up for the first time: what was measured so far is the
            // kernel's queue filling, not the client. Measure the client from here.
            paced.backed_up_once = true;
            paced.window = (now, reading.sent, Duration::ZERO);
            self.transfer.paced();
            self.transfer.count(bytes, client_wait, disk_wait);
            return;
        }
        let (since, sent, longest) = &mut paced.window;
        *longest = (*longest).max(client_wait);
        let elapsed = now.saturating_duration_since(*since);
        let drained = reading.sent.saturating_sub(*sent);
        if elapsed < PACE_WINDOW && drained < PACE_WINDOW_BYTES {
            self.transfer.count(bytes, client_wait, disk_wait);
            return;
        }
        // The kernel took `drained` bytes in the window: the client's pace, expressed as the
        // time this buffer needs at that pace.
        let active = elapsed.mul_f64(bytes as f64 / drained.max(1) as f64);
        let longest = *longest;
        paced.window = (now, reading.sent, Duration::ZERO);
        self.transfer.observe(bytes, active, longest, disk_wait);
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
        if let Err(e) = this.fill_pipeline() {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(front) = this.pending.front_mut() else {
            return Poll::Ready(None);
        };
        match front {
            Pending::Bytes(_) => {
                if let Some(Pending::Bytes(b)) = this.pending.pop_front() {
                    this.remaining = this.remaining.saturating_sub(b.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Poll::Ready(None)
            }
            Pending::Read(handle) => {
                let res = match Pin::new(handle).poll(cx) {
                    Poll::Pending => {
                        this.disk_wait_since.get_or_insert_with(Instant::now);
                        return Poll::Pending;
                    }
                    Poll::Ready(r) => r,
                };
                this.pending.pop_front();
                let disk_wait = this
                    .disk_wait_since
                    .take()
                    .map(|t| t.elapsed())
                    .unwrap_or_default();
                let buf = match res {
                    Ok(Ok(buf)) => buf,
                    Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Err(e) => return Poll::Ready(Some(Err(io::Error::other(e)))),
                };
                let n = buf.filled().len();
                this.remaining = this.remaining.saturating_sub(n as u64);
                this.yielded(n, disk_wait);
                // Start the next read before handing this buffer out, unless the client is
                // the bottleneck (then the read starts when hyper asks for the next frame).
                if !this.reads_on_demand {
                    if let Err(e) = this.fill_pipeline() {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(buf_bytes(buf)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.segments.iter().all(Segment::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
