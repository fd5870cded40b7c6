//! The admin API's routes: [`AdminRoute::parse`] (pure), the typed query parameters, the
//! JSON bodies (shared with the `sluice admin` client) and the handlers.
//!
//! Handlers decide and answer; every removal goes through [`crate::ops::remove_file`], so a
//! takedown reaches the catalog, the caches, the space accounting and the audit log at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::json;

use crate::catalog::{DeleteReason, ListQuery};
use crate::error::ApiError;
use crate::response::{full, ResBody};
use crate::state::AppState;

use super::api::{FileOut, FilesPage, Removed, StatsOut, UploaderOut};

/// Page size of `GET /files` without `limit`, and its largest value.
pub const LIST_DEFAULT: usize = 100;
pub const LIST_MAX: usize = 1000;
/// Files removed per catalog page by `POST /erase`.
const ERASE_PAGE: usize = 500;
/// A progress line at most this often during an erasure.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Uploaders in `GET /stats`.
const TOP_UPLOADERS: usize = 10;

/// What an admin request asks for. Paths may carry an `/admin` prefix (for a proxy that
/// forwards `/admin/...`); they mean the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    List,
    Stats,
    /// `DELETE /files/<percent-encoded path>`; the path decoded.
    Delete {
        path: String,
    },
    Erase,
    Sweep,
    MethodNotAllowed {
        allow: &'static str,
    },
    BadPath,
    NotFound,
}

impl AdminRoute {
    pub fn parse(method: &Method, raw_path: &str) -> AdminRoute {
        let path = match raw_path.strip_prefix("/admin") {
            Some(rest) if rest.starts_with('/') => rest,
            _ => raw_path,
        };
        let allow = |ok: bool, route: AdminRoute, allow: &'static str| {
            if ok {
                route
            } else {
                AdminRoute::MethodNotAllowed { allow }
            }
        };
        match path.trim_end_matches('/') {
            "/files" => return allow(*method == Method::GET, AdminRoute::List, "GET"),
            "/stats" => return allow(*method == Method::GET, AdminRoute::Stats, "GET"),
            "/erase" => return allow(*method == Method::POST, AdminRoute::Erase, "POST"),
            "/sweep" => return allow(*method == Method::POST, AdminRoute::Sweep, "POST"),
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/files/").filter(|r| !r.is_empty()) else {
            return AdminRoute::NotFound;
        };
        let Ok(decoded) = percent_decode_str(rest).decode_utf8() else {
            return AdminRoute::BadPath;
        };
        allow(
            *method == Method::DELETE,
            AdminRoute::Delete {
                path: decoded.into_owned(),
            },
            "DELETE",
        )
    }

    /// Closed-set label for spans and the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            AdminRoute::List => "list",
            AdminRoute::Stats => "stats",
            AdminRoute::Delete { .. } => "delete",
            AdminRoute::Erase => "erase",
            AdminRoute::Sweep => "sweep",
            AdminRoute::MethodNotAllowed { .. } | AdminRoute::BadPath | AdminRoute::NotFound => {
                "other"
            }
        }
    }
}

/// Admin failures; each is a status and a one-line reason (`{"error": "..."}`).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("a valid admin bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    Api(#[from] ApiError),
}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Api(e) => e.status(),
        }
    }

    pub fn into_response(self) -> Response<ResBody> {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = ?self, "admin request failed");
        } else {
            tracing::debug!(error = %self, "admin request refused");
        }
        let mut res = json_response(status, &json!({ "error": self.to_string() }));
        match &self {
            AdminError::Unauthorized => {
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sluice-admin\""),
                );
            }
            AdminError::MethodNotAllowed { allow } => {
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            AdminError::BadRequest(_) | AdminError::NotFound(_) | AdminError::Api(_) => {}
        }
        res
    }
}

pub fn json_response(status: StatusCode, v: &impl Serialize) -> Response<ResBody> {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn params(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, AdminError> {
    v.parse()
        .map_err(|_| AdminError::BadRequest(format!("{key} must be a non-negative integer")))
}

/// `GET /files` parameters: `prefix`, `uploader`, `since`/`until` (seconds since the epoch;
/// created at or after / before), `after` (the last path of the previous page), `limit`
/// (default 100, at most 1000).
pub fn list_query(query: &str) -> Result<ListQuery, AdminError> {
    let mut q = ListQuery {
        limit: LIST_DEFAULT,
        ..ListQuery::default()
    };
    for (k, v) in params(query) {
        match k.as_str() {
            "prefix" => q.prefix = Some(v).filter(|v| !v.is_empty()),
            "uploader" => q.uploader = Some(v).filter(|v| !v.is_empty()),
            "after" => q.after = Some(v).filter(|v| !v.is_empty()),
            "since" => q.since = Some(number("since", &v)?),
            "until" => q.until = Some(number("until", &v)?),
            "limit" => {
                let n: usize = number("limit", &v)?;
                if !(1..=LIST_MAX).contains(&n) {
                    return Err(AdminError::BadRequest(format!(
                        "limit must be between 1 and {LIST_MAX}"
                    )));
                }
                q.limit = n;
            }
            _ => return Err(AdminError::BadRequest(format!("unknown parameter {k:?}"))),
        }
    }
    Ok(q)
}

/// The value of one parameter (`None` when absent or empty).
fn param(query: &str, key: &str) -> Option<String> {
    params(query)
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// A takedown reason for the audit log: one line, at most 200 characters.
fn reason_text(query: &str) -> Option<String> {
    param(query, "reason").map(|r| {
        r.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect()
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::catalog::CatalogError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| AdminError::Api(crate::storage::StorageError::from(e).into()))
}

/// Serve one authorised request.
pub async fn dispatch(
    state: &Arc<AppState>,
    route: AdminRoute,
    query: &str,
) -> Result<Response<ResBody>, AdminError> {
    fn ok(v: &impl Serialize) -> Result<Response<ResBody>, AdminError> {
        Ok(json_response(StatusCode::OK, v))
    }
    match route {
        AdminRoute::List => ok(&list(state, list_query(query)?).await?),
        AdminRoute::Stats => ok(&stats(state).await?),
        AdminRoute::Delete { path } => {
            // `keep_path=1`: free the space but let the path be uploaded again (no takedown).
            let kind = if param(query, "keep_path").is_some_and(|v| v == "1" || v == "true") {
                DeleteReason::Removed
            } else {
                DeleteReason::Admin
            };
            ok(&delete(state, &path, reason_text(query), kind).await?)
        }
        AdminRoute::Erase => {
            let uploader = param(query, "uploader")
                .ok_or_else(|| AdminError::BadRequest("uploader is required".into()))?;
            let limit = param(query, "limit")
                .map(|v| number::<u64>("limit", &v))
                .transpose()?
                .filter(|n| *n > 0);
            ok(&erase(state, &uploader, limit).await?)
        }
        AdminRoute::Sweep => {
            let r = crate::ops::sweep(state).await?;
            let out = Removed {
                files: r.files,
                bytes: r.bytes,
                more: false,
            };
            state.audit.admin("sweep", json!({}), json!(out));
            ok(&out)
        }
        AdminRoute::MethodNotAllowed { allow } => Err(AdminError::MethodNotAllowed { allow }),
        AdminRoute::BadPath => Err(ApiError::PathEncoding.into()),
        AdminRoute::NotFound => Err(AdminError::NotFound("no such admin endpoint")),
    }
}

async fn list(state: &Arc<AppState>, q: ListQuery) -> Result<FilesPage, AdminError> {
    let limit = q.limit;
    // One row more than asked tells whether another page follows.
    let mut q1 = q.clone();
    q1.limit = limit + 1;
    let storage = state.storage.clone();
    let mut rows = blocking(move || storage.catalog().list(&q1)).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more.then(|| rows.last().map(|r| r.path.clone())).flatten();
    state.audit.admin(
        "list",
        json!({ "prefix": q.prefix, "uploader": q.uploader, "since": q.since,
                "until": q.until, "after": q.after, "limit": limit }),
        json!({ "files": rows.len() }),
    );
    Ok(FilesPage {
        files: rows.into_iter().map(FileOut::from).collect(),
        next,
    })
}

async fn stats(state: &Arc<AppState>) -> Result<StatsOut, AdminError> {
    let storage = state.storage.clone();
    let space = state.space.clone();
    let (s, free_bytes) = blocking(move || {
        let s = storage.catalog().stats(TOP_UPLOADERS)?;
        Ok((s, space.free()))
    })
    .await?;
    let out = StatsOut {
        files: s.files,
        bytes: s.bytes,
        free_bytes,
        top_uploaders: s
            .top_uploaders
            .into_iter()
            .map(|u| UploaderOut {
                uploader: u.uploader,
                files: u.files,
                bytes: u.bytes,
            })
            .collect(),
    };
    state
        .audit
        .admin("stats", json!({}), json!({ "files": out.files }));
    Ok(out)
}

/// A takedown. With nothing stored at `path` the answer is 404, and the path is blocked all
/// the same (a takedown may come before the upload it is meant to stop).
async fn delete(
    state: &Arc<AppState>,
    path: &str,
    reason: Option<String>,
    kind: DeleteReason,
) -> Result<Removed, AdminError> {
    let row = crate::ops::remove_file(state, path, kind).await?;
    let out = Removed {
        files: u64::from(row.is_some()),
        bytes: row.as_ref().map_or(0, |r| r.meta.size),
        more: false,
    };
    state.audit.admin(
        "delete",
        json!({ "path": path, "reason": reason }),
        json!(out),
    );
    tracing::info!(found = row.is_some(), "admin takedown");
    if row.is_none() {
        return Err(AdminError::NotFound(
            "nothing is stored at this path; it is blocked from now on",
        ));
    }
    Ok(out)
}

/// Erase one uploader's files, a catalog page at a time, at most `limit` of them.
async fn erase(
    state: &Arc<AppState>,
    uploader: &str,
    limit: Option<u64>,
) -> Result<Removed, AdminError> {
    let started = Instant::now();
    let mut last_log = started;
    let mut out = Removed::default();
    let mut after: Option<String> = None;
    let mut seen = 0u64;
    'pages: loop {
        let q = ListQuery {
            uploader: Some(uploader.to_owned()),
            after: after.clone(),
            limit: ERASE_PAGE,
            ..ListQuery::default()
        };
        let storage = state.storage.clone();
        let rows = blocking(move || storage.catalog().list(&q)).await?;
        let n = rows.len();
        for r in rows {
            if limit.is_some_and(|l| seen >= l) {
                out.more = true;
                break 'pages;
            }
            seen += 1;
            after = Some(r.path.clone());
            if let Some(row) =
                crate::ops::remove_file(state, &r.path, DeleteReason::Erasure).await?
            {
                out.files += 1;
                out.bytes += row.meta.size;
            }
            if last_log.elapsed() >= PROGRESS_EVERY {
                last_log = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    files = out.files,
                    bytes = out.bytes,
                    files_per_sec = format!("{:.0}", out.files as f64 / secs),
                    "erasure in progress"
                );
            }
        }
        if n < ERASE_PAGE {
            break;
        }
        tokio::task::yield_now().await;
    }
    tracing::info!(
        files = out.files,
        bytes = out.bytes,
        more = out.more,
        secs = started.elapsed().as_secs(),
        "erasure done"
    );
    state.audit.admin(
        "erase",
        json!({ "uploader": uploader, "limit": limit }),
        json!(out),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_with_or_without_the_admin_prefix() {
        let g = Method::GET;
        assert_eq!(AdminRoute::parse(&g, "/files"), AdminRoute::List);
        assert_eq!(AdminRoute::parse(&g, "/admin/files/"), AdminRoute::List);
        assert_eq!(AdminRoute::parse(&g, "/stats"), AdminRoute::Stats);
        assert_eq!(
            AdminRoute::parse(&Method::DELETE, "/files/a/b%20c.txt"),
            AdminRoute::Delete {
                path: "a/b c.txt".into()
            }
        );
        assert_eq!(
            AdminRoute::parse(&Method::DELETE, "/admin/files/a%2Fb"),
            AdminRoute::Delete { path: "a/b".into() }
        );
        assert_eq!(
            AdminRoute::parse(&Method::POST, "/erase"),
            AdminRoute::Erase
        );
        assert_eq!(
            AdminRoute::parse(&Method::POST, "/sweep"),
            AdminRoute::Sweep
        );
        assert_eq!(AdminRoute::parse(&g, "/adminfiles"), AdminRoute::NotFound);
        assert_eq!(AdminRoute::parse(&g, "/"), AdminRoute::NotFound);
        assert_eq!(
            AdminRoute::parse(&Method::DELETE, "/files/%ff"),
            AdminRoute::BadPath
        );
    }

    #[test]
    fn wrong_method_names_the_allowed_one() {
        assert_eq!(
            AdminRoute::parse(&Method::GET, "/sweep"),
            AdminRoute::MethodNotAllowed { allow: "POST" }
        );
        assert_eq!(
            AdminRoute::parse(&Method::GET, "/files/x"),
            AdminRoute::MethodNotAllowed { allow: "DELETE" }
        );
        assert_eq!(
            AdminRoute::parse(&Method::DELETE, "/files"),
            AdminRoute::MethodNotAllowed { allow: "GET" }
        );
    }

    #[test]
    fn list_limit_defaults_and_is_capped() {
        assert_eq!(list_query("").unwrap().limit, LIST_DEFAULT);
        assert_eq!(list_query("limit=1000").unwrap().limit, 1000);
        assert!(list_query("limit=1001").is_err());
        assert!(list_query("limit=0").is_err());
        assert!(list_query("since=yesterday").is_err());
        assert!(list_query("colour=red").is_err());
        let q = list_query("prefix=a%2F&uploader=u%40x&since=5&until=9&after=a%2Fb").unwrap();
        assert_eq!(q.prefix.as_deref(), Some("a/"));
        assert_eq!(q.uploader.as_deref(), Some("u@x"));
        assert_eq!((q.since, q.until), (Some(5), Some(9)));
        assert_eq!(q.after.as_deref(), Some("a/b"));
    }

    #[test]
    fn takedown_reason_is_one_bounded_line() {
        let r = reason_text("reason=dmca%0Anotice").unwrap();
        assert_eq!(r, "dmca notice");
        let long = format!("reason={}", "x".repeat(500));
        assert_eq!(reason_text(&long).unwrap().len(), 200);
        assert_eq!(reason_text("reason="), None);
    }
}
