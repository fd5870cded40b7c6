//! The [`Store`] contract over S3 and the catalog: rows first (they say what is served), then
//! the objects; state records and staged objects' state in catalog records.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::object::S3Object;
use super::reader::S3Reader;
use super::state::{self, record_key, seq_name};
use super::{random_hex, S3Storage};
use crate::catalog::{Catalog, DeleteReason, FileRow};
use crate::storage::store::{valid_id, Records, StoreFuture};
use crate::storage::{
    FileMeta, Opened, RangeRead, SmallRead, Staged, StagedStat, StorageError, Store, StoredPath,
};

/// Prefix of the catalog records behind [`Store::put_record`].
const SESSION: &str = "session:";
/// Prefix of the records of named staged objects.
const STAGED: &str = "staged:";
/// Tries of an unconditional record replace against concurrent writers.
const REPLACE_TRIES: usize = 32;

fn bad_id(what: &str) -> StorageError {
    StorageError::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("invalid {what} id"),
    ))
}

impl S3Storage {
    /// The catalog's state of `p`: `Ok(Some(meta))` live, `Ok(None)` no live row.
    pub(super) async fn live_row(&self, p: &StoredPath) -> Result<Option<FileMeta>, StorageError> {
        let key = p.as_str().to_owned();
        match self.shared.cat(move |c| c.get(&key)).await? {
            None => Ok(None),
            Some(e) => match e.deleted {
                Some((r, _)) if r.is_takedown() => Err(StorageError::TakenDown),
                Some(_) => Ok(None),
                None => Ok(Some(e.row.meta)),
            },
        }
    }

    /// Everything a staged object keeps: its record and sequence (named), its part and tail
    /// objects, its spool. Best effort: what is left is unreachable.
    async fn forget(&self, obj: &S3Object) {
        obj.gone.store(true, Ordering::Release);
        let sh = &self.shared;
        if obj.named {
            let (key, seq) = (record_key(&obj.id), seq_name(&obj.id));
            let _ = sh
                .cat(move |c| {
                    c.record_delete(&key)?;
                    c.drop_seq(&seq)
                })
                .await;
            sh.drop_spare(&obj.id);
        }
        let has_objects = {
            let st = obj.st.lock().await;
            obj.named || !st.rec.parts.is_empty()
        };
        if has_objects {
            if let Err(e) = sh.delete_prefix(&sh.staging_prefix(&obj.id)).await {
                tracing::warn!(error = %e, "removing a staged object's parts");
            }
        }
        let _ = std::fs::remove_file(&obj.spool_path);
    }
}

impl Store for S3Storage {
    fn writes_in_order_only(&self) -> bool {
        true
    }

    fn sweep_leftovers(&self, older_than: std::time::Duration) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let s = self.sweep_orphans(older_than).await?;
            Ok((s.staged + s.uploads) as u64)
        })
    }
    fn catalog(&self) -> &dyn Catalog {
        self.shared.catalog.as_ref()
    }

    fn check_free<'a>(&'a self, p: &'a StoredPath) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            match self.live_row(p).await? {
                Some(_) => Err(StorageError::Exists),
                None => Ok(()),
            }
        })
    }

    fn stage(&self) -> StoreFuture<'_, Staged> {
        Box::pin(async move {
            let id = format!("put-{}", random_hex(16)?);
            let obj = state::create(&self.shared, id, false, 0).await?;
            Ok(Staged::new(obj, true))
        })
    }

    fn stage_named<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Staged> {
        Box::pin(async move {
            if !valid_id(id) {
                return Err(bad_id("staged object"));
            }
            let version = self
                .shared
                .store_record(id, &state::Record::default(), None)
                .await
                .map_err(|e| match e {
                    StorageError::Superseded => StorageError::Exists,
                    other => other,
                })?;
            let obj = state::create(&self.shared, id.to_owned(), true, version).await?;
            Ok(Staged::new(obj, false))
        })
    }

    fn reopen<'a>(&'a self, id: &'a str, len: Option<u64>) -> StoreFuture<'a, Staged> {
        Box::pin(async move {
            if !valid_id(id) {
                return Err(StorageError::NotFound);
            }
            Ok(Staged::new(
                state::reopen(&self.shared, id, len).await?,
                false,
            ))
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
            let Some(obj) = staged.object().as_any().downcast_ref::<S3Object>() else {
                return Err(StorageError::Io(io::Error::other(
                    "commit of an object staged by another store",
                )));
            };
            let r = self.publish(obj, p, meta).await;
            // Published or not, the staged object goes; unless another writer took it over:
            // then it is theirs.
            if !matches!(r, Err(StorageError::Superseded)) {
                self.forget(obj).await;
            }
            r
        })
    }

    fn open<'a>(&'a self, p: &'a StoredPath, small: Option<SmallRead>) -> StoreFuture<'a, Opened> {
        Box::pin(async move {
            let meta = self.live_row(p).await?.ok_or(StorageError::NotFound)?;
            let reader = Arc::new(S3Reader::new(
                self.shared.clone(),
                self.shared.file_key(p.as_str()),
                meta.size,
            ));
            let mut whole = None;
            let want = small.and_then(|f| f(meta.size));
            if let (Some(buf), Ok(n)) = (want, usize::try_from(meta.size)) {
                if n <= buf.capacity() {
                    let buf = reader.read_at(0, n, buf).await.map_err(|e| {
                        match e.kind() {
                            // The row without its object: not served.
                            io::ErrorKind::NotFound => StorageError::NotFound,
                            _ => StorageError::Io(e),
                        }
                    })?;
                    whole = Some(buf);
                }
            }
            Ok(Opened {
                meta,
                reader,
                whole,
            })
        })
    }

    fn stat<'a>(&'a self, p: &'a StoredPath) -> StoreFuture<'a, FileMeta> {
        Box::pin(async move { self.live_row(p).await?.ok_or(StorageError::NotFound) })
    }

    fn remove<'a>(
        &'a self,
        p: &'a StoredPath,
        reason: DeleteReason,
        at: u64,
    ) -> StoreFuture<'a, Option<FileRow>> {
        Box::pin(async move {
            // Under the publish lease: a commit of the freed path cannot publish its object
            // between the row going and this object going.
            let held = self.lease_path(p).await?;
            let key = p.as_str().to_owned();
            let r = self.shared.cat(move |c| c.delete(&key, reason, at)).await;
            let r = match r {
                Ok(Some(row)) => self
                    .shared
                    .delete_key(&self.shared.file_key(p.as_str()))
                    .await
                    .map(|_| Some(row))
                    .map_err(StorageError::Io),
                other => other,
            };
            self.release(held).await;
            r
        })
    }

    fn stat_staged<'a>(&'a self, id: &'a str) -> StoreFuture<'a, StagedStat> {
        Box::pin(async move {
            if !valid_id(id) {
                return Err(StorageError::NotFound);
            }
            let (rec, version) = self
                .shared
                .load_record(id)
                .await?
                .ok_or(StorageError::NotFound)?;
            let local = self.shared.local_len(id, version).await;
            Ok(StagedStat {
                len: local.unwrap_or(rec.len),
                published: rec.published,
            })
        })
    }

    fn delete_staged<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if !valid_id(id) {
                return Ok(());
            }
            let sh = &self.shared;
            let (key, seq) = (record_key(id), seq_name(id));
            sh.cat(move |c| {
                c.record_delete(&key)?;
                c.drop_seq(&seq)
            })
            .await?;
            sh.drop_spare(id);
            sh.delete_prefix(&sh.staging_prefix(id)).await?;
            Ok(())
        })
    }

    fn list_staged(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            let all = self.shared.cat(|c| c.record_list(STAGED)).await?;
            Ok(all
                .into_iter()
                .filter_map(|(k, _)| k.strip_prefix(STAGED).map(str::to_owned))
                .collect())
        })
    }

    fn put_record<'a>(&'a self, id: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if !valid_id(id) {
                return Err(bad_id("record"));
            }
            let key = format!("{SESSION}{id}");
            let bytes = Arc::new(bytes);
            for _ in 0..REPLACE_TRIES {
                let (k, b) = (key.clone(), bytes.clone());
                let r = self
                    .shared
                    .cat(move |c| {
                        let expect = c.record_get(&k)?.map(|r| r.version);
                        c.record_put(&k, &b, expect)
                    })
                    .await;
                match r {
                    Ok(_) => return Ok(()),
                    // Another writer got in between the read and the write: read again.
                    Err(StorageError::Superseded) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(StorageError::Io(io::Error::other(
                "state record: too many concurrent writers",
            )))
        })
    }

    fn get_record<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            if !valid_id(id) {
                return Ok(None);
            }
            let key = format!("{SESSION}{id}");
            Ok(self
                .shared
                .cat(move |c| c.record_get(&key))
                .await?
                .map(|r| r.value))
        })
    }

    fn list_records(&self) -> StoreFuture<'_, Records> {
        Box::pin(async move {
            let all = self.shared.cat(|c| c.record_list(SESSION)).await?;
            Ok(all
                .into_iter()
                .filter_map(|(k, r)| {
                    k.strip_prefix(SESSION)
                        .map(|id| (id.to_owned(), Some(r.value)))
                })
                .collect())
        })
    }

    fn delete_record<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if !valid_id(id) {
                return Ok(());
            }
            let key = format!("{SESSION}{id}");
            self.shared.cat(move |c| c.record_delete(&key)).await
        })
    }
}
