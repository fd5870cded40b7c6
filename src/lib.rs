//! Sluice: a file upload/download server for XMPP HTTP File Upload (XEP-0363), browsers and
//! apps.
//!
//! # Layout
//! - [`config`]: TOML → validated [`config::Settings`] (embedded default, key ring, units)
//! - [`state`]: [`state::AppState`], built once from settings
//! - [`server`]: accept loop, HTTP/1.1 + h2c, timeouts, graceful shutdown
//! - [`router`]: `Route::parse` + dispatch, metrics and CORS per request
//! - [`context`]: the per-request context the router hands to handlers
//! - [`body`]: the request body handlers get; drained when dropped unread (bounded)
//! - [`auth`]: upload grants (v, v2, token, v3 HMAC; Prosody JWT), constant-time
//! - [`upload`]: protocol adapters (PUT) over storage + engine
//! - [`download`]: GET/HEAD with the stored-file header policy
//! - [`digest`]: RFC 9530 `Content-Digest` / `Repr-Digest` (pure)
//! - [`engine`]: the streaming engine — tiered buffer pool, sizing, copy loops
//! - [`storage`]: path rules, staged atomic no-overwrite commit, metadata
//! - [`catalog`]: one row per stored file (SQLite embedded), the source of truth for what is
//!   published
//! - [`metrics`]: the Prometheus registry owned by the state
//! - [`ops`]: removal (expiry, quota, takedown), the expiry sweeper, caps and quotas
//! - [`admin`]: the admin API on its own listener (list, stats, takedown, erasure, sweep), the
//!   audit log, and the `sluice admin` client
//! - [`clock`]: injected time (session expiry), a manual clock for tests
//! - [`error`], [`response`]: one exhaustive error → status mapping; response helpers

pub mod admin;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod context;
pub mod digest;
pub mod download;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod migrate;
pub mod net;
pub mod ops;
pub mod ratelimit;
pub mod response;
pub mod router;
pub mod server;
pub mod state;
pub mod storage;
pub mod upload;
