//! The per-request context: what the router learned about a request before handing it on
//! (who the client is and how the engine should size its buffers, which route it is, the
//! configuration it is served under, when it started). The router builds one per request and
//! passes it down; handlers read it and never call back up into the router.

use std::net::SocketAddr;
use std::time::Instant;

use http::{header, Request};

use crate::config::Config;
use crate::engine::{Client, Engine};

/// The TCP peer of the connection a request came on (a request extension the server sets).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// One request's context (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The TCP peer, when the server recorded it.
    pub peer: Option<SocketAddr>,
    /// The engine's sizing prior for this client: its address (the peer, or the client that
    /// a trusted proxy's forwarding headers name), its strategy from the User-Agent, and
    /// whether it speaks HTTP/2.
    pub client: Client,
    /// The route's closed-set name (metrics and spans).
    pub route: &'static str,
    pub config: &'a Config,
    pub started: Instant,
}

impl<'a> RequestContext<'a> {
    pub fn new<B>(
        config: &'a Config,
        proxies: &crate::net::TrustedProxies,
        engine: &Engine,
        route: &'static str,
        req: &Request<B>,
        started: Instant,
    ) -> Self {
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
        let peer_ip = peer.map(|p| p.ip());
        // Headers are only read from a trusted proxy (most requests skip this).
        let forwarded = if proxies.trusts_peer(peer_ip) {
            let lines = |name: &str| -> Vec<&str> {
                req.headers()
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect()
            };
            proxies.client(peer_ip, &lines("forwarded"), &lines("x-forwarded-for"))
        } else {
            peer_ip
        };
        let ua = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let mut client = engine.client(forwarded, ua);
        client.http2 = req.version() == http::Version::HTTP_2;
        Self {
            peer,
            client,
            route,
            config,
            started,
        }
    }
}
