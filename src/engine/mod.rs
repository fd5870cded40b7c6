//! The streaming engine: the one place where upload and download bytes are copied.
//!
//! Owns the tiered [`pool::BufferPool`], the sizing decisions ([`adaptive`]: which tier the
//! next read or write uses, from live per-transfer figures, the client's strategy and its
//! history), the upload pipeline (request body → pool buffers → SHA-256 and a write to the
//! staged object running in parallel, overlapped with receiving the next buffer) and the
//! download body ([`body::FileBody`]: ranged reads through the store into pool buffers with
//! read-ahead). It moves buffers and ranges through the storage contract, never files.
//! Must not: know about routes, auth or protocols; hold whole bodies in memory; run blocking
//! work on the async workers.

pub mod adaptive;
pub mod body;
pub mod meter;
pub mod metrics;
mod pipe;
pub mod pool;
mod transfer;

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes};
use http_body::Body;
use http_body_util::BodyExt;
use prometheus::Registry;
use sha2::{Digest, Sha256};

use crate::config::{EngineConfig, EngineMode};
use crate::storage::{buf_bytes, Buf, RangeRead, SmallRead, Staged};
use adaptive::{History, Policy, Strategy};
pub use body::{FileBody, Segment};
pub use meter::SendMeter;
pub use metrics::EngineMetrics;
use pipe::WritePipe;
use pool::{BufferPool, Lease, PoolMetrics};
use transfer::{Direction, Transfer};

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
    #[error("a newer request for the same upload took over")]
    Cancelled,
    #[error("server is busy: no transfer buffer became free in time")]
    Busy,
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
}

impl EngineError {
    fn kind(&self) -> &'static str {
        match self {
            EngineError::TooLarge => "too_large",
            EngineError::Short { .. } => "short",
            EngineError::IdleTimeout => "idle_timeout",
            EngineError::Client(_) => "client",
            EngineError::Cancelled => "cancelled",
            EngineError::Busy => "busy",
            EngineError::Io(_) => "io",
        }
    }
}

/// Responses up to this size are read in one buffer, whatever the client's prior.
const ONE_READ_MAX: u64 = 64 * 1024;

/// Who is on the other end of a transfer (the sizing prior).
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: Option<IpAddr>,
    pub strategy: Strategy,
    /// The request came over HTTP/2: its stream can be stalled by flow control while the
    /// connection stays busy, so its downloads read no buffers ahead (a stalled stream then
    /// holds one buffer, in hyper's bounded send buffer).
    pub http2: bool,
}

pub(crate) struct Shared {
    pub policy: Policy,
    pub history: Mutex<History>,
    pub metrics: EngineMetrics,
}

/// The engine (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    pool: BufferPool,
    shared: Arc<Shared>,
    idle_timeout: Duration,
    lease_timeout: Duration,
    read_ahead: usize,
}

/// Digest of one append (tus `Upload-Checksum`), computed alongside the file's SHA-256.
#[derive(Clone)]
pub enum ChunkDigest {
    Sha1(sha1::Sha1),
    Sha256(Sha256),
    Sha512(sha2::Sha512),
    Md5(md5::Md5),
}

impl ChunkDigest {
    fn update(&mut self, data: &[u8]) {
        match self {
            ChunkDigest::Sha1(h) => h.update(data),
            ChunkDigest::Sha256(h) => h.update(data),
            ChunkDigest::Sha512(h) => h.update(data),
            ChunkDigest::Md5(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            ChunkDigest::Sha1(h) => h.finalize().to_vec(),
            ChunkDigest::Sha256(h) => h.finalize().to_vec(),
            ChunkDigest::Sha512(h) => h.finalize().to_vec(),
            ChunkDigest::Md5(h) => h.finalize().to_vec(),
        }
    }
}

/// The hash state carried through the write pipeline.
pub struct Hashers {
    pub file: Sha256,
    pub chunk: Option<ChunkDigest>,
}

impl Hashers {
    fn update(&mut self, data: &[u8]) {
        self.file.update(data);
        if let Some(c) = &mut self.chunk {
            c.update(data);
        }
    }
}

/// Where received bytes go: a staged object and the offset of the next write, the running
/// SHA-256 of the whole object, and optionally a digest of this append alone.
pub struct Sink {
    pub staged: Staged,
    /// Where the next byte goes.
    pub offset: u64,
    pub hasher: Sha256,
    pub chunk: Option<ChunkDigest>,
    pub written: u64,
    /// Tracks this sink's background writes, so a later writer of the same object can wait
    /// for writes left running by a request that was dropped mid-flight.
    pub tracker: Option<tokio_util::task::TaskTracker>,
}

impl Sink {
    pub fn new(staged: Staged) -> Self {
        Self::resume(staged, 0, Sha256::new())
    }

    /// Continue at `offset` with a hash over the bytes before it (resumable uploads).
    pub fn resume(staged: Staged, offset: u64, hasher: Sha256) -> Self {
        Self {
            staged,
            offset,
            hasher,
            chunk: None,
            written: 0,
            tracker: None,
        }
    }
}

/// A failed receive. For interruptions (client gone, idle, cancelled) `sink` holds what was
/// durably handed to the file so far, so resumable protocols can keep it.
pub struct Failure {
    pub error: EngineError,
    pub sink: Option<Sink>,
}

/// Bounds on a body to receive.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Exact length declared by the client, if any: fewer bytes is `Short`, more is `TooLarge`.
    pub exact: Option<u64>,
    /// Hard cap on bytes accepted in this body.
    pub max: u64,
}

fn to_usize(b: bytesize::ByteSize) -> usize {
    usize::try_from(b.as_u64()).unwrap_or(usize::MAX)
}

impl Engine {
    pub fn new(
        cfg: &EngineConfig,
        idle_timeout: Duration,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let tiers: Vec<usize> = cfg.tiers.iter().map(|t| to_usize(*t)).collect();
        let pool = BufferPool::new(
            &tiers,
            cfg.max_idle_per_tier,
            to_usize(cfg.memory_cap),
            PoolMetrics::register(registry)?,
        );
        if cfg.preallocate_per_tier > 0 {
            pool.preallocate(cfg.preallocate_per_tier);
        }
        let c = &cfg.clients;
        let fixed = match cfg.mode {
            EngineMode::Fixed => Some(
                tiers
                    .iter()
                    .position(|&t| t == to_usize(cfg.fixed_buffer))
                    .unwrap_or(0),
            ),
            EngineMode::Adaptive => None,
        };
        let policy = Policy {
            tiers,
            fixed,
            target_buffer_time: cfg.target_buffer_time,
            stall_threshold: cfg.stall_threshold,
            quality_floors: [
                cfg.quality.excellent.as_u64() as f64,
                cfg.quality.good.as_u64() as f64,
                cfg.quality.fair.as_u64() as f64,
            ],
            mobile_agents: c.mobile_agents.clone(),
            server_agents: c.server_agents.clone(),
            start_buffer: [
                to_usize(c.mobile_start_buffer),
                to_usize(c.desktop_start_buffer),
                to_usize(c.server_start_buffer),
            ],
            start_chunk: [
                c.mobile_chunk.as_u64(),
                c.desktop_chunk.as_u64(),
                c.server_chunk.as_u64(),
            ],
            chunk_target_time: c.chunk_target_time,
            chunk_min: c.chunk_min.as_u64(),
            chunk_max: c.chunk_max.as_u64(),
        };
        Ok(Self {
            pool,
            shared: Arc::new(Shared {
                policy,
                history: Mutex::new(History::new(cfg.history_capacity, cfg.history_ttl)),
                metrics: EngineMetrics::register(registry)?,
            }),
            idle_timeout,
            lease_timeout: cfg.lease_timeout,
            read_ahead: cfg.read_ahead,
        })
    }

    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// The sizing prior for a client.
    pub fn client(&self, ip: Option<IpAddr>, user_agent: Option<&str>) -> Client {
        Client {
            ip,
            strategy: self.shared.policy.classify(user_agent),
            http2: false,
        }
    }

    fn history_rate(&self, c: &Client) -> Option<f64> {
        let ip = c.ip?;
        self.shared.history.lock().ok()?.get(ip, Instant::now())
    }

    /// Chunk size to advise a resumable-upload client (tus, IETF `Upload-Limit`, chunked).
    pub fn chunk_advice(&self, c: &Client) -> u64 {
        self.shared
            .policy
            .chunk_advice(c.strategy, self.history_rate(c))
    }

    /// Stream `body` into `sink`. Frames are copied into leased buffers; each full buffer is
    /// hashed and written on the blocking pool (in parallel when large) while the next one
    /// fills. The buffer size follows the transfer's live figures. On error the sink is
    /// dropped (callers own the staged file's cleanup).
    pub async fn receive<B>(
        &self,
        body: B,
        sink: Sink,
        expect: Expect,
        client: &Client,
    ) -> Result<Sink, EngineError>
    where
        B: Body + Unpin,
        B::Error: std::fmt::Display,
    {
        self.receive_resumable(body, sink, expect, client, None)
            .await
            .map_err(|f| f.error)
    }

    /// Like [`Engine::receive`], for resumable appends: `cancel` ends the transfer early (a
    /// newer request for the same upload), and on an interruption the bytes received so far
    /// are written and returned in [`Failure::sink`].
    pub async fn receive_resumable<B>(
        &self,
        body: B,
        sink: Sink,
        expect: Expect,
        client: &Client,
        cancel: Option<tokio_util::sync::CancellationToken>,
    ) -> Result<Sink, Failure>
    where
        B: Body + Unpin,
        B::Error: std::fmt::Display,
    {
        let r = self.receive_inner(body, sink, expect, client, cancel).await;
        match &r {
            Ok(s) => self.shared.metrics.append_bytes.observe(s.written as f64),
            Err(f) => self
                .shared
                .metrics
                .errors
                .with_label_values(&["upload", f.error.kind()])
                .inc(),
        }
        r
    }

    async fn receive_inner<B>(
        &self,
        body: B,
        sink: Sink,
        expect: Expect,
        client: &Client,
        cancel: Option<tokio_util::sync::CancellationToken>,
    ) -> Result<Sink, Failure>
    where
        B: Body + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut body = body;
        let start =
            self.shared
                .policy
                .start_tier(client.strategy, self.history_rate(client), expect.exact);
        let mut transfer = Transfer::new(self.shared.clone(), Direction::Upload, *client, start);
        let mut pipe = WritePipe::new(sink);
        // `None` between handing a full buffer to the pipe and leasing the next one, so a
        // transfer waiting at the memory cap holds only the buffer being written (which frees
        // itself): no deadlock when many transfers meet the cap at once.
        let mut buf: Option<Lease> = None;
        let mut tier = transfer.tier();
        let mut received: u64 = 0;
        let mut buf_started = Instant::now();
        let mut longest_wait = Duration::ZERO;
        let cancel = cancel.unwrap_or_default();
        let interrupted = loop {
            let waited = Instant::now();
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(EngineError::Cancelled),
                r = tokio::time::timeout(self.idle_timeout, body.frame()) => match r {
                    Err(_) => Err(EngineError::IdleTimeout),
                    Ok(None) => Ok(None),
                    Ok(Some(Err(e))) => Err(EngineError::Client(e.to_string())),
                    Ok(Some(Ok(f))) => Ok(Some(f)),
                },
            };
            let frame = match next {
                Ok(Some(f)) => f,
                Ok(None) => break None,
                Err(e) => break Some(e),
            };
            longest_wait = longest_wait.max(waited.elapsed());
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers carry no file bytes
            };
            received += data.remaining() as u64;
            if received > expect.max || expect.exact.is_some_and(|n| received > n) {
                return Err(Failure {
                    error: EngineError::TooLarge,
                    sink: None,
                });
            }
            while data.has_remaining() {
                let b = match &mut buf {
                    Some(b) => b,
                    // Under memory pressure bulk uploads step down to small buffers, so many
                    // concurrent transfers share the cap instead of queueing for it.
                    None => match self
                        .pool
                        .lease_or_smaller(
                            if self.pool.under_pressure() {
                                tier.min(1)
                            } else {
                                tier
                            },
                            self.lease_timeout,
                        )
                        .await
                    {
                        Some(l) => buf.insert(l),
                        None => return Err(Failure::plain(EngineError::Busy)),
                    },
                };
                let n = b.fill_from(data.chunk());
                data.advance(n);
                if b.is_full() {
                    let active = buf_started.elapsed();
                    let disk_wait = pipe.ready().await.map_err(Failure::plain)?;
                    if let Some(full) = buf.take() {
                        tier = transfer.observe(full.len(), active, longest_wait, disk_wait);
                        pipe.dispatch(full);
                    }
                    buf_started = Instant::now();
                    longest_wait = Duration::ZERO;
                }
            }
        };
        if interrupted.is_none() {
            if let Some(n) = expect.exact {
                if received < n {
                    return Err(Failure::plain(EngineError::Short {
                        received,
                        expected: n,
                    }));
                }
            }
        }
        if let Some(last) = buf.take().filter(|b| !b.is_empty()) {
            let active = buf_started.elapsed();
            let disk_wait = pipe.ready().await.map_err(Failure::plain)?;
            transfer.observe(last.len(), active, longest_wait, disk_wait);
            pipe.dispatch(last);
        }
        let sink = pipe.finish().await.map_err(Failure::plain)?;
        match interrupted {
            None => Ok(sink),
            Some(error) => Err(Failure {
                error,
                sink: Some(sink),
            }),
        }
    }

    /// Copy whole staged objects (`parts`: a reader and its length) into `dest` from offset 0
    /// (tus concatenation), through pool buffers, returning the SHA-256 of the result.
    pub async fn concat(
        &self,
        parts: Vec<(Arc<dyn RangeRead>, u64)>,
        dest: &Staged,
    ) -> io::Result<Sha256> {
        let top = self.pool.tier_count().saturating_sub(1);
        let mut h = Sha256::new();
        let mut out = 0u64;
        for (part, len) in parts {
            let mut off = 0u64;
            while off < len {
                let lease = self.pool.lease(top).await;
                let n = usize::try_from((len - off).min(lease.capacity() as u64)).unwrap_or(0);
                let data = buf_bytes(part.read_at(off, n, Box::new(lease)).await?);
                let for_hash = data.clone();
                let hashing = tokio::task::spawn_blocking(move || {
                    h.update(&for_hash);
                    h
                });
                dest.write_at(out, data).await?;
                h = hashing.await.map_err(io::Error::other)?;
                off += n as u64;
                out += n as u64;
            }
        }
        Ok(h)
    }

    /// SHA-256 of the first `len` bytes of a staged object, read through pool buffers
    /// (rebuilding hash state after a restart or for out-of-order chunks).
    pub async fn hash_object(&self, reader: Arc<dyn RangeRead>, len: u64) -> io::Result<Sha256> {
        let top = self.pool.tier_count().saturating_sub(1);
        let mut h = Sha256::new();
        let mut off = 0u64;
        while off < len {
            let lease = self.pool.lease(top).await;
            let n = usize::try_from((len - off).min(lease.capacity() as u64)).unwrap_or(0);
            let buf = reader.read_at(off, n, Box::new(lease)).await?;
            h = tokio::task::spawn_blocking(move || {
                h.update(buf.filled());
                h
            })
            .await
            .map_err(io::Error::other)?;
            off += n as u64;
        }
        Ok(h)
    }

    /// Files up to this size are read whole in one step (see [`Engine::small_read`]).
    pub fn small_file_max(&self) -> u64 {
        self.pool
            .tier_size(1.min(self.pool.tier_count().saturating_sub(1))) as u64
    }

    /// For small files: the pool buffer the store reads the whole file into while it opens
    /// it, so that opening and reading take one hop instead of three. It gives none when no
    /// buffer is free right now or the file is larger than [`Engine::small_file_max`]; the
    /// caller then streams it with [`Engine::send`].
    pub fn small_read(&self) -> SmallRead {
        let (pool, shared, max) = (
            self.pool.clone(),
            self.shared.clone(),
            self.small_file_max(),
        );
        Box::new(move |size| {
            if size > max {
                return None;
            }
            let n = usize::try_from(size).ok()?;
            let lease = pool.try_lease_small(shared.policy.tier_at_least(n as f64))?;
            (lease.capacity() >= n).then(|| Box::new(lease) as Buf)
        })
    }

    /// The bytes of a file read whole through [`Engine::small_read`].
    pub fn small_bytes(&self, whole: Buf) -> Bytes {
        self.shared
            .metrics
            .buffer_bytes
            .with_label_values(&["download"])
            .observe(whole.filled().len() as f64);
        buf_bytes(whole)
    }

    /// A response body that streams `segments`, reading file parts through `file` (ranged
    /// reads into leased buffers), `read_ahead` reads ahead of the socket. `guard` lives as long
    /// as the body (e.g. an in-flight gauge), so a client that goes away mid-download still
    /// releases it. `meter` is the connection's send meter (HTTP/1): with it, a client slower
    /// than the disk gets buffers sized to its drain rate and no read-ahead.
    pub fn send(
        &self,
        file: Option<Arc<dyn RangeRead>>,
        segments: Vec<Segment>,
        guard: Option<crate::metrics::GaugeGuard>,
        client: &Client,
        meter: Option<Arc<SendMeter>>,
    ) -> FileBody {
        let total: u64 = segments.iter().map(Segment::len).sum();
        // A response of up to 64 KiB is one read whatever the prior (a Range GET of a block).
        let policy = &self.shared.policy;
        let mut start = policy.start_tier(client.strategy, self.history_rate(client), Some(total));
        if policy.fixed.is_none() {
            start = start.max(policy.tier_at_least(total.min(ONE_READ_MAX) as f64));
        }
        let transfer = Transfer::new(self.shared.clone(), Direction::Download, *client, start);
        FileBody::new(
            self.pool.clone(),
            transfer,
            file,
            segments,
            (
                if client.http2 { 0 } else { self.read_ahead },
                self.lease_timeout,
            ),
            guard,
            meter.filter(|_| !client.http2),
        )
    }
}

impl Failure {
    fn plain(error: EngineError) -> Self {
        Self { error, sink: None }
    }
}
