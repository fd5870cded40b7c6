//! A staged object on S3: full parts as objects `staging/<id>/part-<n>`, the bytes after
//! them in a local spool file, and, for a named object, its state in the catalog record
//! `staged:<id>` (a [`Record`]).
//!
//! Writes come in order (`write_at` at the current length; a cut with `set_len` moves the
//! length back). When the spool holds `part_size` bytes it is sent as the next part, streamed
//! from the file, inline (the engine already overlaps it with receiving the next buffer) and
//! the spool starts over. `flush` sends the spool as a new tail object and replaces the record
//! by compare-and-swap with the version this writer holds: a writer that another one took over
//! (a later reopen, on any node, writes the record too) gets `Superseded`.
//!
//! Part numbers of named objects come from the catalog sequence `part:<id>`, so two nodes
//! never write the same part key; an anonymous object (one request, one node, a random id)
//! numbers its parts itself.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{blocking, lifecycle_err, random_hex, s3_err, superseded_io, Shared, Spare};
use crate::storage::store::{IoFuture, RangeRead, StagedObject};
use crate::storage::{Buf, StorageError};

/// A named staged object's shared state (JSON in the catalog record `staged:<id>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// Full parts in order: each names the object `part-<n>` and holds `size` bytes.
    pub parts: Vec<PartRef>,
    /// The object `tail-<n>` whose first `tail` bytes follow the parts (none when empty).
    pub tail_n: Option<u64>,
    pub tail: u64,
    /// Parts plus tail.
    pub len: u64,
    /// Also published under a final name (a commit whose cleanup did not finish).
    #[serde(default)]
    pub published: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PartRef {
    pub n: u64,
    pub size: u64,
}

pub(super) fn record_key(id: &str) -> String {
    format!("staged:{id}")
}

pub(super) fn seq_name(id: &str) -> String {
    format!("part:{id}")
}

/// A staged object's handle.
pub(super) struct S3Object {
    pub id: String,
    pub named: bool,
    pub shared: Arc<Shared>,
    pub spool_path: PathBuf,
    /// Committed, deleted, discarded or superseded: no more writes.
    pub gone: AtomicBool,
    /// Gone because another writer took the object over.
    pub superseded: AtomicBool,
    pub st: tokio::sync::Mutex<ObjState>,
}

pub(super) struct ObjState {
    pub spool: Arc<File>,
    /// Bytes in the spool (after the parts).
    pub spool_len: u64,
    /// Parts are current; `tail_n`, `tail` and `len` are as of the last flush.
    pub rec: Record,
    /// Named: the record version this writer holds.
    pub version: u64,
    /// Changed since the record was last written.
    pub dirty: bool,
    /// Anonymous objects' part numbers.
    next_local: u64,
}

impl ObjState {
    pub fn parts_len(&self) -> u64 {
        self.rec.parts.iter().map(|p| p.size).sum()
    }

    pub fn len(&self) -> u64 {
        self.parts_len() + self.spool_len
    }
}

impl Shared {
    pub(super) fn part_key(&self, id: &str, n: u64) -> String {
        format!("{}part-{n:010}", self.staging_prefix(id))
    }

    pub(super) fn tail_key(&self, id: &str, n: u64) -> String {
        format!("{}tail-{n:010}", self.staging_prefix(id))
    }

    /// The record of the named object `id` with its version.
    pub(super) async fn load_record(
        &self,
        id: &str,
    ) -> Result<Option<(Record, u64)>, StorageError> {
        let key = record_key(id);
        let Some(r) = self.cat(move |c| c.record_get(&key)).await? else {
            return Ok(None);
        };
        let rec = serde_json::from_slice(&r.value).map_err(|e| {
            StorageError::Io(io::Error::other(format!("staged state of {id}: {e}")))
        })?;
        Ok(Some((rec, r.version)))
    }

    /// Write the record `id` if it is still at `expect` (`None`: create it); the new version.
    pub(super) async fn store_record(
        &self,
        id: &str,
        rec: &Record,
        expect: Option<u64>,
    ) -> Result<u64, StorageError> {
        let (key, value) = (
            record_key(id),
            serde_json::to_vec(rec).map_err(io::Error::other)?,
        );
        self.cat(move |c| c.record_put(&key, &value, expect)).await
    }

    /// A new, empty spool file for `id`.
    fn new_spool(&self, id: &str) -> io::Result<(PathBuf, File)> {
        let path = self
            .spool_dir
            .join(format!("{id}-{}.spool", random_hex(8)?));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, f))
    }
}

/// A new object (nothing written): anonymous, or named with its new record at `version`.
pub(super) async fn create(
    shared: &Arc<Shared>,
    id: String,
    named: bool,
    version: u64,
) -> Result<Arc<S3Object>, StorageError> {
    let (sh, i) = (shared.clone(), id.clone());
    let (path, file) = blocking(move || sh.new_spool(&i)).await?;
    let obj = Arc::new(S3Object::new(
        shared,
        id,
        named,
        path,
        file,
        0,
        Record::default(),
        version,
    ));
    if named {
        shared.register(&obj);
    }
    Ok(obj)
}

/// Reopen the named object `id` on this node: its record, its tail in a local spool (the spare
/// this node kept, when it is still current; else downloaded), then, with `len`, the cut; then
/// the record is written back, which takes the object over from any earlier writer.
pub(super) async fn reopen(
    shared: &Arc<Shared>,
    id: &str,
    len: Option<u64>,
) -> Result<Arc<S3Object>, StorageError> {
    let Some((rec, version)) = shared.load_record(id).await? else {
        return Err(StorageError::NotFound);
    };
    // This node's last handle, if nobody wrote the record since: its state, unflushed
    // writes included. Else the record's state, the tail downloaded.
    let mut local = None;
    match shared.take_spare(id) {
        Some(s) if s.version == version => {
            let p = s.path.clone();
            match blocking(move || OpenOptions::new().read(true).write(true).open(p)).await {
                Ok(f) => local = Some((s, f)),
                Err(_) => drop(std::fs::remove_file(&s.path)),
            }
        }
        Some(s) => drop(std::fs::remove_file(&s.path)),
        None => {}
    }
    let (obj, dirty) = match local {
        Some((s, f)) => (
            S3Object::new(
                shared,
                id.to_owned(),
                true,
                s.path,
                f,
                s.spool_len,
                s.rec,
                version,
            ),
            s.dirty,
        ),
        None => {
            let (path, f, spool_len) = fresh_tail(shared, id, &rec).await?;
            (
                S3Object::new(
                    shared,
                    id.to_owned(),
                    true,
                    path,
                    f,
                    spool_len,
                    rec,
                    version,
                ),
                false,
            )
        }
    };
    let obj = Arc::new(obj);
    {
        let mut st = obj.st.lock().await;
        st.dirty = dirty;
        if let Some(len) = len {
            obj.set_len_locked(&mut st, len).await?;
        }
        obj.flush_locked(&mut st).await.map_err(lifecycle_err)?;
    }
    shared.register(&obj);
    Ok(obj)
}

/// A new spool file holding the tail of `rec`, downloaded from its tail object.
async fn fresh_tail(
    shared: &Arc<Shared>,
    id: &str,
    rec: &Record,
) -> Result<(PathBuf, File, u64), StorageError> {
    let (sh, i) = (shared.clone(), id.to_owned());
    let (path, file) = blocking(move || sh.new_spool(&i)).await?;
    let file = match (rec.tail_n, rec.tail) {
        (Some(n), tail) if tail > 0 => {
            let key = shared.tail_key(id, n);
            download(shared, &key, 0, tail, file).await?
        }
        _ => file,
    };
    Ok((path, file, rec.tail))
}

/// Write `len` bytes of `key` at `offset` into `file` (from its start), streamed.
async fn download(
    shared: &Shared,
    key: &str,
    offset: u64,
    len: u64,
    file: File,
) -> Result<File, StorageError> {
    use std::io::{Seek, SeekFrom};
    use tokio::io::AsyncWriteExt;
    let out = shared
        .client
        .get_object()
        .bucket(&shared.bucket)
        .key(key)
        .range(format!("bytes={offset}-{}", offset + len - 1))
        .send()
        .await
        .map_err(|e| s3_err("GetObject", e))?;
    let file = blocking(move || {
        file.set_len(0)?;
        let mut f = file;
        f.seek(SeekFrom::Start(0))?;
        Ok(f)
    })
    .await?;
    let mut dest = tokio::fs::File::from_std(file);
    let mut body = out.body.into_async_read();
    let n = tokio::io::copy_buf(&mut body, &mut dest).await?;
    dest.flush().await?;
    if n != len {
        return Err(StorageError::Io(io::Error::other(format!(
            "S3 object {key}: {n} bytes where {len} were expected"
        ))));
    }
    Ok(dest.into_std().await)
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl S3Object {
    #[allow(clippy::too_many_arguments)]
    fn new(
        shared: &Arc<Shared>,
        id: String,
        named: bool,
        spool_path: PathBuf,
        spool: File,
        spool_len: u64,
        rec: Record,
        version: u64,
    ) -> Self {
        let next_local = rec.parts.iter().map(|p| p.n).max().unwrap_or(0);
        S3Object {
            id,
            named,
            shared: shared.clone(),
            spool_path,
            gone: AtomicBool::new(false),
            superseded: AtomicBool::new(false),
            st: tokio::sync::Mutex::new(ObjState {
                spool: Arc::new(spool),
                spool_len,
                rec,
                version,
                dirty: false,
                next_local,
            }),
        }
    }

    pub(super) fn check_live(&self) -> io::Result<()> {
        if self.superseded.load(Ordering::Acquire) {
            return Err(superseded_io());
        }
        if self.gone.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "this staged object was committed, deleted or taken over",
            ));
        }
        Ok(())
    }

    /// Append `data` at the end, sending each part as it fills.
    async fn append(&self, st: &mut ObjState, mut data: Bytes) -> io::Result<()> {
        let part = self.shared.part_size;
        while !data.is_empty() {
            let room = usize::try_from(part - st.spool_len).unwrap_or(usize::MAX);
            let chunk = data.split_to(room.min(data.len()));
            let (file, at, n) = (st.spool.clone(), st.spool_len, chunk.len() as u64);
            blocking(move || file.write_all_at(&chunk, at)).await?;
            st.spool_len += n;
            st.dirty = true;
            if st.spool_len == part {
                self.send_part(st).await?;
            }
        }
        Ok(())
    }

    /// Send the spool as the next part and start it over.
    async fn send_part(&self, st: &mut ObjState) -> io::Result<()> {
        let n = if self.named {
            let seq = seq_name(&self.id);
            self.shared
                .cat(move |c| c.next_seq(&seq))
                .await
                .map_err(io::Error::other)?
        } else {
            st.next_local += 1;
            st.next_local
        };
        let key = self.shared.part_key(&self.id, n);
        self.shared
            .put_from_file(&key, &self.spool_path, st.spool_len, false)
            .await?;
        if self.gone.load(Ordering::Acquire) {
            // Discarded meanwhile: its clean-up may have missed this part.
            let _ = self.shared.delete_key(&key).await;
            return self.check_live();
        }
        st.rec.parts.push(PartRef {
            n,
            size: st.spool_len,
        });
        let file = st.spool.clone();
        blocking(move || file.set_len(0)).await?;
        st.spool_len = 0;
        Ok(())
    }

    /// Cut or zero-extend to `len`. A cut inside a part drops the parts after it and brings
    /// the kept bytes of that part back into the spool.
    pub(super) async fn set_len_locked(&self, st: &mut ObjState, len: u64) -> io::Result<()> {
        let cur = st.len();
        if len > cur {
            let mut left = len - cur;
            while left > 0 {
                let n = left.min(ZEROS.len() as u64) as usize;
                self.append(st, Bytes::from_static(&ZEROS[..n])).await?;
                left -= n as u64;
            }
            return Ok(());
        }
        if len == cur {
            return Ok(());
        }
        st.dirty = true;
        let parts_len = st.parts_len();
        if len >= parts_len {
            let (file, keep) = (st.spool.clone(), len - parts_len);
            blocking(move || file.set_len(keep)).await?;
            st.spool_len = keep;
            return Ok(());
        }
        // Find the part holding byte `len`; keep the parts before it.
        let mut start = 0;
        let mut idx = 0;
        while start + st.rec.parts[idx].size <= len {
            start += st.rec.parts[idx].size;
            idx += 1;
        }
        let cut = st.rec.parts[idx];
        st.rec.parts.truncate(idx);
        let keep = len - start;
        let file = st.spool.clone();
        if keep == 0 {
            blocking(move || file.set_len(0)).await?;
        } else {
            let key = self.shared.part_key(&self.id, cut.n);
            let f = blocking(move || file.try_clone()).await?;
            download(&self.shared, &key, 0, keep, f)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        st.spool_len = keep;
        Ok(())
    }

    /// Make what was written durable and visible to every node (named objects): the spool
    /// goes to a new tail object, then the record is replaced if this writer still holds it.
    pub(super) async fn flush_locked(&self, st: &mut ObjState) -> io::Result<()> {
        self.check_live()?;
        if !self.named {
            return Ok(());
        }
        let old_tail = st.rec.tail_n;
        let mut rec = st.rec.clone();
        let mut new_tail = None;
        if st.dirty {
            if st.spool_len > 0 {
                let seq = seq_name(&self.id);
                let n = self
                    .shared
                    .cat(move |c| c.next_seq(&seq))
                    .await
                    .map_err(io::Error::other)?;
                let key = self.shared.tail_key(&self.id, n);
                self.shared
                    .put_from_file(&key, &self.spool_path, st.spool_len, false)
                    .await?;
                new_tail = Some(key);
                rec.tail_n = Some(n);
            } else {
                rec.tail_n = None;
            }
            rec.tail = st.spool_len;
        }
        rec.len = st.len();
        match self
            .shared
            .store_record(&self.id, &rec, Some(st.version))
            .await
        {
            Ok(v) => {
                st.version = v;
                st.rec = rec;
                st.dirty = false;
                if st.rec.tail_n != old_tail {
                    if let Some(n) = old_tail {
                        let _ = self
                            .shared
                            .delete_key(&self.shared.tail_key(&self.id, n))
                            .await;
                    }
                }
                Ok(())
            }
            Err(e) => {
                if let Some(key) = new_tail {
                    let _ = self.shared.delete_key(&key).await;
                }
                if matches!(e, StorageError::Superseded) {
                    self.superseded.store(true, Ordering::Release);
                    self.gone.store(true, Ordering::Release);
                    return Err(superseded_io());
                }
                Err(io::Error::other(e.to_string()))
            }
        }
    }

    /// Fill `buf[..len]` with the bytes at `offset`: from the part objects, then the spool.
    async fn read_locked(
        &self,
        st: &ObjState,
        offset: u64,
        len: usize,
        mut buf: Buf,
    ) -> io::Result<Buf> {
        if len > buf.capacity() {
            return Err(io::Error::other("read longer than the buffer"));
        }
        let end = offset
            .checked_add(len as u64)
            .filter(|e| *e <= st.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "range past the end"))?;
        let mut at = 0usize;
        let mut start = 0u64;
        for p in &st.rec.parts {
            let (lo, hi) = (offset.max(start), end.min(start + p.size));
            if lo < hi {
                let key = self.shared.part_key(&self.id, p.n);
                let n = (hi - lo) as usize;
                buf = self.shared.get_into(&key, lo - start, n, buf, at).await?;
                at += n;
            }
            start += p.size;
        }
        let lo = offset.max(start);
        if lo < end {
            let (file, n, from) = (st.spool.clone(), (end - lo) as usize, lo - start);
            buf = blocking(move || {
                file.read_exact_at(&mut buf.spare_mut(at + n)[at..at + n], from)?;
                Ok(buf)
            })
            .await?;
        }
        buf.set_len(len);
        Ok(buf)
    }
}

impl RangeRead for S3Object {
    fn read_at(&self, offset: u64, len: usize, buf: Buf) -> IoFuture<'_, Buf> {
        Box::pin(async move {
            let st = self.st.lock().await;
            self.read_locked(&st, offset, len, buf).await
        })
    }
}

impl StagedObject for S3Object {
    fn id(&self) -> &str {
        &self.id
    }

    fn write_at(&self, offset: u64, data: Bytes) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let mut st = self.st.lock().await;
            self.check_live()?;
            let len = st.len();
            if offset != len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "S3 staged objects are written in order: a write at {offset}, \
                         the object holds {len} bytes"
                    ),
                ));
            }
            self.append(&mut st, data).await
        })
    }

    fn set_len(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let mut st = self.st.lock().await;
            self.check_live()?;
            self.set_len_locked(&mut st, len).await
        })
    }

    fn size(&self) -> IoFuture<'_, u64> {
        Box::pin(async move { Ok(self.st.lock().await.len()) })
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let mut st = self.st.lock().await;
            self.flush_locked(&mut st).await
        })
    }

    fn discard(&self) {
        if self.named || self.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = std::fs::remove_file(&self.spool_path);
        // Parts sent so far go in the background (tracked); a part in flight now is deleted
        // by its sender, which sees `gone`.
        let no_parts = self
            .st
            .try_lock()
            .map(|st| st.rec.parts.is_empty())
            .unwrap_or(false);
        if no_parts {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (sh, prefix) = (self.shared.clone(), self.shared.staging_prefix(&self.id));
        self.shared.tasks.spawn_on(
            async move {
                if let Err(e) = sh.delete_prefix(&prefix).await {
                    tracing::warn!(error = %e, "removing a dropped upload's parts");
                }
            },
            &rt,
        );
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for S3Object {
    fn drop(&mut self) {
        if self.named {
            self.shared.unregister(&self.id, self);
        }
        let st = self.st.get_mut();
        if self.named && !self.gone.load(Ordering::Acquire) {
            // The next reopen here continues from this state (if nobody wrote the record
            // since) instead of downloading the tail.
            self.shared.keep_spare(
                &self.id,
                Spare {
                    version: st.version,
                    rec: std::mem::take(&mut st.rec),
                    spool_len: st.spool_len,
                    dirty: st.dirty,
                    path: self.spool_path.clone(),
                },
            );
        } else {
            let _ = std::fs::remove_file(&self.spool_path);
        }
    }
}
