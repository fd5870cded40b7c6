//! A named staged object's shared state (the catalog record `staged:<id>`), and this node's
//! memory of the handles it has open or dropped: a reopen here continues from the dropped
//! handle's state (unflushed writes included) when nobody wrote the record since, instead of
//! downloading the tail.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::object::S3Object;
use super::{blocking, lifecycle_err, random_hex, s3_err, Shared, Spare, SPARES_MAX};
use crate::storage::StorageError;

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
pub(super) async fn download(
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

impl Shared {
    /// Remember a dropped handle's state for the next reopen of `id` on this node.
    pub(super) fn keep_spare(&self, id: &str, spare: Spare) {
        let Ok(mut s) = self.spares.lock() else {
            let _ = std::fs::remove_file(&spare.path);
            return;
        };
        if s.len() >= SPARES_MAX {
            if let Some(k) = s.keys().next().cloned() {
                if let Some(old) = s.remove(&k) {
                    let _ = std::fs::remove_file(old.path);
                }
            }
        }
        if let Some(old) = s.insert(id.to_owned(), spare) {
            let _ = std::fs::remove_file(old.path);
        }
    }

    /// The length of `id` as this node sees it, if this node's view is of record version
    /// `version` (its open handle or its last dropped one): writes not flushed yet count.
    pub(super) async fn local_len(&self, id: &str, version: u64) -> Option<u64> {
        let open = self.handles.lock().ok()?.get(id).and_then(|w| w.upgrade());
        if let Some(obj) = open {
            let st = obj.st.lock().await;
            if st.version == version && obj.check_live().is_ok() {
                return Some(st.len());
            }
            return None;
        }
        let spares = self.spares.lock().ok()?;
        let s = spares.get(id).filter(|s| s.version == version)?;
        Some(s.rec.parts.iter().map(|p| p.size).sum::<u64>() + s.spool_len)
    }

    /// Note `obj` as this node's open handle of its id.
    pub(super) fn register(&self, obj: &Arc<S3Object>) {
        if let Ok(mut h) = self.handles.lock() {
            h.insert(obj.id.clone(), Arc::downgrade(obj));
        }
    }

    /// Forget the open handle at `ptr` (being dropped), unless a later one replaced it.
    pub(super) fn unregister(&self, id: &str, ptr: *const S3Object) {
        if let Ok(mut h) = self.handles.lock() {
            if h.get(id).is_some_and(|w| std::ptr::eq(w.as_ptr(), ptr)) {
                h.remove(id);
            }
        }
    }

    /// Take the spare spool file of `id`, if any.
    fn take_spare(&self, id: &str) -> Option<Spare> {
        self.spares.lock().ok()?.remove(id)
    }

    /// Forget (and delete) the spare spool file of `id`.
    pub(super) fn drop_spare(&self, id: &str) {
        if let Some(s) = self.take_spare(id) {
            let _ = std::fs::remove_file(s.path);
        }
    }
}
