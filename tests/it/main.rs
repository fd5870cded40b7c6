#![allow(clippy::unwrap_used, clippy::expect_used)]
// Tests inspect the data directory directly: std::fs is fine here.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! Integration tests: the real server in-process on a pre-bound 127.0.0.1:0 listener, real
//! files in a temp dir, HTTP through reqwest (and raw TCP where a client must misbehave).

mod admin;
mod clients;
mod cluster;
mod common;
mod digest;
mod download;
mod edge;
mod engine;
mod hardening;
mod ietf;
mod migrate;
mod ops;
mod put;
mod resumable;
mod server;
mod tls;
