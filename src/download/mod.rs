//! GET/HEAD of stored files (protocols.md §1.5, §2): header policy, preconditions
//! ([`conditional`]), ranges ([`range`]), then the body through the engine.
//!
//! The decisions are pure functions in the submodules; this file only maps their outcomes to
//! responses and segments.

pub mod cache;
pub mod conditional;
pub mod range;

use std::sync::Arc;

use crate::body::ReqBody;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::context::RequestContext;
use crate::engine::{Segment, SendMeter};
use crate::error::ApiError;
use crate::metrics::GaugeGuard;
use crate::response::{empty, set_header, text, ResBody};
use crate::state::AppState;
use crate::storage::{FileMeta, StoredPath};

/// RFC 5987 `attr-char` minus what must be encoded.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `Content-Disposition` per protocols.md §1.5 and RFC 6266: inline only for media and plain
/// text, otherwise attachment; always an ASCII `filename` fallback and `filename*=UTF-8''`.
pub fn content_disposition(content_type: &str, name: &str) -> String {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let inline = essence.starts_with("image/")
        || essence.starts_with("video/")
        || essence.starts_with("audio/")
        || essence == "text/plain";
    let kind = if inline { "inline" } else { "attachment" };
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = utf8_percent_encode(name, ATTR_CHAR);
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// The headers every stored-file response carries.
fn file_headers(h: &mut HeaderMap, meta: &FileMeta, name: &str, cache_control: &str) {
    let mut set = |k: header::HeaderName, v: &str| set_header(h, k, v);
    set(header::CONTENT_TYPE, &meta.content_type);
    set(header::ACCEPT_RANGES, "bytes");
    set(header::ETAG, &conditional::format_etag(&meta.sha256));
    // RFC 9530 §3: the digest of the whole selected representation, on 200, 206 and HEAD
    // alike, so a client can check what it assembled.
    if let Some(d) = crate::digest::repr_digest(&meta.sha256) {
        set(header::HeaderName::from_static("repr-digest"), &d);
    }
    set(
        header::LAST_MODIFIED,
        &httpdate::fmt_http_date(meta.uploaded_time()),
    );
    set(header::CACHE_CONTROL, cache_control);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; sandbox",
    );
    set(
        header::CONTENT_DISPOSITION,
        &content_disposition(&meta.content_type, name),
    );
}

/// A list header's lines joined with ", "; non-ASCII → `Some("")` (matches nothing).
fn joined(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in h.get_all(name) {
        let part = v.to_str().unwrap_or("");
        if part.is_empty() && !v.is_empty() {
            return Some(String::new());
        }
        match &mut out {
            None => out = Some(part.to_owned()),
            Some(s) => {
                s.push_str(", ");
                s.push_str(part);
            }
        }
    }
    out
}

/// A single-valued header: `None` when absent, repeated or not visible ASCII.
fn single(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    let mut it = h.get_all(name).iter();
    let first = it.next()?;
    if it.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

pub async fn handle(
    state: &Arc<AppState>,
    ctx: &RequestContext<'_>,
    raw_path: &str,
    head: bool,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, ApiError> {
    let path = match StoredPath::parse(raw_path, &state.live().download_rules) {
        Ok(p) => p,
        // A path that could never have been stored is simply not found.
        Err(_) => return Err(ApiError::NotFound),
    };
    if state.engine.pool().under_pressure() {
        state.hot.clear();
    }
    let (file, meta, whole) = match state.hot.get(path.as_str()) {
        // A hot small file: no blocking hop at all.
        Some((meta, data)) => (None, meta, Some(data)),
        None => {
            // One step opens the file, finds its metadata and, for a small file, reads it
            // whole into a pool buffer.
            let opened = state
                .storage
                .open(&path, Some(state.engine.small_read()))
                .await?;
            let whole = opened.whole.map(|b| state.engine.small_bytes(b));
            if let Some(data) = &whole {
                state.hot.put(path.as_str(), &opened.meta, data);
            }
            (Some(opened.reader), opened.meta, whole)
        }
    };

    // An expired file is gone at once, before the sweeper gets to it (hot copies included).
    if meta.expires_at.is_some_and(|t| t <= state.clock.now_secs()) {
        return Err(ApiError::NotFound);
    }
    let h = req.headers();
    let etag = conditional::format_etag(&meta.sha256);
    let (if_match, if_none_match) = (
        joined(h, header::IF_MATCH),
        joined(h, header::IF_NONE_MATCH),
    );
    let conds = conditional::Conditions {
        if_match: if_match.as_deref(),
        if_none_match: if_none_match.as_deref(),
        if_modified_since: single(h, header::IF_MODIFIED_SINCE),
        if_unmodified_since: single(h, header::IF_UNMODIFIED_SINCE),
        if_range: single(h, header::IF_RANGE),
    };
    let validators = conditional::Validators {
        etag: &etag,
        last_modified: meta.uploaded_time(),
    };
    let mut res = Response::new(empty());
    let honour_range = match conditional::evaluate(req.method(), &conds, &validators) {
        conditional::Precondition::Failed => {
            return Ok(text(
                StatusCode::PRECONDITION_FAILED,
                "precondition failed\n",
            ));
        }
        conditional::Precondition::NotModified => {
            // RFC 9110 §15.4.5: 304 carries the validators and caching headers, no body.
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            file_headers(
                res.headers_mut(),
                &meta,
                path.file_name(),
                &ctx.config.download.cache_control,
            );
            for k in [
                header::CONTENT_TYPE,
                header::CONTENT_DISPOSITION,
                header::ACCEPT_RANGES,
            ] {
                res.headers_mut().remove(k);
            }
            return Ok(res);
        }
        conditional::Precondition::Proceed { honour_range } => honour_range,
    };
    file_headers(
        res.headers_mut(),
        &meta,
        path.file_name(),
        &ctx.config.download.cache_control,
    );
    let range_header = single(h, header::RANGE);
    let outcome = if honour_range {
        range::resolve(range_header, meta.size, ctx.config.download.max_ranges)
    } else {
        range::RangeOutcome::Full
    };
    if range_header.is_some() && !head {
        let label = match &outcome {
            range::RangeOutcome::Full => "full",
            range::RangeOutcome::Single(_) => "single",
            range::RangeOutcome::Multi(_) => "multi",
            range::RangeOutcome::Unsatisfiable => "unsatisfiable",
        };
        state
            .metrics
            .range_requests
            .with_label_values(&[label])
            .inc();
    }
    let (status, segments, length) = match outcome {
        range::RangeOutcome::Full => (
            StatusCode::OK,
            vec![Segment::File {
                offset: 0,
                len: meta.size,
            }],
            meta.size,
        ),
        range::RangeOutcome::Single(r) => {
            set_header(
                res.headers_mut(),
                header::CONTENT_RANGE,
                &range::content_range(&r, meta.size),
            );
            (
                StatusCode::PARTIAL_CONTENT,
                vec![Segment::File {
                    offset: r.start,
                    len: r.len(),
                }],
                r.len(),
            )
        }
        range::RangeOutcome::Multi(ranges) => {
            let mut seed = [0u8; 16];
            getrandom::fill(&mut seed).map_err(|e| ApiError::Internal(e.to_string()))?;
            let boundary = range::boundary_from(&seed);
            // A stored type that is not a valid header value (older metadata) falls back to
            // octet-stream rather than failing the request.
            let plan = range::MultipartPlan::new(&ranges, meta.size, &meta.content_type, &boundary)
                .or_else(|_| {
                    range::MultipartPlan::new(
                        &ranges,
                        meta.size,
                        "application/octet-stream",
                        &boundary,
                    )
                })
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            set_header(
                res.headers_mut(),
                header::CONTENT_TYPE,
                &plan.content_type(),
            );
            let mut segs = Vec::with_capacity(plan.parts().len() * 2 + 1);
            for part in plan.parts() {
                segs.push(Segment::Bytes(bytes::Bytes::copy_from_slice(&part.header)));
                segs.push(Segment::File {
                    offset: part.range.start,
                    len: part.range.len(),
                });
            }
            segs.push(Segment::Bytes(bytes::Bytes::copy_from_slice(
                plan.closing(),
            )));
            (StatusCode::PARTIAL_CONTENT, segs, plan.total_len())
        }
        range::RangeOutcome::Unsatisfiable => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            set_header(
                r.headers_mut(),
                header::CONTENT_RANGE,
                &range::unsatisfied_content_range(meta.size),
            );
            set_header(r.headers_mut(), header::ACCEPT_RANGES, "bytes");
            return Ok(r);
        }
    };
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if !head {
        let file_bytes: u64 = segments
            .iter()
            .filter(|s| matches!(s, Segment::File { .. }))
            .map(Segment::len)
            .sum();
        state.metrics.download_bytes.inc_by(file_bytes);
        // A small file already in memory: serve slices of that buffer.
        let segments = match &whole {
            Some(buf) => segments
                .into_iter()
                .map(|seg| match seg {
                    Segment::File { offset, len } => {
                        let (a, b) = (offset as usize, (offset + len) as usize);
                        Segment::Bytes(buf.slice(a..b.min(buf.len())))
                    }
                    other => other,
                })
                .collect(),
            None => segments,
        };
        let guard = GaugeGuard::new(&state.metrics.downloads_in_flight);
        // The connection's send meter (set by the server on every request it accepts).
        let meter = req.extensions().get::<Arc<SendMeter>>().cloned();
        let body = state
            .engine
            .send(file, segments, Some(guard), &ctx.client, meter);
        *res.body_mut() = body.boxed_unsync();
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_inline_other_attachment_with_rfc5987_name() {
        assert_eq!(
            content_disposition("image/jpeg", "très cool.jpg"),
            "inline; filename=\"tr_s cool.jpg\"; filename*=UTF-8''tr%C3%A8s%20cool.jpg"
        );
        assert!(content_disposition("text/html", "x.html").starts_with("attachment;"));
        assert!(content_disposition("image/svg+xml", "x.svg").starts_with("inline;"));
        assert!(content_disposition("TEXT/PLAIN; charset=utf-8", "a").starts_with("inline;"));
        assert!(content_disposition("application/pdf", "a\"b.pdf").contains("filename=\"a_b.pdf\""));
    }
}
