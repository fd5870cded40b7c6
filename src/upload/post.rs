//! POST multipart/form-data upload for browser forms: field `file` is streamed (multer) through
//! the engine into staging and published like a PUT. The grant is a PUT grant of the target:
//! `?v=...&size=N` (size-bound modes sign `N`, the exact size of the file field), `?v3=...`,
//! or a Bearer JWT. JSON response.

use std::sync::Arc;

use crate::body::ReqBody;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::context::RequestContext;
use crate::engine::{EngineError, Expect, Sink};
use crate::error::ApiError;
use crate::metrics::GaugeGuard;
use crate::response::{full, ResBody};
use crate::state::AppState;
use crate::storage::FileMeta;

pub async fn handle(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    raw_path: &str,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(ct).map_err(|_| {
        ApiError::UnsupportedMediaType("POST of a file needs multipart/form-data with a boundary")
    })?;
    let max = ctx.config.storage.max_file_size.as_u64();
    let grant = super::authorize_creation(
        state,
        req.headers(),
        req.uri().query(),
        Some(raw_path),
        None,
        None,
    )
    .await?;
    let target = grant.target;
    let exact = grant.grant_size;
    if exact.is_some_and(|n| n > max) {
        return Err(ApiError::TooLarge { max });
    }
    state.storage.check_free(&target).await?;
    let client = ctx.client;
    let body = req.into_body().into_data_stream();
    let mut form = multer::Multipart::new(body, boundary);
    let field = loop {
        match form.next_field().await {
            Ok(Some(f)) if f.name() == Some("file") => break f,
            Ok(Some(_)) => continue,
            Ok(None) => return Err(ApiError::BadRequest("form has no field named 'file'")),
            Err(_) => return Err(ApiError::BadRequest("malformed multipart body")),
        }
    };
    let content_type = field
        .content_type()
        .map(|m| m.essence_str().to_owned())
        .filter(|t| t != "application/octet-stream")
        .unwrap_or_else(|| crate::storage::guess_type(target.file_name()));
    let frames = StreamBody::new(field.map(|r| r.map(Frame::data)));
    let frames = http_body_util::combinators::UnsyncBoxBody::new(
        frames.map_err(|e: multer::Error| e.to_string()),
    );

    let staged = state.storage.stage().await?;
    let _in_flight = GaugeGuard::new(&state.metrics.uploads_in_flight);
    let sink = state
        .engine
        .receive(
            frames,
            Sink::new(staged),
            Expect {
                exact,
                max: exact.unwrap_or(max),
            },
            &client,
        )
        .await
        .map_err(|e| match e {
            EngineError::TooLarge => ApiError::TooLarge {
                max: exact.unwrap_or(max),
            },
            EngineError::Client(_) => ApiError::BadRequest("malformed or truncated multipart body"),
            other => ApiError::from(other),
        })?;
    let size = sink.written;
    state.metrics.upload_bytes.inc_by(size);
    let sha256 = hex::encode(sha2::Digest::finalize(sink.hasher.clone()));
    let now = state.clock.now_secs();
    let meta = FileMeta {
        size,
        sha256: sha256.clone(),
        content_type: content_type.clone(),
        uploaded_at: now,
        expires_at: state
            .config()
            .retention
            .expires_at(target.as_str(), now, grant.file_expires),
        uploader: grant.uploader.clone(),
    };
    let uploader = grant.uploader;
    state.storage.commit(sink.staged, &target, &meta).await?;
    state.space.added(size);
    state.audit.upload(crate::admin::audit::UploadEvent {
        path: target.as_str(),
        size,
        sha256: &sha256,
        uploader: uploader.as_deref(),
        client: client.ip,
        route: "form",
    });
    state.metrics.uploads.with_label_values(&["created"]).inc();
    let url = super::file_url(state, &target);
    let json = serde_json::json!({
        "path": target.as_str(),
        "url": url,
        "size": size,
        "sha256": sha256,
        "content_type": content_type,
    });
    let mut res = Response::new(full(Bytes::from(json.to_string())));
    *res.status_mut() = StatusCode::CREATED;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&url) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}
