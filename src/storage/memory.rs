//! The in-memory backend, for tests and benches: published files, staged objects and state
//! records in maps, with a given catalog (the SQLite one on a temporary file will do). It
//! keeps the filesystem backend's rules: create-only commits, nothing served before its row is
//! committed, a failed commit leaves nothing, staged objects dropped uncommitted disappear.

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use super::store::{valid_id, IoFuture, Records, StoreFuture};
use super::{
    Buf, FileMeta, Opened, RangeRead, SmallRead, Staged, StagedObject, StagedStat, StorageError,
    Store, StoredPath,
};
use crate::catalog::{Catalog, DeleteReason, FileRow};

#[derive(Default)]
struct Maps {
    files: HashMap<String, Bytes>,
    staged: HashMap<String, Arc<MemObject>>,
    records: HashMap<String, Vec<u8>>,
}

struct Inner {
    catalog: Arc<dyn Catalog>,
    maps: Mutex<Maps>,
}

/// The in-memory store (cheap to clone).
#[derive(Clone)]
pub struct MemStorage {
    inner: Arc<Inner>,
}

struct MemObject {
    id: String,
    /// Named (a resumable session's data), not a temporary upload.
    named: bool,
    data: Mutex<Vec<u8>>,
    store: Weak<Inner>,
}

struct MemReader(Bytes);

fn poisoned() -> io::Error {
    io::Error::other("memory store lock poisoned")
}

fn copy_range(src: &[u8], offset: u64, len: usize, mut buf: Buf) -> io::Result<Buf> {
    if len > buf.capacity() {
        return Err(io::Error::other("read longer than the buffer"));
    }
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = start.checked_add(len).filter(|e| *e <= src.len());
    let Some(end) = end else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "range past the end",
        ));
    };
    buf.spare_mut(len).copy_from_slice(&src[start..end]);
    buf.set_len(len);
    Ok(buf)
}

impl RangeRead for MemReader {
    fn read_at(&self, offset: u64, len: usize, buf: Buf) -> IoFuture<'_, Buf> {
        Box::pin(async move { copy_range(&self.0, offset, len, buf) })
    }
}

impl RangeRead for MemObject {
    fn read_at(&self, offset: u64, len: usize, buf: Buf) -> IoFuture<'_, Buf> {
        Box::pin(async move {
            let data = self.data.lock().map_err(|_| poisoned())?;
            copy_range(&data, offset, len, buf)
        })
    }
}

impl StagedObject for MemObject {
    fn id(&self) -> &str {
        &self.id
    }

    /// Takes the first half at once, so the suites exercise a write that the caller finishes
    /// the usual way.
    fn write_now(&self, offset: u64, data: &[u8]) -> usize {
        let half = data.len() / 2;
        let (Ok(mut d), Ok(start)) = (self.data.lock(), usize::try_from(offset)) else {
            return 0;
        };
        if d.len() < start + half {
            d.resize(start + half, 0);
        }
        d[start..start + half].copy_from_slice(&data[..half]);
        half
    }

    fn write_at(&self, offset: u64, data: Bytes) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let mut d = self.data.lock().map_err(|_| poisoned())?;
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let end = start + data.len();
            if d.len() < end {
                d.resize(end, 0);
            }
            d[start..end].copy_from_slice(&data);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let len = usize::try_from(len).map_err(io::Error::other)?;
            self.data.lock().map_err(|_| poisoned())?.resize(len, 0);
            Ok(())
        })
    }

    fn size(&self) -> IoFuture<'_, u64> {
        Box::pin(async move { Ok(self.data.lock().map_err(|_| poisoned())?.len() as u64) })
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn discard(&self) {
        if let Some(inner) = self.store.upgrade() {
            if let Ok(mut m) = inner.maps.lock() {
                m.staged.remove(&self.id);
            }
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn lock_err() -> StorageError {
    StorageError::Io(poisoned())
}

impl MemStorage {
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog,
                maps: Mutex::default(),
            }),
        }
    }

    fn maps(&self) -> Result<std::sync::MutexGuard<'_, Maps>, StorageError> {
        self.inner.maps.lock().map_err(|_| lock_err())
    }

    /// The staged object `id`, or `NotFound`.
    fn staged_object(&self, id: &str) -> Result<Arc<MemObject>, StorageError> {
        self.maps()?
            .staged
            .get(id)
            .cloned()
            .ok_or(StorageError::NotFound)
    }

    fn new_object(&self, id: String, named: bool) -> Result<Arc<MemObject>, StorageError> {
        let obj = Arc::new(MemObject {
            id: id.clone(),
            named,
            data: Mutex::default(),
            store: Arc::downgrade(&self.inner),
        });
        let mut m = self.maps()?;
        if m.staged.contains_key(&id) {
            return Err(StorageError::Exists);
        }
        m.staged.insert(id, obj.clone());
        Ok(obj)
    }

    /// The catalog's state of `p`: `Ok(Some(meta))` live, `Ok(None)` no live row.
    async fn live_row(&self, p: &StoredPath) -> Result<Option<FileMeta>, StorageError> {
        let (c, key) = (self.inner.catalog.clone(), p.as_str().to_owned());
        let entry = tokio::task::spawn_blocking(move || c.get(&key))
            .await
            .map_err(|e| StorageError::Io(io::Error::other(e)))??;
        match entry {
            None => Ok(None),
            Some(e) => match e.deleted {
                Some((r, _)) if r.is_takedown() => Err(StorageError::TakenDown),
                Some(_) => Ok(None),
                None => Ok(Some(e.row.meta)),
            },
        }
    }

    /// Whether a stored file sits where `p` needs a directory (`a` stored, `a/b` wanted).
    fn conflicts(files: &HashMap<String, Bytes>, p: &str) -> bool {
        p.match_indices('/')
            .any(|(i, _)| files.contains_key(&p[..i]))
    }
}

impl Store for MemStorage {
    fn catalog(&self) -> &dyn Catalog {
        self.inner.catalog.as_ref()
    }

    fn check_free<'a>(&'a self, p: &'a StoredPath) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if self.maps()?.files.contains_key(p.as_str()) {
                return Err(StorageError::Exists);
            }
            self.live_row(p).await.map(|_| ())
        })
    }

    fn stage(&self) -> StoreFuture<'_, Staged> {
        Box::pin(async move {
            let mut raw = [0u8; 16];
            getrandom::fill(&mut raw)
                .map_err(|e| StorageError::Io(io::Error::other(e.to_string())))?;
            let obj = self.new_object(format!("put-{}", hex::encode(raw)), false)?;
            Ok(Staged::new(obj, true))
        })
    }

    fn stage_named<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Staged> {
        Box::pin(async move {
            if !valid_id(id) {
                return Err(StorageError::Io(io::Error::other(
                    "invalid staged object id",
                )));
            }
            Ok(Staged::new(self.new_object(id.to_owned(), true)?, false))
        })
    }

    fn reopen<'a>(&'a self, id: &'a str, len: Option<u64>) -> StoreFuture<'a, Staged> {
        Box::pin(async move {
            let obj = self.staged_object(id)?;
            if let Some(len) = len {
                obj.set_len(len).await?;
            }
            Ok(Staged::new(obj, false))
        })
    }

    fn commit<'a>(
        &'a self,
        mut staged: Staged,
        p: &'a StoredPath,
        meta: &'a FileMeta,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            staged.disarm();
            let id = staged.id().to_owned();
            let r = async {
                let Some(obj) = staged.object().as_any().downcast_ref::<MemObject>() else {
                    return Err(StorageError::Io(io::Error::other(
                        "commit of an object staged by another store",
                    )));
                };
                let data = Bytes::from(obj.data.lock().map_err(|_| lock_err())?.clone());
                {
                    let mut m = self.maps()?;
                    if Self::conflicts(&m.files, p.as_str()) {
                        return Err(StorageError::PathConflict);
                    }
                    if m.files.contains_key(p.as_str()) {
                        return Err(StorageError::Exists);
                    }
                    // The name is ours; the row makes it served.
                    m.files.insert(p.as_str().to_owned(), data);
                }
                let (c, row) = (
                    self.inner.catalog.clone(),
                    FileRow {
                        path: p.as_str().to_owned(),
                        meta: meta.clone(),
                    },
                );
                let r = tokio::task::spawn_blocking(move || c.insert(row))
                    .await
                    .map_err(|e| StorageError::Io(io::Error::other(e)));
                if let Err(e) = r.and_then(|r| r.map_err(StorageError::from)) {
                    self.maps()?.files.remove(p.as_str());
                    return Err(e);
                }
                Ok(())
            }
            .await;
            // Published or not, the staged object goes.
            if let Ok(mut m) = self.maps() {
                m.staged.remove(&id);
            }
            r
        })
    }

    fn open<'a>(&'a self, p: &'a StoredPath, small: Option<SmallRead>) -> StoreFuture<'a, Opened> {
        Box::pin(async move {
            let meta = self.live_row(p).await?.ok_or(StorageError::NotFound)?;
            let data = self
                .maps()?
                .files
                .get(p.as_str())
                .cloned()
                .filter(|d| d.len() as u64 == meta.size)
                .ok_or(StorageError::NotFound)?;
            let whole = small.and_then(|f| f(meta.size)).and_then(|buf| {
                let n = usize::try_from(meta.size).ok()?;
                copy_range(&data, 0, n, buf).ok()
            });
            Ok(Opened {
                meta,
                reader: Arc::new(MemReader(data)),
                whole,
            })
        })
    }

    fn stat<'a>(&'a self, p: &'a StoredPath) -> StoreFuture<'a, FileMeta> {
        Box::pin(async move {
            let meta = self.live_row(p).await?.ok_or(StorageError::NotFound)?;
            if !self.maps()?.files.contains_key(p.as_str()) {
                return Err(StorageError::NotFound);
            }
            Ok(meta)
        })
    }

    fn remove<'a>(
        &'a self,
        p: &'a StoredPath,
        reason: DeleteReason,
        at: u64,
    ) -> StoreFuture<'a, Option<FileRow>> {
        Box::pin(async move {
            let (c, key) = (self.inner.catalog.clone(), p.as_str().to_owned());
            let row = tokio::task::spawn_blocking(move || c.delete(&key, reason, at))
                .await
                .map_err(|e| StorageError::Io(io::Error::other(e)))??;
            self.maps()?.files.remove(p.as_str());
            Ok(row)
        })
    }

    fn stat_staged<'a>(&'a self, id: &'a str) -> StoreFuture<'a, StagedStat> {
        Box::pin(async move {
            let obj = self.staged_object(id)?;
            let len = obj.size().await?;
            // A commit here removes the staged object in the same step.
            Ok(StagedStat {
                len,
                published: false,
            })
        })
    }

    fn delete_staged<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.maps()?.staged.remove(id);
            Ok(())
        })
    }

    fn list_staged(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            Ok(self
                .maps()?
                .staged
                .values()
                .filter(|o| o.named)
                .map(|o| o.id.clone())
                .collect())
        })
    }

    fn put_record<'a>(&'a self, id: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if !valid_id(id) {
                return Err(StorageError::Io(io::Error::other("invalid record id")));
            }
            self.maps()?.records.insert(id.to_owned(), bytes);
            Ok(())
        })
    }

    fn get_record<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { Ok(self.maps()?.records.get(id).cloned()) })
    }

    fn list_records(&self) -> StoreFuture<'_, Records> {
        Box::pin(async move {
            Ok(self
                .maps()?
                .records
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect())
        })
    }

    fn delete_record<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.maps()?.records.remove(id);
            Ok(())
        })
    }
}
