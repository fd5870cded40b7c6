//! The catalog: one row per stored file (path, size, SHA-256, the signed content type, the
//! uploader where the grant names one, created, expires, state), queryable by age, uploader
//! and path. It is the source of truth for what is published; the files tree holds the bytes.
//!
//! The contract ([`Catalog`]) is plain: rows in, rows out, no backend-specific behaviour; both
//! backends pass one contract suite (`catalog::contract`, in test builds). The embedded
//! backend is SQLite ([`sqlite::SqliteCatalog`]), its file under `storage.dir`, for one node;
//! several nodes share PostgreSQL ([`postgres::PgCatalog`]), which also feeds
//! [`Catalog::watch_removed`].
//!
//! Both backends keep the live totals (files and bytes, overall and per uploader) in rows of
//! their own, updated by triggers in the transaction of every write to the files table, so a
//! claim or `stats` reads a few rows whatever the number of files; the contract suite checks
//! them against a full scan.
//!
//! Every method blocks: callers run them on the blocking pool, never on the async threads.
//! Must not: see HTTP types, touch the files tree.

pub mod postgres;
pub mod sqlite;

#[cfg(test)]
pub mod contract;

use serde::Serialize;

use crate::storage::FileMeta;

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A live row exists for the path (a second publish of one name).
    #[error("a file is already catalogued at this path")]
    Exists,
    /// The path was taken down (admin or erasure) and cannot be used again.
    #[error("this path was taken down")]
    TakenDown,
    #[error("the catalog's disk is full")]
    NoSpace,
    /// A versioned record changed since it was read (another writer, or another node, got
    /// there first: the caller lost its turn), or a create-only record exists.
    #[error("the record changed under this writer")]
    Conflict,
    #[error("catalog: {0}")]
    Backend(String),
}

/// Why a file was removed. `Admin` and `Erasure` are takedowns: the path answers 410 and is
/// never reused; the others free the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteReason {
    Expired,
    Quota,
    Admin,
    Erasure,
    /// The file disappeared from the files tree (found at start-up).
    Missing,
    /// An operator removed it without taking the path down (freeing space).
    Removed,
}

impl DeleteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Expired => "expired",
            DeleteReason::Quota => "quota",
            DeleteReason::Admin => "admin",
            DeleteReason::Erasure => "erasure",
            DeleteReason::Missing => "missing",
            DeleteReason::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "expired" => DeleteReason::Expired,
            "quota" => DeleteReason::Quota,
            "admin" => DeleteReason::Admin,
            "erasure" => DeleteReason::Erasure,
            "missing" => DeleteReason::Missing,
            "removed" => DeleteReason::Removed,
            _ => return None,
        })
    }

    pub fn is_takedown(self) -> bool {
        matches!(self, DeleteReason::Admin | DeleteReason::Erasure)
    }

    pub const ALL: [DeleteReason; 6] = [
        DeleteReason::Expired,
        DeleteReason::Quota,
        DeleteReason::Admin,
        DeleteReason::Erasure,
        DeleteReason::Missing,
        DeleteReason::Removed,
    ];
}

/// One stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRow {
    pub path: String,
    #[serde(flatten)]
    pub meta: FileMeta,
}

/// A row with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub row: FileRow,
    /// `Some` once the file was removed: why and when.
    pub deleted: Option<(DeleteReason, u64)>,
}

/// A page of the listing, filtered. Ordered by path; `after` continues a previous page.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub prefix: Option<String>,
    pub uploader: Option<String>,
    /// Created at or after (seconds since the epoch).
    pub since: Option<u64>,
    /// Created before.
    pub until: Option<u64>,
    pub after: Option<String>,
    pub limit: usize,
}

/// Totals of live files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
    /// The uploaders storing the most bytes: (uploader, files, bytes).
    pub top_uploaders: Vec<UploaderStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploaderStats {
    pub uploader: String,
    pub files: u64,
    pub bytes: u64,
}

/// One uploader's usage: bytes stored now, and bytes uploaded since a time (deleted files
/// included: a daily quota counts what was sent, like Prosody's `daily_quota`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub stored_bytes: u64,
    pub uploaded_since: u64,
    /// When the oldest upload counted in `uploaded_since` was made.
    pub first_since: Option<u64>,
}

/// A small versioned record shared by every node (a resumable session's state, a staged
/// object's parts): `version` grows by one on every write, so a writer that read version `v`
/// can replace it only if nobody wrote since (a fencing check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub value: Vec<u8>,
    pub version: u64,
}

/// Bytes held for an upload in flight against the shared limits (see [`Catalog::claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Unique per upload (a session id, a random id).
    pub id: String,
    pub uploader: Option<String>,
    pub bytes: u64,
    /// The claim lapses at this time (seconds since the epoch): a node that died holding it
    /// does not hold the space forever.
    pub until: u64,
}

/// Limits a [`Claim`] is checked against: live files plus unexpired claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimLimits {
    /// Cap on all bytes (`None`: no cap).
    pub total: Option<u64>,
    /// Cap on one uploader's bytes (`None`: no cap; ignored for claims without an uploader).
    pub per_uploader: Option<u64>,
}

/// What [`Catalog::claim`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    Granted,
    /// Would cross `total`; `used` is what live files and claims hold now.
    OverTotal {
        used: u64,
    },
    /// Would cross `per_uploader`; `used` is what the uploader holds now.
    OverUploader {
        used: u64,
    },
}

/// The catalog contract (see the module docs).
pub trait Catalog: Send + Sync + 'static {
    /// Record newly published files. Concurrent callers may share one commit. Each path is
    /// create-only: `Exists` if a live row has it, `TakenDown` if it was taken down; a path
    /// freed by expiry, quota eviction or a missing file can be used again.
    fn insert(&self, row: FileRow) -> Result<(), CatalogError>;

    /// The row of `path`, live or deleted.
    fn get(&self, path: &str) -> Result<Option<Entry>, CatalogError>;

    /// Mark a live file deleted; returns its row (`None` if there was no live row). A
    /// takedown of a path that has no row still blocks the path.
    fn delete(
        &self,
        path: &str,
        reason: DeleteReason,
        at: u64,
    ) -> Result<Option<FileRow>, CatalogError>;

    /// Live files whose expiry is at or before `now`, oldest expiry first, at most `limit`.
    fn expired(&self, now: u64, limit: usize) -> Result<Vec<FileRow>, CatalogError>;

    /// Live files, filtered and paged.
    fn list(&self, q: &ListQuery) -> Result<Vec<FileRow>, CatalogError>;

    /// Live totals, with the `top` uploaders by bytes.
    fn stats(&self, top: usize) -> Result<Stats, CatalogError>;

    fn usage(&self, uploader: &str, since: u64) -> Result<Usage, CatalogError>;

    /// An uploader's live files, oldest first.
    fn oldest_of(&self, uploader: &str, limit: usize) -> Result<Vec<FileRow>, CatalogError>;

    /// A small key/value store for the catalog's own bookkeeping (e.g. "imported").
    fn get_flag(&self, key: &str) -> Result<Option<String>, CatalogError>;
    fn set_flag(&self, key: &str, value: &str) -> Result<(), CatalogError>;

    // --- Shared state for several nodes (single-node backends implement it too). ---

    /// The record `key`, if any.
    fn record_get(&self, key: &str) -> Result<Option<Record>, CatalogError>;

    /// Write the record `key`: `expect = None` creates it (`Conflict` if it exists),
    /// `Some(v)` replaces it only while its version is `v` (`Conflict` otherwise, also when it
    /// is gone). Returns the new version (1 for a new record, also one created again after a
    /// delete). Durable when it returns.
    fn record_put(&self, key: &str, value: &[u8], expect: Option<u64>)
        -> Result<u64, CatalogError>;

    /// Delete the record `key` (gone already is fine).
    fn record_delete(&self, key: &str) -> Result<(), CatalogError>;

    /// Every record whose key starts with `prefix`, ordered by key (bytes of its UTF-8).
    fn record_list(&self, prefix: &str) -> Result<Vec<(String, Record)>, CatalogError>;

    /// Acquire or renew the lease `name` for `holder` until `now_ms + ttl_ms` (milliseconds
    /// since the epoch). Returns the fencing token if `holder` holds the lease after the call:
    /// a lease that is free, expired (`until <= now_ms`), already `holder`'s, or taken with
    /// `steal`, is granted; one that another holder holds unexpired is not (`None`). A grant to
    /// a new holder (or a steal) gets a token greater than every token the name had before; a
    /// renewal by the same holder keeps its token, also after its lease lapsed if nobody took
    /// it in between. A steal always gets a new token, even by the current holder (it fences
    /// out an earlier task of the same holder). Tokens come from one counter for all names, so
    /// they also grow after a release.
    fn lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
        steal: bool,
    ) -> Result<Option<u64>, CatalogError>;

    /// Give the lease `name` up if `token` still holds it (a later holder's lease stays).
    fn lease_release(&self, name: &str, token: u64) -> Result<(), CatalogError>;

    /// The next number of the sequence `name`: 1, 2, 3, ..., never handed out twice while the
    /// sequence exists, across nodes and restarts (S3 multipart part numbers).
    fn next_seq(&self, name: &str) -> Result<u64, CatalogError>;

    /// Forget the sequence `name` (gone already is fine): the next `next_seq(name)` starts
    /// over at 1, so drop a sequence only when nothing uses its numbers any more.
    fn drop_seq(&self, name: &str) -> Result<(), CatalogError>;

    /// Hold `c.bytes` for an upload if live files plus unexpired claims (`until > now`) stay
    /// within `limits` with it (reaching a limit exactly is within it), atomically across
    /// nodes. A claim with an id that exists replaces it: the old claim's bytes do not count
    /// against its replacement, and a refused replacement leaves the old claim as it was.
    /// `total` is checked first (over both limits is `OverTotal`); the `used` of a refusal
    /// leaves out the claim being replaced. Lapsed claims may be pruned on the way.
    fn claim(&self, c: &Claim, limits: ClaimLimits, now: u64)
        -> Result<ClaimOutcome, CatalogError>;

    /// Drop the claim `id` (its upload was published or failed; gone already is fine).
    fn release_claim(&self, id: &str) -> Result<(), CatalogError>;

    /// Paths removed (deleted, expired, taken down) by any node from now on, as they happen:
    /// other nodes drop them from their caches. `None` where the catalog has one node only.
    /// Best effort: a path removed while the feed is reconnecting may be missed.
    fn watch_removed(&self) -> Option<std::sync::mpsc::Receiver<String>> {
        None
    }
}
