//! `ApiError`: every failure a request can meet, mapped to a status in one exhaustive `match`
//! (no catch-all arm: a new error forces a decision) with a one-line reason as the body.

use http::{header, HeaderValue, Response, StatusCode};

use crate::auth::AuthError;
use crate::engine::EngineError;
use crate::response::{text, ResBody};
use crate::storage::{PathError, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Path(#[from] PathError),
    #[error("path is not valid UTF-8 after percent-decoding")]
    PathEncoding,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("Content-Length is required")]
    LengthRequired,
    #[error("upload is larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("a file already exists at this path")]
    Exists,
    #[error("path conflicts with an existing file or directory")]
    PathConflict,
    #[error("not found")]
    NotFound,
    #[error("this file was taken down and cannot be uploaded again")]
    TakenDown,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("request body ended after {received} of {expected} bytes")]
    ShortBody { received: u64, expected: u64 },
    #[error("client sent nothing for too long")]
    BodyTimeout,
    #[error("client connection failed while sending the body")]
    ClientGone,
    #[error("storage is full")]
    NoSpace,
    #[error("{0}")]
    InsufficientStorage(&'static str),
    #[error("this uploader's daily upload quota is used up; retry in {retry_after} s")]
    QuotaExceeded { retry_after: u64 },
    #[error("too many requests; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("unknown upload session")]
    SessionNotFound,
    #[error("upload session has expired or was terminated")]
    SessionGone,
    #[error("too many open upload sessions; try again later")]
    TooManySessions,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("{0}")]
    PreconditionFailed(&'static str),
    #[error("checksum of the appended data does not match; the data was discarded")]
    ChecksumMismatch,
    #[error("{0}")]
    Digest(#[from] crate::digest::DigestError),
    #[error("the body does not match its Content-Digest/Repr-Digest; nothing was stored")]
    DigestMismatch,
    #[error("a newer request for this upload took over")]
    Superseded,
    #[error("server is busy; try again later")]
    Busy,
    /// A feature this deployment cannot offer (501).
    #[error("{0}")]
    NotImplemented(&'static str),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Path(PathError::ExtensionNotAllowed) => StatusCode::FORBIDDEN,
            ApiError::Path(
                PathError::Empty
                | PathError::EmptySegment
                | PathError::DotSegment
                | PathError::BadCharacter
                | PathError::NameTooLong(_)
                | PathError::SegmentTooLong(_)
                | PathError::PathTooLong(_),
            ) => StatusCode::BAD_REQUEST,
            ApiError::PathEncoding => StatusCode::BAD_REQUEST,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Auth(a) => match a {
                AuthError::Missing
                | AuthError::BadMac
                | AuthError::Expired
                | AuthError::BadExpires
                | AuthError::ModeDisabled(_) => StatusCode::FORBIDDEN,
                AuthError::BearerMissing | AuthError::BearerInvalid => StatusCode::UNAUTHORIZED,
                AuthError::SlotMismatch => StatusCode::BAD_REQUEST,
                AuthError::SizeMismatch => StatusCode::PAYLOAD_TOO_LARGE,
            },
            ApiError::Exists | ApiError::PathConflict => StatusCode::CONFLICT,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::TakenDown => StatusCode::GONE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ShortBody { .. } => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::ClientGone => StatusCode::BAD_REQUEST,
            ApiError::NoSpace | ApiError::InsufficientStorage(_) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            ApiError::QuotaExceeded { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::SessionNotFound => StatusCode::NOT_FOUND,
            ApiError::SessionGone => StatusCode::GONE,
            ApiError::TooManySessions | ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict(_) | ApiError::Superseded => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            // RFC 9530 does not fix a status; a body that is not what the client said it
            // sent is a bad request.
            ApiError::Digest(_) | ApiError::DigestMismatch => StatusCode::BAD_REQUEST,
            // tus checksum extension: 460 Checksum Mismatch.
            ApiError::ChecksumMismatch => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The response: status, one-line reason, and the headers some statuses require.
    pub fn into_response(self) -> Response<ResBody> {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = ?self, "request failed");
        } else {
            tracing::debug!(error = %self, "request refused");
        }
        let mut res = text(status, format!("{self}\n"));
        match &self {
            ApiError::Auth(AuthError::BearerMissing | AuthError::BearerInvalid) => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed { allow } => {
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::QuotaExceeded { retry_after } | ApiError::RateLimited { retry_after } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                    res.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            // RFC 9530 §4: tell the client which algorithms would be checked.
            ApiError::Digest(_) | ApiError::DigestMismatch => {
                let v = HeaderValue::from_static(crate::digest::WANTED);
                res.headers_mut().insert("want-repr-digest", v.clone());
                res.headers_mut().insert("want-content-digest", v);
            }
            _ => {}
        }
        res
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Exists => ApiError::Exists,
            StorageError::NotFound => ApiError::NotFound,
            StorageError::TakenDown => ApiError::TakenDown,
            StorageError::PathConflict => ApiError::PathConflict,
            StorageError::Superseded => ApiError::Superseded,
            StorageError::NoSpace => ApiError::NoSpace,
            StorageError::NameTooLong => {
                ApiError::BadRequest("a name in the path is too long for the filesystem")
            }
            StorageError::Io(e) => ApiError::Internal(format!("storage: {e}")),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::TooLarge => ApiError::TooLarge { max: 0 },
            EngineError::Short { received, expected } => ApiError::ShortBody { received, expected },
            EngineError::IdleTimeout => ApiError::BodyTimeout,
            EngineError::Client(_) => ApiError::ClientGone,
            EngineError::Cancelled => ApiError::Superseded,
            EngineError::Busy => ApiError::Busy,
            EngineError::Io(io) => ApiError::from(StorageError::from(io)),
        }
    }
}
