//! Upload protocols. Each is an adapter that authorises, stages through the storage layer and
//! moves bytes through the streaming engine; none copies bytes itself.

pub mod chunked;
pub mod ietf;
pub mod post;
pub mod put;
pub mod session;
pub mod tus;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap};

use crate::auth::GrantRequest;
use crate::config::AuthMode;
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::StoredPath;

/// First path segments that name Sluice's own routes and so can't start a stored path.
pub const RESERVED_SEGMENTS: &[&str] = &[
    "tus",
    "resumable",
    "chunked-upload",
    "upload-status",
    "health",
    "healthz",
    "metrics",
];

/// Path rules for a new upload target, plus the reserved first segments.
pub fn target_path(state: &AppState, decoded: &str) -> Result<StoredPath, ApiError> {
    let p = StoredPath::parse(decoded, &state.live().upload_rules)?;
    let first = p.as_str().split('/').next().unwrap_or("");
    if RESERVED_SEGMENTS.contains(&first) {
        return Err(ApiError::BadRequest(
            "path starts with a name reserved for Sluice's routes",
        ));
    }
    Ok(p)
}

/// Who may create an upload session for `target` of `signed_len` bytes: the same grants as a
/// PUT of that file (the MAC's method is `PUT`: it is an upload grant), or nothing when
/// anonymous creation is on and `target` is `None`.
pub struct CreationGrant {
    pub target: StoredPath,
    /// The size the grant binds (the final length must equal it), if it binds one.
    pub grant_size: Option<u64>,
    pub uploader: Option<String>,
    /// The grant's own expiry for the file (JWT `expires`).
    pub file_expires: Option<u64>,
}

/// Who uploads under `grant` to `path`: the grant's uploader (JWT `sub`), else the first path
/// segment for the grant modes configured as naming one (ejabberd's hash of the JID).
pub fn uploader_of(
    state: &AppState,
    grant: &crate::auth::Grant,
    path: &StoredPath,
) -> Option<String> {
    grant.uploader.clone().or_else(|| {
        let (first, rest) = path.as_str().split_once('/')?;
        (!rest.is_empty()
            && state
                .config()
                .quota
                .uploader_from_first_segment
                .contains(&grant.mode))
        .then(|| first.to_owned())
    })
}

/// Authorise a session creation (see [`CreationGrant`]) and decide, from the length it names,
/// whether it fits the storage cap and the uploader's quotas (507 / 429 before any data).
pub async fn authorize_creation(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    query: Option<&str>,
    target: Option<&str>,
    signed_len: Option<u64>,
    file_name_hint: Option<&str>,
) -> Result<CreationGrant, ApiError> {
    let grant = creation_grant(state, headers, query, target, signed_len, file_name_hint)?;
    if let Some(u) = grant.uploader.as_deref() {
        state.live().rate_limits.take(
            &state.metrics,
            crate::ratelimit::Kind::Creation,
            None,
            Some(u),
        )?;
    }
    if let Some(len) = signed_len.or(grant.grant_size) {
        drop(crate::ops::space::admit(state, grant.uploader.as_deref(), len).await?);
    }
    Ok(grant)
}

fn creation_grant(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    target: Option<&str>,
    signed_len: Option<u64>,
    file_name_hint: Option<&str>,
) -> Result<CreationGrant, ApiError> {
    let Some(target) = target.filter(|t| !t.is_empty()) else {
        if !state.config().resumable.allow_anonymous {
            return Err(ApiError::Auth(crate::auth::AuthError::Missing));
        }
        let mut raw = [0u8; 12];
        getrandom::fill(&mut raw).map_err(|e| ApiError::Internal(e.to_string()))?;
        let name = file_name_hint
            .map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n).to_owned())
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .unwrap_or_else(|| "upload.bin".into());
        let target = target_path(state, &format!("anonymous/{}/{name}", hex::encode(raw)))?;
        return Ok(CreationGrant {
            target,
            grant_size: None,
            uploader: None,
            file_expires: None,
        });
    };
    let target = target_path(state, target)?;
    let size_param = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "size")
            .and_then(|(_, v)| v.parse::<u64>().ok())
    });
    let len = signed_len.or(size_param);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let grant = state.live().auth.authorize(&GrantRequest {
        method: "PUT",
        path: target.as_str(),
        query,
        content_length: len.unwrap_or(0),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        authorization: auth,
        now: UNIX_EPOCH + state.clock.since_epoch(),
    })?;
    let grant_size = match grant.mode {
        AuthMode::V3 => None,
        AuthMode::V | AuthMode::V2 | AuthMode::Token | AuthMode::Jwt => {
            Some(len.ok_or(ApiError::BadRequest(
                "a size-bound grant needs the upload length (or a size query parameter)",
            ))?)
        }
    };
    let uploader = uploader_of(state, &grant, &target);
    Ok(CreationGrant {
        target,
        grant_size,
        uploader,
        file_expires: grant.file_expires,
    })
}

/// The RFC 9530 check of one append: a `Content-Digest` describes this request's bytes
/// alone. Its sha-256 member is checked if present (else sha-512); `None` without one.
pub fn content_digest_check(h: &HeaderMap) -> Result<Option<session::AppendCheck>, ApiError> {
    let claims = crate::digest::from_headers(h, "content-digest")?;
    let pick = claims
        .iter()
        .find(|c| c.algo == crate::digest::Algo::Sha256)
        .or_else(|| claims.first());
    Ok(pick.map(|c| session::AppendCheck {
        digest: match c.algo {
            crate::digest::Algo::Sha256 => crate::engine::ChunkDigest::Sha256(sha2::Digest::new()),
            crate::digest::Algo::Sha512 => crate::engine::ChunkDigest::Sha512(sha2::Digest::new()),
        },
        expected: c.value.clone(),
        kind: session::CheckKind::ContentDigest,
    }))
}

/// A header's value as trimmed text (`None` when absent or not visible ASCII).
pub fn header_text(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
}

/// A non-negative integer header (`Upload-Offset`, `Upload-Length`, `Content-Length`).
pub fn header_u64(h: &HeaderMap, name: &'static str) -> Result<Option<u64>, ApiError> {
    match header_text(h, name) {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest("header number out of range")),
        Some(_) => Err(ApiError::BadRequest(match name {
            "upload-offset" => "Upload-Offset must be a non-negative integer",
            "upload-length" => "Upload-Length must be a non-negative integer",
            _ => "Content-Length must be a non-negative integer",
        })),
    }
}

/// Set a response header, skipping values that are not valid header text.
pub fn set_header(res: &mut http::Response<crate::response::ResBody>, k: &'static str, v: &str) {
    crate::response::set_header(res.headers_mut(), k, v);
}

/// The public URL path of a stored file (URL prefix plus percent-encoded segments).
pub fn file_url(state: &AppState, path: &StoredPath) -> String {
    let encoded: Vec<String> = path
        .as_str()
        .split('/')
        .map(|s| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        })
        .collect();
    format!("{}/{}", state.config().server.url_prefix, encoded.join("/"))
}

/// Whether a client-supplied media type may be stored and later sent as `Content-Type`.
pub fn valid_media_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 255
        && t.contains('/')
        && t.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// The content type to store: the one the grant signed (v2, token, JWT), else the client's if
/// it is a sane media type, else guessed from the file name.
pub fn stored_content_type(
    grant: &crate::auth::Grant,
    headers: &HeaderMap,
    file_name: &str,
) -> String {
    let signed = grant
        .content_type
        .as_deref()
        .map(str::trim)
        .filter(|v| valid_media_type(v));
    let given = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| valid_media_type(v));
    match signed.or(given) {
        Some(v) => v.to_owned(),
        None => crate::storage::guess_type(file_name),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
