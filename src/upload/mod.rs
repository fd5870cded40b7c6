//! Upload protocols. Each is an adapter that authorises, stages through the storage layer and
//! moves bytes through the streaming engine; none copies bytes itself.

pub mod put;

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// The content type to store: the client's, if it is a sane media type, else guessed from the
/// file name.
pub fn stored_content_type(headers: &HeaderMap, file_name: &str) -> String {
    let given = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 255 && v.contains('/'))
        .filter(|v| v.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    match given {
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
