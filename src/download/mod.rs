//! GET/HEAD of stored files (protocols.md §1.5, §2): header policy, then the body through the
//! engine.

use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::engine::Segment;
use crate::error::ApiError;
use crate::response::{empty, ResBody};
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
    let mut set = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(header::CONTENT_TYPE, &meta.content_type);
    set(header::ACCEPT_RANGES, "bytes");
    set(header::ETAG, &format!("\"{}\"", meta.sha256));
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

pub async fn handle(
    state: &Arc<AppState>,
    raw_path: &str,
    head: bool,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let path = match StoredPath::parse(raw_path, &state.download_rules) {
        Ok(p) => p,
        // A path that could never have been stored is simply not found.
        Err(_) => return Err(ApiError::NotFound),
    };
    let storage = state.storage.clone();
    let p2 = path.clone();
    let (file, meta) = tokio::task::spawn_blocking(move || storage.open_file(&p2))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let _ = req;
    let mut res = Response::new(empty());
    file_headers(
        res.headers_mut(),
        &meta,
        path.file_name(),
        &state.config.download.cache_control,
    );
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    *res.status_mut() = StatusCode::OK;
    if !head {
        state.metrics.download_bytes.inc_by(meta.size);
        let body = state.engine.send(
            Some(file),
            vec![Segment::File {
                offset: 0,
                len: meta.size,
            }],
        );
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
