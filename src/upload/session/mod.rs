//! The upload-session core shared by tus, the IETF draft and the chunked protocol.
//!
//! Owns: unguessable ids, persisted state (a state record and a named staged object per
//! session, both kept by the store), the durable offset (recorded only after the bytes are
//! flushed per the durability setting, and on restart the data is cut back to it), exactly one
//! writer per upload (a newer request can take over from an older one), expiry with a
//! sweeper, the open-session cap, and completion through the same atomic, no-overwrite commit
//! as PUT with the SHA-256 of the whole file (rebuilt from the staged bytes when the in-memory
//! state is gone).
//!
//! By job: this file is the model (sessions, their state, [`SessionError`]); `persist`
//! keeps state and data through the store and recovers them at start-up; `registry` finds,
//! creates, locks and removes sessions; `ops` appends, writes chunks and completes.
//! Must not: parse protocol headers (the adapters do), copy bytes itself (the engine does),
//! touch files (the store does) or answer HTTP (errors are [`SessionError`]s, turned into
//! `ApiError`s in one place).

mod ops;
mod persist;
mod registry;
mod shared;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::engine::{ChunkDigest, EngineError};
use crate::error::ApiError;
use crate::storage::{PathError, StorageError, Store, StoredPath};
pub use registry::sweep_loop;
pub use shared::Cluster;

/// What the session core can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("too many open upload sessions")]
    TooMany,
    #[error("unknown upload session")]
    NotFound,
    #[error("upload session has expired or was terminated")]
    Gone,
    #[error("append is larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("the client went away during the append")]
    ClientGone,
    #[error("checksum of the appended data does not match")]
    ChecksumMismatch,
    #[error("the append does not match its Content-Digest")]
    DigestMismatch,
    #[error("not a chunked session")]
    NotChunked,
    #[error("chunk number out of range")]
    ChunkOutOfRange,
    #[error("{0}")]
    Path(#[from] PathError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Internal(String),
}

/// The one place session errors become HTTP errors.
impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::TooMany => ApiError::TooManySessions,
            SessionError::NotFound => ApiError::SessionNotFound,
            SessionError::Gone => ApiError::SessionGone,
            SessionError::TooLarge { max } => ApiError::TooLarge { max },
            SessionError::ClientGone => ApiError::ClientGone,
            SessionError::ChecksumMismatch => ApiError::ChecksumMismatch,
            SessionError::DigestMismatch => ApiError::DigestMismatch,
            SessionError::NotChunked => ApiError::BadRequest("not a chunked session"),
            SessionError::ChunkOutOfRange => ApiError::BadRequest("chunk number out of range"),
            SessionError::Path(p) => ApiError::Path(p),
            SessionError::Storage(s) => ApiError::from(s),
            SessionError::Engine(e) => ApiError::from(e),
            SessionError::Internal(m) => ApiError::Internal(m),
        }
    }
}

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
    /// The running SHA-256 over bytes `[0, offset)` (contiguous protocols), serialized: any
    /// node (or this one after a restart) continues the hash without reading the bytes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_state: Option<String>,
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
    /// Version of the shared state record this node last read or wrote (shared catalog
    /// only): a write expects it, so a writer another node overtook cannot record.
    version: std::sync::atomic::AtomicU64,
}

impl Session {
    fn new(id: String, meta: SessionMeta, hasher: Option<Sha256>) -> Self {
        Self {
            id,
            version: std::sync::atomic::AtomicU64::new(0),
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
    /// The cluster-wide writer lease (shared catalog only), renewed while the guard lives.
    _lease: Option<shared::LeaseHold>,
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
    storage: Arc<dyn Store>,
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
    /// Set when several nodes share the catalog: session state lives there (versioned), and
    /// each upload has one writer across nodes (a lease).
    pub shared: Option<shared::Cluster>,
}

const TOMBSTONES_MAX: usize = 10_000;

impl SessionStore {
    /// Seconds since the epoch, from the store's clock.
    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    pub fn storage(&self) -> &Arc<dyn Store> {
        &self.storage
    }
}

/// 128 random bits, URL-safe (base64url, 22 characters).
fn new_id() -> Result<String, SessionError> {
    use base64::Engine as _;
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| SessionError::Internal(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Whether `s` has the shape of a session id.
pub fn is_session_id(s: &str) -> bool {
    s.len() == 22
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
