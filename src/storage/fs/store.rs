//! The async [`Store`] contract over [`FsStorage`]: every blocking step runs on the blocking
//! pool, one hop per operation. Staged objects are files in `staging/` written with positioned
//! writes; published files are read with positioned reads into the caller's buffers.

use std::any::Any;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{sync_dir, FsStorage};
use crate::catalog::{Catalog, DeleteReason, FileRow};
use crate::config::Durability;
use crate::storage::store::{valid_id, IoFuture, Records, StoreFuture};
use crate::storage::{
    Buf, FileMeta, Opened, RangeRead, SmallRead, Staged, StagedObject, StagedStat, StorageError,
    Store, StoredPath,
};

/// Run `f` on the blocking pool.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<io::Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(io::Error::other(e)))?
}

/// A staged file.
struct FsObject {
    id: String,
    path: PathBuf,
    file: Arc<File>,
    durability: Durability,
}

/// A published file open for reading.
struct FsReader(Arc<File>);

fn read_into(file: &File, offset: u64, len: usize, mut buf: Buf) -> io::Result<Buf> {
    if len > buf.capacity() {
        return Err(io::Error::other("read longer than the buffer"));
    }
    file.read_exact_at(buf.spare_mut(len), offset)?;
    buf.set_len(len);
    Ok(buf)
}

/// Read what the page cache already holds of `[offset, offset + len)` into `buf`, on the
/// calling thread, without waiting for the disk (`preadv2` with `RWF_NOWAIT`). Returns how many
/// bytes were read (fewer than `len`: the rest is not cached, or the file is shorter).
fn read_cached(file: &File, offset: u64, len: usize, buf: &mut Buf) -> usize {
    use std::io::IoSliceMut;
    if len > buf.capacity() {
        return 0;
    }
    let mut done = 0;
    while done < len {
        let dst = &mut buf.spare_mut(len)[done..];
        match rustix::io::preadv2(
            file,
            &mut [IoSliceMut::new(dst)],
            offset + done as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    done
}

/// [`read_into`], from the page cache on the calling thread when it holds the range, else on
/// the blocking pool for what it does not.
fn read_range(file: Arc<File>, offset: u64, len: usize, mut buf: Buf) -> IoFuture<'static, Buf> {
    let done = read_cached(&file, offset, len, &mut buf);
    if done == len {
        buf.set_len(len);
        return Box::pin(std::future::ready(Ok(buf)));
    }
    Box::pin(blocking(move || {
        if len > buf.capacity() {
            return Err(io::Error::other("read longer than the buffer"));
        }
        file.read_exact_at(&mut buf.spare_mut(len)[done..], offset + done as u64)?;
        buf.set_len(len);
        Ok(buf)
    }))
}

impl RangeRead for FsReader {
    fn read_at(&self, offset: u64, len: usize, buf: Buf) -> IoFuture<'_, Buf> {
        read_range(self.0.clone(), offset, len, buf)
    }
}

impl RangeRead for FsObject {
    fn read_at(&self, offset: u64, len: usize, buf: Buf) -> IoFuture<'_, Buf> {
        let file = self.file.clone();
        Box::pin(blocking(move || read_into(&file, offset, len, buf)))
    }
}

impl StagedObject for FsObject {
    fn id(&self) -> &str {
        &self.id
    }

    fn write_at(&self, offset: u64, data: Bytes) -> IoFuture<'_, ()> {
        let file = self.file.clone();
        Box::pin(blocking(move || file.write_all_at(&data, offset)))
    }

    fn blocking_writes(&self) -> bool {
        true
    }

    fn write_blocking(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn write_now(&self, offset: u64, data: &[u8]) -> usize {
        // `pwritev2` with `RWF_NOWAIT`: into the page cache when that needs no wait (no block
        // allocation I/O, no writeback throttling), else nothing (EAGAIN, or a filesystem
        // without non-blocking buffered writes).
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwritev2(
                &*self.file,
                &[std::io::IoSlice::new(&data[done..])],
                offset + done as u64,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
        done
    }

    fn set_len(&self, len: u64) -> IoFuture<'_, ()> {
        let file = self.file.clone();
        Box::pin(blocking(move || file.set_len(len)))
    }

    fn size(&self) -> IoFuture<'_, u64> {
        let file = self.file.clone();
        Box::pin(blocking(move || Ok(file.metadata()?.len())))
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        let file = self.file.clone();
        let fsync = self.durability == Durability::Fsync;
        Box::pin(async move {
            if !fsync {
                return Ok(());
            }
            blocking(move || file.sync_data()).await
        })
    }

    fn discard(&self) {
        let _ = fs::remove_file(&self.path);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn bad_id() -> StorageError {
    StorageError::Io(io::Error::other("invalid staged object id"))
}

impl FsStorage {
    fn object(&self, id: String, path: PathBuf, file: File) -> Arc<dyn StagedObject> {
        Arc::new(FsObject {
            id,
            path,
            file: Arc::new(file),
            durability: self.durability,
        })
    }

    /// Make `staging/sessions` (and, with `durability = "fsync"`, its name durable) once.
    fn sessions_dir(&self) -> Result<&Path, StorageError> {
        use std::sync::atomic::Ordering;
        if !self.sessions_ready.load(Ordering::Acquire) {
            fs::create_dir_all(&self.sessions)?;
            if self.durability == Durability::Fsync {
                sync_dir(&self.staging)?;
            }
            self.sessions_ready.store(true, Ordering::Release);
        }
        Ok(&self.sessions)
    }

    fn data_path(&self, id: &str) -> PathBuf {
        self.sessions.join(format!("{id}.bin"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.sessions.join(format!("{id}.json"))
    }

    /// Write a state record: a temporary file, made durable, renamed over the old one, the
    /// directory made durable (with `durability = "fsync"`).
    fn write_record(&self, id: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let fsync = self.durability == Durability::Fsync;
        let tmp = self.sessions_dir()?.join(format!("{id}.json.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            if fsync {
                f.sync_all()?;
            }
        }
        fs::rename(&tmp, self.record_path(id))?;
        if fsync {
            sync_dir(&self.sessions)?;
        }
        Ok(())
    }

    fn records(&self) -> Result<Records, StorageError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.sessions_dir()?)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".json.tmp") {
                // A record replaced when the process stopped: the old one stands.
                let _ = fs::remove_file(&path);
            } else if let Some(id) = name.strip_suffix(".json") {
                out.push((id.to_owned(), fs::read(&path).ok()));
            }
        }
        Ok(out)
    }

    fn staged_ids(&self) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.sessions_dir()?)? {
            let path = entry?.path();
            if let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".bin"))
            {
                out.push(id.to_owned());
            }
        }
        Ok(out)
    }

    /// Open a published file, reading it whole into `small`'s buffer when it gives one.
    fn open_blocking(
        &self,
        p: &StoredPath,
        small: Option<SmallRead>,
    ) -> Result<Opened, StorageError> {
        let (file, meta) = self.open_file(p)?;
        let whole = small
            .and_then(|f| f(meta.size))
            .and_then(|buf| read_into(&file, 0, usize::try_from(meta.size).ok()?, buf).ok());
        Ok(Opened {
            meta,
            reader: Arc::new(FsReader(file)),
            whole,
        })
    }
}

impl FsStorage {
    /// A new staged file, after checking that `p` (if given) can take an upload: one hop to
    /// the blocking pool for both.
    async fn stage_checked(&self, p: Option<StoredPath>) -> Result<Staged, StorageError> {
        let s = self.clone();
        let obj = blocking(move || {
            if let Some(p) = &p {
                s.check_free(p)?;
            }
            let mut staged = s.stage()?;
            let file = staged
                .take_file()
                .ok_or_else(|| StorageError::Io(io::Error::other("staged file missing")))?;
            let path = staged.staged_path().to_owned();
            // The object owns the name from here on.
            staged.committed = true;
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            Ok::<_, StorageError>(s.object(id, path, file))
        })
        .await?;
        Ok(Staged::new(obj, true))
    }
}

fn remove_if_there(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Store for FsStorage {
    fn catalog(&self) -> &dyn Catalog {
        FsStorage::catalog(self)
    }

    fn check_free<'a>(&'a self, p: &'a StoredPath) -> StoreFuture<'a, ()> {
        let (s, p) = (self.clone(), p.clone());
        Box::pin(blocking(move || s.check_free(&p)))
    }

    fn stage(&self) -> StoreFuture<'_, Staged> {
        Box::pin(self.stage_checked(None))
    }

    fn stage_for<'a>(&'a self, p: &'a StoredPath) -> StoreFuture<'a, Staged> {
        Box::pin(self.stage_checked(Some(p.clone())))
    }

    fn stage_named<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Staged> {
        let (s, id) = (self.clone(), id.to_owned());
        Box::pin(async move {
            if !valid_id(&id) {
                return Err(bad_id());
            }
            let obj = blocking(move || {
                s.sessions_dir()?;
                let path = s.data_path(&id);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                Ok::<_, StorageError>(s.object(id, path, file))
            })
            .await?;
            Ok(Staged::new(obj, false))
        })
    }

    fn reopen<'a>(&'a self, id: &'a str, len: Option<u64>) -> StoreFuture<'a, Staged> {
        let (s, id) = (self.clone(), id.to_owned());
        Box::pin(async move {
            if !valid_id(&id) {
                return Err(StorageError::NotFound);
            }
            let obj = blocking(move || {
                let path = s.data_path(&id);
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                if let Some(len) = len {
                    if file.metadata()?.len() != len {
                        file.set_len(len)?;
                    }
                }
                Ok::<_, StorageError>(s.object(id, path, file))
            })
            .await?;
            Ok(Staged::new(obj, false))
        })
    }

    fn commit<'a>(
        &'a self,
        mut staged: Staged,
        p: &'a StoredPath,
        meta: &'a FileMeta,
    ) -> StoreFuture<'a, ()> {
        let (s, p, meta) = (self.clone(), p.clone(), meta.clone());
        Box::pin(async move {
            let Some(obj) = staged.object().as_any().downcast_ref::<FsObject>() else {
                return Err(StorageError::Io(io::Error::other(
                    "commit of an object staged by another store",
                )));
            };
            let (path, file) = (obj.path.clone(), obj.file.clone());
            let r = blocking(move || {
                let r = s.publish(&path, Some(&file), &p, &meta);
                // Published or not, the staged name goes: a failed commit leaves nothing.
                let _ = fs::remove_file(&path);
                r
            })
            .await;
            staged.disarm();
            r
        })
    }

    fn open<'a>(&'a self, p: &'a StoredPath, small: Option<SmallRead>) -> StoreFuture<'a, Opened> {
        // A file read recently is still open: answer on this thread, reading a small file
        // whole from the page cache if it is there.
        if let Some((file, meta)) = self.open_cached(p) {
            let mut whole = None;
            let mut small = small;
            if let Some(f) = small.take() {
                if let (Some(mut buf), Ok(len)) = (f(meta.size), usize::try_from(meta.size)) {
                    if read_cached(&file, 0, len, &mut buf) == len {
                        buf.set_len(len);
                        whole = Some(buf);
                    } else {
                        return Box::pin(async move {
                            let f = file.clone();
                            let whole = blocking(move || read_into(&f, 0, len, buf)).await.ok();
                            Ok(Opened {
                                reader: Arc::new(FsReader(file)),
                                meta,
                                whole,
                            })
                        });
                    }
                }
            }
            return Box::pin(std::future::ready(Ok(Opened {
                meta,
                reader: Arc::new(FsReader(file)),
                whole,
            })));
        }
        let (s, p) = (self.clone(), p.clone());
        Box::pin(blocking(move || s.open_blocking(&p, small)))
    }

    fn stat<'a>(&'a self, p: &'a StoredPath) -> StoreFuture<'a, FileMeta> {
        let (s, p) = (self.clone(), p.clone());
        Box::pin(blocking(move || s.open_file(&p).map(|(_, m)| m)))
    }

    fn remove<'a>(
        &'a self,
        p: &'a StoredPath,
        reason: DeleteReason,
        at: u64,
    ) -> StoreFuture<'a, Option<FileRow>> {
        let (s, p) = (self.clone(), p.clone());
        Box::pin(blocking(move || s.remove(&p, reason, at)))
    }

    fn stat_staged<'a>(&'a self, id: &'a str) -> StoreFuture<'a, StagedStat> {
        let (s, id) = (self.clone(), id.to_owned());
        Box::pin(async move {
            if !valid_id(&id) {
                return Err(StorageError::NotFound);
            }
            blocking(move || {
                use std::os::unix::fs::MetadataExt;
                let md = fs::metadata(s.data_path(&id))?;
                Ok(StagedStat {
                    len: md.len(),
                    // A second link: the commit linked it under its final name.
                    published: md.nlink() > 1,
                })
            })
            .await
        })
    }

    fn delete_staged<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        let (s, id) = (self.clone(), id.to_owned());
        Box::pin(async move {
            if !valid_id(&id) {
                return Ok(());
            }
            blocking(move || remove_if_there(&s.data_path(&id))).await
        })
    }

    fn list_staged(&self) -> StoreFuture<'_, Vec<String>> {
        let s = self.clone();
        Box::pin(blocking(move || s.staged_ids()))
    }

    fn put_record<'a>(&'a self, id: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        let (s, id) = (self.clone(), id.to_owned());
        Box::pin(async move {
            if !valid_id(&id) {
                return Err(bad_id());
            }
            blocking(move || s.write_record(&id, &bytes)).await
        })
    }

    fn get_record<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        let (s, id) = (self.clone(), id.to_owned());
        Box::pin(async move {
            if !valid_id(&id) {
                return Ok(None);
            }
            blocking(move || match fs::read(s.record_path(&id)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            })
            .await
        })
    }

    fn list_records(&self) -> StoreFuture<'_, Records> {
        let s = self.clone();
        Box::pin(blocking(move || s.records()))
    }

    fn delete_record<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        let (s, id) = (self.clone(), id.to_owned());
        Box::pin(async move {
            if !valid_id(&id) {
                return Ok(());
            }
            blocking(move || remove_if_there(&s.record_path(&id))).await
        })
    }
}
