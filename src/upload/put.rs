//! XEP-0363 PUT (protocols.md §1.5): 411 without Content-Length, 413 from the declared length
//! and while streaming, 403/401 for grants, 409 without ever overwriting, 400 for a short body
//! (nothing published), 201 on success. Every refusal happens before the body is read, so an
//! `Expect: 100-continue` client gets the final status instead of `100 Continue`; other
//! clients' bodies are drained (bounded) so the refusal reaches them intact.

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth::GrantRequest;
use crate::engine::{EngineError, Expect, Sink};
use crate::error::ApiError;
use crate::metrics::GaugeGuard;
use crate::response::{empty, ResBody};
use crate::state::AppState;
use crate::storage::{FileMeta, StoredPath};

pub async fn handle(
    state: &Arc<AppState>,
    raw_path: &str,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let http1 = req.version() < http::Version::HTTP_2;
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let client = crate::router::client_of(state, &req);
    let (parts, body) = req.into_parts();
    let result = match prepare(state, raw_path, &parts).await {
        Ok(prep) => receive_and_commit(state, prep, body, &client).await,
        Err(e) => {
            // Refused before reading the body. A client that waits for 100-continue never
            // sends it; others are already sending. Draining (bounded) instead of closing lets
            // the response reach them and keeps reverse proxies (nginx with request buffering
            // off) from turning our 403/409 into a 502 on a broken pipe.
            let declared = declared_len(&parts).unwrap_or(None);
            let small_enough =
                declared.is_some_and(|n| n <= state.config.server.drain_limit.as_u64());
            if !expects_continue && small_enough && !matches!(e, ApiError::TooLarge { .. }) {
                drain_in_background(body, state.config.server.body_idle_timeout);
                Err((e, false))
            } else {
                Err((e, true))
            }
        }
    };
    let label = match &result {
        Ok(_) => "created",
        Err((ApiError::Auth(a), _)) => {
            state
                .metrics
                .auth_failures
                .with_label_values(&[a.reason()])
                .inc();
            "unauthorized"
        }
        Err((ApiError::Exists | ApiError::PathConflict, _)) => "conflict",
        Err((ApiError::TooLarge { .. }, _)) => "too_large",
        Err((ApiError::ShortBody { .. } | ApiError::ClientGone | ApiError::BodyTimeout, _)) => {
            "aborted"
        }
        Err(_) => "rejected",
    };
    state.metrics.uploads.with_label_values(&[label]).inc();
    result.or_else(|(e, close)| {
        let mut res = e.into_response();
        if !close {
            res.extensions_mut().insert(crate::router::BodyDrained);
        }
        if http1 && close {
            // The body is left unread: tell the client not to reuse the connection (hyper
            // closes it), so a pooled client does not send its next request into it.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(res)
    })
}

/// Read and discard a refused request's body in the background, up to its declared length,
/// giving up after `idle` without data.
fn drain_in_background(mut body: Incoming, idle: std::time::Duration) {
    tokio::spawn(async move {
        use http_body_util::BodyExt;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(idle, body.frame()).await {}
    });
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
    state: &AppState,
    raw_path: &str,
    parts: &http::request::Parts,
) -> Result<Prepared, ApiError> {
    let max = state.config.storage.max_file_size.as_u64();
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
    let grant = state.auth.authorize(&GrantRequest {
        method: parts.method.as_str(),
        path: path.as_str(),
        query: parts.uri.query(),
        content_length: len,
        content_type: header_str(parts, header::CONTENT_TYPE),
        authorization: header_str(parts, header::AUTHORIZATION),
        now: std::time::SystemTime::now(),
    })?;
    // Early conflict check (the commit re-checks atomically) and staging, in one hop.
    let (storage, p2) = (state.storage.clone(), path.clone());
    let staged = tokio::task::spawn_blocking(move || {
        if storage.exists(&p2) {
            return Err(ApiError::Exists);
        }
        storage.stage().map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let content_type = super::stored_content_type(&grant, &parts.headers, path.file_name());
    Ok(Prepared {
        path,
        staged,
        len,
        max,
        grant,
        content_type,
        digests,
    })
}

async fn receive_and_commit(
    state: &Arc<AppState>,
    prep: Prepared,
    body: Incoming,
    client: &crate::engine::Client,
) -> Result<Response<ResBody>, (ApiError, bool)> {
    let close = |e: ApiError| (e, true);
    let storage = state.storage.clone();
    let mut staged = prep.staged;
    let _in_flight = GaugeGuard::new(&state.metrics.uploads_in_flight);
    let file = staged
        .take_file()
        .ok_or_else(|| close(ApiError::Internal("staged file missing".into())))?;
    let len = prep.len;
    let mut sink = Sink::new(file);
    if prep
        .digests
        .iter()
        .any(|c| c.algo == crate::digest::Algo::Sha512)
    {
        sink.chunk = Some(crate::engine::ChunkDigest::Sha512(sha2::Digest::new()));
    }
    let sink = state
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
            EngineError::TooLarge => close(ApiError::TooLarge { max: len }),
            other => close(ApiError::from(other)),
        })?;
    state.metrics.upload_bytes.inc_by(sink.written);
    let sha256 = sha2::Digest::finalize(sink.hasher);
    let sha512 = sink.chunk.map(crate::engine::ChunkDigest::finish);
    if !crate::digest::all_match(&prep.digests, &sha256, sha512.as_deref()) {
        // The staged bytes go with `staged`; nothing was published.
        return Err((ApiError::DigestMismatch, false));
    }
    let sha256 = hex::encode(sha256);
    staged.put_file(sink.file);
    let meta = FileMeta {
        size: len,
        sha256: sha256.clone(),
        content_type: prep.content_type,
        uploaded_at: super::unix_now(),
        uploader: prep.grant.uploader,
    };
    let path = prep.path;
    tokio::task::spawn_blocking(move || storage.commit(staged, &path, &meta))
        .await
        .map_err(|e| (ApiError::Internal(e.to_string()), false))?
        .map_err(|e| (e.into(), false))?;
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
