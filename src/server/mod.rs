//! The accept loop and per-connection setup: HTTP/1.1 and HTTP/2 (cleartext prior knowledge)
//! on the same port, `TCP_NODELAY`, a header-read timeout that fires (hyper gets a timer),
//! header size limits, a connection cap, and graceful shutdown (stop accepting, let in-flight
//! requests finish within the grace period).

mod io;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::metrics::GaugeGuard;
use crate::state::AppState;

fn builder(state: &AppState) -> auto::Builder<TokioExecutor> {
    let cfg = &state.config.server;
    let max_header = usize::try_from(cfg.max_header_size.as_u64()).unwrap_or(usize::MAX);
    let read_buffer = usize::try_from(cfg.read_buffer.as_u64()).unwrap_or(usize::MAX);
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        // hyper's read buffer caps both the head being parsed and each body read; the
        // configured head limit itself is checked per request (431) by the router.
        .max_buf_size(read_buffer.max(max_header).max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX))
        .max_concurrent_streams(128)
        .keep_alive_interval(Some(Duration::from_secs(60)));
    b
}

/// Serve on every listener until `shutdown` completes, then drain within the grace period.
pub async fn run<F>(
    listeners: Vec<TcpListener>,
    state: Arc<AppState>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let stop = CancellationToken::new();
    let graceful = Arc::new(GracefulShutdown::new());
    let tracker = TaskTracker::new();
    let conn_limit = Arc::new(Semaphore::new(state.config.server.max_connections));
    if let Some(store) = state.sessions.clone() {
        tracker.spawn(crate::upload::session::sweep_loop(
            store,
            state.config.resumable.sweep_interval,
            stop.clone(),
        ));
    }
    let mut accept_tasks = Vec::new();
    for listener in listeners {
        let (state, stop, graceful, limit) = (
            state.clone(),
            stop.clone(),
            graceful.clone(),
            conn_limit.clone(),
        );
        let tracker2 = tracker.clone();
        accept_tasks.push(tokio::spawn(async move {
            accept_loop(listener, state, stop, graceful, limit, tracker2).await;
        }));
    }
    shutdown.await;
    tracing::info!("shutdown requested: no longer accepting connections");
    stop.cancel();
    for t in accept_tasks {
        let _ = t.await;
    }
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    let grace = state.config.server.shutdown_grace;
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
    tracker.close();
    // The sweeper stops on `stop`; connections were bounded by the grace period above.
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let builder = Arc::new(builder(&state));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log and back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let conn_state = state.clone();
        let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let state = conn_state.clone();
            req.extensions_mut().insert(crate::router::PeerAddr(peer));
            async move { Ok::<_, Infallible>(crate::router::handle(state, req).await) }
        });
        let conn = builder
            .serve_connection(
                TokioIo::new(io::StallGuard::new(
                    stream,
                    state.config.server.send_timeout,
                )),
                svc,
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tracker.spawn(
            async move {
                let _open = GaugeGuard::new(&state.metrics.connections_open);
                let _permit = permit;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with error");
                }
            }
            .instrument(tracing::debug_span!("conn", peer = %peer_label(peer))),
        );
    }
}

fn peer_label(p: SocketAddr) -> String {
    p.to_string()
}
