//! What crashes leave in the bucket, found and removed: staging objects of anonymous uploads
//! (a node died mid-request) and of named objects whose record is gone (a deletion cut
//! short), and multipart uploads under `files/` (a node died mid-commit). Only what has not
//! changed for a while goes: uploads in flight on other nodes are younger than that.

use std::io;
use std::time::Duration;

use super::state::record_key;
use super::{now_ms, s3_err, S3Storage};
use crate::storage::StorageError;

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Staged objects whose part and tail objects were deleted.
    pub staged: usize,
    /// Multipart uploads aborted.
    pub uploads: usize,
}

impl S3Storage {
    /// Remove the leftovers of crashed uploads untouched for `older_than` (see the module
    /// docs). Run it now and then on one node (the catalog's leases say which).
    pub async fn sweep_orphans(&self, older_than: Duration) -> Result<Swept, StorageError> {
        let sh = &self.shared;
        let cutoff = i64::try_from((now_ms() / 1000).saturating_sub(older_than.as_secs()))
            .unwrap_or(i64::MAX);
        let mut swept = Swept::default();
        let staging = format!("{}staging/", sh.prefix);
        let mut token: Option<String> = None;
        loop {
            let page = sh
                .client
                .list_objects_v2()
                .bucket(&sh.bucket)
                .prefix(&staging)
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_err("ListObjectsV2", e))?;
            for dir in page.common_prefixes() {
                let Some(dir) = dir.prefix() else { continue };
                let id = dir[staging.len()..].trim_end_matches('/');
                if !id.starts_with("put-") {
                    let key = record_key(id);
                    if sh.cat(move |c| c.record_get(&key)).await?.is_some() {
                        continue;
                    }
                }
                if self.untouched_since(dir, cutoff).await? {
                    sh.delete_prefix(dir).await?;
                    swept.staged += 1;
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        swept.uploads = self.abort_stale_uploads(cutoff).await?;
        Ok(swept)
    }

    /// Whether no object under `dir` changed after `cutoff` (seconds since the epoch).
    async fn untouched_since(&self, dir: &str, cutoff: i64) -> io::Result<bool> {
        let sh = &self.shared;
        let mut token: Option<String> = None;
        loop {
            let page = sh
                .client
                .list_objects_v2()
                .bucket(&sh.bucket)
                .prefix(dir)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_err("ListObjectsV2", e))?;
            if page
                .contents()
                .iter()
                .any(|o| o.last_modified().is_none_or(|t| t.secs() > cutoff))
            {
                return Ok(false);
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(true),
            }
        }
    }

    /// Abort the multipart uploads under `files/` started before `cutoff`.
    async fn abort_stale_uploads(&self, cutoff: i64) -> io::Result<usize> {
        let sh = &self.shared;
        let mut aborted = 0;
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = sh
                .client
                .list_multipart_uploads()
                .bucket(&sh.bucket)
                .prefix(format!("{}files/", sh.prefix))
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| s3_err("ListMultipartUploads", e))?;
            for u in page.uploads() {
                let stale = u.initiated().is_some_and(|t| t.secs() <= cutoff);
                if let (true, Some(key), Some(id)) = (stale, u.key(), u.upload_id()) {
                    sh.client
                        .abort_multipart_upload()
                        .bucket(&sh.bucket)
                        .key(key)
                        .upload_id(id)
                        .send()
                        .await
                        .map_err(|e| s3_err("AbortMultipartUpload", e))?;
                    aborted += 1;
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(aborted);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                return Ok(aborted);
            }
        }
    }
}
