//! IETF resumable uploads (draft-ietf-httpbis-resumable-upload, interop versions 3 to 8;
//! protocols.md §4) over the session core.
//!
//! - creation: `POST|PUT /resumable/<target path>?<grant>` (a `PATCH` to a path that is not a
//!   session id creates too), with `Upload-Complete: ?1|?0` (interop 3: the inverse
//!   `Upload-Incomplete`), optional `Upload-Length`, and the first bytes as body. The grant is
//!   a PUT grant of the target; it binds `Upload-Length`, or the body length when the upload is
//!   complete in one request, or a `size` query parameter.
//! - offset retrieval: `HEAD /resumable/<id>` → `Upload-Offset`, `Upload-Complete`,
//!   `Upload-Length` when known, `Upload-Limit` (with the engine's chunk advice as
//!   `max-append-size`), `Cache-Control: no-store`; it takes over from an in-flight append.
//! - append: `PATCH /resumable/<id>` (`Content-Type: application/partial-upload` from interop
//!   6), `Upload-Offset`, `Upload-Complete`; a wrong offset → 409 with the right one.
//! - cancel: `DELETE /resumable/<id>` → 204.
//!
//! The optional 104 (Upload Resumption Supported) interim response is not sent: hyper 1.x has
//! no API for 1xx responses other than 100-continue. Clients learn the upload URL from the 201.

use std::sync::Arc;

use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::error::ApiError;
use crate::response::{empty, ResBody};
use crate::state::AppState;
use crate::upload::session::{is_session_id, NewSession, Protocol, Session, SessionMeta};
use crate::upload::{header_text as hv, header_u64 as parse_u64, set_header as set};

/// Newest interop version spoken (the default when a client sends none).
pub const LATEST_INTEROP: u32 = 8;

/// The interop version a request speaks (3..=8).
pub fn interop_version(h: &HeaderMap) -> Result<u32, ApiError> {
    match hv(h, "upload-draft-interop-version") {
        None => Ok(LATEST_INTEROP),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (3..=LATEST_INTEROP).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(
                "unsupported Upload-Draft-Interop-Version (3 to 8)",
            )),
        },
    }
}

/// A structured-field boolean: `?1` / `?0`.
fn sf_bool(v: &str) -> Option<bool> {
    match v {
        "?1" => Some(true),
        "?0" => Some(false),
        _ => None,
    }
}

/// Whether the request says the upload is complete with this request (`None`: not said).
pub fn complete_flag(h: &HeaderMap, version: u32) -> Result<Option<bool>, ApiError> {
    if version == 3 {
        return match hv(h, "upload-incomplete") {
            None => Ok(None),
            Some(v) => sf_bool(&v)
                .map(|inc| Some(!inc))
                .ok_or(ApiError::BadRequest("Upload-Incomplete must be ?0 or ?1")),
        };
    }
    match hv(h, "upload-complete") {
        None => Ok(None),
        Some(v) => sf_bool(&v)
            .map(Some)
            .ok_or(ApiError::BadRequest("Upload-Complete must be ?0 or ?1")),
    }
}

fn set_complete(r: &mut Response<ResBody>, version: u32, complete: bool) {
    if version == 3 {
        set(r, "upload-incomplete", if complete { "?0" } else { "?1" });
    } else {
        set(r, "upload-complete", if complete { "?1" } else { "?0" });
    }
}

fn location(state: &AppState, id: &str) -> String {
    format!("{}/resumable/{id}", state.config.server.url_prefix)
}

fn upload_limit(state: &AppState, client: &crate::engine::Client) -> String {
    format!(
        "max-size={}, max-append-size={}, max-age={}",
        state.config.storage.max_file_size.as_u64(),
        state.engine.chunk_advice(client),
        state.config.resumable.session_ttl.as_secs()
    )
}

pub async fn handle(
    state: &Arc<AppState>,
    rest: &str,
    req: Request<Incoming>,
) -> Response<ResBody> {
    let version = interop_version(req.headers()).unwrap_or(LATEST_INTEROP);
    match handle_inner(state, rest, req).await {
        Ok(r) => r,
        Err((e, offset)) => {
            let mut r = e.into_response();
            if let Some(o) = offset {
                set(&mut r, "upload-offset", &o.to_string());
                set_complete(&mut r, version, false);
            }
            r
        }
    }
}

type Failure = (ApiError, Option<u64>);

fn plain(e: ApiError) -> Failure {
    (e, None)
}

async fn handle_inner(
    state: &Arc<AppState>,
    rest: &str,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Failure> {
    let store = state.sessions.clone().ok_or(plain(ApiError::NotFound))?;
    let version = interop_version(req.headers()).map_err(plain)?;
    let rest = rest.trim_start_matches('/');
    let method = req.method().clone();
    let session_op = is_session_id(rest)
        && matches!(
            method,
            Method::HEAD | Method::PATCH | Method::DELETE | Method::GET
        );
    if !session_op {
        return match method {
            Method::POST | Method::PUT | Method::PATCH => create(state, rest, version, req).await,
            _ => Err(plain(ApiError::MethodNotAllowed {
                allow: "OPTIONS, POST, PUT, PATCH, HEAD, DELETE",
            })),
        };
    }
    let session = store.get_for(rest, Protocol::Ietf).await.map_err(plain)?;
    let client = crate::router::client_of(state, &req);
    match method {
        Method::HEAD | Method::GET => {
            drop(store.acquire(&session, true).await);
            Ok(offset_response(
                state,
                &session.meta(),
                version,
                &client,
                StatusCode::NO_CONTENT,
            ))
        }
        Method::DELETE => {
            store.remove(&session, "terminated").await;
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        _ => append(state, &session, version, req).await,
    }
}

fn offset_response(
    state: &AppState,
    m: &SessionMeta,
    version: u32,
    client: &crate::engine::Client,
    status: StatusCode,
) -> Response<ResBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    set(&mut r, "upload-offset", &m.offset.to_string());
    set_complete(&mut r, version, m.completed);
    if let Some(l) = m.length {
        set(&mut r, "upload-length", &l.to_string());
    }
    set(&mut r, "upload-limit", &upload_limit(state, client));
    set(&mut r, "cache-control", "no-store");
    r
}

async fn append(
    state: &Arc<AppState>,
    s: &Arc<Session>,
    version: u32,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Failure> {
    let store = state.sessions.clone().ok_or(plain(ApiError::NotFound))?;
    let h = req.headers();
    if version >= 6 {
        let ct = hv(h, "content-type").unwrap_or_default();
        if !ct.eq_ignore_ascii_case("application/partial-upload") {
            return Err(plain(ApiError::UnsupportedMediaType(
                "append needs Content-Type: application/partial-upload",
            )));
        }
    }
    let offset = parse_u64(h, "upload-offset")
        .map_err(plain)?
        .ok_or(plain(ApiError::BadRequest("Upload-Offset is required")))?;
    let complete = complete_flag(h, version)
        .map_err(plain)?
        .ok_or(plain(ApiError::BadRequest("Upload-Complete is required")))?;
    let length = parse_u64(h, "upload-length").map_err(plain)?;
    let content_length = parse_u64(h, "content-length").map_err(plain)?;
    let client = crate::router::client_of(state, &req);
    let mut guard = store.acquire(s, true).await;
    let m = s.meta();
    if m.completed {
        return Err((
            ApiError::Conflict("upload is already complete"),
            Some(m.offset),
        ));
    }
    if offset != m.offset {
        return Err((
            ApiError::Conflict("Upload-Offset does not match the upload's offset"),
            Some(m.offset),
        ));
    }
    if let Some(l) = length {
        if m.length.is_some_and(|cur| cur != l)
            || m.grant_size.is_some_and(|g| g != l)
            || l < m.offset
        {
            return Err(plain(ApiError::BadRequest(
                "Upload-Length is inconsistent with the upload",
            )));
        }
        if m.length.is_none() {
            store.set_length(s, l).await.map_err(plain)?;
        }
    }
    let m = s.meta();
    let max_file = state.config.storage.max_file_size.as_u64();
    let limit = m.length.or(m.grant_size).unwrap_or(max_file).min(max_file);
    let remaining = limit.saturating_sub(m.offset);
    if content_length.is_some_and(|n| n > remaining) {
        return Err(plain(ApiError::TooLarge { max: remaining }));
    }
    let appended = store
        .append(
            &state.engine,
            s,
            &mut guard,
            req.into_body(),
            content_length,
            remaining,
            None,
            &client,
        )
        .await
        .map_err(plain)?;
    state.metrics.upload_bytes.inc_by(appended.offset - offset);
    let mut m = s.meta();
    if complete && !appended.interrupted {
        m = finish(state, s, &mut guard, appended.offset).await?;
    }
    let status = if m.completed {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    };
    let mut r = offset_response(state, &m, version, &client, status);
    if m.completed {
        set(&mut r, "location", &location(state, &s.id));
    }
    Ok(r)
}

/// The client says this is all: the length is what arrived (and must match any declared or
/// signed length); publish.
async fn finish(
    state: &Arc<AppState>,
    s: &Arc<Session>,
    guard: &mut crate::upload::session::WriteGuard<'_>,
    offset: u64,
) -> Result<SessionMeta, Failure> {
    let store = state.sessions.clone().ok_or(plain(ApiError::NotFound))?;
    let m = s.meta();
    if m.length.is_some_and(|l| l != offset) || m.grant_size.is_some_and(|g| g != offset) {
        return Err((
            ApiError::Conflict("upload marked complete but its length does not match"),
            Some(offset),
        ));
    }
    if m.length.is_none() {
        store.set_length(s, offset).await.map_err(plain)?;
    }
    store.complete(&state.engine, s, guard).await.map_err(plain)
}

async fn create(
    state: &Arc<AppState>,
    rest: &str,
    version: u32,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Failure> {
    let store = state.sessions.clone().ok_or(plain(ApiError::NotFound))?;
    let h = req.headers().clone();
    let complete =
        complete_flag(&h, version)
            .map_err(plain)?
            .ok_or(plain(ApiError::BadRequest(
                "Upload-Complete is required to create a resumable upload",
            )))?;
    let length = parse_u64(&h, "upload-length").map_err(plain)?;
    let content_length = parse_u64(&h, "content-length").map_err(plain)?;
    let max_file = state.config.storage.max_file_size.as_u64();
    if length.is_some_and(|l| l > max_file) || content_length.is_some_and(|l| l > max_file) {
        return Err(plain(ApiError::TooLarge { max: max_file }));
    }
    // What the grant binds: the declared length, or the whole body when complete now.
    let signed = length.or(if complete { content_length } else { None });
    let decoded = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| plain(ApiError::PathEncoding))?;
    let grant = super::authorize_creation(
        state,
        &h,
        req.uri().query(),
        Some(decoded.as_ref()),
        signed,
        None,
    )
    .map_err(plain)?;
    if let (Some(g), Some(l)) = (grant.grant_size, length) {
        if g != l {
            return Err(plain(ApiError::BadRequest(
                "Upload-Length does not match the grant",
            )));
        }
    }
    let ct = hv(&h, "content-type").filter(|t| {
        !t.eq_ignore_ascii_case("application/partial-upload")
            && t.contains('/')
            && t.len() <= 255
            && t.is_ascii()
    });
    let content_type = ct.unwrap_or_else(|| crate::storage::guess_type(grant.target.file_name()));
    if store
        .open_for_target(grant.target.as_str(), Protocol::Ietf)
        .is_some()
    {
        return Err(plain(ApiError::Conflict(
            "an upload of this target is already in progress",
        )));
    }
    let session = store
        .create(NewSession {
            protocol: Protocol::Ietf,
            target: Some(grant.target),
            length,
            grant_size: grant.grant_size,
            content_type,
            metadata: None,
            partial: false,
            chunk_size: None,
            uploader: grant.uploader,
        })
        .await
        .map_err(plain)?;
    let client = crate::router::client_of(state, &req);
    let m = session.meta();
    let limit = m.length.or(m.grant_size).unwrap_or(max_file).min(max_file);
    let mut guard = store.acquire(&session, true).await;
    let appended = store
        .append(
            &state.engine,
            &session,
            &mut guard,
            req.into_body(),
            content_length,
            limit,
            None,
            &client,
        )
        .await
        .map_err(plain)?;
    state.metrics.upload_bytes.inc_by(appended.offset);
    let mut m = session.meta();
    if complete && !appended.interrupted {
        m = finish(state, &session, &mut guard, appended.offset).await?;
    }
    let mut r = offset_response(state, &m, version, &client, StatusCode::CREATED);
    set(&mut r, "location", &location(state, &session.id));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn interop_3_uses_inverse_upload_incomplete() {
        let h = headers(&[("upload-incomplete", "?1")]);
        assert_eq!(complete_flag(&h, 3).unwrap(), Some(false));
        let h = headers(&[("upload-incomplete", "?0")]);
        assert_eq!(complete_flag(&h, 3).unwrap(), Some(true));
        // Later versions ignore it and read Upload-Complete.
        assert_eq!(complete_flag(&h, 5).unwrap(), None);
        let h = headers(&[("upload-complete", "?1")]);
        assert_eq!(complete_flag(&h, 8).unwrap(), Some(true));
        let h = headers(&[("upload-complete", "yes")]);
        assert!(complete_flag(&h, 8).is_err());
    }

    #[test]
    fn interop_version_range() {
        assert_eq!(interop_version(&HeaderMap::new()).unwrap(), LATEST_INTEROP);
        assert_eq!(
            interop_version(&headers(&[("upload-draft-interop-version", "6")])).unwrap(),
            6
        );
        assert!(interop_version(&headers(&[("upload-draft-interop-version", "2")])).is_err());
        assert!(interop_version(&headers(&[("upload-draft-interop-version", "9")])).is_err());
    }
}
