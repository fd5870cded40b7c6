//! S3 requests the backend makes, and how their failures read.

use std::io;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};

use super::Shared;
use crate::catalog::{Catalog, CatalogError};
use crate::storage::store::Buf;
use crate::storage::StorageError;

impl Shared {
    pub(super) fn file_key(&self, path: &str) -> String {
        format!("{}files/{path}", self.prefix)
    }

    /// The prefix of every object a staged object keeps (parts and tails).
    pub(super) fn staging_prefix(&self, id: &str) -> String {
        format!("{}staging/{id}/", self.prefix)
    }

    /// Run a catalog call on the blocking pool.
    pub(super) async fn cat<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Catalog) -> Result<T, CatalogError> + Send + 'static,
    {
        let c = self.catalog.clone();
        tokio::task::spawn_blocking(move || f(c.as_ref()))
            .await
            .map_err(|e| StorageError::Io(io::Error::other(e)))?
            .map_err(StorageError::from)
    }

    /// Put `len` bytes of the file at `path` (from its start) as the object `key`, streamed
    /// from the file; with `create_only`, `If-None-Match: *`.
    pub(super) async fn put_from_file(
        &self,
        key: &str,
        path: &std::path::Path,
        len: u64,
        create_only: bool,
    ) -> Result<(), SdkPutError> {
        let body = file_body(path, len).await.map_err(SdkPutError::Local)?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(len_i64(len))
            .body(body);
        if create_only {
            req = req.if_none_match("*");
        }
        req.send().await.map_err(|e| {
            let status = status_of(&e);
            SdkPutError::S3(status, s3_err("PutObject", e))
        })?;
        Ok(())
    }

    pub(super) async fn delete_key(&self, key: &str) -> io::Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_err("DeleteObject", e))?;
        Ok(())
    }

    /// Delete every object under `prefix` (a staged object's parts and tails).
    pub(super) async fn delete_prefix(&self, prefix: &str) -> io::Result<()> {
        use futures_util::StreamExt;
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_err("ListObjectsV2", e))?;
            let keys: Vec<String> = page
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect();
            let results: Vec<io::Result<()>> = futures_util::stream::iter(keys)
                .map(|k| async move { self.delete_key(&k).await })
                .buffer_unordered(8)
                .collect()
                .await;
            results.into_iter().collect::<io::Result<()>>()?;
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(()),
            }
        }
    }

    /// Fill `buf[at..at + len]` with the bytes of `key` at `offset`, streaming the response
    /// body into the buffer (no copy in between). Fewer bytes there: `UnexpectedEof`.
    pub(super) async fn get_into(
        &self,
        key: &str,
        offset: u64,
        len: usize,
        mut buf: Buf,
        at: usize,
    ) -> io::Result<Buf> {
        if len == 0 {
            return Ok(buf);
        }
        let end = at + len;
        if end > buf.capacity() {
            return Err(io::Error::other("read longer than the buffer"));
        }
        let last = offset + len as u64 - 1;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={offset}-{last}"))
            .send()
            .await
            .map_err(|e| match status_of(&e) {
                Some(416) => io::Error::new(io::ErrorKind::UnexpectedEof, "range past the end"),
                _ => s3_err("GetObject", e),
            })?;
        let mut body = out.body;
        let mut pos = at;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| io::Error::other(format!("S3 GetObject body: {e}")))?;
            let next = pos + chunk.len();
            if next > end {
                return Err(io::Error::other(
                    "S3 GetObject answered more bytes than the range asked for",
                ));
            }
            buf.spare_mut(end)[pos..next].copy_from_slice(&chunk);
            pos = next;
        }
        if pos < end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "range past the end",
            ));
        }
        Ok(buf)
    }
}

/// A failed put: the store's answer (its HTTP status, if one came) or a local error.
#[derive(Debug)]
pub(super) enum SdkPutError {
    S3(Option<u16>, io::Error),
    Local(io::Error),
}

impl SdkPutError {
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            SdkPutError::S3(s, _) => *s,
            SdkPutError::Local(_) => None,
        }
    }
}

impl From<SdkPutError> for io::Error {
    fn from(e: SdkPutError) -> Self {
        match e {
            SdkPutError::S3(_, e) | SdkPutError::Local(e) => e,
        }
    }
}

/// A request body of the first `len` bytes of the file at `path` (read as it is sent; reopened
/// by path when the SDK retries).
pub(super) async fn file_body(path: &std::path::Path, len: u64) -> io::Result<ByteStream> {
    if len == 0 {
        return Ok(ByteStream::from_static(b""));
    }
    ByteStream::read_from()
        .path(path)
        .offset(0)
        .length(Length::Exact(len))
        .build()
        .await
        .map_err(|e| io::Error::other(format!("spool file: {e}")))
}

pub(super) fn len_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The HTTP status of a failed request, when the store answered.
pub(super) fn status_of<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// An SDK error as an `io::Error` (`NotFound` for a 404): the store's status, code and message
/// when it answered, else the whole source chain (a timeout, a refused connection). Never
/// credentials: the SDK puts no request headers in its errors.
pub(super) fn s3_err<E>(op: &str, e: SdkError<E>) -> io::Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let status = status_of(&e);
    let kind = match status {
        Some(404) => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    let detail = match (&e, status) {
        (SdkError::ServiceError(se), Some(status)) => format!(
            "HTTP {status} {}: {}",
            se.err().code().unwrap_or("(no code)"),
            se.err().message().unwrap_or("(no message)")
        ),
        _ => DisplayErrorContext(&e).to_string(),
    };
    io::Error::new(kind, format!("S3 {op}: {detail}"))
}
