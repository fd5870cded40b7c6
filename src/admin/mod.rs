//! The admin API: list, stats, takedown, erasure of an uploader, sweep now; JSON over
//! HTTP/1.1 on its own listener (`[admin] listen`), behind a bearer token (`[admin] token`).
//!
//! It is never reachable through the public listener: the public router has no admin
//! routes, and this module serves only the listener [`crate::server::run_with_admin`] hands
//! it. Every request needs `Authorization: Bearer <token>`, compared in constant time; a
//! missing or wrong token is 401 with `WWW-Authenticate: Bearer` for every path, so routes are
//! not revealed. Every error is a status and `{"error": "<one line>"}`.
//!
//! Endpoints (an `/admin` prefix is accepted too):
//! - `GET /files?prefix=&uploader=&since=&until=&after=&limit=` → [`api::FilesPage`]
//! - `GET /stats` → [`api::StatsOut`]
//! - `DELETE /files/<percent-encoded path>?reason=` → takedown ([`api::Removed`]; 404 when
//!   nothing is stored there, and the path is blocked all the same)
//! - `POST /erase?uploader=<id>[&limit=N]` → erase an uploader's files ([`api::Removed`])
//! - `POST /sweep` → delete expired files now ([`api::Removed`])
//!
//! Also here: [`audit`] (the audit log) and [`cli`] (the `sluice admin` client).
//! Must not: serve on the public listener, log or audit the token or a query string.

pub mod api;
pub mod audit;
pub mod cli;
pub mod routes;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::{header, HeaderMap, Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::response::ResBody;
use crate::state::AppState;
use routes::{AdminError, AdminRoute};

/// Admin connections open at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;
/// The message both tokens are MACed over (see [`AdminToken::verify`]).
const TOKEN_CONTEXT: &[u8] = b"sluice admin token v1";

/// The admin bearer token, kept only as a MAC keyed with it.
#[derive(Clone)]
pub struct AdminToken {
    tag: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

fn token_mac(token: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(token).ok()?;
    m.update(TOKEN_CONTEXT);
    Some(m)
}

impl AdminToken {
    pub fn new(secret: &[u8]) -> Self {
        let tag = token_mac(secret)
            .map(|m| m.finalize().into_bytes().into())
            .unwrap_or([0; 32]);
        Self { tag }
    }

    /// Whether `presented` is the token. Both sides are MACed (keyed with the token) and the
    /// tags compared in constant time, so neither the token's bytes nor its length leak
    /// through timing.
    pub fn verify(&self, presented: &[u8]) -> bool {
        token_mac(presented).is_some_and(|m| m.verify_slice(&self.tag).is_ok())
    }

    /// Whether `headers` carry `Authorization: Bearer <token>`.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return false;
        };
        let v = v.as_bytes();
        let Some(scheme) = v.get(..7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && self.verify(v[7..].trim_ascii())
    }
}

/// Serve the admin API on `listener` until `stop`, then let requests in flight finish within
/// the grace period.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    token: AdminToken,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "admin API listening");
    }
    let token = Arc::new(token);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let cfg = &state.config().server;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .keep_alive(true);
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (state, token) = (state.clone(), token.clone());
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let (state, token) = (state.clone(), token.clone());
            async move { Ok::<_, Infallible>(handle(&state, &token, req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tracker.spawn(
            async move {
                let _slot = slot;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin connection ended with error");
                }
            }
            .instrument(tracing::debug_span!("admin_conn", peer = %peer)),
        );
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(state.config().server.shutdown_grace) => {}
    }
}

/// One admin request. Only the path is logged, never the query or `Authorization`.
async fn handle<B>(
    state: &Arc<AppState>,
    token: &AdminToken,
    req: Request<B>,
) -> Response<ResBody> {
    let route = AdminRoute::parse(req.method(), req.uri().path());
    let span = tracing::info_span!("admin", route = route.name(), method = %req.method());
    async {
        if !token.authorizes(req.headers()) {
            tracing::warn!("admin request without a valid token");
            return AdminError::Unauthorized.into_response();
        }
        let query = req.uri().query().unwrap_or("");
        match routes::dispatch(state, route, query).await {
            Ok(res) => res,
            Err(e) => e.into_response(),
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_only_itself() {
        let t = AdminToken::new(b"admin-token-0123456789");
        assert!(t.verify(b"admin-token-0123456789"));
        assert!(!t.verify(b"admin-token-012345678"));
        assert!(!t.verify(b"admin-token-01234567890"));
        assert!(!t.verify(b""));
    }

    #[test]
    fn bearer_header_is_required() {
        let t = AdminToken::new(b"admin-token-0123456789");
        let mut h = HeaderMap::new();
        assert!(!t.authorizes(&h));
        h.insert(
            header::AUTHORIZATION,
            "Bearer admin-token-0123456789".parse().unwrap(),
        );
        assert!(t.authorizes(&h));
        h.insert(
            header::AUTHORIZATION,
            "bearer admin-token-0123456789".parse().unwrap(),
        );
        assert!(t.authorizes(&h));
        h.insert(
            header::AUTHORIZATION,
            "Basic admin-token-0123456789".parse().unwrap(),
        );
        assert!(!t.authorizes(&h));
        h.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(!t.authorizes(&h));
    }
}
