//! IETF resumable uploads (draft-ietf-httpbis-resumable-upload, interop versions 3 to 8;
//! protocols.md §4) over the session core. Each rule that differs between interop versions
//! cites the draft section it follows (`-NN` is draft -NN; the table is protocols.md §4.3).
//!
//! - creation: `POST|PUT /resumable/<target path>?<grant>` (a `PATCH` without `Upload-Offset`
//!   to a path that is not a session id creates too), with `Upload-Complete: ?1|?0` (interop 3:
//!   the inverse `Upload-Incomplete`), optional `Upload-Length`, and the first bytes as body.
//!   The grant is a PUT grant of the target; it binds `Upload-Length`, or the body length when
//!   the upload is complete in one request, or a `size` query parameter.
//! - offset retrieval: `HEAD /resumable/<id>` → `Upload-Offset`, `Upload-Complete`,
//!   `Upload-Length` when known, `Upload-Limit` (from interop 6: `max-size` and the remaining
//!   lifetime), `Cache-Control: no-store`; it takes over from an in-flight append.
//! - append: `PATCH /resumable/<id>` (`Content-Type: application/partial-upload` from interop
//!   6), `Upload-Offset`, `Upload-Complete`; a wrong offset → 409 with the right one.
//! - cancel: `DELETE /resumable/<id>` → 204.
//! - `OPTIONS /resumable/...` ([`options`]): `Upload-Limit` and `Accept-Patch` from interop 6.
//!
//! The optional 104 (Upload Resumption Supported) interim response is not sent: hyper 1.x has
//! no API for 1xx responses other than 100-continue. Clients learn the upload URL from the 201.

use std::sync::Arc;

use crate::body::ReqBody;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body as _;

use crate::context::RequestContext;
use crate::error::ApiError;
use crate::response::{empty, ResBody};
use crate::state::AppState;
use crate::upload::session::{is_session_id, NewSession, Protocol, Session, SessionMeta};
use crate::upload::session::{SessionStore, WriteGuard};
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

/// What an append without the completeness field means.
pub fn append_complete_default(version: u32) -> Option<bool> {
    match version {
        // -01 §5: complete when `Upload-Incomplete` is "omitted or set to false"; §6.
        3 => Some(true),
        // -02..-05 §5: complete "only if" `Upload-Complete` was set to true; the §6 examples.
        4..=6 => Some(false),
        // -06..-11 §4.4.1: the client "MUST include" `Upload-Complete`: no default.
        _ => None,
    }
}

/// HEAD and DELETE must not carry upload fields: `Some(reason)` → 400.
pub fn forbidden_upload_field(h: &HeaderMap, version: u32, head: bool) -> Option<&'static str> {
    let has = |n: &str| h.contains_key(n);
    match version {
        // -01 §5 (offset retrieving), §7 (cancellation).
        3 if has("upload-offset") || has("upload-incomplete") => {
            Some("this request must not carry Upload-Offset or Upload-Incomplete")
        }
        // -02..-05 §5, §7.
        4..=6 if has("upload-offset") || has("upload-complete") => {
            Some("this request must not carry Upload-Offset or Upload-Complete")
        }
        // -05 §5: offset retrieval must not carry `Upload-Length` either.
        6 if head && has("upload-length") => Some("HEAD must not carry Upload-Length"),
        // -06..-11 say nothing: plain HTTP.
        _ => None,
    }
}

/// Status of a successful append that leaves the upload incomplete.
pub fn incomplete_append_status(version: u32) -> StatusCode {
    if version <= 6 {
        // -01 §6: "201 (Created) … Upload-Incomplete set to true"; -02..-05 §6: "201 (Created)"
        // (their "set to true" contradicts §4 and §5: an erratum, `Upload-Complete: ?0` is sent).
        StatusCode::CREATED
    } else {
        // -06..-11 §4.4.2: "a 2xx (Successful) response" with `Upload-Complete: ?0`.
        StatusCode::NO_CONTENT
    }
}

/// The `Upload-Limit` value; `lifetime` is the remaining lifetime in seconds.
pub fn upload_limit(max_size: u64, version: u32, lifetime: u64) -> Option<String> {
    let lifetime_key = match version {
        // The field exists from -04 (interop 6).
        ..=5 => return None,
        // -04/-05 §8.2: `expires`, the remaining lifetime "counted from the generation of the
        // response".
        6 => "expires",
        // -06 §4.1.4 renames it `max-age` (same meaning through -11 §4.1.4).
        _ => "max-age",
    };
    // `max-size` is a constant, so the stability rules hold (-04/-05 §4, -06..-11 §4.1.4).
    // No `max-append-size`: the engine's chunk advice changes between requests, and the
    // value may not change (-06..-09 §4.1.4) or decrease (-10/-11 §4.1.4).
    Some(format!("max-size={max_size}, {lifetime_key}={lifetime}"))
}

/// `OPTIONS` on `/resumable/...`. A browser preflight carries no interop header: 8.
pub fn options(state: &AppState, version: u32, res: &mut Response<ResBody>) {
    if state.sessions.is_none() {
        return;
    }
    // -05 §8.2, -06..-09 §4.1.4: `Upload-Limit` MUST be in the OPTIONS response of a creation
    // target; -10/-11 §4.1.4: SHOULD. Before any upload exists the lifetime is the full ttl.
    let ttl = state.config().resumable.session_ttl.as_secs();
    let max_size = state.config().storage.max_file_size.as_u64();
    if let Some(limit) = upload_limit(max_size, version, ttl) {
        set(res, "upload-limit", &limit);
    }
    if version >= 6 {
        // -10/-11 §4.1.4: `Accept-Patch` MUST list `application/partial-upload`; from -04 §6
        // appends must use that type, so saying it from interop 6 on is accurate.
        set(res, "accept-patch", PARTIAL_UPLOAD);
    }
}

const PARTIAL_UPLOAD: &str = "application/partial-upload";

fn set_complete(r: &mut Response<ResBody>, version: u32, complete: bool) {
    if version == 3 {
        set(r, "upload-incomplete", if complete { "?0" } else { "?1" });
    } else {
        set(r, "upload-complete", if complete { "?1" } else { "?0" });
    }
}

fn location(state: &AppState, id: &str) -> String {
    format!("{}/resumable/{id}", state.config().server.url_prefix)
}

/// RFC 9457 problem types of the drafts, and the interop version that defines each.
#[derive(Debug, Clone, Copy)]
enum Problem {
    /// -04/-05 §10.1, -06 §6.1, -09 §7.1.
    MismatchingOffset { expected: u64, provided: u64 },
    /// -04/-05 §10.2, -06 §6.2, -09 §7.2.
    CompletedUpload,
    /// -06 §6.3, -09 §7.3.
    InconsistentLength,
}

impl Problem {
    fn body(self, version: u32) -> Option<String> {
        let (name, title, since) = match self {
            Problem::MismatchingOffset { .. } => (
                "mismatching-upload-offset",
                "offset from request does not match offset of resource",
                6,
            ),
            Problem::CompletedUpload => ("completed-upload", "upload is already completed", 6),
            Problem::InconsistentLength => (
                "inconsistent-upload-length",
                "inconsistent length values for upload",
                7,
            ),
        };
        if version < since {
            return None;
        }
        let mut v = serde_json::json!({
            "type": format!("https://iana.org/assignments/http-problem-types#{name}"),
            "title": title,
        });
        if let Problem::MismatchingOffset { expected, provided } = self {
            v["expected-offset"] = expected.into();
            v["provided-offset"] = provided.into();
        }
        Some(v.to_string())
    }
}

/// A refusal, with what its response reports about the upload.
struct Failure {
    error: ApiError,
    /// The upload's offset and the completeness to report: -01..-05 §6 want `Upload-Offset`
    /// on failures too, -06..-09 §4.4.2 `Upload-Complete: ?0` on non-completing ones.
    upload: Option<(u64, bool)>,
    /// `Location` of the completed upload (-10/-11 §4.4.2, with 410).
    location: Option<String>,
    problem: Option<Problem>,
}

impl From<crate::upload::session::SessionError> for Failure {
    fn from(error: crate::upload::session::SessionError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            upload: None,
            location: None,
            problem: None,
        }
    }
}

impl Failure {
    /// Report the upload's state (unless a more precise one was set).
    fn at(mut self, m: &SessionMeta, version: u32) -> Self {
        // v ≤ 6: the true state; v ≥ 7: every response that did not complete the upload says
        // `Upload-Complete: ?0` (-06..-09 §4.4.2; -10/-11 no longer require it).
        self.upload
            .get_or_insert((m.offset, m.completed && version <= 6));
        self
    }

    fn problem(mut self, p: Problem) -> Self {
        self.problem = Some(p);
        self
    }

    fn into_response(self, version: u32) -> Response<ResBody> {
        let error = match self.error {
            // -01 §5/§6/§7, -02..-05 §5/§6/§7: an upload that is not active (cancelled,
            // expired) → 404. From -06 the drafts defer to HTTP: 410 (RFC 9110 §15.5.11).
            ApiError::SessionGone if version <= 6 => ApiError::SessionNotFound,
            e => e,
        };
        let unsupported = matches!(error, ApiError::UnsupportedMediaType(_));
        let mut r = error.into_response();
        if let Some(body) = self.problem.and_then(|p| p.body(version)) {
            *r.body_mut() = crate::response::full(body);
            set(&mut r, "content-type", "application/problem+json");
        }
        if let Some((offset, complete)) = self.upload {
            set(&mut r, "upload-offset", &offset.to_string());
            set_complete(&mut r, version, complete);
        }
        if let Some(l) = self.location {
            set(&mut r, "location", &l);
        }
        if unsupported && version >= 6 {
            // RFC 5789 §2.2 (415 with `Accept-Patch`); -04/-05 §6, -06..-11 §4.4.1.
            set(&mut r, "accept-patch", PARTIAL_UPLOAD);
        }
        r
    }
}

pub async fn handle(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    rest: &str,
    req: Request<ReqBody>,
) -> Response<ResBody> {
    let version = interop_version(req.headers()).unwrap_or(LATEST_INTEROP);
    match handle_inner(state, ctx, rest, req).await {
        Ok(r) => r,
        Err(f) => f.into_response(version),
    }
}

async fn handle_inner(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    rest: &str,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, Failure> {
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    let version = interop_version(req.headers())?;
    let rest = rest.trim_start_matches('/');
    let method = req.method().clone();
    let is_id = is_session_id(rest);
    match method {
        Method::POST | Method::PUT => return create(state, ctx, rest, version, req).await,
        Method::PATCH if !is_id => {
            // a creation "MUST NOT include" `Upload-Offset` (-01..-05 §4); with it the
            // request is an append (-01 §8) to an upload that is not active → 404 (-01 §6,
            // -02..-05 §6; RFC 9110 §15.5.5 from -06 on). No file is created from it.
            if req.headers().contains_key("upload-offset") {
                return Err(ApiError::SessionNotFound.into());
            }
            return create(state, ctx, rest, version, req).await;
        }
        // HEAD/DELETE of a URL that is no upload resource: not active → 404 (-01 §5, §7;
        // -02..-05 §5, §7; RFC 9110 §15.5.5 from -06 on). GET answers like HEAD.
        Method::HEAD | Method::GET | Method::DELETE if !is_id => {
            return Err(ApiError::SessionNotFound.into())
        }
        Method::HEAD | Method::GET | Method::DELETE | Method::PATCH => {}
        _ => {
            return Err(ApiError::MethodNotAllowed {
                allow: if is_id {
                    "OPTIONS, HEAD, GET, POST, PUT, PATCH, DELETE"
                } else {
                    "OPTIONS, POST, PUT, PATCH"
                },
            }
            .into())
        }
    }
    if method != Method::PATCH {
        // checked before the lookup, so it holds for unknown uploads too.
        let head = method != Method::DELETE;
        if let Some(reason) = forbidden_upload_field(req.headers(), version, head) {
            return Err(ApiError::BadRequest(reason).into());
        }
    }
    let session = store.get_for(rest, Protocol::Ietf).await?;
    match method {
        Method::HEAD | Method::GET => {
            drop(store.acquire(&session, true).await?);
            Ok(offset_response(
                state,
                &session.meta(),
                version,
                StatusCode::NO_CONTENT,
            ))
        }
        Method::DELETE => {
            // -01..-05 §7: 204 MUST; -06..-08 §4.5.2: 204 MUST; -09..-11 §4.5.2: example 204.
            store.remove(&session, "terminated").await;
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        _ => append(state, ctx, &session, version, req)
            .await
            .map_err(|f| f.at(&session.meta(), version)),
    }
}

fn offset_response(
    state: &AppState,
    m: &SessionMeta,
    version: u32,
    status: StatusCode,
) -> Response<ResBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    set(&mut r, "upload-offset", &m.offset.to_string());
    set_complete(&mut r, version, m.completed);
    if let Some(l) = m.length {
        set(&mut r, "upload-length", &l.to_string());
    }
    // the remaining lifetime of this upload (-04/-05 §8.2, -06..-11 §4.1.4).
    let now = state
        .sessions
        .as_ref()
        .map_or_else(crate::upload::unix_now, |s| s.now());
    let lifetime = m.expires_at.saturating_sub(now);
    let max_size = state.config().storage.max_file_size.as_u64();
    if let Some(limit) = upload_limit(max_size, version, lifetime) {
        set(&mut r, "upload-limit", &limit);
    }
    set(&mut r, "cache-control", "no-store");
    r
}

/// A request whose content would pass what the upload may hold. `length_known`: the
/// bound is the upload's length (declared or signed), not only `storage.max_file_size`.
fn over_limit(version: u32, length_known: bool, remaining: u64) -> Failure {
    if length_known && version >= 6 {
        // -05 §6: "reject the request with a 400 (Bad Request)"; -06..-11 §4.1.3 and §4.4.2
        // (problem type `inconsistent-upload-length`).
        Failure::from(ApiError::BadRequest(
            "the request goes past the upload's length",
        ))
        .problem(Problem::InconsistentLength)
    } else {
        // Only `max-size` is passed: -06..-11 §4.1.4 leave the reaction open; 413 is RFC 9110
        // §15.5.14.
        ApiError::TooLarge { max: remaining }.into()
    }
}

/// After the engine stopped a body at the upload's length: from -08 §4.4.2 (and -09..-11
/// §4.4.2) the server marks the upload "invalid and [rejects] any further interaction"; the
/// drafts of interop 7 agree, so it applies from 7.
async fn invalidate_if_over_length(
    store: &Arc<SessionStore>,
    s: &Arc<Session>,
    guard: WriteGuard<'_>,
    version: u32,
    length_known: bool,
    e: ApiError,
    remaining: u64,
) -> Failure {
    if !matches!(e, ApiError::TooLarge { .. }) {
        return e.into();
    }
    // Removal waits for the writer lock.
    drop(guard);
    if length_known && version >= 7 {
        store.remove(s, "terminated").await;
    }
    over_limit(version, length_known, remaining)
}

async fn append(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    s: &Arc<Session>,
    version: u32,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, Failure> {
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    let h = req.headers();
    if version >= 6 {
        // -04/-05 §6, -06..-11 §4.4.1: appends use `application/partial-upload`.
        let ct = hv(h, "content-type").unwrap_or_default();
        if !ct.eq_ignore_ascii_case(PARTIAL_UPLOAD) {
            return Err(ApiError::UnsupportedMediaType(
                "append needs Content-Type: application/partial-upload",
            )
            .into());
        }
    }
    let offset =
        parse_u64(h, "upload-offset")?.ok_or(ApiError::BadRequest("Upload-Offset is required"))?;
    // the completeness field's default differs per version.
    let complete = complete_flag(h, version)?
        .or(append_complete_default(version))
        .ok_or(ApiError::BadRequest("Upload-Complete is required"))?;
    let length = parse_u64(h, "upload-length")?;
    let content_length = parse_u64(h, "content-length")?;
    let empty_body = content_length == Some(0) || req.body().is_end_stream();
    let client = ctx.client;
    let mut guard = store.acquire(s, true).await?;
    let m = s.meta();
    if m.completed {
        return Err(completed_refusal(state, &m, version, empty_body));
    }
    if offset != m.offset {
        // -01..-05 §6, -06..-11 §4.4.2: 409 with the right `Upload-Offset`.
        return Err(Failure::from(ApiError::Conflict(
            "Upload-Offset does not match the upload's offset",
        ))
        .problem(Problem::MismatchingOffset {
            expected: m.offset,
            provided: offset,
        }));
    }
    // every length indicator must agree with the recorded one, and the first one is
    // recorded: -02..-05 §6 ("MUST record … MUST match … 400"), -06..-11 §4.1.3, §4.4.2.
    let inconsistent = || {
        Failure::from(ApiError::BadRequest(
            "the upload's length indicators do not match",
        ))
        .problem(Problem::InconsistentLength)
    };
    let implied = match (complete, content_length) {
        (true, Some(n)) => Some(m.offset.checked_add(n).ok_or_else(inconsistent)?),
        _ => None,
    };
    for l in [length, implied].into_iter().flatten() {
        let m = s.meta();
        if m.length.or(m.grant_size).is_some_and(|cur| cur != l) || l < m.offset {
            return Err(inconsistent());
        }
        if m.length.is_none() {
            store.set_length(s, l).await?;
        }
    }
    let m = s.meta();
    let max_file = ctx.config.storage.max_file_size.as_u64();
    let known = m.length.or(m.grant_size).filter(|&l| l <= max_file);
    let remaining = known.unwrap_or(max_file).saturating_sub(m.offset);
    if content_length.is_some_and(|n| n > remaining) {
        return Err(over_limit(version, known.is_some(), remaining));
    }
    // RFC 9530: a Content-Digest describes this request's bytes (the draft's §"Integrity").
    let check = super::content_digest_check(req.headers())?;
    let appended = store
        .append(
            &state.engine,
            s,
            &mut guard,
            req.into_body(),
            content_length,
            remaining,
            check,
            &client,
        )
        .await;
    let appended = match appended {
        Ok(a) => a,
        Err(e) => {
            let known = known.is_some();
            return Err(invalidate_if_over_length(
                &store,
                s,
                guard,
                version,
                known,
                e.into(),
                remaining,
            )
            .await);
        }
    };
    state.metrics.upload_bytes.inc_by(appended.offset - offset);
    let mut m = s.meta();
    if complete && !appended.interrupted {
        m = finish(state, s, &mut guard, appended.offset).await?;
    }
    let status = if m.completed {
        // -01..-05 §6: 2xx, 201 RECOMMENDED; -06..-11 §4.4.2: the target's response, which
        // for Sluice's creation targets is 201.
        StatusCode::CREATED
    } else {
        incomplete_append_status(version)
    };
    let mut r = offset_response(state, &m, version, status);
    if m.completed {
        set(&mut r, "location", &location(state, &s.id));
    }
    Ok(r)
}

/// An append to an upload that is already complete. Nothing is modified.
fn completed_refusal(state: &AppState, m: &SessionMeta, version: u32, empty_body: bool) -> Failure {
    let done = ApiError::BadRequest("upload is already complete");
    if version <= 7 {
        // -04/-05 §6: "MUST respond with a 400 (Bad Request)"; -06..-08 §4.4.2 "MUST reject",
        // §6.2 registers `completed-upload` with 400. -01..-03 say nothing: one rule.
        return Failure::from(done)
            .problem(Problem::CompletedUpload)
            .at(m, version);
    }
    if !empty_body {
        // -10/-11 §4.4.2: a non-empty append is an inconsistent-length failure (§7.3: 400).
        // (-09 §4.4.2 only says "MUST reject".)
        return Failure::from(done)
            .problem(Problem::InconsistentLength)
            .at(m, version);
    }
    // -10/-11 §4.4.2: an empty append → 410 (Gone), optionally with the `Location` of the
    // completed upload, problem type `completed-upload`.
    let mut f = Failure::from(ApiError::SessionGone)
        .problem(Problem::CompletedUpload)
        .at(m, version);
    f.location = m
        .target
        .as_deref()
        .and_then(|t| {
            crate::storage::StoredPath::parse(t, &crate::storage::PathRules::default()).ok()
        })
        .map(|p| super::file_url(state, &p));
    f
}

/// The client says this is all: the length is what arrived (and must match any declared or
/// signed length); publish.
async fn finish(
    state: &Arc<AppState>,
    s: &Arc<Session>,
    guard: &mut WriteGuard<'_>,
    offset: u64,
) -> Result<SessionMeta, Failure> {
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    let m = s.meta();
    if m.length.is_some_and(|l| l != offset) || m.grant_size.is_some_and(|g| g != offset) {
        // 400 (-02..-05 §4 and §6; -06..-11 §4.1.3 with `inconsistent-upload-length`).
        return Err(Failure::from(ApiError::BadRequest(
            "upload marked complete but its length does not match",
        ))
        .problem(Problem::InconsistentLength));
    }
    if m.length.is_none() {
        store.set_length(s, offset).await?;
    }
    Ok(store.complete(&state.engine, s, guard).await?)
}

async fn create(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    rest: &str,
    version: u32,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, Failure> {
    let store = state.sessions.clone().ok_or(ApiError::NotFound)?;
    let h = req.headers().clone();
    // -01..-05 §4: the completeness field MUST be sent; -06..-11 §4.2.1: it is what starts a
    // resumable upload. No default here in any version.
    let complete = complete_flag(&h, version)?.ok_or(ApiError::BadRequest(
        "Upload-Complete is required to create a resumable upload",
    ))?;
    let length = parse_u64(&h, "upload-length")?;
    let content_length = parse_u64(&h, "content-length")?;
    // `?1` + `Content-Length` is a length indicator; both indicators must agree, checked
    // before the body: -02..-05 §4 ("MUST record"), -05 §4 ("inconsistent → 400"),
    // -06..-11 §4.1.3 ("MUST match").
    let implied = if complete { content_length } else { None };
    if let (Some(l), Some(n)) = (length, implied) {
        if l != n {
            return Err(Failure::from(ApiError::BadRequest(
                "Upload-Length does not match the content of a complete upload",
            ))
            .problem(Problem::InconsistentLength));
        }
    }
    let length = length.or(implied);
    let max_file = ctx.config.storage.max_file_size.as_u64();
    if length.is_some_and(|l| l > max_file) || content_length.is_some_and(|l| l > max_file) {
        return Err(ApiError::TooLarge { max: max_file }.into());
    }
    // What the grant binds: the declared length, or the whole body when complete now.
    let decoded = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| ApiError::PathEncoding)?;
    let grant = super::authorize_creation(
        state,
        &h,
        req.uri().query(),
        Some(decoded.as_ref()),
        length,
        None,
    )
    .await?;
    if let (Some(g), Some(l)) = (grant.grant_size, length) {
        if g != l {
            return Err(ApiError::BadRequest("Upload-Length does not match the grant").into());
        }
    }
    let known = length.or(grant.grant_size).filter(|&l| l <= max_file);
    let limit = known.unwrap_or(max_file);
    if content_length.is_some_and(|n| n > limit) {
        // Past the known length: refused before anything is created.
        return Err(over_limit(version, known.is_some(), limit));
    }
    let ct = hv(&h, "content-type").filter(|t| {
        !t.eq_ignore_ascii_case(PARTIAL_UPLOAD) && t.contains('/') && t.len() <= 255 && t.is_ascii()
    });
    let content_type = ct.unwrap_or_else(|| crate::storage::guess_type(grant.target.file_name()));
    if store
        .open_for_target(grant.target.as_str(), Protocol::Ietf)
        .is_some()
    {
        return Err(ApiError::Conflict("an upload of this target is already in progress").into());
    }
    let session = store
        .create(NewSession {
            protocol: Protocol::Ietf,
            target: Some(grant.target),
            // recorded, so HEAD reports it and appends are checked against it.
            length,
            grant_size: grant.grant_size,
            content_type,
            metadata: None,
            partial: false,
            chunk_size: None,
            uploader: grant.uploader,
            file_expires: grant.file_expires,
        })
        .await?;
    let client = ctx.client;
    let check = super::content_digest_check(req.headers());
    let filled: Result<SessionMeta, Failure> = async {
        let check = check?;
        let mut guard = store.acquire(&session, true).await?;
        let body = req.into_body();
        let appended = store
            .append(
                &state.engine,
                &session,
                &mut guard,
                body,
                content_length,
                limit,
                check,
                &client,
            )
            .await;
        let appended = match appended {
            Ok(a) => a,
            Err(e) => {
                let known = known.is_some();
                let f = invalidate_if_over_length(
                    &store,
                    &session,
                    guard,
                    version,
                    known,
                    e.into(),
                    limit,
                );
                return Err(f.await);
            }
        };
        state.metrics.upload_bytes.inc_by(appended.offset);
        if complete && !appended.interrupted {
            return finish(state, &session, &mut guard, appended.offset).await;
        }
        Ok(session.meta())
    }
    .await;
    let m = match filled {
        Ok(m) => m,
        Err(f) => {
            // The client can't reach an upload whose creation failed: its URL is only in this
            // response (no 104, protocols.md §4.1). Remove it, so it does not hold the target.
            store.remove(&session, "terminated").await;
            return Err(f);
        }
    };
    // -01..-05 §4: 201 + `Location` + `Upload-Offset` (+ completeness when incomplete), all
    // MUST; -06..-11 §4.2.2: `Location` MUST, 201 RECOMMENDED, `Upload-Limit` SHOULD/MUST.
    let mut r = offset_response(state, &m, version, StatusCode::CREATED);
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

    #[test]
    fn absent_completeness_on_append_is_complete_in_3_incomplete_in_4_to_6_required_after() {
        assert_eq!(append_complete_default(3), Some(true));
        for v in 4..=6 {
            assert_eq!(append_complete_default(v), Some(false), "v{v}");
        }
        for v in 7..=8 {
            assert_eq!(append_complete_default(v), None, "v{v}");
        }
    }

    #[test]
    fn upload_fields_on_head_and_delete_are_refused_up_to_interop_6() {
        let offset = headers(&[("upload-offset", "0")]);
        for v in 3..=6 {
            assert!(forbidden_upload_field(&offset, v, true).is_some(), "v{v}");
            assert!(forbidden_upload_field(&offset, v, false).is_some(), "v{v}");
        }
        for v in 7..=8 {
            assert!(forbidden_upload_field(&offset, v, true).is_none(), "v{v}");
        }
        // Interop 3 names the inverse field; Upload-Complete means nothing there.
        let incomplete = headers(&[("upload-incomplete", "?1")]);
        assert!(forbidden_upload_field(&incomplete, 3, true).is_some());
        assert!(forbidden_upload_field(&incomplete, 4, true).is_none());
        let complete = headers(&[("upload-complete", "?0")]);
        assert!(forbidden_upload_field(&complete, 3, false).is_none());
        assert!(forbidden_upload_field(&complete, 4, false).is_some());
        // -05 §5: Upload-Length on HEAD only, interop 6 only.
        let length = headers(&[("upload-length", "5")]);
        assert!(forbidden_upload_field(&length, 6, true).is_some());
        assert!(forbidden_upload_field(&length, 6, false).is_none());
        assert!(forbidden_upload_field(&length, 5, true).is_none());
        assert!(forbidden_upload_field(&length, 7, true).is_none());
    }

    #[test]
    fn incomplete_append_is_201_up_to_interop_6_then_204() {
        for v in 3..=6 {
            assert_eq!(incomplete_append_status(v), StatusCode::CREATED, "v{v}");
        }
        for v in 7..=8 {
            assert_eq!(incomplete_append_status(v), StatusCode::NO_CONTENT, "v{v}");
        }
    }

    #[test]
    fn upload_limit_absent_before_6_expires_in_6_max_age_after() {
        for v in 3..=5 {
            assert_eq!(upload_limit(100, v, 60), None, "v{v}");
        }
        assert_eq!(
            upload_limit(100, 6, 60).as_deref(),
            Some("max-size=100, expires=60")
        );
        for v in 7..=8 {
            assert_eq!(
                upload_limit(100, v, 60).as_deref(),
                Some("max-size=100, max-age=60")
            );
        }
    }

    #[test]
    fn problem_types_only_in_versions_that_define_them() {
        let p = Problem::MismatchingOffset {
            expected: 10,
            provided: 5,
        };
        assert_eq!(p.body(5), None);
        let v: serde_json::Value = serde_json::from_str(&p.body(6).unwrap()).unwrap();
        assert_eq!(
            v["type"],
            "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
        );
        assert_eq!(v["expected-offset"], 10);
        assert_eq!(v["provided-offset"], 5);
        assert!(Problem::CompletedUpload.body(6).is_some());
        assert_eq!(Problem::InconsistentLength.body(6), None);
        assert!(Problem::InconsistentLength.body(7).is_some());
    }
}
