//! The catalog: one row per stored file (path, size, SHA-256, the signed content type, the
//! uploader where the grant names one, created, expires, state), queryable by age, uploader
//! and path. It is the source of truth for what is published; the files tree holds the bytes.
//!
//! The contract ([`Catalog`]) is plain: rows in, rows out, no backend-specific behaviour, so a
//! PostgreSQL backend can pass the same contract suite (`catalog::contract`, in test builds).
//! The embedded backend is SQLite ([`sqlite::SqliteCatalog`]), its file under `storage.dir`.
//!
//! Every method blocks: callers run them on the blocking pool, never on the async threads.
//! Must not: see HTTP types, touch the files tree.

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
}
