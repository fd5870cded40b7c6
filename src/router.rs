//! Routing: `Route::parse` turns method + path into a [`Route`] (pure, unit-tested), and
//! [`handle`] dispatches it, records metrics and applies CORS.

use std::sync::Arc;
use std::time::Instant;

use crate::body::ReqBody;
use http::{header, Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use tracing::Instrument;

use crate::error::ApiError;
use crate::response::{self, ResBody};
use crate::state::AppState;
use crate::{download, upload};

pub use crate::context::PeerAddr;
use crate::context::RequestContext;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    /// CORS preflight (any path); `tus` when under `/tus` (adds the tus capabilities),
    /// `resumable` when under `/resumable` (adds the IETF draft's `Upload-Limit`/`Accept-Patch`).
    Preflight {
        tus: bool,
        resumable: bool,
    },
    /// Anything under `/tus` (tus 1.0): the rest of the path, undecoded.
    Tus {
        rest: String,
    },
    /// Anything under `/resumable` (IETF resumable uploads draft).
    Resumable {
        rest: String,
    },
    /// hmac-file-server chunked protocol.
    Chunked,
    UploadStatus,
    /// POST multipart/form-data of a file.
    PostForm {
        path: String,
    },
    /// PUT of a file; the path is percent-decoded, prefix and leading `/` removed.
    Put {
        path: String,
    },
    /// GET or HEAD of a file.
    Get {
        path: String,
        head: bool,
    },
    /// A file path with a method we do not serve.
    FileMethodNotAllowed,
    /// A path that could not be decoded.
    BadPath,
    NotFound,
}

impl Route {
    /// Closed-set label for metrics and spans.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Preflight { .. } => "preflight",
            Route::Tus { .. } => "tus",
            Route::Resumable { .. } => "ietf",
            Route::Chunked | Route::UploadStatus => "chunked",
            Route::PostForm { .. } => "form",
            Route::Put { .. } => "upload",
            Route::Get { .. } => "download",
            Route::FileMethodNotAllowed | Route::BadPath => "file",
            Route::NotFound => "other",
        }
    }

    pub fn parse(method: &Method, raw_path: &str, prefix: &str) -> Route {
        // Strip the prefix when present; requests without it are accepted too (a proxy may
        // strip it). protocols.md §1.1.
        let path = if !prefix.is_empty()
            && raw_path.len() > prefix.len()
            && raw_path.starts_with(prefix)
            && raw_path.as_bytes()[prefix.len()] == b'/'
        {
            &raw_path[prefix.len()..]
        } else {
            raw_path
        };
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let sub = |name: &str| path.trim_start_matches('/')[name.len()..].to_owned();
        if *method == Method::OPTIONS {
            return Route::Preflight {
                tus: first == "tus",
                resumable: first == "resumable",
            };
        }
        match first {
            "health" | "healthz" if path.trim_matches('/') == first => return Route::Health,
            "metrics" if path.trim_matches('/') == first => return Route::Metrics,
            "tus" => return Route::Tus { rest: sub("tus") },
            "resumable" => {
                return Route::Resumable {
                    rest: sub("resumable"),
                }
            }
            "chunked-upload" if path.trim_matches('/') == first => return Route::Chunked,
            "upload-status" if path.trim_matches('/') == first => return Route::UploadStatus,
            _ => {}
        }
        let rest = path.strip_prefix('/').unwrap_or(path);
        if rest.is_empty() {
            return Route::NotFound;
        }
        let Ok(decoded) = percent_decode_str(rest).decode_utf8() else {
            return Route::BadPath;
        };
        let path = decoded.into_owned();
        match *method {
            Method::PUT => Route::Put { path },
            Method::GET => Route::Get { path, head: false },
            Method::HEAD => Route::Get { path, head: true },
            Method::POST => Route::PostForm { path },
            _ => Route::FileMethodNotAllowed,
        }
    }
}

fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Handle one request. Never fails: every error is already a response.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<hyper::body::Incoming>,
) -> Response<ResBody> {
    let started = Instant::now();
    let body_state = crate::body::BodyState::default();
    let req = wrap_body(&state, req, body_state.clone());
    let route = Route::parse(
        req.method(),
        req.uri().path(),
        &state.config().server.url_prefix,
    );
    let method = method_label(req.method());
    // Only the path is logged: never the query (MACs) or Authorization.
    // Session URLs are capabilities: their paths are not logged either.
    let logged_path = match route {
        Route::Tus { .. } | Route::Resumable { .. } => "<session>",
        _ => req.uri().path(),
    };
    let span = tracing::info_span!("request", route = route.name(), method, path = %logged_path);
    let origin = req.headers().get(header::ORIGIN).cloned();
    let route_name = route.name();
    let http1 = req.version() < http::Version::HTTP_2;
    let mut res = match host_error(&req) {
        Some(reason) => {
            let mut r = response::text(StatusCode::BAD_REQUEST, reason);
            r.headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            r
        }
        None => {
            // One configuration snapshot for the whole request (a reload never mixes two).
            let live = state.live();
            let ctx = RequestContext::new(
                &live.config,
                &live.proxies,
                &state.engine,
                route_name,
                &req,
                started,
            );
            dispatch(&state, &ctx, route, req).instrument(span).await
        }
    };
    // A malformed body (hyper refused its chunked framing) makes the whole request a bad one,
    // whatever the handler made of the bytes before it.
    if body_state.malformed() {
        res = response::text(
            StatusCode::BAD_REQUEST,
            "malformed request body (chunked framing)\n",
        );
    }
    // A body left unread and too large to drain makes hyper close the connection after the
    // response: the response must not promise keep-alive, so the client sends its next
    // request on a new connection.
    if http1 && body_state.abandoned() {
        res.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    if route_name != "preflight" {
        response::apply_cors(&state.config().cors, origin.as_ref(), res.headers_mut());
    }
    state
        .metrics
        .requests
        .with_label_values(&[route_name, method, status_class(res.status())])
        .inc();
    state
        .metrics
        .request_duration
        .with_label_values(&[route_name])
        .observe(started.elapsed().as_secs_f64());
    res
}

/// The request with its body wrapped in [`ReqBody`] (drained when dropped unread, bounded).
fn wrap_body(
    state: &AppState,
    req: Request<hyper::body::Incoming>,
    body_state: crate::body::BodyState,
) -> Request<ReqBody> {
    let h = req.headers();
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let awaiting_continue = h
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let policy = crate::body::DrainPolicy {
        limit: state.config().server.drain_limit.as_u64(),
        idle: state.config().server.body_idle_timeout,
    };
    req.map(|b| ReqBody::new(b, declared, awaiting_continue, policy, body_state))
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without a `Host` field, and
/// to any request with more than one. (HTTP/2 carries `:authority` instead.)
fn host_error<B>(req: &Request<B>) -> Option<&'static str> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Some("more than one Host header\n");
    }
    if hosts == 0 && req.version() == http::Version::HTTP_11 {
        return Some("an HTTP/1.1 request needs a Host header\n");
    }
    None
}

/// Size of the request head as sent: request target plus header fields.
fn head_size<B>(req: &Request<B>) -> u64 {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    let fields: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (target + fields) as u64
}

async fn dispatch(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    route: Route,
    req: Request<ReqBody>,
) -> Response<ResBody> {
    if head_size(&req) > state.config().server.max_header_size.as_u64() {
        let mut r = response::text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head is larger than the limit\n",
        );
        r.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        return r;
    }
    // Rate limits by client address (the uploader's own limits apply once the grant names
    // one): uploads, resumable creations and downloads; appends to an upload are not counted.
    let kind = match (&route, req.method()) {
        (Route::Put { .. } | Route::PostForm { .. }, _) => Some(crate::ratelimit::Kind::Upload),
        (Route::Get { .. }, _) => Some(crate::ratelimit::Kind::Download),
        (Route::Tus { .. } | Route::Resumable { .. } | Route::Chunked, &Method::POST) => {
            Some(crate::ratelimit::Kind::Creation)
        }
        _ => None,
    };
    if let Some(kind) = kind {
        if let Err(e) = state
            .live()
            .rate_limits
            .take(&state.metrics, kind, ctx.client.ip, None)
        {
            return e.into_response();
        }
    }
    let result = match route {
        Route::Health => Ok(response::text(StatusCode::OK, "ok\n")),
        Route::Metrics => {
            let m = &state.metrics;
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            m.stored_files.set(gauge(state.space.files()));
            m.stored_bytes.set(gauge(state.space.stored()));
            m.free_bytes.set(gauge(state.space.free()));
            let mut r = Response::new(response::full(state.metrics.encode()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(r)
        }
        Route::Preflight { tus, resumable } => {
            let mut r =
                response::preflight(&state.config().cors, req.headers().get(header::ORIGIN));
            if tus {
                crate::upload::tus::options(state, &mut r);
            }
            if resumable {
                use crate::upload::ietf;
                let version = ietf::interop_version(req.headers()).unwrap_or(ietf::LATEST_INTEROP);
                ietf::options(state, version, &mut r);
            }
            Ok(r)
        }
        // The upload handlers' futures are large (the engine's receive loop, the session
        // code): boxed, so every request's future stays small and is not copied around
        // whole (a download paid a ~10 KB memcpy per request for them).
        Route::Tus { rest } => Ok(Box::pin(upload::tus::handle(state, ctx, &rest, req)).await),
        Route::Resumable { rest } => {
            Ok(Box::pin(upload::ietf::handle(state, ctx, &rest, req)).await)
        }
        Route::Chunked => Ok(Box::pin(upload::chunked::handle(state, ctx, req)).await),
        Route::UploadStatus => Ok(Box::pin(upload::chunked::status(state, ctx, req)).await),
        Route::PostForm { path } => Box::pin(upload::post::handle(state, ctx, &path, req)).await,
        Route::Put { path } => Box::pin(upload::put::handle(state, ctx, &path, req)).await,
        Route::Get { path, head } => download::handle(state, ctx, &path, head, req).await,
        Route::FileMethodNotAllowed => Err(ApiError::MethodNotAllowed {
            allow: response::CORS_METHODS,
        }),
        Route::BadPath => Err(ApiError::PathEncoding),
        Route::NotFound => Err(ApiError::NotFound),
    };
    result.unwrap_or_else(ApiError::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_stripped_when_present_and_optional() {
        let r = Route::parse(&Method::PUT, "/upload/a/b.txt", "/upload");
        assert_eq!(
            r,
            Route::Put {
                path: "a/b.txt".into()
            }
        );
        let r = Route::parse(&Method::PUT, "/a/b.txt", "/upload");
        assert_eq!(
            r,
            Route::Put {
                path: "a/b.txt".into()
            }
        );
        // "/uploadx/..." is not the prefix.
        let r = Route::parse(&Method::GET, "/uploadx/b", "/upload");
        assert_eq!(
            r,
            Route::Get {
                path: "uploadx/b".into(),
                head: false
            }
        );
    }

    #[test]
    fn path_is_percent_decoded_and_plus_kept() {
        let r = Route::parse(&Method::HEAD, "/u/tr%C3%A8s%20cool+1%25.jpg", "");
        assert_eq!(
            r,
            Route::Get {
                path: "u/très cool+1%.jpg".into(),
                head: true
            }
        );
    }

    #[test]
    fn encoded_traversal_decodes_for_the_path_rules_to_refuse() {
        let r = Route::parse(&Method::PUT, "/a/%2e%2e/b", "");
        assert_eq!(
            r,
            Route::Put {
                path: "a/../b".into()
            }
        );
    }

    #[test]
    fn invalid_utf8_is_bad_path() {
        assert_eq!(Route::parse(&Method::GET, "/a/%ff", ""), Route::BadPath);
    }

    #[test]
    fn fixed_routes_and_methods() {
        assert_eq!(Route::parse(&Method::GET, "/health", ""), Route::Health);
        assert_eq!(
            Route::parse(&Method::GET, "/metrics", "/upload"),
            Route::Metrics
        );
        assert_eq!(
            Route::parse(&Method::OPTIONS, "/x/y", ""),
            Route::Preflight {
                tus: false,
                resumable: false
            }
        );
        assert_eq!(
            Route::parse(&Method::OPTIONS, "/upload/tus/", "/upload"),
            Route::Preflight {
                tus: true,
                resumable: false
            }
        );
        assert_eq!(
            Route::parse(&Method::OPTIONS, "/upload/resumable/x/y.bin", "/upload"),
            Route::Preflight {
                tus: false,
                resumable: true
            }
        );
        assert_eq!(
            Route::parse(&Method::PATCH, "/upload/tus/abc", "/upload"),
            Route::Tus {
                rest: "/abc".into()
            }
        );
        assert_eq!(
            Route::parse(&Method::POST, "/tus", ""),
            Route::Tus { rest: "".into() }
        );
        assert_eq!(
            Route::parse(&Method::HEAD, "/resumable/x", ""),
            Route::Resumable { rest: "/x".into() }
        );
        assert_eq!(
            Route::parse(&Method::POST, "/chunked-upload", ""),
            Route::Chunked
        );
        assert_eq!(
            Route::parse(&Method::GET, "/upload-status", "/upload"),
            Route::UploadStatus
        );
        assert_eq!(
            Route::parse(&Method::POST, "/u/a.txt", ""),
            Route::PostForm {
                path: "u/a.txt".into()
            }
        );
        assert_eq!(
            Route::parse(&Method::GET, "/upload/health", "/upload"),
            Route::Health
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "/x/y", ""),
            Route::FileMethodNotAllowed
        );
        assert_eq!(Route::parse(&Method::GET, "/", ""), Route::NotFound);
        assert_eq!(
            Route::parse(&Method::GET, "/upload", "/upload"),
            Route::Get {
                path: "upload".into(),
                head: false
            }
        );
    }
}
