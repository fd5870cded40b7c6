//! Configuration of the storage backend and the shared catalog: one node on the filesystem
//! and SQLite (the embedded default), or several nodes on S3-compatible object storage and
//! PostgreSQL.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::KeyConfig;

/// Where file bytes are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Files under `storage.dir` (the default).
    #[default]
    Fs,
    /// An S3-compatible object store (`[storage.s3]`).
    S3,
}

/// `[storage.s3]`: the object store of `backend = "s3"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:8333` (SeaweedFS, MinIO, Garage) or
    /// `https://s3.eu-central-1.amazonaws.com`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Key prefix of everything Sluice stores in the bucket (e.g. `"sluice/"`).
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted stores need.
    pub path_style: bool,
    /// Access key: `id` is the access key id; the secret key inline, in a file or an
    /// environment variable, like the key ring. Unset: `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` from the environment.
    pub credentials: Option<KeyConfig>,
    /// Size of the parts a large or resumable upload is sent in (at least 5 MiB, S3's minimum).
    pub part_size: ByteSize,
    /// Time limit of one S3 request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            bucket: String::new(),
            region: "us-east-1".into(),
            prefix: String::new(),
            path_style: true,
            credentials: None,
            part_size: ByteSize::mib(8),
            timeout: Duration::from_secs(60),
        }
    }
}

/// `[catalog]`: where the catalog (file rows, resumable sessions, leases) lives.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// `sqlite://` (empty: `catalog.sqlite3` under `storage.dir`, one node) or
    /// `postgres://user@host:port/db` (shared by several nodes).
    pub url: String,
    /// The database password from a file (unset: the URL's, if any).
    pub password_file: Option<std::path::PathBuf>,
    /// The database password from an environment variable.
    pub password_env: Option<String>,
    /// Connections this node keeps to the database.
    pub pool_size: usize,
}

impl CatalogConfig {
    /// Whether the catalog is shared by several nodes (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }
}

/// `[cluster]`: how this node works with the others on a shared catalog.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name in leases and logs (empty: host name and process id).
    pub node_id: String,
    /// How long a lease (an upload's writer, the expiry sweeper) lasts without renewal: a
    /// node that dies holding one is taken over after this long at most.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            lease_ttl: Duration::from_secs(15),
        }
    }
}
