//! The upload-session core shared by tus, the IETF draft and the chunked protocol.
//!
//! Owns: unguessable ids, persisted state (`staging/sessions/<id>.json` + `<id>.bin`), the
//! durable offset (recorded only after the bytes are flushed per the durability setting, and
//! on restart the data file is cut back to it), exactly one writer per upload (a newer
//! request can take over from an older one), expiry with a sweeper, the open-session cap, and
//! completion through the same atomic, no-overwrite commit as PUT with the SHA-256 of the
//! whole file (rebuilt from the staged bytes when the in-memory state is gone).
//! Must not: parse protocol headers (the adapters do) or copy bytes itself (the engine does).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::Durability;
use crate::engine::{ChunkDigest, Client, Engine, EngineError, Expect, Sink};
use crate::error::ApiError;
use crate::storage::{FileMeta, FsStorage, StoredPath};

/// Which protocol created a session (a closed set: a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tus,
    Ietf,
    Chunked,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tus => "tus",
            Protocol::Ietf => "ietf",
            Protocol::Chunked => "chunked",
        }
    }
}

/// Persisted state of one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionMeta {
    pub id: String,
    pub protocol: Protocol,
    /// Where the file is published; `None` for tus partial uploads (concatenation parts).
    pub target: Option<String>,
    /// Total length; `None` while deferred.
    pub length: Option<u64>,
    /// Size the grant was signed for: the final length must equal it.
    pub grant_size: Option<u64>,
    /// Bytes durably stored (contiguous protocols).
    pub offset: u64,
    pub content_type: String,
    /// tus `Upload-Metadata`, verbatim.
    #[serde(default)]
    pub metadata: Option<String>,
    /// tus concatenation: this is a partial upload.
    #[serde(default)]
    pub partial: bool,
    /// tus concatenation: this is a final upload of these parts (their URLs, space-separated,
    /// as the client listed them), reported in `Upload-Concat: final;<urls>` on HEAD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concat_parts: Option<String>,
    /// Chunked protocol: chunk size and which chunks are stored.
    #[serde(default)]
    pub chunk_size: Option<u64>,
    #[serde(default)]
    pub chunks: Vec<bool>,
    #[serde(default)]
    pub uploader: Option<String>,
    /// The grant's expiry for the published file (JWT `expires`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_expires: Option<u64>,
    pub created_at: u64,
    pub expires_at: u64,
    /// Published (or, for partial uploads, fully received).
    #[serde(default)]
    pub completed: bool,
    /// SHA-256 of the finished file.
    #[serde(default)]
    pub sha256: Option<String>,
}

impl SessionMeta {
    pub fn remaining(&self) -> Option<u64> {
        self.length.map(|l| l.saturating_sub(self.offset))
    }
}

/// What the single writer of a session keeps between requests.
struct WriterState {
    /// SHA-256 over bytes `[0, offset)`, when known in memory.
    hasher: Option<Sha256>,
}

/// One live session.
pub struct Session {
    pub id: String,
    meta: Mutex<SessionMeta>,
    writer: tokio::sync::Mutex<WriterState>,
    /// The registered writer: (generation, token to stop it).
    current: Mutex<Option<(u64, CancellationToken)>>,
    generation: std::sync::atomic::AtomicU64,
    /// Background writes of this session's appends; a new append first waits for writes a
    /// dropped request left running.
    io: tokio_util::task::TaskTracker,
}

impl Session {
    fn new(id: String, meta: SessionMeta, hasher: Option<Sha256>) -> Self {
        Self {
            id,
            meta: Mutex::new(meta),
            writer: tokio::sync::Mutex::new(WriterState { hasher }),
            current: Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            io: tokio_util::task::TaskTracker::new(),
        }
    }

    pub fn meta(&self) -> SessionMeta {
        match self.meta.lock() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// End the request currently writing to this session, if any (a reconnecting client must
    /// not wait for a dead connection to time out).
    pub fn preempt(&self) {
        if let Ok(cur) = self.current.lock() {
            if let Some((_, t)) = cur.as_ref() {
                t.cancel();
            }
        }
    }
}

/// Exclusive write access to a session.
pub struct WriteGuard<'a> {
    session: &'a Session,
    state: tokio::sync::MutexGuard<'a, WriterState>,
    token: CancellationToken,
    generation: u64,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut cur) = self.session.current.lock() {
            if cur.as_ref().is_some_and(|(g, _)| *g == self.generation) {
                *cur = None;
            }
        }
    }
}

/// Result of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub offset: u64,
    /// The request ended early (client gone, idle, or superseded); what arrived is kept.
    pub interrupted: bool,
}

/// Session metrics.
#[derive(Clone)]
pub struct SessionMetrics {
    pub open: IntGauge,
    pub events: IntCounterVec,
}

impl SessionMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        let open = IntGauge::new("sluice_sessions_open", "Resumable upload sessions on disk")?;
        let events = IntCounterVec::new(
            Opts::new(
                "sluice_sessions_total",
                "Resumable session events by protocol and event (created, completed, expired, terminated, conflict)",
            ),
            &["protocol", "event"],
        )?;
        r.register(Box::new(open.clone()))?;
        r.register(Box::new(events.clone()))?;
        for p in ["tus", "ietf", "chunked"] {
            for e in ["created", "completed", "expired", "terminated", "conflict"] {
                events.with_label_values(&[p, e]);
            }
        }
        Ok(Self { open, events })
    }
}

/// New session parameters.
pub struct NewSession {
    pub protocol: Protocol,
    pub target: Option<StoredPath>,
    pub length: Option<u64>,
    pub grant_size: Option<u64>,
    pub content_type: String,
    pub metadata: Option<String>,
    pub partial: bool,
    pub chunk_size: Option<u64>,
    pub uploader: Option<String>,
    /// The grant's expiry for the published file (JWT `expires`).
    pub file_expires: Option<u64>,
}

/// A digest one append must match, or the append is discarded (nothing of it is kept).
pub struct AppendCheck {
    pub digest: ChunkDigest,
    pub expected: Vec<u8>,
    pub kind: CheckKind,
}

/// Which protocol asked for the check: it decides the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// tus checksum extension (`Upload-Checksum`): 460.
    TusChecksum,
    /// RFC 9530 `Content-Digest` of the request: 400.
    ContentDigest,
}

/// All sessions.
pub struct SessionStore {
    dir: PathBuf,
    storage: FsStorage,
    durability: Durability,
    ttl: Duration,
    max: usize,
    live: Mutex<HashMap<String, Arc<Session>>>,
    /// Ids recently expired or terminated → 410 instead of 404 (bounded).
    tombstones: Mutex<HashMap<String, Instant>>,
    pub metrics: SessionMetrics,
    /// Expiry time comes from here (a manual clock in tests).
    clock: crate::clock::SharedClock,
    /// When published files expire.
    retention: crate::config::RetentionConfig,
    /// Published bytes are accounted here.
    space: Arc<crate::ops::space::Space>,
    /// Published files are recorded here (set by the state; off by default).
    pub audit: crate::admin::audit::Audit,
}

const TOMBSTONES_MAX: usize = 10_000;

impl SessionStore {
    /// Seconds since the epoch, from the store's clock.
    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }
}

/// 128 random bits, URL-safe (base64url, 22 characters).
fn new_id() -> Result<String, ApiError> {
    use base64::Engine as _;
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Whether `s` has the shape of a session id.
pub fn is_session_id(s: &str) -> bool {
    s.len() == 22
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn blocking_err(e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(e.to_string())
}

impl SessionStore {
    /// Open the store and reload every unfinished session (cutting data back to the recorded
    /// offset; removing orphans).
    pub fn open(
        storage: FsStorage,
        config: &crate::config::Config,
        registry: &Registry,
        clock: crate::clock::SharedClock,
        space: Arc<crate::ops::space::Space>,
    ) -> Result<Self, ApiError> {
        let durability = config.storage.durability;
        let (ttl, max) = (config.resumable.session_ttl, config.resumable.max_sessions);
        let retention = config.retention.clone();
        let dir = storage.staging_dir().join("sessions");
        fs::create_dir_all(&dir).map_err(|e| ApiError::Internal(format!("sessions dir: {e}")))?;
        if durability == Durability::Fsync {
            // The sessions directory's own name (state files are synced into it later).
            File::open(storage.staging_dir())
                .and_then(|d| d.sync_all())
                .map_err(|e| ApiError::Internal(format!("sessions dir: {e}")))?;
        }
        let store = Self {
            dir,
            storage,
            durability,
            ttl,
            max,
            live: Mutex::new(HashMap::new()),
            tombstones: Mutex::new(HashMap::new()),
            metrics: SessionMetrics::register(registry)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            clock,
            retention,
            space,
            audit: Default::default(),
        };
        store
            .reload()
            .map_err(|e| ApiError::Internal(format!("reloading sessions: {e}")))?;
        Ok(store)
    }

    fn json_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }

    fn reload(&self) -> io::Result<()> {
        let mut live = HashMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if name.ends_with(".json.tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if let Some(id) = name.strip_suffix(".json") {
                let meta: SessionMeta = match fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                {
                    Some(m) => m,
                    None => {
                        tracing::warn!(session = id, "unreadable session state; removing");
                        let _ = fs::remove_file(&path);
                        let _ = fs::remove_file(self.data_path(id));
                        continue;
                    }
                };
                let data = self.data_path(id);
                let mut meta = meta;
                if !meta.completed {
                    // A crash between publishing (the hard link) and recording completion
                    // leaves the staged name as a second link of the published file: finish.
                    use std::os::unix::fs::MetadataExt;
                    if fs::metadata(&data).map(|m| m.nlink() > 1).unwrap_or(false) && !meta.partial
                    {
                        let _ = fs::remove_file(&data);
                        meta.completed = true;
                        meta.offset = meta.length.unwrap_or(meta.offset);
                        self.persist(&meta)?;
                    }
                }
                if !meta.completed && meta.protocol != Protocol::Chunked {
                    // Bytes past the recorded offset were never acknowledged: drop them.
                    let data = self.data_path(id);
                    match OpenOptions::new().write(true).open(&data) {
                        Ok(f) => {
                            if f.metadata()?.len() < meta.offset {
                                tracing::warn!(
                                    session = id,
                                    "staged data shorter than recorded offset; removing"
                                );
                                let _ = fs::remove_file(&path);
                                let _ = fs::remove_file(&data);
                                continue;
                            }
                            f.set_len(meta.offset)?;
                        }
                        Err(_) => {
                            let _ = fs::remove_file(&path);
                            continue;
                        }
                    }
                }
                live.insert(
                    id.to_owned(),
                    Arc::new(Session::new(id.to_owned(), meta, None)),
                );
            }
        }
        // Data files without state are orphans of a crash during creation.
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".bin"))
            {
                if !live.contains_key(id) {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        self.metrics.open.set(live.len() as i64);
        if let Ok(mut l) = self.live.lock() {
            *l = live;
        }
        Ok(())
    }

    fn persist(&self, meta: &SessionMeta) -> io::Result<()> {
        let tmp = self.dir.join(format!("{}.json.tmp", meta.id));
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&json)?;
            if self.durability == Durability::Fsync {
                f.sync_all()?;
            }
        }
        fs::rename(&tmp, self.json_path(&meta.id))?;
        if self.durability == Durability::Fsync {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Unfinished sessions (finished ones only linger to answer HEAD; they hold no data).
    pub fn open_count(&self) -> usize {
        self.live
            .lock()
            .map(|l| l.values().filter(|s| !s.meta().completed).count())
            .unwrap_or(0)
    }

    /// Partial (concatenation) uploads open for `target`, finished or not.
    pub fn partials_for_target(&self, target: &str) -> usize {
        self.live
            .lock()
            .map(|l| {
                l.values()
                    .filter(|s| {
                        let m = s.meta();
                        m.partial && m.target.as_deref() == Some(target)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// The unfinished session already open for `target` by `protocol`, if any.
    pub fn open_for_target(&self, target: &str, protocol: Protocol) -> Option<Arc<Session>> {
        self.live.lock().ok().and_then(|l| {
            l.values()
                .find(|s| {
                    let m = s.meta();
                    !m.completed
                        && !m.partial
                        && m.protocol == protocol
                        && m.target.as_deref() == Some(target)
                })
                .cloned()
        })
    }

    /// Create a session (and its empty data file).
    pub async fn create(self: &Arc<Self>, n: NewSession) -> Result<Arc<Session>, ApiError> {
        if self.open_count() >= self.max {
            return Err(ApiError::TooManySessions);
        }
        if let Some(t) = &n.target {
            let (storage, t) = (self.storage.clone(), t.clone());
            tokio::task::spawn_blocking(move || storage.check_free(&t))
                .await
                .map_err(blocking_err)??;
        }
        let id = new_id()?;
        let now = self.now();
        let chunks = match (n.chunk_size, n.length) {
            (Some(c), Some(l)) if c > 0 => vec![false; usize::try_from(l.div_ceil(c)).unwrap_or(0)],
            _ => Vec::new(),
        };
        let meta = SessionMeta {
            id: id.clone(),
            protocol: n.protocol,
            target: n.target.map(|t| t.as_str().to_owned()),
            length: n.length,
            grant_size: n.grant_size,
            offset: 0,
            content_type: n.content_type,
            metadata: n.metadata,
            partial: n.partial,
            concat_parts: None,
            chunk_size: n.chunk_size,
            chunks,
            uploader: n.uploader,
            file_expires: n.file_expires,
            created_at: now,
            expires_at: now + self.ttl.as_secs(),
            completed: false,
            sha256: None,
        };
        let this = self.clone();
        let m2 = meta.clone();
        tokio::task::spawn_blocking(move || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(this.data_path(&m2.id))?;
            this.persist(&m2)
        })
        .await
        .map_err(blocking_err)?
        .map_err(|e| ApiError::from(crate::storage::StorageError::from(e)))?;
        let session = Arc::new(Session::new(id.clone(), meta, Some(Sha256::new())));
        if let Ok(mut l) = self.live.lock() {
            l.insert(id, session.clone());
            self.metrics.open.set(l.len() as i64);
        }
        self.metrics
            .events
            .with_label_values(&[n.protocol.label(), "created"])
            .inc();
        Ok(session)
    }

    /// Look a session of `protocol` up: a session is reachable only through the protocol
    /// that created it.
    pub async fn get_for(
        self: &Arc<Self>,
        id: &str,
        protocol: Protocol,
    ) -> Result<Arc<Session>, ApiError> {
        let s = self.get(id).await?;
        if s.meta().protocol != protocol {
            return Err(ApiError::SessionNotFound);
        }
        Ok(s)
    }

    /// Look a session up; expired ones are removed on the spot (410).
    pub async fn get(self: &Arc<Self>, id: &str) -> Result<Arc<Session>, ApiError> {
        if !is_session_id(id) {
            return Err(ApiError::SessionNotFound);
        }
        let found = self.live.lock().ok().and_then(|l| l.get(id).cloned());
        match found {
            Some(s) => {
                if s.meta().expires_at < self.now() {
                    self.remove(&s, "expired").await;
                    return Err(ApiError::SessionGone);
                }
                Ok(s)
            }
            None => {
                let gone = self
                    .tombstones
                    .lock()
                    .map(|t| t.contains_key(id))
                    .unwrap_or(false);
                Err(if gone {
                    ApiError::SessionGone
                } else {
                    ApiError::SessionNotFound
                })
            }
        }
    }

    /// Remove a session and its files (termination, expiry).
    pub async fn remove(self: &Arc<Self>, s: &Arc<Session>, event: &'static str) {
        s.preempt();
        let removed = self.live.lock().ok().and_then(|mut l| {
            let r = l.remove(&s.id);
            self.metrics.open.set(l.len() as i64);
            r
        });
        if removed.is_none() {
            return;
        }
        if let Ok(mut t) = self.tombstones.lock() {
            if t.len() >= TOMBSTONES_MAX {
                let cutoff = Instant::now() - self.ttl;
                t.retain(|_, at| *at > cutoff);
                if t.len() >= TOMBSTONES_MAX {
                    t.clear();
                }
            }
            t.insert(s.id.clone(), Instant::now());
        }
        let protocol = s.meta().protocol;
        self.metrics
            .events
            .with_label_values(&[protocol.label(), event])
            .inc();
        // Wait for a writer that is still finishing, then delete.
        let _w = s.writer.lock().await;
        let (json, data) = (self.json_path(&s.id), self.data_path(&s.id));
        let _ = tokio::task::spawn_blocking(move || {
            let _ = fs::remove_file(data);
            let _ = fs::remove_file(json);
        })
        .await;
    }

    /// Delete every expired session. Returns how many were removed.
    pub async fn sweep(self: &Arc<Self>) -> usize {
        let now = self.now();
        let expired: Vec<Arc<Session>> = self
            .live
            .lock()
            .map(|l| {
                l.values()
                    .filter(|s| s.meta().expires_at < now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for s in &expired {
            self.remove(s, "expired").await;
        }
        expired.len()
    }

    /// Become the one writer of `s`. With `take_over`, an in-flight writer is told to stop
    /// (it keeps what it received); otherwise this waits for it.
    pub async fn acquire<'a>(&self, s: &'a Session, take_over: bool) -> WriteGuard<'a> {
        let token = CancellationToken::new();
        if take_over {
            s.preempt();
        }
        let state = s.writer.lock().await;
        // Writes left running by a request that was dropped mid-append finish first.
        s.io.close();
        s.io.wait().await;
        s.io.reopen();
        let generation = s
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Ok(mut cur) = s.current.lock() {
            *cur = Some((generation, token.clone()));
        }
        WriteGuard {
            session: s,
            state,
            token,
            generation,
        }
    }

    /// Flush `file` (per durability), then persist `meta`: the recorded offset never claims
    /// bytes that are not stored.
    async fn record(
        self: &Arc<Self>,
        file: Option<File>,
        meta: SessionMeta,
    ) -> Result<(), ApiError> {
        let (this, durability) = (self.clone(), self.durability);
        tokio::task::spawn_blocking(move || {
            if let Some(f) = file {
                if durability == Durability::Fsync {
                    f.sync_data()?;
                }
            }
            this.persist(&meta)
        })
        .await
        .map_err(blocking_err)?
        .map_err(|e| ApiError::from(crate::storage::StorageError::from(e)))
    }

    fn data_file(&self, id: &str, offset: u64) -> io::Result<File> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.data_path(id))?;
        if f.metadata()?.len() != offset {
            f.set_len(offset)?;
        }
        io::Seek::seek(&mut f, io::SeekFrom::Start(offset))?;
        Ok(f)
    }

    /// Append `body` at the session's offset (contiguous protocols). `max` bounds this
    /// append; `checksum` discards the whole append on mismatch.
    #[allow(clippy::too_many_arguments)]
    pub async fn append<B>(
        self: &Arc<Self>,
        engine: &Engine,
        s: &Session,
        guard: &mut WriteGuard<'_>,
        body: B,
        exact: Option<u64>,
        max: u64,
        checksum: Option<AppendCheck>,
        client: &Client,
    ) -> Result<Appended, ApiError>
    where
        B: http_body::Body + Unpin,
        B::Error: std::fmt::Display,
    {
        let meta = s.meta();
        let start = meta.offset;
        let hasher = match guard.state.hasher.take() {
            Some(h) => h,
            None => engine
                .hash_file(self.data_path(&s.id), start)
                .await
                .map_err(|e| ApiError::Internal(format!("rebuilding hash: {e}")))?,
        };
        let this = self.clone();
        let id = s.id.clone();
        let file = tokio::task::spawn_blocking(move || this.data_file(&id, start))
            .await
            .map_err(blocking_err)?
            .map_err(|e| ApiError::from(crate::storage::StorageError::from(e)))?;
        let (digest, expected) = match checksum {
            Some(c) => (Some(c.digest), Some((c.expected, c.kind))),
            None => (None, None),
        };
        let mut sink = Sink::resume(file, hasher.clone());
        sink.chunk = digest;
        sink.tracker = Some(s.io.clone());
        let result = engine
            .receive_resumable(
                body,
                sink,
                Expect { exact, max },
                client,
                Some(guard.token.clone()),
            )
            .await;
        let (sink, interrupted, error) = match result {
            Ok(sink) => (Some(sink), false, None),
            Err(f) => {
                let keep = matches!(
                    f.error,
                    EngineError::Client(_) | EngineError::IdleTimeout | EngineError::Cancelled
                ) && expected.is_none();
                if keep {
                    (f.sink, true, None)
                } else {
                    (None, false, Some(f.error))
                }
            }
        };
        let Some(sink) = sink else {
            // Discard this append entirely: cut back, keep the old hash.
            guard.state.hasher = Some(hasher);
            let this = self.clone();
            let id = s.id.clone();
            let _ = tokio::task::spawn_blocking(move || this.data_file(&id, start)).await;
            return Err(match error {
                Some(EngineError::TooLarge) => ApiError::TooLarge { max },
                Some(e) => ApiError::from(e),
                None => ApiError::ClientGone,
            });
        };
        if let (Some((exp, kind)), Some(d)) = (&expected, sink.chunk.clone()) {
            if d.finish() != *exp {
                guard.state.hasher = Some(hasher);
                let this = self.clone();
                let id = s.id.clone();
                let _ = tokio::task::spawn_blocking(move || this.data_file(&id, start)).await;
                return Err(match kind {
                    CheckKind::TusChecksum => ApiError::ChecksumMismatch,
                    CheckKind::ContentDigest => ApiError::DigestMismatch,
                });
            }
        }
        let written = sink.written;
        let new_offset = start + written;
        let mut m = meta.clone();
        m.offset = new_offset;
        m.expires_at = self.now() + self.ttl.as_secs();
        let file = sink.file;
        // Data first, then the offset that claims it.
        self.record(Some(file), m.clone()).await?;
        guard.state.hasher = Some(sink.hasher);
        if let Ok(mut cur) = s.meta.lock() {
            *cur = m;
        }
        Ok(Appended {
            offset: new_offset,
            interrupted,
        })
    }

    /// Write one chunk at `index * chunk_size` (chunked protocol: any order).
    pub async fn write_chunk<B>(
        self: &Arc<Self>,
        engine: &Engine,
        s: &Session,
        guard: &mut WriteGuard<'_>,
        body: B,
        index: usize,
        client: &Client,
    ) -> Result<SessionMeta, ApiError>
    where
        B: http_body::Body + Unpin,
        B::Error: std::fmt::Display,
    {
        let meta = s.meta();
        let (Some(cs), Some(len)) = (meta.chunk_size, meta.length) else {
            return Err(ApiError::BadRequest("not a chunked session"));
        };
        if index >= meta.chunks.len() {
            return Err(ApiError::BadRequest("chunk number out of range"));
        }
        let off = index as u64 * cs;
        let want = cs.min(len - off);
        let this = self.clone();
        let id = s.id.clone();
        let file = tokio::task::spawn_blocking(move || {
            let mut f = OpenOptions::new().write(true).open(this.data_path(&id))?;
            io::Seek::seek(&mut f, io::SeekFrom::Start(off))?;
            Ok::<_, io::Error>(f)
        })
        .await
        .map_err(blocking_err)?
        .map_err(|e| ApiError::from(crate::storage::StorageError::from(e)))?;
        let sink = engine
            .receive(
                body,
                Sink::new(file),
                Expect {
                    exact: Some(want),
                    max: want,
                },
                client,
            )
            .await
            .map_err(|e| match e {
                EngineError::TooLarge => ApiError::TooLarge { max: want },
                other => ApiError::from(other),
            })?;
        let mut m = meta;
        m.chunks[index] = true;
        m.offset = m
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, got)| **got)
            .map(|(i, _)| cs.min(len - i as u64 * cs))
            .sum();
        m.expires_at = self.now() + self.ttl.as_secs();
        self.record(Some(sink.file), m.clone()).await?;
        // Out-of-order chunks: the whole-file hash is rebuilt at completion.
        guard.state.hasher = None;
        if let Ok(mut cur) = s.meta.lock() {
            *cur = m.clone();
        }
        Ok(m)
    }

    /// Fill a new session with the concatenation of other sessions' data (tus final upload),
    /// recording the parts' URLs (`part_urls`).
    #[allow(clippy::too_many_arguments)]
    pub async fn fill_from_parts(
        self: &Arc<Self>,
        engine: &Engine,
        s: &Session,
        guard: &mut WriteGuard<'_>,
        parts: Vec<PathBuf>,
        part_urls: String,
        total: u64,
    ) -> Result<(), ApiError> {
        let this = self.clone();
        let id = s.id.clone();
        let file = tokio::task::spawn_blocking(move || this.data_file(&id, 0))
            .await
            .map_err(blocking_err)?
            .map_err(|e| ApiError::from(crate::storage::StorageError::from(e)))?;
        let (file, hasher) = engine
            .concat(parts, file)
            .await
            .map_err(|e| ApiError::from(crate::storage::StorageError::from(e)))?;
        let mut m = s.meta();
        m.offset = total;
        m.concat_parts = Some(part_urls);
        self.record(Some(file), m.clone()).await?;
        guard.state.hasher = Some(hasher);
        if let Ok(mut cur) = s.meta.lock() {
            *cur = m;
        }
        Ok(())
    }

    /// Set a deferred length (tus `Upload-Length` on a later PATCH).
    pub async fn set_length(self: &Arc<Self>, s: &Session, length: u64) -> Result<(), ApiError> {
        let mut m = s.meta();
        m.length = Some(length);
        self.record(None, m.clone()).await?;
        if let Ok(mut cur) = s.meta.lock() {
            *cur = m;
        }
        Ok(())
    }

    /// Finish a fully received session: publish it at its target (atomic, never replacing;
    /// 409 if the name was taken meanwhile, and then the session is removed) or, for a partial
    /// upload, just mark it complete.
    pub async fn complete(
        self: &Arc<Self>,
        engine: &Engine,
        s: &Arc<Session>,
        guard: &mut WriteGuard<'_>,
    ) -> Result<SessionMeta, ApiError> {
        let mut m = s.meta();
        let len = m.length.unwrap_or(m.offset);
        let hasher = match guard.state.hasher.take() {
            Some(h) if m.protocol != Protocol::Chunked => h,
            _ => engine
                .hash_file(self.data_path(&s.id), len)
                .await
                .map_err(|e| ApiError::Internal(format!("hashing: {e}")))?,
        };
        let sha = hex::encode(hasher.finalize());
        m.completed = true;
        m.sha256 = Some(sha.clone());
        m.offset = len;
        if let Some(target) = m.target.clone().filter(|_| !m.partial) {
            let path = StoredPath::parse(&target, &crate::storage::PathRules::default())
                .map_err(ApiError::from)?;
            let now = self.now();
            let file_meta = FileMeta {
                size: len,
                sha256: sha,
                content_type: m.content_type.clone(),
                uploaded_at: now,
                uploader: m.uploader.clone(),
                expires_at: self.retention.expires_at(&target, now, m.file_expires),
            };
            let (storage, data) = (self.storage.clone(), self.data_path(&s.id));
            let res = tokio::task::spawn_blocking(move || {
                let staged = storage.adopt(&data)?;
                storage.commit(staged, &path, &file_meta)
            })
            .await
            .map_err(blocking_err)?;
            if let Err(e) = res {
                let e = ApiError::from(e);
                if matches!(e, ApiError::Exists | ApiError::PathConflict) {
                    self.metrics
                        .events
                        .with_label_values(&[m.protocol.label(), "conflict"])
                        .inc();
                    drop_guard_then_remove(self, s).await;
                }
                return Err(e);
            }
            self.space.added(len);
            self.audit.upload(crate::admin::audit::UploadEvent {
                path: &target,
                size: len,
                sha256: m.sha256.as_deref().unwrap_or(""),
                uploader: m.uploader.as_deref(),
                client: None,
                route: m.protocol.label(),
            });
        }
        self.record(None, m.clone()).await?;
        if let Ok(mut cur) = s.meta.lock() {
            *cur = m.clone();
        }
        self.metrics
            .events
            .with_label_values(&[m.protocol.label(), "completed"])
            .inc();
        Ok(m)
    }

    /// Staged data of a (complete, partial) session, for concatenation.
    pub fn data_of(&self, id: &str) -> PathBuf {
        self.data_path(id)
    }

    pub fn storage(&self) -> &FsStorage {
        &self.storage
    }
}

/// Removal waits for the writer lock; the caller still holds it, so remove from a task.
async fn drop_guard_then_remove(store: &Arc<SessionStore>, s: &Arc<Session>) {
    let (store, s) = (store.clone(), s.clone());
    tokio::spawn(async move { store.remove(&s, "terminated").await });
}

/// Used by the sweeper task.
pub async fn sweep_loop(store: Arc<SessionStore>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {
                let n = store.sweep().await;
                if n > 0 {
                    tracing::info!(expired = n, "swept expired upload sessions");
                }
            }
        }
    }
}
