//! XEP-0363 PUT (protocols.md §1.5): 411 without Content-Length, 413 from the declared length
//! and while streaming, 403/401 for grants, 409 without ever overwriting, 400 for a short body
//! (nothing published), 201 on success. Every refusal happens before the body is read, so an
//! `Expect: 100-continue` client gets the final status instead of `100 Continue`.

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

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Declared length: `None` when absent; an error when malformed or duplicated.
fn content_length(req: &Request<Incoming>) -> Result<Option<u64>, ApiError> {
    let mut values = req.headers().get_all(header::CONTENT_LENGTH).iter();
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

pub async fn handle(
    state: &Arc<AppState>,
    raw_path: &str,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let http1 = req.version() < http::Version::HTTP_2;
    let result = handle_inner(state, raw_path, req).await;
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
        Err(ApiError::Exists | ApiError::PathConflict) => "conflict",
        Err(ApiError::TooLarge { .. }) => "too_large",
        Err(ApiError::ShortBody { .. } | ApiError::ClientGone | ApiError::BodyTimeout) => "aborted",
        Err(_) => "rejected",
    };
    state.metrics.uploads.with_label_values(&[label]).inc();
    // A refused PUT usually leaves its body unread: tell HTTP/1 clients not to reuse the
    // connection (hyper closes it), so a pooled client does not send its next request into it.
    result.or_else(|e| {
        let mut res = e.into_response();
        if http1 {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(res)
    })
}

async fn handle_inner(
    state: &Arc<AppState>,
    raw_path: &str,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let max = state.config.storage.max_file_size.as_u64();
    // No Content-Length: a body whose end is already known to be empty (HTTP/1.1 without
    // Transfer-Encoding, RFC 9112 §6.3; HTTP/2 with END_STREAM on the headers) has length 0;
    // a chunked / streamed body of unknown length is refused (XEP-0363 clients always send a
    // fixed length).
    let len = match content_length(&req)? {
        Some(n) => n,
        None if http_body::Body::size_hint(req.body()).exact() == Some(0) => 0,
        None => return Err(ApiError::LengthRequired),
    };
    if len > max {
        return Err(ApiError::TooLarge { max });
    }
    let path = StoredPath::parse(raw_path, &state.upload_rules)?;
    let grant = state.auth.authorize(&GrantRequest {
        method: req.method().as_str(),
        path: path.as_str(),
        query: req.uri().query(),
        content_length: len,
        content_type: header_str(&req, header::CONTENT_TYPE),
        authorization: header_str(&req, header::AUTHORIZATION),
        now: std::time::SystemTime::now(),
    })?;
    let content_type = super::stored_content_type(req.headers(), path.file_name());
    let client = crate::router::client_of(state, &req);

    // Early conflict check (cheap; the commit re-checks atomically).
    let storage = state.storage.clone();
    let (p2, s2) = (path.clone(), storage.clone());
    let mut staged = tokio::task::spawn_blocking(move || {
        if s2.exists(&p2) {
            return Err(ApiError::Exists);
        }
        s2.stage().map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;

    let _in_flight = GaugeGuard::new(&state.metrics.uploads_in_flight);
    let file = staged
        .take_file()
        .ok_or_else(|| ApiError::Internal("staged file missing".into()))?;
    let sink = state
        .engine
        .receive(
            req.into_body(),
            Sink::new(file),
            Expect {
                exact: Some(len),
                max,
            },
            &client,
        )
        .await
        .map_err(|e| match e {
            EngineError::TooLarge => ApiError::TooLarge { max: len },
            other => ApiError::from(other),
        })?;
    state.metrics.upload_bytes.inc_by(sink.written);
    let sha256 = hex::encode(sha2::Digest::finalize(sink.hasher));
    staged.put_file(sink.file);
    let meta = FileMeta {
        size: len,
        sha256: sha256.clone(),
        content_type,
        uploaded_at: super::unix_now(),
        uploader: grant.uploader,
    };
    tokio::task::spawn_blocking(move || storage.commit(staged, &path, &meta))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    tracing::info!(
        bytes = len,
        mode = crate::auth::mode_name(grant.mode),
        "stored"
    );

    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::CREATED;
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha256}\"")) {
        res.headers_mut().insert(header::ETAG, v);
    }
    Ok(res)
}
