//! Test harness: start/stop a server, sign URLs, raw TCP helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice::auth::mac;
use sluice::config::{Config, KeyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub const SECRET: &str = "integration-test-secret-0123456789";
pub const PREFIX: &str = "/upload";
/// The admin API's token when a test turns it on with [`with_admin`].
pub const ADMIN_TOKEN: &str = "admin-test-token-0123456789";

/// Config hook: serve the admin API (on its own pre-bound listener, [`TestServer::admin`]).
pub fn with_admin(c: &mut Config) {
    c.admin.token = Some(KeyConfig {
        secret: Some(ADMIN_TOKEN.into()),
        ..KeyConfig::default()
    });
}

/// Upper bound for any single await in a test.
pub const T: Duration = Duration::from_secs(30);

pub struct TestServer {
    pub addr: SocketAddr,
    /// Addresses of the `[[tls]]` listeners, in config order.
    pub tls_addrs: Vec<SocketAddr>,
    /// The admin listener, when the config has an admin token.
    pub admin: Option<SocketAddr>,
    pub state: std::sync::Arc<sluice::state::AppState>,
    /// The server's clock: tests move time with `clock.advance(secs)`.
    pub clock: std::sync::Arc<sluice::clock::ManualClock>,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Everything but RFC 3986 unreserved characters is encoded.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode a decoded path for a URL (segments kept).
pub fn encode_path(decoded: &str) -> String {
    decoded
        .split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, f).await
    }

    /// Start on an existing data directory (restart tests).
    pub async fn start_in(dir: tempfile::TempDir, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        config.storage.dir = dir.path().to_path_buf();
        config.storage.durability = sluice::config::Durability::None;
        config.server.url_prefix = PREFIX.into();
        config.auth.keys = vec![KeyConfig {
            id: "test".into(),
            secret: Some(SECRET.into()),
            ..KeyConfig::default()
        }];
        f(&mut config);
        let admin = match config.admin.token {
            Some(_) => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        config.admin.listen = admin.as_ref().map(|l| l.local_addr().unwrap());
        // Every [[tls]] entry gets a pre-bound 127.0.0.1:0 listener.
        let mut tls_listeners = Vec::new();
        for t in &mut config.tls {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            t.listen = l.local_addr().unwrap();
            tls_listeners.push((l, t.cert.clone(), t.key.clone()));
        }
        config.validate().unwrap();
        let settings = config.resolve().unwrap();
        let clock = sluice::clock::ManualClock::new();
        let state = sluice::state::AppState::with_clock(settings, clock.clone())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let admin_addr = state.config().admin.listen;
        let tls_addrs = state.config().tls.iter().map(|t| t.listen).collect();
        let tls = tls_listeners
            .into_iter()
            .map(|(listener, cert, key)| sluice::server::TlsListener {
                listener,
                certs: sluice::server::tls::CertStore::open(&cert, &key).unwrap(),
            })
            .collect();
        let unix = state
            .config()
            .server
            .unix_listen
            .iter()
            .map(|p| sluice::server::unix::bind(p, 0o660, None).unwrap())
            .collect();
        let listeners = sluice::server::Listeners {
            plain: vec![listener],
            tls,
            unix,
            admin,
        };
        let task = tokio::spawn(sluice::server::serve(
            listeners,
            state.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        let client = reqwest::Client::builder().timeout(T).build().unwrap();
        Self {
            addr,
            tls_addrs,
            admin: admin_addr,
            state,
            clock,
            dir,
            client,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Trigger graceful shutdown and wait for `run` to return.
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(T, t).await.unwrap().unwrap().unwrap();
        }
    }

    /// Begin graceful shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// GET URL of a decoded path.
    pub fn url(&self, decoded: &str) -> String {
        format!("http://{}{PREFIX}/{}", self.addr, encode_path(decoded))
    }

    /// PUT URL signed with `v` (Prosody v1 / ejabberd).
    pub fn put_v1(&self, decoded: &str, size: u64) -> String {
        let m = mac::sign_hex(SECRET.as_bytes(), &mac::message_v1(decoded, size));
        format!("{}?v={m}", self.url(decoded))
    }

    /// PUT URL signed with `v2` for a content type.
    pub fn put_v2(&self, decoded: &str, size: u64, ct: &str) -> String {
        let m = mac::sign_hex(SECRET.as_bytes(), &mac::message_v2(decoded, size, ct));
        format!("{}?v2={m}", self.url(decoded))
    }

    pub fn put_token(&self, decoded: &str, size: u64, ct: &str) -> String {
        let m = mac::sign_hex(SECRET.as_bytes(), &mac::message_v2(decoded, size, ct));
        format!("{}?token={m}", self.url(decoded))
    }

    pub fn put_v3(&self, decoded: &str, expires: u64) -> String {
        let m = mac::sign_hex(SECRET.as_bytes(), &mac::message_v3("PUT", expires, decoded));
        format!("{}?v3={m}&expires={expires}", self.url(decoded))
    }

    /// PUT `body` with a v1 signature; returns the status.
    pub async fn put(&self, decoded: &str, body: Vec<u8>) -> reqwest::StatusCode {
        let url = self.put_v1(decoded, body.len() as u64);
        self.client
            .put(url)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn get_bytes(&self, decoded: &str) -> (reqwest::StatusCode, Vec<u8>) {
        let r = self.client.get(self.url(decoded)).send().await.unwrap();
        let s = r.status();
        (s, r.bytes().await.unwrap().to_vec())
    }

    pub fn files_dir(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// Staged PUT bodies (the `sessions/` directory of resumable uploads is not counted).
    pub fn staging_entries(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("staging"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
            .count()
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Value of one sample line of /metrics (`name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    pub async fn connect(&self) -> TcpStream {
        tokio::time::timeout(T, TcpStream::connect(self.addr))
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Read from a raw stream until `needle` appears or EOF; returns what was read.
pub async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(T, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if String::from_utf8_lossy(&buf).contains(needle) {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Send a raw request (head + body) on a new connection and read the response head.
pub async fn raw_request(s: &TestServer, head: &str, body: &[u8]) -> String {
    let mut c = s.connect().await;
    write(&mut c, head.as_bytes()).await;
    write(&mut c, body).await;
    read_until(&mut c, "\r\n\r\n").await
}

pub async fn write(s: &mut TcpStream, data: &[u8]) {
    tokio::time::timeout(T, s.write_all(data))
        .await
        .unwrap()
        .unwrap();
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
