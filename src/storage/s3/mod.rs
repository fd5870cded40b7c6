//! The S3 backend: file bytes in an S3-compatible object store, every piece of state (file
//! rows, staged objects' parts, session records, publish leases) in the shared catalog, so any
//! node can serve any file and continue any resumable upload.
//!
//! Keys under `[storage.s3] prefix` (a `/` is added to a prefix that lacks one):
//! - `files/<path>`              published files (written create-only, never replaced)
//! - `staging/<id>/part-<n>`     full parts of a staged object (`part_size` bytes each)
//! - `staging/<id>/tail-<n>`     the bytes after the last full part of a named staged object,
//!   as of its last flush (a new key per flush: a superseded writer cannot clobber it)
//! - `probe/<random>`            the start-up check that the store honours `If-None-Match: *`
//!
//! Why parts are objects and not parts of a multipart upload: a multipart upload is bound to
//! its key when it is created, and a staged object learns its final name only at
//! [`Store::commit`](super::Store::commit). So the bytes are staged as plain objects; the
//! commit creates the multipart upload at `files/<path>`, copies the staged parts into it on
//! the server (`UploadPartCopy`, no bytes through this node), sends the tail as the last part
//! and completes it with `If-None-Match: *`. A side benefit: staged bytes can always be read
//! back (hash rebuilds, tus concatenation) from any node.
//!
//! A staged object's bytes not yet in a part live in a local spool file under the spool
//! directory (one per open handle), never in memory: memory per upload stays bounded by the
//! caller's buffers. A named staged object's state is the versioned catalog record
//! `staged:<id>` (see [`object`]); every write of it is a compare-and-swap, so a writer that
//! another request (on any node) took over gets [`StorageError::Superseded`].
//!
//! Must not: see HTTP types; log credentials; hold a whole part in memory.

mod commit;
mod object;
mod store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use tokio_util::task::TaskTracker;

use super::store::Buf;
use super::StorageError;
use crate::catalog::{Catalog, CatalogError};
use crate::config::{KeyConfig, S3Config};

/// S3's smallest part (all but the last part of a multipart upload).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Spool files kept for reuse by a later reopen on this node (see [`Spare`]).
const SPARES_MAX: usize = 256;

/// The S3 store (cheap to clone).
#[derive(Clone)]
pub struct S3Storage {
    shared: Arc<Shared>,
}

/// What every handle of one store shares.
struct Shared {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Key prefix, empty or ending in `/`.
    prefix: String,
    part_size: u64,
    /// How long a publish lease lasts (a node that died holding one blocks the path this long).
    lease_ttl: Duration,
    catalog: Arc<dyn Catalog>,
    spool_dir: PathBuf,
    /// This node's name in leases.
    node: String,
    /// The state of named objects whose handles were dropped, so that the next reopen on this
    /// node sees what they wrote, flushed or not, and need not download the tail again (if
    /// nobody wrote the record since). Bounded.
    spares: Mutex<HashMap<String, Spare>>,
    /// This node's open handles of named objects (the latest per id).
    handles: Mutex<HashMap<String, std::sync::Weak<object::S3Object>>>,
    /// Clean-ups that outlive the call that started them (a dropped upload's parts).
    tasks: TaskTracker,
}

/// A released handle's state: its spool file and its view of the object (a superset of
/// record version `version`: writes not flushed yet, parts not recorded yet).
struct Spare {
    version: u64,
    rec: object::Record,
    spool_len: u64,
    dirty: bool,
    path: PathBuf,
}

impl S3Storage {
    /// Connect to the bucket of `cfg` (no request is made yet: see
    /// [`S3Storage::probe_create_only`]). Staged bytes are spooled under `spool_dir` (created;
    /// spool files left by an earlier process are removed: what they held is in S3 or was never
    /// acknowledged). `node` names this node in leases.
    pub async fn open(
        cfg: &S3Config,
        catalog: Arc<dyn Catalog>,
        spool_dir: PathBuf,
        node: String,
    ) -> Result<S3Storage, StorageError> {
        if cfg.part_size.as_u64() < MIN_PART_SIZE {
            return Err(invalid(format!(
                "storage.s3.part_size must be at least 5 MiB (S3's smallest part), not {}",
                cfg.part_size
            )));
        }
        Self::open_unchecked(cfg, catalog, spool_dir, node).await
    }

    /// [`S3Storage::open`] without the part size floor (tests use tiny parts where the store
    /// allows them).
    async fn open_unchecked(
        cfg: &S3Config,
        catalog: Arc<dyn Catalog>,
        spool_dir: PathBuf,
        node: String,
    ) -> Result<S3Storage, StorageError> {
        if cfg.endpoint.is_empty() || cfg.bucket.is_empty() {
            return Err(invalid(
                "storage.s3 needs an endpoint and a bucket".to_owned(),
            ));
        }
        let client = build_client(cfg)?;
        let dir = spool_dir.clone();
        blocking(move || clear_spool_dir(&dir)).await?;
        let mut prefix = cfg.prefix.clone();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Storage {
            shared: Arc::new(Shared {
                client,
                bucket: cfg.bucket.clone(),
                prefix,
                part_size: cfg.part_size.as_u64().max(1),
                lease_ttl: cfg.timeout.saturating_mul(2) + Duration::from_secs(10),
                catalog,
                spool_dir,
                node,
                spares: Mutex::default(),
                handles: Mutex::default(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// Check that the store refuses to overwrite an object written with `If-None-Match: *`
    /// (every create-only commit relies on it): put one probe object twice; the second put
    /// must fail with 412 Precondition Failed. The server must refuse to run on a store where
    /// it does not.
    pub async fn probe_create_only(&self) -> Result<(), StorageError> {
        let sh = &self.shared;
        let key = format!("{}probe/{}", sh.prefix, random_hex(16)?);
        let put = || {
            sh.client
                .put_object()
                .bucket(&sh.bucket)
                .key(&key)
                .if_none_match("*")
                .body(ByteStream::from_static(b"sluice create-only probe"))
                .send()
        };
        put().await.map_err(|e| s3_err("PutObject (probe)", e))?;
        let second = put().await;
        let _ = sh.delete_key(&key).await;
        match second {
            Err(e) if status_of(&e) == Some(412) => Ok(()),
            Err(e) => Err(s3_err("PutObject (second probe)", e).into()),
            Ok(_) => Err(StorageError::Io(io::Error::other(format!(
                "the S3 store at bucket {} does not honour create-only writes \
                 (PutObject with If-None-Match: * replaced an existing object); \
                 Sluice cannot publish files safely on it",
                sh.bucket
            )))),
        }
    }

    /// Wait for the clean-ups still running (dropped uploads' parts).
    pub async fn close(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.tasks.reopen();
    }
}

/// The SDK client, built by hand: endpoint, region, static credentials, path style, the ring
/// TLS provider, checksums only where an operation requires them (many S3-compatible stores
/// reject the SDK's default trailing checksums), a time limit per operation.
fn build_client(cfg: &S3Config) -> Result<aws_sdk_s3::Client, StorageError> {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let (id, secret) = credentials(cfg.credentials.as_ref())?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .operation_timeout(cfg.timeout)
        .build();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&cfg.endpoint)
        .region(Region::new(cfg.region.clone()))
        .credentials_provider(Credentials::new(id, secret, None, None, "sluice-config"))
        .force_path_style(cfg.path_style)
        .http_client(http)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .timeout_config(timeouts)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(conf))
}

/// The access key: from the configuration (the secret inline, in a file or an environment
/// variable, like the key ring) or `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
fn credentials(k: Option<&KeyConfig>) -> Result<(String, String), StorageError> {
    let env = |var: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid(format!("S3 credentials: {var} is not set")))
    };
    let Some(k) = k else {
        return Ok((env("AWS_ACCESS_KEY_ID")?, env("AWS_SECRET_ACCESS_KEY")?));
    };
    if k.id.is_empty() {
        return Err(invalid("storage.s3.credentials needs an id".to_owned()));
    }
    let secret = if let Some(s) = &k.secret {
        s.clone()
    } else if let Some(path) = &k.secret_file {
        std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("S3 secret: cannot read {}: {e}", path.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_owned()
    } else if let Some(var) = &k.secret_env {
        env(var)?
    } else {
        return Err(invalid(
            "storage.s3.credentials: no secret given".to_owned(),
        ));
    };
    if secret.is_empty() {
        return Err(invalid(
            "storage.s3.credentials: the secret is empty".to_owned(),
        ));
    }
    Ok((k.id.clone(), secret))
}

fn clear_spool_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".spool") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

impl Shared {
    fn file_key(&self, path: &str) -> String {
        format!("{}files/{path}", self.prefix)
    }

    /// The prefix of every object a staged object keeps (parts and tails).
    fn staging_prefix(&self, id: &str) -> String {
        format!("{}staging/{id}/", self.prefix)
    }

    /// Run a catalog call on the blocking pool.
    async fn cat<T, F>(&self, f: F) -> Result<T, StorageError>
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
    async fn put_from_file(
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

    async fn delete_key(&self, key: &str) -> io::Result<()> {
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
    async fn delete_prefix(&self, prefix: &str) -> io::Result<()> {
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
    async fn get_into(
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

    /// Remember a dropped handle's state for the next reopen of `id` on this node.
    fn keep_spare(&self, id: &str, spare: Spare) {
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
    async fn local_len(&self, id: &str, version: u64) -> Option<u64> {
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
    fn register(&self, obj: &Arc<object::S3Object>) {
        if let Ok(mut h) = self.handles.lock() {
            h.insert(obj.id.clone(), Arc::downgrade(obj));
        }
    }

    /// Forget the open handle at `ptr` (being dropped), unless a later one replaced it.
    fn unregister(&self, id: &str, ptr: *const object::S3Object) {
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
    fn drop_spare(&self, id: &str) {
        if let Some(s) = self.take_spare(id) {
            let _ = std::fs::remove_file(s.path);
        }
    }
}

/// A failed put: the store's answer (its HTTP status, if one came) or a local error.
#[derive(Debug)]
enum SdkPutError {
    S3(Option<u16>, io::Error),
    Local(io::Error),
}

impl SdkPutError {
    fn status(&self) -> Option<u16> {
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
async fn file_body(path: &std::path::Path, len: u64) -> io::Result<ByteStream> {
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

fn len_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The HTTP status of a failed request, when the store answered.
fn status_of<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// An SDK error as an `io::Error` (`NotFound` for a 404), with the whole source chain in its
/// message (never credentials: the SDK does not put them in errors).
fn s3_err<E>(op: &str, e: SdkError<E>) -> io::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let kind = match status_of(&e) {
        Some(404) => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("S3 {op}: {}", DisplayErrorContext(&e)))
}

fn invalid(msg: String) -> StorageError {
    StorageError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

/// `Superseded` carried through an `io::Error` (the data operations' error type): find it
/// with [`superseded_in`].
fn superseded_io() -> io::Error {
    io::Error::other(StorageError::Superseded)
}

/// Whether `e` is [`StorageError::Superseded`] carried by an `io::Error`.
pub fn superseded_in(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<StorageError>())
        .is_some_and(|s| matches!(s, StorageError::Superseded))
}

/// The error a data operation returns as a lifecycle error (`Superseded` unwrapped).
fn lifecycle_err(e: io::Error) -> StorageError {
    if superseded_in(&e) {
        StorageError::Superseded
    } else {
        StorageError::from(e)
    }
}

fn random_hex(n: usize) -> io::Result<String> {
    let mut raw = vec![0u8; n];
    getrandom::fill(&mut raw).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hex::encode(raw))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Run blocking file work on the blocking pool.
async fn blocking<T>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T>
where
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}
