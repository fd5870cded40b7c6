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
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::state::{download, record_key, seq_name, PartRef, Record};
use super::{blocking, superseded_io, Shared, Spare};
use crate::storage::store::{IoFuture, RangeRead, StagedObject};
use crate::storage::{Buf, StorageError};

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

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl S3Object {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
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
            if st.spool_len >= part {
                // A tail from a node with larger parts: it becomes a part as it is.
                self.send_part(st).await?;
            }
            let room = usize::try_from(part - st.spool_len).unwrap_or(usize::MAX);
            let chunk = data.split_to(room.min(data.len()));
            let (file, at, n) = (st.spool.clone(), st.spool_len, chunk.len() as u64);
            blocking(move || file.write_all_at(&chunk, at)).await?;
            st.spool_len += n;
            st.dirty = true;
            if st.spool_len >= part {
                self.send_part(st).await?;
            }
        }
        Ok(())
    }

    /// Send the spool as the next part and start it over.
    async fn send_part(&self, st: &mut ObjState) -> io::Result<()> {
        let n = if self.named {
            // A writer taken over stops here rather than sending parts nobody will use.
            let (key, seq) = (record_key(&self.id), seq_name(&self.id));
            let (version, n) = self
                .shared
                .cat(move |c| Ok((c.record_get(&key)?.map(|r| r.version), c.next_seq(&seq)?)))
                .await
                .map_err(io::Error::other)?;
            if version != Some(st.version) {
                self.superseded.store(true, Ordering::Release);
                self.gone.store(true, Ordering::Release);
                return Err(superseded_io());
            }
            n
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
