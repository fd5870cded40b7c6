//! placeholder
use std::sync::Arc;
pub async fn handle(
    _state: &Arc<crate::state::AppState>,
    _rest: &str,
    _req: http::Request<hyper::body::Incoming>,
) -> http::Response<crate::response::ResBody> {
    crate::error::ApiError::NotFound.into_response()
}
