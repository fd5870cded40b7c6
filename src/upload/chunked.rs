//! The hmac-file-server chunked protocol, for migrating users (protocols.md §1.4), over the
//! session core. Same JSON shapes, but creation needs a per-upload grant bound to the target
//! and total size (the same grant as a PUT of that file: `?v=` over `X-Filename` and
//! `X-Total-Size`, or v2/token/v3/JWT), never a static MAC. Chunks may arrive in any order;
//! `/upload-status` also lists the missing ones.
//!
//! - create: `POST|PUT /chunked-upload?<grant>` with `X-Filename` (target path, UTF-8 or
//!   percent-encoded) and `X-Total-Size` → 201 `{session_id, chunk_size, total_chunks}`
//! - chunk: `POST|PUT /chunked-upload` with `X-Upload-Session-ID`, `X-Chunk-Number` (0-based)
//! - progress: `GET /upload-status?session_id=<id>`

use std::sync::Arc;

use crate::body::ReqBody;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::context::RequestContext;
use crate::error::ApiError;
use crate::response::{full, ResBody};
use crate::state::AppState;
use crate::upload::header_text as hv;
use crate::upload::session::{NewSession, Protocol, SessionMeta};

fn json(status: StatusCode, v: serde_json::Value) -> Response<ResBody> {
    let mut r = Response::new(full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn progress_json(state: &AppState, m: &SessionMeta) -> serde_json::Value {
    let total = m.length.unwrap_or(0);
    let missing: Vec<usize> = m
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, got)| !**got)
        .map(|(i, _)| i)
        .collect();
    let target = m.target.clone().unwrap_or_default();
    serde_json::json!({
        "session_id": m.id,
        "filename": target,
        "total_size": total,
        "uploaded_bytes": m.offset,
        "progress": if total == 0 { 100.0 } else { (m.offset as f64) * 100.0 / (total as f64) },
        "completed": m.completed,
        "chunk_size": m.chunk_size.unwrap_or(0),
        "total_chunks": m.chunks.len(),
        "received_chunks": m.chunks.len() - missing.len(),
        "missing_chunks": missing,
        "url": m
            .completed
            .then(|| crate::storage::StoredPath::parse(&target, &Default::default()).ok())
            .flatten()
            .map(|p| super::file_url(state, &p)),
        "sha256": m.sha256,
    })
}

pub async fn handle(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    req: Request<ReqBody>,
) -> Response<ResBody> {
    handle_inner(state, ctx, req)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn handle_inner(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, ApiError> {
    if *req.method() != Method::POST && *req.method() != Method::PUT {
        return Err(ApiError::MethodNotAllowed {
            allow: "OPTIONS, POST, PUT",
        });
    }
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    let h = req.headers().clone();
    let client = ctx.client;
    let Some(id) = hv(&h, "x-upload-session-id") else {
        // Creation.
        let name = hv(&h, "x-filename").ok_or(ApiError::BadRequest("X-Filename is required"))?;
        let name = percent_encoding::percent_decode_str(&name)
            .decode_utf8()
            .map_err(|_| ApiError::PathEncoding)?
            .into_owned();
        let total: u64 =
            hv(&h, "x-total-size")
                .and_then(|v| v.parse().ok())
                .ok_or(ApiError::BadRequest(
                    "X-Total-Size must be a non-negative integer",
                ))?;
        let max = ctx.config.storage.max_file_size.as_u64();
        if total > max {
            return Err(ApiError::TooLarge { max });
        }
        let grant =
            super::authorize_creation(state, &h, req.uri().query(), Some(&name), Some(total), None)
                .await?;
        // One unfinished upload per target: a repeated creation gets the same session back.
        if let Some(existing) = store.open_for_target(grant.target.as_str(), Protocol::Chunked) {
            let m = existing.meta();
            if m.length != Some(total) {
                return Err(ApiError::Conflict(
                    "an upload of this target is already in progress",
                ));
            }
            return Ok(json(
                StatusCode::CREATED,
                serde_json::json!({
                    "session_id": existing.id,
                    "chunk_size": m.chunk_size.unwrap_or(0),
                    "total_chunks": m.chunks.len(),
                }),
            ));
        }
        let chunk_size = state.engine.chunk_advice(&client).min(total.max(1));
        if state.storage.writes_in_order_only() && total > chunk_size {
            return Err(ApiError::NotImplemented(
                "chunks in any order need the filesystem backend; upload with tus here",
            ));
        }
        let content_type = crate::storage::guess_type(grant.target.file_name());
        let s = store
            .create(NewSession {
                protocol: Protocol::Chunked,
                target: Some(grant.target),
                length: Some(total),
                grant_size: grant.grant_size,
                content_type,
                metadata: None,
                partial: false,
                chunk_size: Some(chunk_size),
                uploader: grant.uploader,
                file_expires: grant.file_expires,
            })
            .await?;
        let m = s.meta();
        if total == 0 {
            let mut g = store.acquire(&s, false).await?;
            store.complete(&state.engine, &s, &mut g).await?;
        }
        return Ok(json(
            StatusCode::CREATED,
            serde_json::json!({
                "session_id": s.id,
                "chunk_size": chunk_size,
                "total_chunks": m.chunks.len(),
            }),
        ));
    };
    let index: usize = hv(&h, "x-chunk-number")
        .and_then(|v| v.parse().ok())
        .ok_or(ApiError::BadRequest(
            "X-Chunk-Number must be a non-negative integer",
        ))?;
    let s = store.get_for(&id, Protocol::Chunked).await?;
    // Chunks of one session are written one at a time (in any order), never preempted.
    let mut guard = store.acquire(&s, false).await?;
    if s.meta().completed {
        return Err(ApiError::Conflict("upload is already complete"));
    }
    let before = s.meta().offset;
    let mut m = store
        .write_chunk(
            &state.engine,
            &s,
            &mut guard,
            req.into_body(),
            index,
            &client,
        )
        .await?;
    state
        .metrics
        .upload_bytes
        .inc_by(m.offset.saturating_sub(before));
    let mut status = StatusCode::OK;
    if m.chunks.iter().all(|c| *c) {
        m = store.complete(&state.engine, &s, &mut guard).await?;
        status = StatusCode::CREATED;
    }
    let mut body = progress_json(state, &m);
    body["success"] = serde_json::Value::Bool(true);
    body["chunk_number"] = serde_json::json!(index);
    Ok(json(status, body))
}

/// `GET /upload-status?session_id=<id>`.
pub async fn status(
    state: &Arc<AppState>,
    _ctx: &RequestContext<'_>,
    req: Request<ReqBody>,
) -> Response<ResBody> {
    let r = async {
        let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
        let id = req
            .uri()
            .query()
            .and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "session_id")
                    .map(|(_, v)| v.into_owned())
            })
            .ok_or(ApiError::BadRequest(
                "session_id query parameter is required",
            ))?;
        let s = store.get_for(&id, Protocol::Chunked).await?;
        Ok::<_, ApiError>(json(StatusCode::OK, progress_json(state, &s.meta())))
    };
    r.await.unwrap_or_else(ApiError::into_response)
}
