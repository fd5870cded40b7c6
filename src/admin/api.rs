//! The admin API's JSON bodies, shared by the server ([`super::routes`]) and the
//! `sluice admin` client ([`super::cli`]).

use serde::{Deserialize, Serialize};

use crate::catalog::FileRow;

/// One file of `GET /files` (absent values are `null`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileOut {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub uploaded_at: u64,
    pub uploader: Option<String>,
    pub expires_at: Option<u64>,
}

impl From<FileRow> for FileOut {
    fn from(r: FileRow) -> Self {
        Self {
            path: r.path,
            size: r.meta.size,
            sha256: r.meta.sha256,
            content_type: r.meta.content_type,
            uploaded_at: r.meta.uploaded_at,
            uploader: r.meta.uploader,
            expires_at: r.meta.expires_at,
        }
    }
}

/// `GET /files`: a page, and the `after` of the next one (`null` on the last page).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilesPage {
    pub files: Vec<FileOut>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploaderOut {
    pub uploader: String,
    pub files: u64,
    pub bytes: u64,
}

/// `GET /stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsOut {
    pub files: u64,
    pub bytes: u64,
    pub free_bytes: u64,
    pub top_uploaders: Vec<UploaderOut>,
}

/// What a removal did (`DELETE`, `POST /erase`, `POST /sweep`). `more`: `POST /erase` with
/// a `limit` stopped with files left.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Removed {
    pub files: u64,
    pub bytes: u64,
    #[serde(default)]
    pub more: bool,
}
