//! Publishing a staged object at `files/<path>`, create-only and race-free across nodes.
//!
//! 1. No live file may sit where the path needs a directory, or under the path (the catalog
//!    says: S3 has no directories): `PathConflict`.
//! 2. The catalog lease `publish:<path>` serialises publishers and removers of one path on
//!    every node (each caller its own holder); a caller waits for it up to its ttl.
//! 3. Under the lease: a live row is `Exists`, a takedown `TakenDown`; a named object's record
//!    is written once more (a writer taken over gets `Superseded` and publishes nothing).
//! 4. The bytes: no parts, one `PutObject` streamed from the spool; else a multipart upload at
//!    the final key, the staged parts copied in on the server, the spool as the last part,
//!    `CompleteMultipartUpload`. Both with `If-None-Match: *`. A 412 while the lease is still
//!    ours (same fencing token) and no live row exists is an orphan of a crash: deleted, and
//!    the publish tried once more.
//! 5. The row (create-only); if it is refused, the object we created is deleted.

use std::io;
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures_util::StreamExt;

use super::object::{ObjState, S3Object};
use super::{file_body, len_i64, now_ms, random_hex, s3_err, status_of, S3Storage};
use crate::catalog::FileRow;
use crate::storage::{FileMeta, StorageError, StoredPath};

/// S3's most parts in one upload.
const MAX_PARTS: usize = 10_000;
/// Server-side part copies in flight at once during a commit.
const COPIES_IN_FLIGHT: usize = 4;

/// A publish lease this caller holds.
pub(super) struct Held {
    name: String,
    holder: String,
    token: u64,
}

/// How one publish attempt ended, short of success.
enum Refused {
    /// 412: an object is there already.
    Taken,
    Failed(StorageError),
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Self {
        Refused::Failed(StorageError::Io(e))
    }
}

fn lease_name(p: &StoredPath) -> String {
    format!("publish:{}", p.as_str())
}

impl S3Storage {
    /// Take the lease `publish:<p>`, waiting up to its ttl for the caller that holds it.
    pub(super) async fn lease_path(&self, p: &StoredPath) -> Result<Held, StorageError> {
        let sh = &self.shared;
        let (name, holder) = (lease_name(p), format!("{}/{}", sh.node, random_hex(8)?));
        let ttl = u64::try_from(sh.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let deadline = Instant::now() + sh.lease_ttl + Duration::from_secs(1);
        loop {
            let (n, h) = (name.clone(), holder.clone());
            if let Some(token) = sh
                .cat(move |c| c.lease(&n, &h, now_ms(), ttl, false))
                .await?
            {
                return Ok(Held {
                    name,
                    holder,
                    token,
                });
            }
            if Instant::now() >= deadline {
                return Err(StorageError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the path {} is busy (its publish lease is held)",
                        p.as_str()
                    ),
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `held` is still ours (renewed, with the same fencing token: nobody held the
    /// lease in between).
    async fn still_held(&self, held: &Held) -> bool {
        let sh = &self.shared;
        let ttl = u64::try_from(sh.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let (n, h) = (held.name.clone(), held.holder.clone());
        matches!(
            sh.cat(move |c| c.lease(&n, &h, now_ms(), ttl, false)).await,
            Ok(Some(t)) if t == held.token
        )
    }

    pub(super) async fn release(&self, held: Held) {
        let Held { name, token, .. } = held;
        let _ = self
            .shared
            .cat(move |c| c.lease_release(&name, token))
            .await;
    }

    /// `PathConflict` if a live file sits where `p` needs a directory or below `p`.
    async fn check_tree(&self, p: &StoredPath) -> Result<(), StorageError> {
        let path = p.as_str().to_owned();
        let conflict = self
            .shared
            .cat(move |c| {
                for (i, _) in path.match_indices('/') {
                    if c.get(&path[..i])?.is_some_and(|e| e.deleted.is_none()) {
                        return Ok(true);
                    }
                }
                let below = c.list(&crate::catalog::ListQuery {
                    prefix: Some(format!("{path}/")),
                    limit: 1,
                    ..Default::default()
                })?;
                Ok(!below.is_empty())
            })
            .await?;
        if conflict {
            return Err(StorageError::PathConflict);
        }
        Ok(())
    }

    /// Publish `obj` at `p` (see the module docs). The caller cleans the staging state up.
    pub(super) async fn publish(
        &self,
        obj: &S3Object,
        p: &StoredPath,
        meta: &FileMeta,
    ) -> Result<(), StorageError> {
        let mut st = obj.st.lock().await;
        obj.check_live().map_err(super::lifecycle_err)?;
        self.check_tree(p).await?;
        let held = self.lease_path(p).await?;
        let r = self.publish_leased(obj, &mut st, p, meta, &held).await;
        self.release(held).await;
        r
    }

    async fn publish_leased(
        &self,
        obj: &S3Object,
        st: &mut ObjState,
        p: &StoredPath,
        meta: &FileMeta,
        held: &Held,
    ) -> Result<(), StorageError> {
        let sh = &self.shared;
        self.live_row(p)
            .await?
            .map_or(Ok(()), |_| Err(StorageError::Exists))?;
        if obj.named {
            // Fences out any earlier writer; a later one fences us out (Superseded).
            obj.flush_locked(st).await.map_err(super::lifecycle_err)?;
        }
        let key = sh.file_key(p.as_str());
        let mut retried = false;
        loop {
            match self.put_bytes_leased(obj, st, &key, held).await {
                Ok(()) => break,
                Err(Refused::Failed(e)) => return Err(e),
                Err(Refused::Taken) if retried => return Err(StorageError::Exists),
                Err(Refused::Taken) => {
                    // Under our lease with no live row, the object is an orphan (a crash
                    // between publishing and the row, or a removal cut short).
                    if !self.still_held(held).await || self.live_row(p).await?.is_some() {
                        return Err(StorageError::Exists);
                    }
                    tracing::warn!(path = %p.as_str(), "replacing an orphaned S3 object");
                    sh.delete_key(&key).await?;
                    retried = true;
                }
            }
        }
        let row = FileRow {
            path: p.as_str().to_owned(),
            meta: meta.clone(),
        };
        // The object is ours only while the lease is: past it, another publisher may have
        // taken our object for an orphan and published its own.
        if !self.still_held(held).await {
            return Err(lost_lease());
        }
        if let Err(e) = sh.cat(move |c| c.insert(row)).await {
            if self.still_held(held).await {
                let _ = sh.delete_key(&key).await;
            }
            return Err(e);
        }
        if obj.named {
            // Should the clean-up not finish, the session layer learns the bytes are out.
            let mut rec = st.rec.clone();
            rec.published = true;
            if let Ok(v) = sh.store_record(&obj.id, &rec, Some(st.version)).await {
                st.version = v;
                st.rec = rec;
            }
        }
        Ok(())
    }

    /// [`S3Storage::put_bytes`] with the lease renewed every third of its ttl meanwhile (a
    /// large multipart commit can outlast it); a lease lost meanwhile stops the publish.
    async fn put_bytes_leased(
        &self,
        obj: &S3Object,
        st: &ObjState,
        key: &str,
        held: &Held,
    ) -> Result<(), Refused> {
        let renew = async {
            loop {
                tokio::time::sleep(self.shared.lease_ttl / 3).await;
                if !self.still_held(held).await {
                    return;
                }
            }
        };
        tokio::select! {
            r = self.put_bytes(obj, st, key) => r,
            () = renew => Err(Refused::Failed(lost_lease())),
        }
    }

    /// Write the object's bytes at `key`, create-only.
    async fn put_bytes(&self, obj: &S3Object, st: &ObjState, key: &str) -> Result<(), Refused> {
        let sh = &self.shared;
        if st.rec.parts.is_empty() {
            return match sh
                .put_from_file(key, &obj.spool_path, st.spool_len, true)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if e.status() == Some(412) => Err(Refused::Taken),
                Err(e) => Err(Refused::from(io::Error::from(e))),
            };
        }
        let count = st.rec.parts.len() + usize::from(st.spool_len > 0);
        if count > MAX_PARTS {
            return Err(Refused::Failed(StorageError::Io(io::Error::other(
                format!("{count} parts: S3 takes at most {MAX_PARTS} (raise storage.s3.part_size)"),
            ))));
        }
        let upload = sh
            .client
            .create_multipart_upload()
            .bucket(&sh.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_err("CreateMultipartUpload", e))?;
        let Some(upload_id) = upload.upload_id().map(str::to_owned) else {
            return Err(Refused::from(io::Error::other(
                "S3 CreateMultipartUpload answered no upload id",
            )));
        };
        let r = self.fill_and_complete(obj, st, key, &upload_id).await;
        if r.is_err() {
            let _ = sh
                .client
                .abort_multipart_upload()
                .bucket(&sh.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        r
    }

    async fn fill_and_complete(
        &self,
        obj: &S3Object,
        st: &ObjState,
        key: &str,
        upload_id: &str,
    ) -> Result<(), Refused> {
        let sh = &self.shared;
        let sources: Vec<(i32, String)> = (1..)
            .zip(&st.rec.parts)
            .map(|(number, part)| {
                (
                    number,
                    copy_source(&sh.bucket, &sh.part_key(&obj.id, part.n)),
                )
            })
            .collect();
        let copies = sources.into_iter().map(|(number, source)| async move {
            let out = sh
                .client
                .upload_part_copy()
                .bucket(&sh.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .copy_source(source)
                .send()
                .await
                .map_err(|e| s3_err("UploadPartCopy", e))?;
            let etag = out
                .copy_part_result()
                .and_then(|r| r.e_tag())
                .ok_or_else(|| io::Error::other("S3 UploadPartCopy answered no ETag"))?;
            Ok::<_, io::Error>(completed(number, etag))
        });
        let mut parts: Vec<CompletedPart> = futures_util::stream::iter(copies)
            .buffered(COPIES_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<io::Result<_>>()?;
        if st.spool_len > 0 {
            let number = i32::try_from(parts.len() + 1).unwrap_or(i32::MAX);
            let out = sh
                .client
                .upload_part()
                .bucket(&sh.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len_i64(st.spool_len))
                .body(file_body(&obj.spool_path, st.spool_len).await?)
                .send()
                .await
                .map_err(|e| s3_err("UploadPart", e))?;
            let etag = out
                .e_tag()
                .ok_or_else(|| io::Error::other("S3 UploadPart answered no ETag"))?;
            parts.push(completed(number, etag));
        }
        match sh
            .client
            .complete_multipart_upload()
            .bucket(&sh.bucket)
            .key(key)
            .upload_id(upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(412) => Err(Refused::Taken),
            Err(e) => Err(Refused::from(s3_err("CompleteMultipartUpload", e))),
        }
    }
}

fn lost_lease() -> StorageError {
    StorageError::Io(io::Error::other(
        "lost the publish lease while publishing (the store or the catalog was too slow)",
    ))
}

fn completed(number: i32, etag: &str) -> CompletedPart {
    CompletedPart::builder()
        .part_number(number)
        .e_tag(etag)
        .build()
}

/// `x-amz-copy-source`: `bucket/key`, the key percent-encoded (its `/` kept).
fn copy_source(bucket: &str, key: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!("{bucket}/{}", utf8_percent_encode(key, KEEP))
}
