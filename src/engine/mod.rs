//! The streaming engine: the one place where upload and download bytes are copied.
//!
//! Owns the tiered [`pool::BufferPool`], the sizing decision (which tier the next read or write
//! uses), the upload pipeline (request body → pool buffers → SHA-256 + file writes on the
//! blocking pool, overlapped with receiving the next buffer) and the download body (file →
//! pool buffers → socket, positioned reads, never read-and-discard).
//! Must not: know about routes, auth or protocols; hold whole bodies in memory.

pub mod body;
pub mod pool;
pub mod sizing;

use std::fs::File;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use bytes::Buf;
use http_body::Body;
use http_body_util::BodyExt;
use prometheus::{HistogramOpts, HistogramVec, Registry};
use sha2::{Digest, Sha256};

pub use body::{FileBody, Segment};
use pool::{BufferPool, Lease, PoolMetrics};
pub use sizing::Sizer;

/// Why receiving a body failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("request body is larger than allowed")]
    TooLarge,
    #[error("request body ended after {received} of {expected} bytes")]
    Short { received: u64, expected: u64 },
    #[error("client sent nothing for too long")]
    IdleTimeout,
    #[error("client connection failed: {0}")]
    Client(String),
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
}

/// Engine metrics.
#[derive(Clone)]
pub struct EngineMetrics {
    /// Chosen buffer sizes, by direction.
    pub buffer_bytes: HistogramVec,
    /// Per-transfer throughput, by direction.
    pub throughput: HistogramVec,
}

impl EngineMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        let buffer_bytes = HistogramVec::new(
            HistogramOpts::new(
                "sluice_engine_buffer_size_bytes",
                "Buffer size chosen for each read or write",
            )
            .buckets(prometheus::exponential_buckets(4096.0, 2.0, 10)?),
            &["direction"],
        )?;
        let throughput = HistogramVec::new(
            HistogramOpts::new(
                "sluice_engine_transfer_throughput_bytes_per_second",
                "Throughput of each completed transfer",
            )
            .buckets(prometheus::exponential_buckets(16.0 * 1024.0, 4.0, 10)?),
            &["direction"],
        )?;
        r.register(Box::new(buffer_bytes.clone()))?;
        r.register(Box::new(throughput.clone()))?;
        Ok(Self {
            buffer_bytes,
            throughput,
        })
    }
}

/// The engine (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    pool: BufferPool,
    sizer: Sizer,
    metrics: EngineMetrics,
    idle_timeout: Duration,
}

/// Where received bytes go: a file positioned at its end, and the running SHA-256.
pub struct Sink {
    pub file: File,
    pub hasher: Sha256,
    pub written: u64,
}

impl Sink {
    pub fn new(file: File) -> Self {
        Self {
            file,
            hasher: Sha256::new(),
            written: 0,
        }
    }
}

/// Bounds on a body to receive.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Exact length declared by the client, if any: fewer bytes is `Short`, more is `TooLarge`.
    pub exact: Option<u64>,
    /// Hard cap on bytes accepted in this body.
    pub max: u64,
}

impl Engine {
    pub fn new(
        tiers: &[usize],
        max_idle: usize,
        cap: usize,
        idle_timeout: Duration,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let pool = BufferPool::new(tiers, max_idle, cap, PoolMetrics::register(registry)?);
        Ok(Self {
            sizer: Sizer::new(pool.tier_sizes()),
            pool,
            metrics: EngineMetrics::register(registry)?,
            idle_timeout,
        })
    }

    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Stream `body` into `sink`: frames are copied into leased buffers; each full buffer is
    /// hashed and written on the blocking pool while the next one fills. On any error the sink
    /// is dropped with the error (callers own the staged file's cleanup).
    pub async fn receive<B>(&self, body: B, sink: Sink, expect: Expect) -> Result<Sink, EngineError>
    where
        B: Body + Unpin,
        B::Error: std::fmt::Display,
    {
        let started = Instant::now();
        let mut body = body;
        let tier = self.sizer.tier_for_len(expect.exact);
        let mut buf = self.pool.lease(tier).await;
        // Exactly one of `idle` / `in_flight` holds the sink at any time.
        let mut idle: Option<Sink> = Some(sink);
        let mut in_flight: Option<WriteTask> = None;
        let mut spare: Option<Lease> = None;
        let mut received: u64 = 0;
        loop {
            let frame = match tokio::time::timeout(self.idle_timeout, body.frame()).await {
                Err(_) => return Err(EngineError::IdleTimeout),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(EngineError::Client(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers carry no file bytes
            };
            received += data.remaining() as u64;
            if received > expect.max || expect.exact.is_some_and(|n| received > n) {
                return Err(EngineError::TooLarge);
            }
            while data.has_remaining() {
                let n = buf.fill_from(data.chunk());
                data.advance(n);
                if buf.is_full() {
                    let s = take_sink(&mut idle, &mut in_flight, &mut spare).await?;
                    let next = match spare.take() {
                        Some(l) => l,
                        None => self.pool.lease(tier).await,
                    };
                    let full = std::mem::replace(&mut buf, next);
                    self.metrics
                        .buffer_bytes
                        .with_label_values(&["upload"])
                        .observe(full.len() as f64);
                    in_flight = Some(spawn_write(s, full));
                }
            }
        }
        if let Some(n) = expect.exact {
            if received < n {
                return Err(EngineError::Short {
                    received,
                    expected: n,
                });
            }
        }
        let mut sink = take_sink(&mut idle, &mut in_flight, &mut spare).await?;
        if !buf.is_empty() {
            self.metrics
                .buffer_bytes
                .with_label_values(&["upload"])
                .observe(buf.len() as f64);
            sink = join(spawn_write(sink, buf)).await?.0;
        }
        self.observe_throughput("upload", received, started.elapsed());
        Ok(sink)
    }

    /// A response body that streams `segments`, reading file parts from `file` with positioned
    /// reads into leased buffers.
    /// `guard` lives as long as the body (e.g. an in-flight gauge), so a client that goes away
    /// mid-download still releases it.
    pub fn send(
        &self,
        file: Option<File>,
        segments: Vec<Segment>,
        guard: Option<crate::metrics::GaugeGuard>,
    ) -> FileBody {
        let total: u64 = segments.iter().map(Segment::len).sum();
        let tier = self.sizer.tier_for_len(Some(total));
        FileBody::new(
            self.pool.clone(),
            tier,
            file,
            segments,
            self.metrics.clone(),
            guard,
        )
    }

    fn observe_throughput(&self, dir: &str, bytes: u64, took: Duration) {
        let secs = took.as_secs_f64().max(1e-6);
        self.metrics
            .throughput
            .with_label_values(&[dir])
            .observe(bytes as f64 / secs);
    }
}

type WriteTask = tokio::task::JoinHandle<io::Result<(Sink, Lease)>>;

/// Get the sink back: from the finished background write (keeping its buffer as `spare`) or
/// from `idle`.
async fn take_sink(
    idle: &mut Option<Sink>,
    in_flight: &mut Option<WriteTask>,
    spare: &mut Option<Lease>,
) -> Result<Sink, EngineError> {
    if let Some(h) = in_flight.take() {
        let (s, mut old) = join(h).await?;
        old.clear();
        *spare = Some(old);
        return Ok(s);
    }
    idle.take()
        .ok_or_else(|| EngineError::Io(io::Error::other("engine lost its sink")))
}

fn spawn_write(mut sink: Sink, buf: Lease) -> WriteTask {
    tokio::task::spawn_blocking(move || {
        let data = buf.as_ref();
        sink.hasher.update(data);
        sink.file.write_all(data)?;
        sink.written += data.len() as u64;
        Ok((sink, buf))
    })
}

async fn join(h: WriteTask) -> Result<(Sink, Lease), EngineError> {
    match h.await {
        Ok(r) => Ok(r?),
        Err(e) => Err(EngineError::Io(io::Error::other(e))),
    }
}
