//! tus 1.0.0 (protocols.md §3) over the session core: core protocol plus creation,
//! creation-with-upload, creation-defer-length, expiration, checksum (sha1, sha256, md5),
//! termination and concatenation; `X-HTTP-Method-Override`.
//!
//! Routes (after the optional URL prefix): `POST /tus/<target path>?<grant>` creates an upload
//! of `<target path>` with the same grant a PUT of it would need (anonymous `POST /tus/` only
//! when enabled); `HEAD|PATCH|DELETE /tus/<id>` act on it. Every response carries
//! `Tus-Resumable: 1.0.0`.

use std::sync::Arc;

use crate::body::ReqBody;
use base64::Engine as _;
use http::{HeaderMap, Method, Request, Response, StatusCode};

use crate::context::RequestContext;
use crate::engine::ChunkDigest;
use crate::error::ApiError;
use crate::response::{empty, ResBody};
use crate::state::AppState;
use crate::upload::session::{is_session_id, NewSession, Protocol, Session, SessionMeta};
use crate::upload::session::{AppendCheck, CheckKind};
use crate::upload::{header_text as hv, header_u64 as parse_u64, set_header as set};

pub const VERSION: &str = "1.0.0";
pub const EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination,concatenation";
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256,md5";
const OFFSET_CT: &str = "application/offset+octet-stream";
/// Cap on partial uploads (concatenation parts) per target.
pub const MAX_PARTS_PER_TARGET: usize = 16;

/// Parsed `Upload-Checksum: <algorithm> <base64>`.
pub fn parse_checksum(v: &str) -> Result<AppendCheck, ApiError> {
    let (algo, b64) = v.trim().split_once(' ').ok_or(ApiError::BadRequest(
        "Upload-Checksum must be '<algorithm> <base64>'",
    ))?;
    let digest = match algo.to_ascii_lowercase().as_str() {
        "sha1" => ChunkDigest::Sha1(sha1::Digest::new()),
        "sha256" => ChunkDigest::Sha256(sha2::Digest::new()),
        "md5" => ChunkDigest::Md5(md5::Digest::new()),
        _ => return Err(ApiError::BadRequest("unsupported checksum algorithm")),
    };
    let expected = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ApiError::BadRequest("Upload-Checksum value is not base64"))?;
    Ok(AppendCheck {
        digest,
        expected,
        kind: CheckKind::TusChecksum,
    })
}

/// Decoded `Upload-Metadata` pairs (a key may have no value).
pub type Metadata = Vec<(String, Option<Vec<u8>>)>;

/// Validate `Upload-Metadata` (`key base64,key2,...`) and return the decoded pairs.
pub fn parse_metadata(v: &str) -> Result<Metadata, ApiError> {
    let mut out = Vec::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = pair.splitn(2, ' ');
        let key = it.next().unwrap_or("");
        if key.is_empty() || key.contains(' ') || !key.is_ascii() {
            return Err(ApiError::BadRequest("malformed Upload-Metadata"));
        }
        let value = match it.next().map(str::trim) {
            Some(b) if !b.is_empty() => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| ApiError::BadRequest("Upload-Metadata value is not base64"))?,
            ),
            _ => None,
        };
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// The content type to store: the metadata's `filetype` when it is a sane media type, else
/// guessed from the target's name.
fn stored_type(pairs: &[(String, Option<Vec<u8>>)], target: &crate::storage::StoredPath) -> String {
    meta_value(pairs, &["filetype", "contentType", "type"])
        .filter(|t| super::valid_media_type(t))
        .unwrap_or_else(|| crate::storage::guess_type(target.file_name()))
}

fn meta_value(pairs: &[(String, Option<Vec<u8>>)], keys: &[&str]) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| keys.contains(&k.as_str()))
        .and_then(|(_, v)| v.as_ref())
        .and_then(|v| String::from_utf8(v.clone()).ok())
}

fn expires(meta: &SessionMeta) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(meta.expires_at))
}

/// `OPTIONS /tus...`: capabilities (plus CORS, added by the caller).
pub fn options(state: &AppState, res: &mut Response<ResBody>) {
    set(res, "tus-version", VERSION);
    set(res, "tus-extension", EXTENSIONS);
    set(
        res,
        "tus-max-size",
        &state.config().storage.max_file_size.as_u64().to_string(),
    );
    set(res, "tus-checksum-algorithm", CHECKSUM_ALGORITHMS);
}

/// Entry point for every non-OPTIONS request under `/tus`.
pub async fn handle(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    rest: &str,
    req: Request<ReqBody>,
) -> Response<ResBody> {
    let mut res = match handle_inner(state, ctx, rest, req).await {
        Ok(r) => r,
        Err(e) => {
            let status = e.status();
            let mut r = e.into_response();
            if status == StatusCode::PRECONDITION_FAILED {
                set(&mut r, "tus-version", VERSION);
            }
            r
        }
    };
    set(&mut res, "tus-resumable", VERSION);
    res
}

async fn handle_inner(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    rest: &str,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, ApiError> {
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    let h = req.headers();
    if hv(h, "tus-resumable").as_deref() != Some(VERSION) {
        return Err(ApiError::PreconditionFailed(
            "unsupported or missing Tus-Resumable (this server speaks 1.0.0)",
        ));
    }
    let method = match hv(h, "x-http-method-override") {
        Some(m) if *req.method() == Method::POST => {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| ApiError::BadRequest("bad X-HTTP-Method-Override"))?
        }
        _ => req.method().clone(),
    };
    let rest = rest.trim_start_matches('/');
    if method == Method::POST {
        return create(state, ctx, rest, req).await;
    }
    if !is_session_id(rest) {
        return Err(ApiError::SessionNotFound);
    }
    let session = store.get_for(rest, Protocol::Tus).await?;
    match method {
        Method::HEAD => head(state, &session).await,
        Method::PATCH => patch(state, ctx, &session, req).await,
        Method::DELETE => {
            store.remove(&session, "terminated").await;
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        _ => Err(ApiError::MethodNotAllowed {
            allow: "OPTIONS, POST, HEAD, PATCH, DELETE",
        }),
    }
}

/// The check of one append: the tus checksum extension's `Upload-Checksum` (460 on mismatch)
/// or, without it, an RFC 9530 `Content-Digest` (400).
fn append_check(h: &HeaderMap) -> Result<Option<AppendCheck>, ApiError> {
    match hv(h, "upload-checksum") {
        Some(v) => parse_checksum(&v).map(Some),
        None => super::content_digest_check(h),
    }
}

fn body_in(h: &HeaderMap) -> bool {
    hv(h, "content-length").is_some_and(|v| v != "0") || h.contains_key("transfer-encoding")
}

fn location(state: &AppState, id: &str) -> String {
    format!("{}/tus/{id}", state.config().server.url_prefix)
}

async fn head(state: &Arc<AppState>, s: &Arc<Session>) -> Result<Response<ResBody>, ApiError> {
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    // Take over from an in-flight PATCH so the offset we report is the recorded one.
    drop(store.acquire(s, true).await?);
    let m = s.meta();
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::OK;
    set(&mut r, "upload-offset", &m.offset.to_string());
    match m.length {
        Some(l) => set(&mut r, "upload-length", &l.to_string()),
        None => set(&mut r, "upload-defer-length", "1"),
    }
    if let Some(md) = &m.metadata {
        set(&mut r, "upload-metadata", md);
    }
    // tus 1.0.0 Concatenation: the HEAD of a final upload "MUST include the Upload-Concat
    // header and its value".
    if m.partial {
        set(&mut r, "upload-concat", "partial");
    } else if let Some(parts) = &m.concat_parts {
        set(&mut r, "upload-concat", &format!("final;{parts}"));
    }
    if !m.completed {
        set(&mut r, "upload-expires", &expires(&m));
    }
    set(&mut r, "cache-control", "no-store");
    Ok(r)
}

async fn patch(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    s: &Arc<Session>,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, ApiError> {
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    let h = req.headers();
    let ct = hv(h, "content-type").unwrap_or_default();
    if !ct.eq_ignore_ascii_case(OFFSET_CT) {
        return Err(ApiError::UnsupportedMediaType(
            "PATCH needs Content-Type: application/offset+octet-stream",
        ));
    }
    let offset =
        parse_u64(h, "upload-offset")?.ok_or(ApiError::BadRequest("Upload-Offset is required"))?;
    let new_length = parse_u64(h, "upload-length")?;
    let content_length = parse_u64(h, "content-length")?;
    let checksum = append_check(h)?;
    let client = ctx.client;
    let mut guard = store.acquire(s, true).await?;
    let m = s.meta();
    if offset != m.offset {
        let mut r =
            ApiError::Conflict("Upload-Offset does not match the upload's offset").into_response();
        set(&mut r, "upload-offset", &m.offset.to_string());
        return Ok(r);
    }
    if m.completed {
        return Err(ApiError::Conflict("upload is already complete"));
    }
    let max_file = ctx.config.storage.max_file_size.as_u64();
    if let Some(l) = new_length {
        if m.length.is_some_and(|cur| cur != l) {
            return Err(ApiError::BadRequest("Upload-Length cannot be changed"));
        }
        if l > max_file {
            return Err(ApiError::TooLarge { max: max_file });
        }
        if l < m.offset || m.grant_size.is_some_and(|g| g != l) {
            return Err(ApiError::BadRequest(
                "Upload-Length does not match the grant or the data",
            ));
        }
        if m.length.is_none() {
            store.set_length(s, l).await?;
        }
    }
    let m = s.meta();
    let remaining = m.remaining().unwrap_or(max_file.saturating_sub(m.offset));
    if content_length.is_some_and(|n| n > remaining) {
        return Err(ApiError::TooLarge { max: remaining });
    }
    let (appended, m) = append_and_complete(
        state,
        s,
        &mut guard,
        req.into_body(),
        content_length,
        remaining,
        checksum,
        &client,
    )
    .await?;
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    set(&mut r, "upload-offset", &appended.offset.to_string());
    if !m.completed {
        set(&mut r, "upload-expires", &expires(&m));
    }
    Ok(r)
}

/// Append a PATCH (or creation-with-upload) body, count its bytes, and publish the upload
/// when it reached its length.
#[allow(clippy::too_many_arguments)]
async fn append_and_complete(
    state: &Arc<AppState>,
    s: &Arc<Session>,
    guard: &mut crate::upload::session::WriteGuard<'_>,
    body: ReqBody,
    content_length: Option<u64>,
    remaining: u64,
    checksum: Option<AppendCheck>,
    client: &crate::engine::Client,
) -> Result<(crate::upload::session::Appended, SessionMeta), ApiError> {
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    let before = s.meta().offset;
    let appended = store
        .append(
            &state.engine,
            s,
            guard,
            body,
            content_length,
            remaining,
            checksum,
            client,
        )
        .await?;
    state.metrics.upload_bytes.inc_by(appended.offset - before);
    let mut m = s.meta();
    if m.length == Some(appended.offset) {
        m = store.complete(&state.engine, s, guard).await?;
    }
    Ok((appended, m))
}

async fn create(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    rest: &str,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, ApiError> {
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    let h = req.headers().clone();
    let max_file = ctx.config.storage.max_file_size.as_u64();
    let concat = hv(&h, "upload-concat");
    if let Some(c) = concat.as_deref().and_then(|c| c.strip_prefix("final;")) {
        return create_final(state, rest, c, req).await;
    }
    let partial = match concat.as_deref() {
        None => false,
        Some("partial") => true,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "Upload-Concat must be 'partial' or 'final;<urls>'",
            ))
        }
    };
    let length = parse_u64(&h, "upload-length")?;
    let deferred = hv(&h, "upload-defer-length").as_deref() == Some("1");
    if length.is_some() == deferred {
        return Err(ApiError::BadRequest(
            "exactly one of Upload-Length and Upload-Defer-Length: 1 is required",
        ));
    }
    if length.is_some_and(|l| l > max_file) {
        return Err(ApiError::TooLarge { max: max_file });
    }
    let metadata = hv(&h, "upload-metadata");
    let pairs = metadata
        .as_deref()
        .map(parse_metadata)
        .transpose()?
        .unwrap_or_default();
    let filename = meta_value(&pairs, &["filename", "name"]);
    let decoded = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| ApiError::PathEncoding)?;
    let grant = super::authorize_creation(
        state,
        &h,
        req.uri().query(),
        Some(decoded.as_ref()),
        length,
        filename.as_deref(),
    )
    .await?;
    if let (Some(g), Some(l)) = (grant.grant_size, length) {
        if g != l {
            return Err(ApiError::BadRequest(
                "Upload-Length does not match the grant",
            ));
        }
    }
    let content_type = stored_type(&pairs, &grant.target);
    // One unfinished upload per target: a repeated creation (a client that lost the 201)
    // gets the same upload back; a different one is a conflict. A grant thus opens at most
    // one session at a time.
    // Parallel parts of one concatenated upload: a bounded number per target, so one grant
    // cannot open sessions without end.
    if partial && store.partials_for_target(grant.target.as_str()) >= MAX_PARTS_PER_TARGET {
        return Err(ApiError::Conflict(
            "too many partial uploads for this target",
        ));
    }
    if let Some(existing) = store.open_for_target(grant.target.as_str(), Protocol::Tus) {
        let m = existing.meta();
        if m.length != length || m.partial != partial || body_in(&h) {
            return Err(ApiError::Conflict(
                "an upload of this target is already in progress",
            ));
        }
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::CREATED;
        set(&mut r, "location", &location(state, &existing.id));
        set(&mut r, "upload-offset", &m.offset.to_string());
        set(&mut r, "upload-expires", &expires(&m));
        return Ok(r);
    }
    let session = store
        .create(NewSession {
            protocol: Protocol::Tus,
            target: Some(grant.target),
            length,
            grant_size: grant.grant_size,
            content_type,
            metadata,
            partial,
            chunk_size: None,
            uploader: grant.uploader,
            file_expires: grant.file_expires,
        })
        .await?;
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::CREATED;
    set(&mut r, "location", &location(state, &session.id));
    // creation-with-upload: a body in the POST is the first append.
    let content_length = parse_u64(&h, "content-length")?.unwrap_or(0);
    let ct = hv(&h, "content-type").unwrap_or_default();
    let mut m = session.meta();
    if content_length > 0 && ct.eq_ignore_ascii_case(OFFSET_CT) {
        let client = ctx.client;
        let remaining = m.remaining().unwrap_or(max_file);
        if content_length > remaining {
            store.remove(&session, "terminated").await;
            return Err(ApiError::TooLarge { max: remaining });
        }
        let checksum = append_check(&h)?;
        let mut guard = store.acquire(&session, true).await?;
        let (appended, after) = append_and_complete(
            state,
            &session,
            &mut guard,
            req.into_body(),
            Some(content_length),
            remaining,
            checksum,
            &client,
        )
        .await?;
        m = after;
        set(&mut r, "upload-offset", &appended.offset.to_string());
    }
    if !m.completed {
        set(&mut r, "upload-expires", &expires(&m));
    }
    Ok(r)
}

/// `Upload-Concat: final;<url> <url>...`: publish the concatenation of complete partial
/// uploads at the target.
async fn create_final(
    state: &Arc<AppState>,
    rest: &str,
    urls: &str,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, ApiError> {
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    let mut parts = Vec::new();
    let mut total: u64 = 0;
    for url in urls.split_whitespace() {
        let id = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        let s = store.get_for(id, Protocol::Tus).await?;
        let m = s.meta();
        if !m.partial || !m.completed {
            return Err(ApiError::BadRequest(
                "every part of a final upload must be a complete partial upload",
            ));
        }
        total = total.saturating_add(m.length.unwrap_or(0));
        parts.push(s);
    }
    if parts.is_empty() {
        return Err(ApiError::BadRequest(
            "Upload-Concat: final needs at least one part",
        ));
    }
    let max_file = state.config().storage.max_file_size.as_u64();
    if total > max_file {
        return Err(ApiError::TooLarge { max: max_file });
    }
    let h = req.headers().clone();
    let metadata = hv(&h, "upload-metadata");
    let pairs = metadata
        .as_deref()
        .map(parse_metadata)
        .transpose()?
        .unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| ApiError::PathEncoding)?;
    let grant = super::authorize_creation(
        state,
        &h,
        req.uri().query(),
        Some(decoded.as_ref()),
        Some(total),
        meta_value(&pairs, &["filename", "name"]).as_deref(),
    )
    .await?;
    let content_type = stored_type(&pairs, &grant.target);
    let session = store
        .create(NewSession {
            protocol: Protocol::Tus,
            target: Some(grant.target),
            length: Some(total),
            grant_size: grant.grant_size,
            content_type,
            metadata,
            partial: false,
            chunk_size: None,
            uploader: grant.uploader,
            file_expires: grant.file_expires,
        })
        .await?;
    let paths = parts
        .iter()
        .map(|p| (p.id.clone(), p.meta().offset))
        .collect();
    let mut guard = store.acquire(&session, true).await?;
    store
        .fill_from_parts(
            &state.engine,
            &session,
            &mut guard,
            paths,
            urls.split_whitespace().collect::<Vec<_>>().join(" "),
            total,
        )
        .await?;
    store.complete(&state.engine, &session, &mut guard).await?;
    drop(guard);
    for p in parts {
        store.remove(&p, "completed").await;
    }
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::CREATED;
    set(&mut r, "location", &location(state, &session.id));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_header_parses_known_algorithms_only() {
        assert!(parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").is_ok());
        assert!(parse_checksum("SHA256 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").is_ok());
        assert!(parse_checksum("md5 1B2M2Y8AsgTpgAmY7PhCfg==").is_ok());
        assert!(matches!(
            parse_checksum("crc32 AAAA"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_checksum("sha1"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_checksum("sha1 !!!"),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn metadata_pairs_decode_and_garbage_is_rejected() {
        let p = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .unwrap();
        assert_eq!(p[0].0, "filename");
        assert_eq!(p[0].1.as_deref(), Some(&b"world_domination_plan.pdf"[..]));
        assert_eq!(p[1], ("is_confidential".to_owned(), None));
        assert!(parse_metadata("filename not-base64!").is_err());
        assert_eq!(
            meta_value(&p, &["filename"]).as_deref(),
            Some("world_domination_plan.pdf")
        );
    }
}
