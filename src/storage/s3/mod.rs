//! The S3 backend: file bytes in an S3-compatible object store, every piece of state (file
//! rows, staged objects' parts, session records, publish leases) in the shared catalog, so any
//! node can serve any file and continue any resumable upload.
//!
//! Keys under `[storage.s3] prefix` (a `/` is added to a prefix that lacks one):
//! - `files/<path>`              published files (written create-only, never replaced)
//! - `staging/<id>/part-<n>`     full parts of a staged object (`part_size` bytes each)
//! - `staging/<id>/tail-<n>`     the bytes after the last full part of a named staged object,
//!   as of its last flush (a new key per flush: a superseded writer cannot clobber it)
//! - `probe/<random>`            the start-up check that the store honours `If-None-Match: *`
//!
//! Why parts are objects and not parts of a multipart upload: a multipart upload is bound to
//! its key when it is created, and a staged object learns its final name only at
//! [`Store::commit`](super::Store::commit). So the bytes are staged as plain objects; the
//! commit creates the multipart upload at `files/<path>`, copies the staged parts into it on
//! the server (`UploadPartCopy`, no bytes through this node), sends the tail as the last part
//! and completes it with `If-None-Match: *`. A side benefit: staged bytes can always be read
//! back (hash rebuilds, tus concatenation) from any node.
//!
//! A staged object's bytes not yet in a part live in a local spool file under the spool
//! directory (one per open handle), never in memory: memory per upload stays bounded by the
//! caller's buffers. A named staged object's state is the versioned catalog record
//! `staged:<id>` (see [`state`]); every write of it is a compare-and-swap, so a writer that
//! another request (on any node) took over gets [`StorageError::Superseded`].
//!
//! Crashes can leave staging objects and multipart uploads behind; [`S3Storage::sweep_orphans`]
//! removes them (or a bucket lifecycle rule does: expire `staging/` objects and abort
//! incomplete multipart uploads after a day).
//!
//! Must not: see HTTP types; log credentials; hold a whole part in memory.

mod client;
mod commit;
mod object;
mod ops;
mod reader;
mod state;
mod store;
mod sweep;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;
use tokio_util::task::TaskTracker;

use super::StorageError;
use crate::catalog::Catalog;
use crate::config::S3Config;
use client::build_client;
use ops::{file_body, len_i64, s3_err, status_of};

/// S3's smallest part (all but the last part of a multipart upload).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Spool files kept for reuse by a later reopen on this node (see [`Spare`]).
const SPARES_MAX: usize = 256;

/// The S3 store (cheap to clone).
#[derive(Clone)]
pub struct S3Storage {
    shared: Arc<Shared>,
}

/// What every handle of one store shares.
struct Shared {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Key prefix, empty or ending in `/`.
    prefix: String,
    part_size: u64,
    /// How long a publish lease lasts (a node that died holding one blocks the path this long).
    lease_ttl: Duration,
    catalog: Arc<dyn Catalog>,
    spool_dir: PathBuf,
    /// This node's name in leases.
    node: String,
    /// The state of named objects whose handles were dropped, so that the next reopen on this
    /// node sees what they wrote, flushed or not, and need not download the tail again (if
    /// nobody wrote the record since). Bounded.
    spares: Mutex<HashMap<String, Spare>>,
    /// This node's open handles of named objects (the latest per id).
    handles: Mutex<HashMap<String, std::sync::Weak<object::S3Object>>>,
    /// Clean-ups that outlive the call that started them (a dropped upload's parts).
    tasks: TaskTracker,
    /// `GetObject` requests of published files' readers (tests count them).
    #[cfg(test)]
    reader_gets: std::sync::atomic::AtomicUsize,
}

/// A released handle's state: its spool file and its view of the object (a superset of
/// record version `version`: writes not flushed yet, parts not recorded yet).
struct Spare {
    version: u64,
    rec: state::Record,
    spool_len: u64,
    dirty: bool,
    path: PathBuf,
}

impl S3Storage {
    /// Connect to the bucket of `cfg` (no request is made yet: see
    /// [`S3Storage::probe_create_only`]). Staged bytes are spooled under `spool_dir` (created;
    /// spool files left by an earlier process are removed: what they held is in S3 or was never
    /// acknowledged; so one store per spool directory). `node` names this node in leases.
    pub async fn open(
        cfg: &S3Config,
        catalog: Arc<dyn Catalog>,
        spool_dir: PathBuf,
        node: String,
    ) -> Result<S3Storage, StorageError> {
        if cfg.part_size.as_u64() < MIN_PART_SIZE {
            return Err(invalid(format!(
                "storage.s3.part_size must be at least 5 MiB (S3's smallest part), not {}",
                cfg.part_size
            )));
        }
        if cfg.endpoint.is_empty() || cfg.bucket.is_empty() {
            return Err(invalid(
                "storage.s3 needs an endpoint and a bucket".to_owned(),
            ));
        }
        let client = build_client(cfg)?;
        let dir = spool_dir.clone();
        blocking(move || clear_spool_dir(&dir)).await?;
        let mut prefix = cfg.prefix.clone();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Storage {
            shared: Arc::new(Shared {
                client,
                bucket: cfg.bucket.clone(),
                prefix,
                part_size: cfg.part_size.as_u64().max(1),
                lease_ttl: cfg.timeout.saturating_mul(2) + Duration::from_secs(10),
                catalog,
                spool_dir,
                node,
                spares: Mutex::default(),
                handles: Mutex::default(),
                tasks: TaskTracker::new(),
                #[cfg(test)]
                reader_gets: Default::default(),
            }),
        })
    }

    /// Check that the store refuses to overwrite an object written with `If-None-Match: *`
    /// (every create-only commit relies on it): put one probe object twice; the second put
    /// must fail with 412 Precondition Failed. The server must refuse to run on a store where
    /// it does not.
    pub async fn probe_create_only(&self) -> Result<(), StorageError> {
        let sh = &self.shared;
        let key = format!("{}probe/{}", sh.prefix, random_hex(16)?);
        let put = || {
            sh.client
                .put_object()
                .bucket(&sh.bucket)
                .key(&key)
                .if_none_match("*")
                .body(ByteStream::from_static(b"sluice create-only probe"))
                .send()
        };
        let unconfirmed = |e: io::Error| {
            StorageError::Io(io::Error::other(format!(
                "could not confirm that the S3 store honours create-only writes \
                 (If-None-Match: *): {e}"
            )))
        };
        put()
            .await
            .map_err(|e| unconfirmed(s3_err("PutObject (probe)", e)))?;
        let second = put().await;
        let _ = sh.delete_key(&key).await;
        match second {
            Err(e) if status_of(&e) == Some(412) => Ok(()),
            Err(e) => Err(unconfirmed(s3_err("PutObject (second probe)", e))),
            Ok(_) => Err(StorageError::Io(io::Error::other(format!(
                "the S3 store at bucket {} does not honour create-only writes \
                 (PutObject with If-None-Match: * replaced an existing object); \
                 Sluice cannot publish files safely on it",
                sh.bucket
            )))),
        }
    }

    /// Wait for the clean-ups still running (dropped uploads' parts).
    pub async fn close(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.tasks.reopen();
    }
}

fn clear_spool_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".spool") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn invalid(msg: String) -> StorageError {
    StorageError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

/// `Superseded` carried through an `io::Error` (the data operations' error type): find it
/// with [`superseded_in`].
fn superseded_io() -> io::Error {
    io::Error::other(StorageError::Superseded)
}

impl S3Storage {
    /// Whether a data operation's error (a [`StagedObject::flush`](super::StagedObject::flush)
    /// or write) says that another writer took the staged object over:
    /// [`StorageError::Superseded`] carried by the `io::Error`.
    pub fn is_superseded(e: &io::Error) -> bool {
        superseded_in(e)
    }
}

fn superseded_in(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<StorageError>())
        .is_some_and(|s| matches!(s, StorageError::Superseded))
}

/// The error a data operation returns as a lifecycle error (`Superseded` unwrapped).
fn lifecycle_err(e: io::Error) -> StorageError {
    if superseded_in(&e) {
        StorageError::Superseded
    } else {
        StorageError::from(e)
    }
}

fn random_hex(n: usize) -> io::Result<String> {
    let mut raw = vec![0u8; n];
    getrandom::fill(&mut raw).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hex::encode(raw))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Run blocking file work on the blocking pool.
async fn blocking<T>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T>
where
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}
