//! Storage: where published files and their metadata live, behind one async contract
//! ([`Store`], see [`store`]) with a filesystem backend ([`FsStorage`]) and an in-memory one
//! ([`MemStorage`], for tests and benches), both passing one contract suite.
//!
//! Layout of the filesystem backend under the configured directory:
//! - `files/<path>`      published files (the only tree ever served)
//! - `catalog.sqlite3`   the catalog: one row per stored file (see [`crate::catalog`]), the source
//!   of truth for what is published and with which metadata
//! - `staging/`          uploads in progress (same filesystem, so publishing is a link)
//! - `staging/sessions/` resumable sessions: `<id>.bin` data, `<id>.json` state records
//! - `meta/<path>`       JSON metadata written by versions before the catalog; imported once
//!
//! A file is published in this order: bytes durable, linked under the final name, the name
//! durable, the row committed; only then does an upload answer 201. A file is removed in the
//! reverse order (row marked deleted, then the bytes). Start-up reconciles both ways.
//!
//! `std::fs` is used here and nowhere else in the crate (clippy's `disallowed-methods` keeps it
//! so). Must not: see HTTP types; run blocking file I/O on the async workers (the backends
//! move it to `spawn_blocking`).

// The one module allowed to touch the filesystem directly.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[cfg(test)]
pub mod contract;
mod fs;
mod memory;
pub mod path;
mod s3;
pub mod store;

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::catalog::CatalogError;
pub use fs::{FsStorage, StagedFile};
pub use memory::MemStorage;
pub use path::{PathError, PathRules, StoredPath};
pub use s3::S3Storage;
pub use store::{
    buf_bytes, Buf, IoBuf, Opened, RangeRead, SmallRead, Staged, StagedObject, StagedStat, Store,
};

/// Storage failures. `NoSpace` is separated so callers can answer 507.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("a file already exists at this path")]
    Exists,
    #[error("no such file")]
    NotFound,
    /// The path was taken down: it answers 410 and cannot be uploaded again.
    #[error("this file was taken down")]
    TakenDown,
    #[error("path conflicts with an existing file or directory")]
    PathConflict,
    #[error("storage is full")]
    NoSpace,
    /// The filesystem refused a name as too long (ENAMETOOLONG): the client's path.
    #[error("a name in the path is too long for the filesystem")]
    NameTooLong,
    /// Another writer (on this node or another) took the object over: this one lost its turn.
    #[error("another request took this upload over")]
    Superseded,
    #[error("storage I/O error: {0}")]
    Io(#[source] io::Error),
}

impl From<CatalogError> for StorageError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Exists => StorageError::Exists,
            CatalogError::TakenDown => StorageError::TakenDown,
            CatalogError::NoSpace => StorageError::NoSpace,
            CatalogError::Conflict => StorageError::Superseded,
            CatalogError::Backend(m) => StorageError::Io(io::Error::other(m)),
        }
    }
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        // A data operation that found its object taken over carries the lifecycle error.
        if e.get_ref()
            .and_then(|inner| inner.downcast_ref::<StorageError>())
            .is_some_and(|s| matches!(s, StorageError::Superseded))
        {
            return StorageError::Superseded;
        }
        // ENOSPC = 28, EDQUOT = 122, ENOTDIR = 20 (a segment of the path is a file: there
        // is nothing under it), ENAMETOOLONG = 36 on Linux.
        match e.raw_os_error() {
            Some(28) | Some(122) => StorageError::NoSpace,
            Some(20) => StorageError::NotFound,
            Some(36) => StorageError::NameTooLong,
            _ => match e.kind() {
                io::ErrorKind::NotFound => StorageError::NotFound,
                io::ErrorKind::AlreadyExists => StorageError::Exists,
                _ => StorageError::Io(e),
            },
        }
    }
}

/// Run `f` on the catalog of `storage`, on the blocking pool (catalog calls block).
pub async fn on_catalog<T, F>(storage: &std::sync::Arc<dyn Store>, f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce(&dyn crate::catalog::Catalog) -> Result<T, CatalogError> + Send + 'static,
{
    let st = storage.clone();
    tokio::task::spawn_blocking(move || f(st.catalog()))
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
        .map_err(StorageError::from)
}

/// The embedded catalog (`catalog.sqlite3` under `dir`, which is created), for a store that
/// keeps no catalog of its own on the filesystem (S3 on one node).
pub fn open_sqlite_catalog(
    dir: &std::path::Path,
    durable: bool,
) -> Result<crate::catalog::sqlite::SqliteCatalog, StorageError> {
    std::fs::create_dir_all(dir)?;
    Ok(crate::catalog::sqlite::SqliteCatalog::open(
        &dir.join("catalog.sqlite3"),
        durable,
    )?)
}

/// Metadata kept beside each published file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub content_type: String,
    /// Seconds since the epoch.
    pub uploaded_at: u64,
    /// Who uploaded it, where the grant says (JWT `sub`; the first path segment of an
    /// ejabberd slot when configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader: Option<String>,
    /// When it expires (seconds since the epoch); `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl FileMeta {
    pub fn uploaded_time(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.uploaded_at)
    }
}

/// Content type from the file extension (`application/octet-stream` when unknown).
pub fn guess_type(name: &str) -> String {
    mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_owned()
}
