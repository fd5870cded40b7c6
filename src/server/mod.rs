//! The accept loop and per-connection setup: HTTP/1.1 and HTTP/2 (cleartext prior knowledge)
//! on the same port, `TCP_NODELAY`, a header-read timeout that fires (hyper gets a timer),
//! header size limits, a connection cap, and graceful shutdown (stop accepting, let in-flight
//! requests finish within the grace period).

mod io;
pub mod tls;
pub mod unix;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
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

const H2_STREAM_SEND_BUF: usize = 128 * 1024;

/// How long, at shutdown, connections accepted just before get to send their request.
const JUST_ACCEPTED_GRACE: Duration = Duration::from_millis(250);

fn builder(state: &AppState) -> auto::Builder<TokioExecutor> {
    let cfg = &state.config().server;
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
        // A stream whose flow-control window stays closed buffers at most this much (plus the
        // one frame being sent) before hyper stops polling its body.
        .max_send_buf_size(H2_STREAM_SEND_BUF)
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
    run_with_admin(listeners, None, state, shutdown).await
}

/// [`run`], plus the admin API on `admin` (its own listener; served only when the state has
/// an admin token).
pub async fn run_with_admin<F>(
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    state: Arc<AppState>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    serve(
        Listeners {
            plain: listeners,
            admin,
            ..Listeners::default()
        },
        state,
        shutdown,
    )
    .await
}

/// A TLS listener and its (reloadable) certificate.
pub struct TlsListener {
    pub listener: TcpListener,
    pub certs: Arc<tls::CertStore>,
}

/// Everything a server listens on.
#[derive(Default)]
pub struct Listeners {
    /// Cleartext HTTP/1.1 and h2c.
    pub plain: Vec<TcpListener>,
    /// HTTPS: HTTP/1.1 and HTTP/2 by ALPN.
    pub tls: Vec<TlsListener>,
    /// Unix sockets (HTTP/1.1 and h2c) for a local reverse proxy.
    pub unix: Vec<tokio::net::UnixListener>,
    /// The admin API (served only when the state has an admin token).
    pub admin: Option<TcpListener>,
}

/// Serve every listener until `shutdown` completes, then drain within the grace period.
pub async fn serve<F>(
    listeners: Listeners,
    state: Arc<AppState>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let Listeners {
        plain: listeners,
        tls,
        unix,
        admin,
    } = listeners;
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limits = ConnLimits {
        total: Arc::new(Semaphore::new(state.config().server.max_connections)),
        per_client: Arc::new(PerClient::new(
            state.config().server.max_connections_per_client,
            state.config().server.connection_cap_exempt.clone(),
        )),
    };
    if let Some(store) = state.sessions.clone() {
        tracker.spawn(crate::upload::session::sweep_loop(
            store,
            state.config().resumable.sweep_interval,
            stop.clone(),
        ));
    }
    {
        let st = state.clone();
        crate::cluster::watch_removals(state.storage.catalog(), stop.clone(), move |p| {
            st.hot.remove(p)
        });
    }
    tracker.spawn(crate::ops::sweep_loop(
        state.clone(),
        state.config().retention.sweep_interval,
        stop.clone(),
    ));
    match (admin, state.admin_token.clone()) {
        (Some(listener), Some(token)) => {
            tracker.spawn(crate::admin::serve(
                listener,
                state.clone(),
                token,
                stop.clone(),
                tracker.clone(),
            ));
        }
        (Some(_), None) => {
            tracing::warn!("admin listener given without an admin token; not served")
        }
        (None, _) => {}
    }
    for listener in listeners {
        tracker.spawn(accept_loop(
            listener,
            None,
            state.clone(),
            stop.clone(),
            limits.clone(),
            tracker.clone(),
        ));
    }
    for listener in unix {
        tracker.spawn(accept_loop(
            listener,
            None,
            state.clone(),
            stop.clone(),
            limits.clone(),
            tracker.clone(),
        ));
    }
    let mut stores = Vec::new();
    for t in tls {
        let cfg = tls::server_config(t.certs.clone())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        stores.push(t.certs);
        tracker.spawn(accept_loop(
            t.listener,
            Some(tokio_rustls::TlsAcceptor::from(cfg)),
            state.clone(),
            stop.clone(),
            limits.clone(),
            tracker.clone(),
        ));
    }
    // Idle rate-limit keys go, so their memory is bounded by the clients of the last minute.
    let (st, stop2) = (state.clone(), stop.clone());
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = stop2.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(60)) => st.live().rate_limits.evict_idle(),
            }
        }
    });
    // Always: SIGHUP must never end the process (its default action), TLS or not.
    tracker.spawn(cert_reload_loop(stores, state.clone(), stop.clone()));
    shutdown.await;
    tracing::info!("shutdown requested: no longer accepting connections");
    stop.cancel();
    tracker.close();
    // Each accept loop drains its own connections within the grace period; the sweeper stops
    // on `stop`. Connections still open after that are dropped with the runtime.
    let grace = state.config().server.shutdown_grace;
    if tokio::time::timeout(grace + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over; closing remaining connections");
    }
    Ok(())
}

/// The connection caps: all connections, and per client address.
#[derive(Clone)]
struct ConnLimits {
    total: Arc<Semaphore>,
    per_client: Arc<PerClient>,
}

/// Open connections per client address (IPv6 grouped by /64: one host commonly has many
/// addresses of its /64). Entries go when their last connection closes, so the map is
/// bounded by the open connections.
struct PerClient {
    max: usize,
    exempt: Vec<ipnet::IpNet>,
    open: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One connection's share of its client's cap; returned on drop.
struct ClientSlot {
    owner: Arc<PerClient>,
    key: IpAddr,
    counted: bool,
}

impl PerClient {
    fn new(max: usize, exempt: Vec<ipnet::IpNet>) -> Self {
        Self {
            max,
            exempt,
            open: Default::default(),
        }
    }

    /// A slot for a new connection from `ip`, or `None` when it already holds its share.
    /// Exempt addresses (a local reverse proxy carries every client) are not counted.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = crate::net::limit_key(ip);
        let owner = self.clone();
        if self.max == 0
            || self
                .exempt
                .iter()
                .any(|n| n.contains(&ip) || n.contains(&key))
        {
            return Some(ClientSlot {
                owner,
                key,
                counted: false,
            });
        }
        let mut open = self.open.lock().ok()?;
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner,
            key,
            counted: true,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        if let Ok(mut open) = self.owner.open.lock() {
            if let Some(n) = open.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.key);
                }
            }
        }
    }
}

/// On SIGHUP reload the configuration and the TLS certificates; reload certificates when
/// their files change, until `stop`.
async fn cert_reload_loop(
    stores: Vec<Arc<tls::CertStore>>,
    state: Arc<AppState>,
    stop: CancellationToken,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let every = state.config().server.tls_check_interval;
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if forced {
            state.reload_from_file();
        }
        for s in &stores {
            let r = if forced {
                s.reload().map(|()| true)
            } else {
                s.reload_if_changed()
            };
            let label = match &r {
                Ok(true) => {
                    tracing::info!(cert = %s.cert_path().display(), "TLS certificate reloaded");
                    "ok"
                }
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; the running one stays");
                    "error"
                }
            };
            state.metrics.tls_reloads.with_label_values(&[label]).inc();
        }
    }
}

async fn accept_loop<L: Acceptor>(
    listener: L,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AppState>,
    stop: CancellationToken,
    limits: ConnLimits,
    tracker: TaskTracker,
) {
    let builder = Arc::new(builder(&state));
    let cfg = &state.config().server;
    let io_limits = io::Limits {
        first_bytes_timeout: cfg.header_read_timeout,
        send_timeout: cfg.send_timeout,
        min_send_rate: cfg.min_send_rate.as_u64(),
        closed_first_bytes: state
            .metrics
            .connections_closed
            .with_label_values(&["first_bytes"]),
        closed_send_rate: state
            .metrics
            .connections_closed
            .with_label_values(&["send_rate"]),
    };
    let closed_per_client = state
        .metrics
        .connections_closed
        .with_label_values(&["per_client"]);
    let send_lowat = u32::try_from(cfg.send_lowat.as_u64()).unwrap_or(u32::MAX);
    let graceful = GracefulShutdown::new();
    loop {
        // At the total cap, further clients wait in the kernel's accept queue.
        let total_slot = tokio::select! {
            _ = stop.cancelled() => break,
            p = limits.total.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept_conn() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log and back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A unix-socket peer (a local proxy) has no address and no per-client share.
        let client_slot = match peer {
            Some(p) => match limits.per_client.acquire(p.ip()) {
                Some(slot) => Some(slot),
                None => {
                    closed_per_client.inc();
                    tracing::debug!(peer = %peer_label(peer), "per-client connection cap reached; closing");
                    drop(stream);
                    continue;
                }
            },
            None => None,
        };
        let conn_state = state.clone();
        let meter = crate::engine::SendMeter::new();
        let conn_meter = meter.clone();
        let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let state = conn_state.clone();
            if let Some(p) = peer {
                req.extensions_mut().insert(crate::context::PeerAddr(p));
            }
            req.extensions_mut().insert(conn_meter.clone());
            async move { Ok::<_, Infallible>(crate::router::handle(state, req).await) }
        });
        // The guard sits under TLS, so its timeouts see the raw bytes (a silent client, a
        // stalled handshake, a slow reader) and its meter the bytes the kernel really takes.
        io::Abort::limit_unsent(&stream, send_lowat);
        let io = io::ConnGuard::new(stream, io_limits.clone(), meter);
        let (state, builder, watcher, tls) = (
            state.clone(),
            builder.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        let handshake_timeout = cfg.header_read_timeout;
        tracker.spawn(
            async move {
                let _open = GaugeGuard::new(&state.metrics.connections_open);
                let _slots = (total_slot, client_slot);
                let result = match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
                        watcher.watch(conn).await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                            Ok(Ok(tls)) => {
                                // The timer under TLS saw the handshake; this one sees the
                                // first request (a silent client after the handshake).
                                let tls = io::FirstRead::new(
                                    tls,
                                    handshake_timeout,
                                    state
                                        .metrics
                                        .connections_closed
                                        .with_label_values(&["first_bytes"]),
                                );
                                let conn = builder
                                    .serve_connection(TokioIo::new(tls), svc)
                                    .into_owned();
                                watcher.watch(conn).await
                            }
                            Ok(Err(e)) => {
                                state.metrics.tls_handshake_failures.inc();
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                state.metrics.tls_handshake_failures.inc();
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with error");
                }
            }
            .instrument(tracing::debug_span!("conn", peer = %peer_label(peer))),
        );
    }
    // Stop accepting; let this listener's connections finish within the grace period.
    drop(listener);
    let grace = state.config().server.shutdown_grace;
    // A connection accepted a moment ago has not had its request read yet, and hyper's
    // graceful shutdown would close it unanswered: give such clients a moment to send it (it
    // is then served and the connection closed after the response). With the listening socket
    // held by systemd, clients that connect meanwhile wait in the backlog for the next process.
    tokio::time::sleep(JUST_ACCEPTED_GRACE.min(grace)).await;
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("listener's connections closed"),
        _ = tokio::time::sleep(grace) => {}
    }
}

fn peer_label(p: Option<SocketAddr>) -> String {
    p.map_or_else(|| "unix".to_owned(), |p| p.to_string())
}

/// A listening socket: TCP (the peer has an address; `TCP_NODELAY` is set) or a unix socket
/// (a local reverse proxy; no address).
pub trait Acceptor: Send + Sync + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + io::Abort + Unpin + Send + 'static;
    fn accept_conn(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, Option<SocketAddr>)>> + Send;
}

impl Acceptor for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_conn(&self) -> std::io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (s, peer) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok((s, Some(peer)))
    }
}

impl Acceptor for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_conn(&self) -> std::io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (s, _) = self.accept().await?;
        Ok((s, None))
    }
}
