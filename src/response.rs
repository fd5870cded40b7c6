//! Response helpers: the boxed body type every handler returns, plain-text responses, and CORS.

use std::io;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

use crate::config::CorsConfig;

/// The response body of every route.
pub type ResBody = UnsyncBoxBody<Bytes, io::Error>;

pub fn full(b: impl Into<Bytes>) -> ResBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ResBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A `text/plain` response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResBody> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Set a header, skipping a value that is not valid header text (e.g. an odd stored name).
pub fn set_header(h: &mut HeaderMap, k: impl header::IntoHeaderName, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(k, v);
    }
}

/// Methods and headers advertised to browsers.
pub const CORS_METHODS: &str = "OPTIONS, HEAD, GET, PUT, POST, PATCH, DELETE";
pub const CORS_ALLOW_HEADERS: &str = "Authorization, Content-Type, Range, If-Range, If-Match, \
If-None-Match, If-Modified-Since, If-Unmodified-Since, Tus-Resumable, Upload-Length, \
Upload-Offset, Upload-Metadata, Upload-Defer-Length, Upload-Concat, Upload-Checksum, \
X-HTTP-Method-Override, Upload-Complete, Upload-Incomplete, Upload-Draft-Interop-Version, \
X-Filename, X-Total-Size, X-Upload-Session-ID, X-Chunk-Number, Content-Digest, Repr-Digest";
pub const CORS_EXPOSE_HEADERS: &str = "Content-Length, Content-Range, Content-Disposition, ETag, \
Last-Modified, Accept-Ranges, Location, Upload-Offset, Upload-Length, Upload-Metadata, \
Upload-Defer-Length, Upload-Concat, Upload-Expires, Upload-Complete, Upload-Incomplete, \
Upload-Limit, Tus-Version, Tus-Resumable, Tus-Max-Size, Tus-Extension, Tus-Checksum-Algorithm, \
Repr-Digest, Want-Repr-Digest, Want-Content-Digest, Accept-Patch";

/// The `Access-Control-Allow-Origin` value for a request's Origin, if it is allowed.
pub fn allowed_origin(cfg: &CorsConfig, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    if !cfg.enabled {
        return None;
    }
    let origin = origin?;
    let any = cfg.allow_origins.iter().any(|o| o == "*");
    let listed = origin
        .to_str()
        .map(|o| cfg.allow_origins.iter().any(|a| a == o))
        .unwrap_or(false);
    if !(any || listed) {
        return None;
    }
    if cfg.allow_credentials || !any {
        Some(origin.clone())
    } else {
        Some(HeaderValue::from_static("*"))
    }
}

/// Add CORS headers to an actual (non-preflight) response.
pub fn apply_cors(cfg: &CorsConfig, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    let Some(allow) = allowed_origin(cfg, origin) else {
        return;
    };
    let echoed = allow != "*";
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(CORS_EXPOSE_HEADERS),
    );
    if cfg.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if echoed {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The 204 answer to an `OPTIONS` preflight.
pub fn preflight(cfg: &CorsConfig, origin: Option<&HeaderValue>) -> Response<ResBody> {
    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(CORS_METHODS));
    // RFC 9530 §4: the digests an upload may carry and Sluice checks.
    h.insert(
        "want-repr-digest",
        HeaderValue::from_static(crate::digest::WANTED),
    );
    h.insert(
        "want-content-digest",
        HeaderValue::from_static(crate::digest::WANTED),
    );
    apply_cors(cfg, origin, h);
    if h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(CORS_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_ALLOW_HEADERS),
        );
        if let Ok(v) = HeaderValue::from_str(&cfg.max_age.as_secs().to_string()) {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_unless_credentials_or_list() {
        let mut cfg = CorsConfig::default();
        let o = HeaderValue::from_static("https://chat.example");
        assert_eq!(allowed_origin(&cfg, Some(&o)).unwrap(), "*");
        cfg.allow_credentials = true;
        assert_eq!(
            allowed_origin(&cfg, Some(&o)).unwrap(),
            "https://chat.example"
        );
        cfg.allow_origins = vec!["https://other.example".into()];
        assert!(allowed_origin(&cfg, Some(&o)).is_none());
        assert!(allowed_origin(&cfg, None).is_none());
    }
}
