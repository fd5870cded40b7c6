//! The storage contract: one async trait ([`Store`]) that every backend implements (the
//! filesystem backend [`super::FsStorage`], the in-memory [`super::MemStorage`]) and one
//! contract suite that every backend passes (`storage::contract`).
//!
//! Objects move as buffers and ranges, never as files: an upload is a [`Staged`] object that
//! takes writes at offsets, is published by a create-only [`Store::commit`], and is read back
//! in ranges into the caller's buffers ([`IoBuf`], the engine's pool leases). Resumable
//! sessions keep named staged objects and small state records between requests.
//!
//! Data operations (reads and writes of bytes) fail with `io::Error` (the caller maps
//! `ENOSPC` and friends); lifecycle operations with [`StorageError`].

use std::any::Any;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::{FileMeta, StorageError, StoredPath};
use crate::catalog::{Catalog, DeleteReason, FileRow};

/// A lifecycle operation in flight.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StorageError>>;
/// A data operation in flight.
pub type IoFuture<'a, T> = BoxFuture<'a, io::Result<T>>;

/// State records by id; `None` for one that cannot be read.
pub type Records = Vec<(String, Option<Vec<u8>>)>;

/// A caller's buffer that a ranged read fills (the engine's pool leases implement it).
pub trait IoBuf: Send + 'static {
    fn capacity(&self) -> usize;
    /// Room for up to `n` bytes, from the start of the buffer.
    fn spare_mut(&mut self, n: usize) -> &mut [u8];
    /// How many bytes of the buffer are filled.
    fn set_len(&mut self, n: usize);
    /// The filled part.
    fn filled(&self) -> &[u8];
}

/// A boxed caller's buffer (handed to the store and back).
pub type Buf = Box<dyn IoBuf>;

/// The filled part of a [`Buf`] as `Bytes` without a copy: the buffer goes back to its owner
/// (the pool) when the last `Bytes` is dropped.
pub fn buf_bytes(buf: Buf) -> Bytes {
    struct Owner(Buf);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            self.0.filled()
        }
    }
    Bytes::from_owner(Owner(buf))
}

/// Reads ranges of one published file or staged object.
pub trait RangeRead: Send + Sync + 'static {
    /// Fill the first `len` bytes of `buf` (`len` ≤ its capacity) with the bytes at
    /// `offset`; fewer bytes there is an `UnexpectedEof` error.
    fn read_at(&self, offset: u64, len: usize, buf: Buf) -> IoFuture<'_, Buf>;
}

/// An object being uploaded: written at offsets, then published by [`Store::commit`].
pub trait StagedObject: RangeRead {
    /// Its id: named objects (resumable sessions) are reopened by it.
    fn id(&self) -> &str;
    /// Write `data` at `offset` (the object grows as needed).
    fn write_at(&self, offset: u64, data: Bytes) -> IoFuture<'_, ()>;
    /// Whether [`StagedObject::write_blocking`] works: the backend's writes block anyway (the
    /// filesystem), so a caller already on the blocking pool saves a hop per buffer.
    fn blocking_writes(&self) -> bool {
        false
    }
    /// [`StagedObject::write_at`] on the calling thread (the blocking pool, never an async
    /// worker), where [`StagedObject::blocking_writes`] says so.
    fn write_blocking(&self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Write what can be written at `offset` without waiting (on an async worker: only what
    /// the backend can take at once, e.g. into the page cache); returns how many bytes of
    /// `data` were written. The caller writes the rest the usual way.
    fn write_now(&self, _offset: u64, _data: &[u8]) -> usize {
        0
    }
    /// Cut (or zero-extend) the object to `len` bytes.
    fn set_len(&self, len: u64) -> IoFuture<'_, ()>;
    fn size(&self) -> IoFuture<'_, u64>;
    /// Make the bytes written so far durable, as the store's durability setting asks.
    fn flush(&self) -> IoFuture<'_, ()>;
    /// Forget the object now (best effort, quick): an upload dropped before its commit.
    fn discard(&self);
    /// For the backend that made it (its commit downcasts).
    fn as_any(&self) -> &dyn Any;
}

/// The handle to a staged object. Dropping a handle from [`Store::stage`] without a commit
/// discards the object, so a disconnect or error never leaves anything behind; a named object
/// ([`Store::stage_named`], [`Store::reopen`]) stays until it is committed or deleted.
pub struct Staged {
    obj: Arc<dyn StagedObject>,
    discard_on_drop: bool,
}

impl Staged {
    pub fn new(obj: Arc<dyn StagedObject>, discard_on_drop: bool) -> Self {
        Self {
            obj,
            discard_on_drop,
        }
    }

    /// The object (shared with writes in flight).
    pub fn object(&self) -> &Arc<dyn StagedObject> {
        &self.obj
    }

    /// A reader of the object's bytes.
    pub fn reader(&self) -> Arc<dyn RangeRead> {
        self.obj.clone()
    }

    /// The handle's object is done with (committed, or deleted by the commit that failed).
    pub fn disarm(&mut self) {
        self.discard_on_drop = false;
    }
}

impl std::ops::Deref for Staged {
    type Target = dyn StagedObject;
    fn deref(&self) -> &Self::Target {
        self.obj.as_ref()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.discard_on_drop {
            self.obj.discard();
        }
    }
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("id", &self.obj.id())
            .finish()
    }
}

/// Given a file's size, the buffer to read it whole into (`None`: stream it instead).
pub type SmallRead = Box<dyn FnOnce(u64) -> Option<Buf> + Send>;

/// A published file opened for reading.
pub struct Opened {
    pub meta: FileMeta,
    pub reader: Arc<dyn RangeRead>,
    /// The whole file, when the [`SmallRead`] gave a buffer and the read succeeded.
    pub whole: Option<Buf>,
}

/// A named staged object's state (resumable-session recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedStat {
    pub len: u64,
    /// Its bytes are also published under a final name: a commit whose caller did not
    /// learn of its success (a crash between the two).
    pub published: bool,
}

/// The storage contract (see the module docs).
pub trait Store: Send + Sync + 'static {
    /// The catalog of published files. Its methods block: call them on the blocking pool.
    fn catalog(&self) -> &dyn Catalog;

    /// Whether `p` can take a new upload: `Exists` if a file is there, `TakenDown` if the
    /// path was taken down.
    fn check_free<'a>(&'a self, p: &'a StoredPath) -> StoreFuture<'a, ()>;

    /// A new, empty staged object, discarded when its handle is dropped uncommitted.
    fn stage(&self) -> StoreFuture<'_, Staged>;

    /// [`Store::check_free`] for `p`, then [`Store::stage`]: what an upload does first, in one
    /// step where the backend can save a round trip.
    fn stage_for<'a>(&'a self, p: &'a StoredPath) -> StoreFuture<'a, Staged> {
        Box::pin(async move {
            self.check_free(p).await?;
            self.stage().await
        })
    }

    /// A new, empty staged object named `id` (create-only: `Exists` if taken) that stays
    /// until committed or deleted: a resumable session's data.
    fn stage_named<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Staged>;

    /// Reopen the named staged object `id`; with `len`, first cut (or zero-extend) it to
    /// `len` bytes. `NotFound` if it is gone.
    fn reopen<'a>(&'a self, id: &'a str, len: Option<u64>) -> StoreFuture<'a, Staged>;

    /// Publish `staged` at `p` atomically and create-only (`Exists` if the name is taken,
    /// `TakenDown`, `PathConflict`). `Ok` means the bytes, the name and the catalog row are
    /// committed (durable per the durability setting); the file is served only from then on.
    /// The staged object is gone afterwards, whatever the outcome: a failed commit leaves
    /// nothing behind.
    fn commit<'a>(
        &'a self,
        staged: Staged,
        p: &'a StoredPath,
        meta: &'a FileMeta,
    ) -> StoreFuture<'a, ()>;

    /// Open a published file with its catalog metadata (`NotFound`, `TakenDown`); in the
    /// same step, read it whole into the buffer `small` gives for its size, if any.
    fn open<'a>(&'a self, p: &'a StoredPath, small: Option<SmallRead>) -> StoreFuture<'a, Opened>;

    /// A published file's metadata (its size), or `NotFound` / `TakenDown`.
    fn stat<'a>(&'a self, p: &'a StoredPath) -> StoreFuture<'a, FileMeta>;

    /// Remove a published file: the row is marked deleted first (never served again), then
    /// the bytes go. Returns the removed row, `None` if there was no live file (a takedown
    /// still blocks the path).
    fn remove<'a>(
        &'a self,
        p: &'a StoredPath,
        reason: DeleteReason,
        at: u64,
    ) -> StoreFuture<'a, Option<FileRow>>;

    /// The state of the named staged object `id`.
    fn stat_staged<'a>(&'a self, id: &'a str) -> StoreFuture<'a, StagedStat>;

    /// Delete the named staged object `id` (gone already is fine).
    fn delete_staged<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;

    /// The ids of every named staged object.
    fn list_staged(&self) -> StoreFuture<'_, Vec<String>>;

    /// Replace the small state record `id` atomically (durable per the durability setting).
    fn put_record<'a>(&'a self, id: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()>;

    /// The state record `id` (`None`: there is none). Where several nodes share the store,
    /// this sees what any node wrote.
    fn get_record<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Every state record; `None` for one that cannot be read.
    fn list_records(&self) -> StoreFuture<'_, Records>;

    /// Delete the state record `id` (gone already is fine).
    fn delete_record<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;

    /// Whether staged objects take writes only in order (each write at the current end):
    /// object stores. Uploads whose pieces may arrive in any order need the filesystem.
    fn writes_in_order_only(&self) -> bool {
        false
    }

    /// Remove what crashed uploads left behind and nobody will claim, untouched for
    /// `older_than` (a store whose start-up reconciliation does this needs nothing here).
    /// Returns how many leftovers went.
    fn sweep_leftovers(&self, _older_than: std::time::Duration) -> StoreFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }
}

/// Whether `id` can name a staged object or record: the shape of a session id, nothing that
/// could reach outside the store's namespace.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
