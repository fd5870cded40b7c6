//! Configuration: the TOML file's serde structs, the embedded default, and validation into
//! [`Settings`].
//!
//! Owns: parsing (`deny_unknown_fields` everywhere: a typo in a limit or a secret is a security
//! bug), human units (`bytesize`, `humantime`), cross-field checks, secret loading (inline, file,
//! environment variable) and the first-start secret generation of the embedded default.
//! Must not: touch HTTP, storage layout beyond creating the secret file, or read anything after
//! startup.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

mod cluster;
mod ops;
pub use cluster::{Backend, CatalogConfig, ClusterConfig, S3Config};
pub use ops::{
    AdminConfig, AuditConfig, QuotaAction, QuotaConfig, RateLimitConfig, RetentionConfig,
    RetentionRule,
};

/// The embedded default configuration, used when `--config` is not given.
pub const EMBEDDED_DEFAULT: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[storage]
dir = "./data"
"#;

/// Errors while loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("secret {id}: {reason}")]
    Secret { id: String, reason: String },
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub download: DownloadConfig,
    pub cors: CorsConfig,
    pub engine: EngineConfig,
    pub resumable: ResumableConfig,
    pub retention: RetentionConfig,
    pub quota: QuotaConfig,
    pub rate_limit: RateLimitConfig,
    pub admin: AdminConfig,
    pub audit: AuditConfig,
    pub catalog: CatalogConfig,
    pub cluster: ClusterConfig,
    /// HTTPS listeners (`[[tls]]`), each with its certificate chain and key.
    pub tls: Vec<TlsListenerConfig>,
}

/// One `[[tls]]` entry: an HTTPS listener (HTTP/1.1 and HTTP/2 by ALPN).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first), e.g. certbot's fullchain.pem.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[server]`: listeners, timeouts and limits of the HTTP layer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to listen on; IPv6 as `"[::1]:8080"`.
    pub listen: Vec<SocketAddr>,
    /// Unix sockets to listen on as well (for a reverse proxy on this machine).
    pub unix_listen: Vec<PathBuf>,
    /// Mode of the unix socket files, octal.
    pub unix_mode: String,
    /// Group of the unix socket files (the proxy's group); unset: the process's group.
    pub unix_group: Option<String>,
    /// URL prefix of the upload/download routes (e.g. `/upload`). Requests with the prefix have
    /// it stripped; requests without it are accepted too (a proxy may strip it).
    pub url_prefix: String,
    /// Time a client has to send a complete request head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request body that sends nothing for this long is cut off (its staged data removed).
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Maximum size of the request head (request line and header fields); larger: 431.
    pub max_header_size: ByteSize,
    /// HTTP/1.1 read buffer per connection: the largest body read per system call (and a hard
    /// cap on the head while it is parsed). 64 KiB lets bulk uploads run at disk speed; 16 KiB
    /// costs a 1 GiB PUT about two thirds of its throughput here.
    pub read_buffer: ByteSize,
    /// How often TLS certificate files are checked for changes (they are also reloaded on
    /// SIGHUP).
    #[serde(with = "humantime_serde")]
    pub tls_check_interval: Duration,
    /// A client that reads nothing of a response for this long is disconnected.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Cap on concurrently open connections (further accepts wait).
    pub max_connections: usize,
    /// Cap on connections open at once from one client address (IPv6 addresses grouped by
    /// their /64); more are closed at once. 0 = no per-client cap.
    pub max_connections_per_client: usize,
    /// Client addresses the per-client connection cap and the rate limits do not count: a
    /// local reverse proxy carries every client on one address (configure it in
    /// `trusted_proxies` to limit its clients one by one).
    pub connection_cap_exempt: Vec<ipnet::IpNet>,
    /// A response must reach the client at this many bytes per second at least, measured over
    /// each `send_timeout` window in which its writes block; a slower reader is disconnected
    /// (a client that reads a few bytes now and then cannot hold a connection and its buffers).
    /// 0 = only the `send_timeout` for a client that reads nothing.
    pub min_send_rate: ByteSize,
    /// Unsent bytes the kernel may queue per TCP connection (`TCP_NOTSENT_LOWAT`); more and
    /// writes wait. Keeps a slow reader's backlog in the kernel short, so downloads see the
    /// client's real pace (buffer sizes and read-ahead follow it). 0 = the kernel's default.
    pub send_lowat: ByteSize,
    /// Threads for blocking file I/O (tokio's blocking pool).
    pub blocking_threads: usize,
    /// A refused upload whose declared body is at most this large is read and discarded, so
    /// the refusal reaches the client (and proxies) intact; larger ones close the connection.
    pub drain_limit: ByteSize,
    /// Behind a reverse proxy: take the client address for per-client sizing history from the
    /// last `X-Forwarded-For` entry. Used for buffer sizing only, never for authorisation.
    pub trust_forwarded_for: bool,
    /// Reverse proxies (CIDR) whose `Forwarded` / `X-Forwarded-For` headers are believed: the
    /// client is the rightmost hop that is not one of them. Used for rate limits, the engine's
    /// per-client history and the audit log; never for authorisation. A unix-socket peer
    /// always counts as a trusted local proxy.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl ServerConfig {
    /// `unix_mode` as permission bits.
    pub fn unix_mode_bits(&self) -> Option<u32> {
        u32::from_str_radix(self.unix_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            url_prefix: String::new(),
            unix_listen: Vec::new(),
            unix_mode: "0660".to_owned(),
            unix_group: None,
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            tls_check_interval: Duration::from_secs(60),
            max_header_size: ByteSize::kib(16),
            read_buffer: ByteSize::kib(64),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_client: 256,
            connection_cap_exempt: vec![
                ipnet::IpNet::V4(
                    ipnet::Ipv4Net::new(std::net::Ipv4Addr::LOCALHOST, 8)
                        .unwrap_or_default()
                        .trunc(),
                ),
                ipnet::IpNet::V6(
                    ipnet::Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).unwrap_or_default(),
                ),
            ],
            min_send_rate: ByteSize::kib(1),
            send_lowat: ByteSize::kib(128),
            blocking_threads: 64,
            drain_limit: ByteSize::mib(64),
            trust_forwarded_for: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// How hard uploads are pushed to stable storage before they are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync the file and its directory before answering 201.
    Fsync,
    /// Leave flushing to the OS (faster; a power cut may lose recent uploads, never corrupt
    /// older ones).
    None,
}

/// `[storage]`: where and what may be stored.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Root directory. Files live in `<dir>/files`, metadata in `<dir>/meta`, staging in
    /// `<dir>/staging`; the generated secret in `<dir>/secret.key`.
    pub dir: PathBuf,
    /// Where file bytes go: `"fs"` (under `dir`) or `"s3"` (`[storage.s3]`).
    pub backend: Backend,
    pub s3: S3Config,
    pub durability: Durability,
    /// Largest accepted upload.
    pub max_file_size: ByteSize,
    /// Longest accepted file name (last path segment), in bytes of UTF-8.
    pub max_filename_bytes: usize,
    /// Longest accepted path (all segments), in bytes of UTF-8.
    pub max_path_bytes: usize,
    /// If non-empty, only these extensions (case-insensitive, without dot) are accepted.
    pub allowed_extensions: Vec<String>,
    /// Extensions always refused (case-insensitive, without dot).
    pub denied_extensions: Vec<String>,
    /// Cap on the bytes of all stored files together (uploads in flight count against it).
    /// An upload that would cross it gets 507 before its body is read. 0 = no cap.
    pub max_total_size: ByteSize,
    /// Free space to leave on the storage filesystem: an upload that would eat into it gets
    /// 507 before its body is read.
    pub min_free_space: ByteSize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./data"),
            backend: Backend::Fs,
            s3: S3Config::default(),
            durability: Durability::Fsync,
            max_file_size: ByteSize::mib(100),
            max_filename_bytes: 255,
            max_path_bytes: 1024,
            allowed_extensions: Vec::new(),
            denied_extensions: Vec::new(),
            max_total_size: ByteSize::b(0),
            min_free_space: ByteSize::mib(100),
        }
    }
}

/// Grant modes a PUT may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    V,
    V2,
    Token,
    V3,
    Jwt,
}

/// `[auth]`: the key ring and which grant modes are on.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub modes: Vec<AuthMode>,
    /// Allowed clock skew for `v3` expiry and JWT `exp`.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Active secrets; every one is tried (rotation). Empty → a generated secret under the
    /// storage directory is used (created on first start).
    pub keys: Vec<KeyConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            modes: vec![
                AuthMode::V,
                AuthMode::V2,
                AuthMode::Token,
                AuthMode::V3,
                AuthMode::Jwt,
            ],
            clock_skew: Duration::from_secs(60),
            keys: Vec::new(),
        }
    }
}

/// One secret of the key ring: exactly one of `secret`, `secret_file`, `secret_env`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyConfig {
    pub id: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
}

/// `[download]`: the GET side.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// Cap on ranges per request; a header with more ranges is answered with the whole file.
    pub max_ranges: usize,
    /// `Cache-Control` sent with stored files (they are immutable once published).
    pub cache_control: String,
    /// Memory for hot small files (up to 64 KiB each) answered without touching the disk;
    /// counted against `engine.memory_cap` (at most a quarter of it is used) and dropped under
    /// memory pressure. 0 = off.
    pub hot_cache: ByteSize,
    /// A cached file is checked against the disk again after this long.
    #[serde(with = "humantime_serde")]
    pub hot_cache_ttl: Duration,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            max_ranges: 16,
            cache_control: "public, max-age=31536000, immutable".to_owned(),
            hot_cache: ByteSize::mib(4),
            hot_cache_ttl: Duration::from_secs(10),
        }
    }
}

/// `[cors]`: cross-origin access for web clients (Converse.js).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    pub enabled: bool,
    /// `["*"]` or a list of exact origins.
    pub allow_origins: Vec<String>,
    /// When true the request's Origin is echoed and `Access-Control-Allow-Credentials` sent.
    pub allow_credentials: bool,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_origins: vec!["*".to_owned()],
            allow_credentials: false,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// `[resumable]`: upload sessions behind tus 1.0, the IETF resumable-upload draft and the
/// hmac-file-server chunked protocol.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResumableConfig {
    pub enabled: bool,
    /// An unfinished session expires this long after its last append (or creation); the
    /// sweeper then deletes its data. Finished sessions answer HEAD for this long too.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Cap on open sessions (creation beyond it: 503).
    pub max_sessions: usize,
    /// How often the sweeper looks for expired sessions.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Allow creating sessions without any grant (files land under `anonymous/`). Off by
    /// default: every creation needs the same grant as a PUT of the target.
    pub allow_anonymous: bool,
}

impl Default for ResumableConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl: Duration::from_secs(24 * 3600),
            max_sessions: 10_000,
            sweep_interval: Duration::from_secs(60),
            allow_anonymous: false,
        }
    }
}

/// Buffer sizing mode of the streaming engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineMode {
    /// Buffer sizes follow live per-transfer figures (see `engine::adaptive`).
    Adaptive,
    /// Every buffer is `fixed_buffer` (for comparison and benchmarks).
    Fixed,
}

/// `[engine]`: the streaming engine — buffer pool and adaptive sizing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub mode: EngineMode,
    /// Buffer size classes, ascending.
    pub tiers: Vec<ByteSize>,
    /// Buffer size in `fixed` mode; must be one of `tiers`.
    pub fixed_buffer: ByteSize,
    /// Idle buffers kept per tier for reuse.
    pub max_idle_per_tier: usize,
    /// Buffers allocated per tier at startup.
    pub preallocate_per_tier: usize,
    /// Global cap on bytes leased at once; leases beyond it wait (backpressure).
    pub memory_cap: ByteSize,
    /// Adaptive: a buffer should hold about this much transfer time at the measured rate.
    #[serde(with = "humantime_serde")]
    pub target_buffer_time: Duration,
    /// A single wait on the client longer than this is a stall (steps the buffer down).
    #[serde(with = "humantime_serde")]
    pub stall_threshold: Duration,
    /// Downloads: file reads kept in flight ahead of the socket (1..=8); none while more than
    /// half of `memory_cap` is leased.
    pub read_ahead: usize,
    /// A transfer that waits this long for a buffer at the memory cap fails (503 for an
    /// upload) instead of queueing forever behind clients that hold buffers.
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// Per-client throughput history (by IP): how many clients are remembered...
    pub history_capacity: usize,
    /// ...and for how long.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    pub quality: QualityConfig,
    pub clients: ClientsConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            mode: EngineMode::Adaptive,
            tiers: vec![
                ByteSize::kib(16),
                ByteSize::kib(64),
                ByteSize::kib(256),
                ByteSize::mib(1),
            ],
            fixed_buffer: ByteSize::kib(256),
            max_idle_per_tier: 64,
            preallocate_per_tier: 0,
            memory_cap: ByteSize::mib(32),
            target_buffer_time: Duration::from_millis(20),
            stall_threshold: Duration::from_millis(500),
            read_ahead: 2,
            lease_timeout: Duration::from_secs(10),
            history_capacity: 10_000,
            history_ttl: Duration::from_secs(3600),
            quality: QualityConfig::default(),
            clients: ClientsConfig::default(),
        }
    }
}

/// `[engine.quality]`: throughput floors (per second) of the quality classes; below `fair` is
/// `poor`, and a transfer that stalled is one class lower.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    pub excellent: ByteSize,
    pub good: ByteSize,
    pub fair: ByteSize,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            excellent: ByteSize::mib(50),
            good: ByteSize::mib(5),
            fair: ByteSize::kib(512),
        }
    }
}

/// `[engine.clients]`: client strategies guessed from the User-Agent (the prior that live
/// figures then refine) and the chunk advice given to resumable-upload clients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsConfig {
    /// User-Agent substrings (case-insensitive) that mean a phone app.
    pub mobile_agents: Vec<String>,
    /// User-Agent substrings that mean a server or command-line tool.
    pub server_agents: Vec<String>,
    /// First buffer size per strategy (before any live figure or history).
    pub mobile_start_buffer: ByteSize,
    pub desktop_start_buffer: ByteSize,
    pub server_start_buffer: ByteSize,
    /// Chunk advice per strategy for a client without history.
    pub mobile_chunk: ByteSize,
    pub desktop_chunk: ByteSize,
    pub server_chunk: ByteSize,
    /// With history, the advice is this much transfer time at the client's measured rate...
    #[serde(with = "humantime_serde")]
    pub chunk_target_time: Duration,
    /// ...clamped to these bounds.
    pub chunk_min: ByteSize,
    pub chunk_max: ByteSize,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect();
        Self {
            mobile_agents: s(&[
                "Conversations",
                "Monal",
                "Siskin",
                "Snikket",
                "blabber",
                "Cheogram",
                "Android",
                "iPhone",
                "iPad",
                "okhttp",
                "CFNetwork",
                "Mobile",
            ]),
            server_agents: s(&[
                "curl",
                "Wget",
                "python",
                "aiohttp",
                "Go-http-client",
                "reqwest",
                "Prosody",
                "ejabberd",
                "tusd",
                "node",
            ]),
            mobile_start_buffer: ByteSize::kib(16),
            desktop_start_buffer: ByteSize::kib(16),
            server_start_buffer: ByteSize::kib(16),
            mobile_chunk: ByteSize::mib(4),
            desktop_chunk: ByteSize::mib(16),
            server_chunk: ByteSize::mib(64),
            chunk_target_time: Duration::from_secs(10),
            chunk_min: ByteSize::mib(1),
            chunk_max: ByteSize::mib(100),
        }
    }
}

/// One secret, resolved.
#[derive(Clone)]
pub struct Key {
    pub id: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key {{ id: {:?}, secret: <redacted> }}", self.id)
    }
}

/// Validated, resolved settings from which the application state is built.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub keys: Vec<Key>,
    /// The admin API's bearer token (`[admin] token`), when the admin API is on.
    pub admin_token: Option<Key>,
    /// Set when the secret was generated on this start (main prints it once).
    pub generated_secret: Option<PathBuf>,
}

impl Config {
    /// Parse TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Read and parse a file.
    // The config file is read once at start-up, outside the storage module (STYLE.md).
    #[allow(clippy::disallowed_methods)]
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// The embedded default.
    pub fn embedded_default() -> Result<Self, ConfigError> {
        Self::from_toml(EMBEDDED_DEFAULT)
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.server.listen.is_empty()
            && self.tls.is_empty()
            && self.server.unix_listen.is_empty()
        {
            return bad(
                "server.listen, server.unix_listen or [[tls]] must name at least one address"
                    .into(),
            );
        }
        if self.server.unix_mode_bits().is_none() {
            return bad(format!(
                "server.unix_mode {:?} must be an octal mode like \"0660\"",
                self.server.unix_mode
            ));
        }
        let p = &self.server.url_prefix;
        if !p.is_empty() && (!p.starts_with('/') || p.ends_with('/') || p.contains("//")) {
            return bad(format!(
                "server.url_prefix {p:?} must start with '/' and not end with '/' (e.g. \"/upload\")"
            ));
        }
        if self.server.max_header_size.as_u64() < 1024 {
            return bad("server.max_header_size must be at least 1KiB".into());
        }
        if self.server.read_buffer.as_u64() < 8192 || self.server.read_buffer.as_u64() > 16 << 20 {
            // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
            return bad("server.read_buffer must be between 8KiB and 16MiB".into());
        }
        if self.server.blocking_threads == 0 {
            return bad("server.blocking_threads must be at least 1".into());
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections must be at least 1".into());
        }
        if self.storage.max_file_size.as_u64() == 0 {
            return bad("storage.max_file_size must be positive".into());
        }
        if self.storage.max_filename_bytes == 0 || self.storage.max_filename_bytes > 255 {
            return bad("storage.max_filename_bytes must be between 1 and 255".into());
        }
        if self.auth.modes.is_empty() {
            return bad("auth.modes must enable at least one mode".into());
        }
        for ext in self
            .storage
            .allowed_extensions
            .iter()
            .chain(&self.storage.denied_extensions)
        {
            if ext.is_empty() || ext.contains('.') || ext.contains('/') {
                return bad(format!(
                    "storage extension {ext:?} must be a bare extension like \"jpg\""
                ));
            }
        }
        if self.resumable.max_sessions == 0 || self.resumable.sweep_interval.is_zero() {
            return bad("resumable: max_sessions and sweep_interval must be positive".into());
        }
        if self.retention.sweep_batch == 0 || self.retention.sweep_interval.is_zero() {
            return bad("retention: sweep_batch and sweep_interval must be positive".into());
        }
        if self.retention.rules.iter().any(|r| r.prefix.is_empty()) {
            return bad("retention.rules: every rule needs a non-empty prefix".into());
        }
        if self.audit.ipv4_prefix > 32 || self.audit.ipv6_prefix > 128 {
            return bad("audit: ipv4_prefix is at most 32, ipv6_prefix at most 128".into());
        }
        if self.admin.listen.is_some() != self.admin.token.is_some() {
            return bad("admin: listen and token go together (the admin API needs both)".into());
        }
        if self
            .admin
            .listen
            .is_some_and(|a| self.server.listen.contains(&a))
        {
            return bad("admin.listen must differ from every server.listen address".into());
        }
        for k in &self.auth.keys {
            if k.secret.as_ref().is_some_and(|s| s.len() < 16) {
                return bad(format!(
                    "auth.keys {:?}: secret must be at least 16 bytes",
                    k.id
                ));
            }
        }
        for (i, t) in self.tls.iter().enumerate() {
            // Port 0 (pick any) never clashes.
            if t.listen.port() == 0 {
                continue;
            }
            if self.server.listen.contains(&t.listen)
                || self.tls[..i].iter().any(|o| o.listen == t.listen)
                || self.admin.listen == Some(t.listen)
            {
                return bad(format!(
                    "tls.listen {} is already used by another listener",
                    t.listen
                ));
            }
        }
        if self.server.tls_check_interval.is_zero() {
            return bad("server.tls_check_interval must be positive".into());
        }
        if self.download.max_ranges == 0 {
            return bad("download.max_ranges must be at least 1".into());
        }
        let tiers = &self.engine.tiers;
        if tiers.is_empty() || tiers.windows(2).any(|w| w[0] >= w[1]) {
            return bad("engine.tiers must be a non-empty ascending list".into());
        }
        if tiers.first().map(|t| t.as_u64()).unwrap_or(0) < 1024 {
            return bad("engine.tiers: smallest tier must be at least 1KiB".into());
        }
        let largest = tiers.last().map(|t| t.as_u64()).unwrap_or(0);
        if self.engine.memory_cap.as_u64() < largest * 2 {
            return bad("engine.memory_cap must hold at least two of the largest tier".into());
        }
        if !tiers.contains(&self.engine.fixed_buffer) {
            return bad("engine.fixed_buffer must be one of engine.tiers".into());
        }
        if !(1..=8).contains(&self.engine.read_ahead) {
            return bad("engine.read_ahead must be between 1 and 8".into());
        }
        let q = &self.engine.quality;
        if !(q.excellent > q.good && q.good > q.fair) {
            return bad("engine.quality floors must satisfy excellent > good > fair".into());
        }
        let c = &self.engine.clients;
        if c.chunk_min > c.chunk_max || c.chunk_min.as_u64() == 0 {
            return bad("engine.clients: need 0 < chunk_min <= chunk_max".into());
        }
        if self.catalog.is_shared() && self.auth.keys.is_empty() {
            return bad(
                "a shared catalog (postgres://) needs [[auth.keys]]: every node must \
                        check grants with the same secret, never a generated one"
                    .into(),
            );
        }
        if !self.catalog.url.is_empty()
            && !self.catalog.is_shared()
            && !self.catalog.url.starts_with("sqlite://")
        {
            return bad("catalog.url must start with sqlite:// or postgres://".into());
        }
        if self.storage.backend == Backend::S3 {
            let s3 = &self.storage.s3;
            if s3.endpoint.is_empty() || s3.bucket.is_empty() {
                return bad("storage.backend = \"s3\" needs storage.s3.endpoint and bucket".into());
            }
            if s3.part_size.as_u64() < 5 * 1024 * 1024 {
                return bad(
                    "storage.s3.part_size must be at least 5MiB (S3's smallest part)".into(),
                );
            }
        }
        let named = self
            .auth
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("auth.keys[{i}]"), k));
        for (name, k) in named.chain(self.admin.token.iter().map(|k| ("admin.token".into(), k))) {
            let n = [
                k.secret.is_some(),
                k.secret_file.is_some(),
                k.secret_env.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if n != 1 {
                return bad(format!(
                    "{name} needs exactly one of secret, secret_file, secret_env"
                ));
            }
        }
        Ok(())
    }

    /// Resolve secrets (reading files and environment variables; generating the default secret
    /// if the ring is empty) into [`Settings`].
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let mut keys = Vec::new();
        for (i, k) in self.auth.keys.iter().enumerate() {
            keys.push(load_key(k, &format!("key{i}"))?);
        }
        let mut generated_secret = None;
        if keys.is_empty() {
            let path = self.storage.dir.join("secret.key");
            let (secret, created) = load_or_create_secret(&path)?;
            if created {
                generated_secret = Some(path);
            }
            keys.push(Key {
                id: "generated".into(),
                secret: secret.into_bytes(),
            });
        }
        let admin_token = match &self.admin.token {
            Some(k) => Some(load_key(k, "admin.token")?),
            None => None,
        };
        Ok(Settings {
            config: self,
            keys,
            admin_token,
            generated_secret,
        })
    }

    /// The effective configuration as TOML with every secret value redacted.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        for k in &mut c.auth.keys {
            if k.secret.is_some() {
                k.secret = Some("<redacted>".into());
            }
        }
        if let Some(t) = &mut c.admin.token {
            if t.secret.is_some() {
                t.secret = Some("<redacted>".into());
            }
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Load one secret (inline, file or environment variable; at least 16 bytes). `default_id`
/// names it when the config gives no `id`. Used for the key ring and the admin token.
// A secret file is read once at start-up, outside the storage module (STYLE.md).
#[allow(clippy::disallowed_methods)]
pub fn load_key(k: &KeyConfig, default_id: &str) -> Result<Key, ConfigError> {
    let id = if k.id.is_empty() {
        default_id.to_owned()
    } else {
        k.id.clone()
    };
    let secret = if let Some(s) = &k.secret {
        s.clone()
    } else if let Some(path) = &k.secret_file {
        std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Secret {
                id: id.clone(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?
            .trim_end_matches(['\n', '\r'])
            .to_owned()
    } else if let Some(var) = &k.secret_env {
        std::env::var(var).map_err(|_| ConfigError::Secret {
            id: id.clone(),
            reason: format!("environment variable {var} is not set"),
        })?
    } else {
        return Err(ConfigError::Secret {
            id,
            reason: "no secret given".into(),
        });
    };
    if secret.len() < 16 {
        return Err(ConfigError::Secret {
            id,
            reason: "secret must be at least 16 bytes".into(),
        });
    }
    Ok(Key {
        id,
        secret: secret.into_bytes(),
    })
}

/// Read the generated secret, or create it (64 hex chars from the OS RNG, mode 0600).
// The generated secret is read or written once at start-up, outside the storage module.
#[allow(clippy::disallowed_methods)]
fn load_or_create_secret(path: &Path) -> Result<(String, bool), ConfigError> {
    let err = |reason: String| ConfigError::Secret {
        id: "generated".into(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim().to_owned();
            if s.len() < 16 {
                return Err(err(format!("{} holds a too short secret", path.display())));
            }
            return Ok((s, false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(format!("cannot read {}: {e}", path.display()))),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| err(format!("OS RNG failed: {e}")))?;
    let secret = hex::encode(raw);
    write_private(path, secret.as_bytes())
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
    Ok((secret, true))
}

// Writes the generated secret at start-up (see `load_or_create_secret`).
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.server.listen[0].to_string(), "127.0.0.1:8080");
        assert_eq!(c.storage.dir, PathBuf::from("./data"));
    }

    #[test]
    fn template_parses_and_every_key_is_real() {
        let text = include_str!("../../templates/config-adaptive.toml");
        let c = Config::from_toml(text).unwrap();
        assert!(!c.server.listen.is_empty());
        // Every key present in the template must survive a round trip: deny_unknown_fields
        // already rejects unknown ones; this checks the template sets non-default values too.
        let reparsed = Config::from_toml(&c.redacted_toml()).unwrap();
        assert_eq!(reparsed.server.listen, c.server.listen);
    }

    fn key_paths(v: &toml::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                // Arrays of tables (auth.keys) are examples, not a fixed key set.
                if !matches!(v, toml::Value::Array(a) if a.iter().all(|x| x.is_table()))
                    || p != "auth.keys"
                {
                    out.insert(p.clone());
                }
                key_paths(v, &p, out);
            }
        }
    }

    #[test]
    fn template_documents_every_key_of_the_config() {
        let template: toml::Value =
            toml::from_str(include_str!("../../templates/config-adaptive.toml")).unwrap();
        let defaults: toml::Value =
            toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
        let (mut a, mut b) = (Default::default(), Default::default());
        key_paths(&template, "", &mut a);
        key_paths(&defaults, "", &mut b);
        a.remove("auth.keys");
        b.remove("auth.keys");
        let missing: Vec<_> = b.difference(&a).collect();
        assert!(
            missing.is_empty(),
            "keys missing from the template: {missing:?}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let e = Config::from_toml("[server]\nlisten_addr = [\"127.0.0.1:1\"]\n").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
        let e = Config::from_toml("[storage]\nmax_fil_size = \"1MiB\"\n").unwrap_err();
        assert!(e.to_string().contains("max_fil_size"), "{e}");
    }

    #[test]
    fn human_units_parse() {
        let c = Config::from_toml(
            "[server]\nheader_read_timeout = \"2s 500ms\"\n[storage]\nmax_file_size = \"1.5 GiB\"\n",
        )
        .unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_millis(2500));
        assert_eq!(c.storage.max_file_size.as_u64(), 1536 * 1024 * 1024);
    }

    #[test]
    fn key_needs_exactly_one_source() {
        let e = Config::from_toml("[[auth.keys]]\nid = \"a\"\n").unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e =
            Config::from_toml("[[auth.keys]]\nsecret = \"0123456789abcdef\"\nsecret_env = \"X\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
    }

    #[test]
    fn secret_from_env_and_file_and_ring() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "file-secret-0123456789\n").unwrap();
        std::env::set_var("SLUICE_TEST_SECRET_ENV", "env-secret-0123456789");
        let text = format!(
            "[[auth.keys]]\nid = \"new\"\nsecret_file = {:?}\n[[auth.keys]]\nid = \"old\"\nsecret_env = \"SLUICE_TEST_SECRET_ENV\"\n",
            f.display().to_string()
        );
        let s = Config::from_toml(&text).unwrap().resolve().unwrap();
        assert_eq!(s.keys.len(), 2);
        assert_eq!(s.keys[0].secret, b"file-secret-0123456789");
        assert_eq!(s.keys[1].secret, b"env-secret-0123456789");
        assert!(s.generated_secret.is_none());
    }

    #[test]
    fn generated_secret_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[storage]\ndir = {:?}\n", dir.path().display().to_string());
        let s1 = Config::from_toml(&text).unwrap().resolve().unwrap();
        let path = s1.generated_secret.clone().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let s2 = Config::from_toml(&text).unwrap().resolve().unwrap();
        assert!(s2.generated_secret.is_none());
        assert_eq!(s1.keys[0].secret, s2.keys[0].secret);
        assert_eq!(s1.keys[0].secret.len(), 64);
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let c = Config::from_toml("[[auth.keys]]\nsecret = \"supersecretvalue-123\"\n").unwrap();
        let out = c.redacted_toml();
        assert!(!out.contains("supersecretvalue"));
        assert!(out.contains("<redacted>"));
    }

    #[test]
    fn admin_token_resolves_like_a_key_and_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("admin.token");
        std::fs::write(&f, "admin-token-from-file-0123\n").unwrap();
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:9\"\ntoken = {{ secret_file = {:?} }}\n[[auth.keys]]\nsecret = \"0123456789abcdef\"\n",
            f.display().to_string()
        );
        let s = Config::from_toml(&text).unwrap().resolve().unwrap();
        let t = s.admin_token.unwrap();
        assert_eq!(t.secret, b"admin-token-from-file-0123");
        assert_eq!(t.id, "admin.token");
        let c = Config::from_toml(
            "[admin]\nlisten = \"127.0.0.1:9\"\ntoken = { secret = \"inline-admin-token-xyz\" }\n",
        )
        .unwrap();
        let out = c.redacted_toml();
        assert!(!out.contains("inline-admin-token-xyz"), "{out}");
        assert!(Config::from_toml(&out).is_ok());
        let short = Config::from_toml(
            "[admin]\nlisten = \"127.0.0.1:9\"\ntoken = { secret = \"short\" }\n[[auth.keys]]\nsecret = \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert!(short.resolve().is_err());
        let two = Config::from_toml(
            "[admin]\nlisten = \"127.0.0.1:9\"\ntoken = { secret = \"0123456789abcdef\", secret_env = \"X\" }\n",
        );
        assert!(two.unwrap_err().to_string().contains("admin.token"));
    }

    #[test]
    fn bad_prefix_rejected() {
        assert!(Config::from_toml("[server]\nurl_prefix = \"upload\"\n").is_err());
        assert!(Config::from_toml("[server]\nurl_prefix = \"/upload/\"\n").is_err());
        assert!(Config::from_toml("[server]\nurl_prefix = \"/upload\"\n").is_ok());
    }
}
