//! XEP-0363 PUT (protocols.md §1.5): 411 without Content-Length, 413 from the declared length
//! and while streaming, 403/401 for grants, 409 without ever overwriting, 400 for a short body
//! (nothing published), 201 on success. Every refusal happens before the body is read, so an
//! `Expect: 100-continue` client gets the final status instead of `100 Continue`; other
//! clients' bodies are drained (bounded) so the refusal reaches them intact.

use std::sync::Arc;

use crate::body::ReqBody;
use http::{header, HeaderValue, Request, Response, StatusCode};

use crate::auth::GrantRequest;
use crate::context::RequestContext;
use crate::engine::{EngineError, Expect, Sink};
use crate::error::ApiError;
use crate::metrics::GaugeGuard;
use crate::response::{empty, ResBody};
use crate::state::AppState;
use crate::storage::{FileMeta, StoredPath};

pub async fn handle(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    raw_path: &str,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, ApiError> {
    let client = ctx.client;
    let (parts, body) = req.into_parts();
    // A refusal drops the body unread: `ReqBody` drains a small rest (so the refusal reaches a
    // client that is already sending, and nginx does not turn it into a 502) or the router
    // answers `Connection: close`. A client waiting for 100-continue is refused before it
    // sends anything.
    let result = match prepare(state, raw_path, &parts).await {
        Ok(prep) => receive_and_commit(state, prep, body, &client).await,
        Err(e) => Err(e),
    };
    let label = match &result {
        Ok(_) => "created",
        Err(ApiError::Auth(a)) => {
            state
                .metrics
                .auth_failures
                .with_label_values(&[a.reason()])
                .inc();
            "unauthorized"
        }
        Err(ApiError::Exists | ApiError::PathConflict | ApiError::TakenDown) => "conflict",
        Err(ApiError::TooLarge { .. }) => "too_large",
        Err(ApiError::ShortBody { .. } | ApiError::ClientGone | ApiError::BodyTimeout) => "aborted",
        Err(_) => "rejected",
    };
    state.metrics.uploads.with_label_values(&[label]).inc();
    result
}

/// What `prepare` established before any body byte is read.
struct Prepared {
    path: StoredPath,
    staged: crate::storage::Staged,
    len: u64,
    max: u64,
    grant: crate::auth::Grant,
    content_type: String,
    /// RFC 9530 claims about the body (checked before anything is published).
    digests: Vec<crate::digest::Claim>,
    uploader: Option<String>,
    /// The bytes admitted against the storage cap and the uploader's quotas.
    reservation: crate::ops::space::Reservation,
}

fn declared_len(parts: &http::request::Parts) -> Result<Option<u64>, ApiError> {
    let mut values = parts.headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest("more than one Content-Length header"));
    }
    first
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or(ApiError::BadRequest("Content-Length is not a number"))
}

fn header_str(parts: &http::request::Parts, name: header::HeaderName) -> Option<&str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every check that needs no body: length, path rules, grant, conflict.
async fn prepare(
    state: &Arc<AppState>,
    raw_path: &str,
    parts: &http::request::Parts,
) -> Result<Prepared, ApiError> {
    let max = state.config().storage.max_file_size.as_u64();
    // No Content-Length and no Transfer-Encoding: an HTTP/1.1 request without a body (RFC 9112
    // §6.3), i.e. length 0. A chunked body of unknown length is refused: XEP-0363 clients
    // always send a fixed length.
    let len = match declared_len(parts)? {
        Some(n) => n,
        None if !parts.headers.contains_key(header::TRANSFER_ENCODING)
            && parts.version < http::Version::HTTP_2 =>
        {
            0
        }
        None => return Err(ApiError::LengthRequired),
    };
    if len > max {
        return Err(ApiError::TooLarge { max });
    }
    let digests = crate::digest::whole_upload_claims(&parts.headers)?;
    let path = super::target_path(state, raw_path)?;
    let grant = state.live().auth.authorize(&GrantRequest {
        method: parts.method.as_str(),
        path: path.as_str(),
        query: parts.uri.query(),
        content_length: len,
        content_type: header_str(parts, header::CONTENT_TYPE),
        authorization: header_str(parts, header::AUTHORIZATION),
        now: std::time::UNIX_EPOCH + state.clock.since_epoch(),
    })?;
    let uploader = super::uploader_of(state, &grant, &path);
    if let Some(u) = uploader.as_deref() {
        state.live().rate_limits.take(
            &state.metrics,
            crate::ratelimit::Kind::Upload,
            None,
            Some(u),
        )?;
    }
    let reservation = crate::ops::space::admit(state, uploader.as_deref(), len).await?;
    // Early conflict check (the commit re-checks atomically), then staging.
    let staged = state.storage.stage_for(&path).await?;
    let content_type = super::stored_content_type(&grant, &parts.headers, path.file_name());
    Ok(Prepared {
        path,
        staged,
        len,
        max,
        grant,
        content_type,
        digests,
        uploader,
        reservation,
    })
}

async fn receive_and_commit(
    state: &Arc<AppState>,
    prep: Prepared,
    body: ReqBody,
    client: &crate::engine::Client,
) -> Result<Response<ResBody>, ApiError> {
    let _in_flight = GaugeGuard::new(&state.metrics.uploads_in_flight);
    let len = prep.len;
    let mut sink = Sink::new(prep.staged);
    if prep
        .digests
        .iter()
        .any(|c| c.algo == crate::digest::Algo::Sha512)
    {
        sink.chunk = Some(crate::engine::ChunkDigest::Sha512(sha2::Digest::new()));
    }
    let mut sink = state
        .engine
        .receive(
            body,
            sink,
            Expect {
                exact: Some(len),
                max: prep.max,
            },
            client,
        )
        .await
        .map_err(|e| match e {
            EngineError::TooLarge => ApiError::TooLarge { max: len },
            other => ApiError::from(other),
        })?;
    state.metrics.upload_bytes.inc_by(sink.written);
    let sha256 = sha2::Digest::finalize(sink.hasher.clone());
    let sha512 = sink.chunk.take().map(crate::engine::ChunkDigest::finish);
    if !crate::digest::all_match(&prep.digests, &sha256, sha512.as_deref()) {
        // The staged bytes go with the sink; nothing was published.
        return Err(ApiError::DigestMismatch);
    }
    let sha256 = hex::encode(sha256);
    let now = state.clock.now_secs();
    let meta = FileMeta {
        size: len,
        sha256: sha256.clone(),
        content_type: prep.content_type,
        uploaded_at: now,
        expires_at: state.config().retention.expires_at(
            prep.path.as_str(),
            now,
            prep.grant.file_expires,
        ),
        uploader: prep.uploader,
    };
    let (path, uploader) = (prep.path, meta.uploader.clone());
    state.storage.commit(sink.staged, &path, &meta).await?;
    prep.reservation.published();
    state.audit.upload(crate::admin::audit::UploadEvent {
        path: path.as_str(),
        size: len,
        sha256: &sha256,
        uploader: uploader.as_deref(),
        client: client.ip,
        route: "put",
    });
    tracing::info!(
        bytes = len,
        mode = crate::auth::mode_name(prep.grant.mode),
        "stored"
    );

    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::CREATED;
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha256}\"")) {
        res.headers_mut().insert(header::ETAG, v);
    }
    if let Some(v) = crate::digest::repr_digest(&sha256) {
        super::set_header(&mut res, "repr-digest", &v);
    }
    Ok(res)
}
