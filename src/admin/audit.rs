//! The audit log (`[audit] path`): one JSON object per line for every published upload, every
//! removal (why, and by whom) and every admin action.
//!
//! Requests never wait on it: events go through a bounded channel to one writer thread that
//! appends them. A full channel drops the event; a file that cannot be written drops the
//! lines. Either way a warning is logged at most once a minute and the request goes on.
//! Must not: record a secret, MAC, token, `Authorization` or query string (callers pass
//! decided values, never raw request parts), or a whole client address (it is truncated to
//! `ipv4_prefix` / `ipv6_prefix` bits).

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::catalog::DeleteReason;
use crate::clock::SharedClock;
use crate::config::AuditConfig;

/// Events waiting for the writer; beyond this they are dropped (and counted).
const QUEUE: usize = 4096;
/// At most one warning per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Handle to the audit log (cheap to clone); every method is a no-op when it is off.
#[derive(Clone, Default)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: SyncSender<Msg>,
    clock: SharedClock,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    dropped: AtomicU64,
    warn: Throttle,
}

enum Msg {
    Line(String),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Rate-limits a warning to one per [`WARN_EVERY`].
#[derive(Default)]
struct Throttle(Mutex<Option<Instant>>);

impl Throttle {
    fn ready(&self) -> bool {
        let Ok(mut last) = self.0.lock() else {
            return false;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// A published upload.
#[derive(Debug, Clone, Serialize)]
pub struct UploadEvent<'a> {
    pub path: &'a str,
    pub size: u64,
    pub sha256: &'a str,
    pub uploader: Option<&'a str>,
    /// The client's address (truncated before it is written).
    #[serde(skip)]
    pub client: Option<IpAddr>,
    /// Protocol or route: "put", "form", "tus", "ietf", "chunked".
    pub route: &'a str,
}

/// Who removes files for a reason.
pub fn actor(reason: DeleteReason) -> &'static str {
    match reason {
        DeleteReason::Expired => "sweeper",
        DeleteReason::Quota => "quota",
        DeleteReason::Admin | DeleteReason::Erasure | DeleteReason::Removed => "admin",
        DeleteReason::Missing => "reconcile",
    }
}

/// Keep the leading `bits` of an address, as `addr/bits` (IPv4-mapped IPv6 counts as IPv4).
pub fn truncate_ip(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(ipv4_prefix.min(32));
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            format!("{}/{bits}", Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            format!("{}/{bits}", Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl Audit {
    /// No audit log.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// The audit log of `config` (off when `path` is unset); starts the writer thread.
    pub fn new(config: &AuditConfig, clock: SharedClock) -> Self {
        let Some(path) = config.path.clone() else {
            return Self::off();
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let inner = Arc::new(Inner {
            tx,
            clock,
            ipv4_prefix: config.ipv4_prefix,
            ipv6_prefix: config.ipv6_prefix,
            dropped: AtomicU64::new(0),
            warn: Throttle::default(),
        });
        let spawned = std::thread::Builder::new()
            .name("sluice-audit".into())
            .spawn(move || writer(path, rx));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the audit writer; audit log off");
            return Self::off();
        }
        Self { inner: Some(inner) }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn upload(&self, e: UploadEvent<'_>) {
        let Some(inner) = &self.inner else { return };
        let client = e
            .client
            .map(|ip| truncate_ip(ip, inner.ipv4_prefix, inner.ipv6_prefix));
        let mut v = json!(e);
        v["client"] = json!(client);
        self.send("upload", v);
    }

    /// A file was removed.
    pub fn deletion(&self, path: &str, reason: DeleteReason, size: u64, uploader: Option<&str>) {
        self.send(
            "delete",
            json!({
                "path": path,
                "reason": reason.as_str(),
                "by": actor(reason),
                "size": size,
                "uploader": uploader,
            }),
        );
    }

    /// An admin request: what it was, its (decoded) parameters and what it did.
    pub fn admin(&self, action: &str, params: Value, result: Value) {
        self.send(
            "admin",
            json!({ "action": action, "params": params, "result": result }),
        );
    }

    fn send(&self, event: &str, fields: Value) {
        let Some(inner) = &self.inner else { return };
        let mut line = json!({ "at": inner.clock.now_secs(), "event": event });
        if let (Some(obj), Value::Object(extra)) = (line.as_object_mut(), fields) {
            obj.extend(extra);
        }
        match inner.tx.try_send(Msg::Line(line.to_string())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if inner.warn.ready() {
                    tracing::warn!(dropped = n, "audit log queue full; events dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                if inner.warn.ready() {
                    tracing::warn!("audit writer stopped; events dropped");
                }
            }
        }
    }

    /// Wait until every event sent before this call is written (or dropped).
    pub async fn flush(&self) {
        let Some(inner) = &self.inner else { return };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = inner.clone();
        // The queue may be full: wait for room on the blocking pool, not an async thread.
        let sent = tokio::task::spawn_blocking(move || inner.tx.send(Msg::Flush(tx)).is_ok())
            .await
            .unwrap_or(false);
        if sent {
            let _ = rx.await;
        }
    }
}

/// The writer thread: appends lines, opening the file (again) when needed; ends when every
/// handle is gone.
// The audit log is the operator's append-only log, not stored data: its file is written here.
#[allow(clippy::disallowed_types)]
fn writer(path: PathBuf, rx: Receiver<Msg>) {
    let warn = Throttle::default();
    let mut file: Option<std::io::BufWriter<std::fs::File>> = None;
    let mut lost = 0u64;
    while let Ok(first) = rx.recv() {
        let mut flushes = Vec::new();
        let mut lines = Vec::new();
        // Take what is queued, so a burst costs one write.
        for msg in std::iter::once(first).chain(rx.try_iter().take(QUEUE)) {
            match msg {
                Msg::Line(l) => lines.push(l),
                Msg::Flush(tx) => flushes.push(tx),
            }
        }
        if !lines.is_empty() {
            if let Err(e) = write_lines(&path, &mut file, &lines) {
                file = None;
                lost += lines.len() as u64;
                if warn.ready() {
                    tracing::warn!(path = %path.display(), error = %e, lost, "cannot write the audit log");
                }
            }
        }
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

// See `writer`: the audit log's own file.
#[allow(clippy::disallowed_types)]
fn write_lines(
    path: &std::path::Path,
    file: &mut Option<std::io::BufWriter<std::fs::File>>,
    lines: &[String],
) -> std::io::Result<()> {
    if file.is_none() {
        let mut opts = std::fs::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o640);
        *file = Some(std::io::BufWriter::new(opts.open(path)?));
    }
    let Some(f) = file.as_mut() else {
        return Ok(());
    };
    for l in lines {
        f.write_all(l.as_bytes())?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn addresses_keep_only_their_prefix() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(truncate_ip(v4, 24, 48), "203.0.113.0/24");
        assert_eq!(truncate_ip(v4, 32, 48), "203.0.113.77/32");
        assert_eq!(truncate_ip(v4, 0, 48), "0.0.0.0/0");
        let v6: IpAddr = "2001:db8:abcd:12:1:2:3:4".parse().unwrap();
        assert_eq!(truncate_ip(v6, 24, 48), "2001:db8:abcd::/48");
        assert_eq!(truncate_ip(v6, 24, 0), "::/0");
        let mapped: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        assert_eq!(truncate_ip(mapped, 16, 48), "198.51.0.0/16");
    }

    #[test]
    fn each_reason_has_an_actor() {
        assert_eq!(actor(DeleteReason::Expired), "sweeper");
        assert_eq!(actor(DeleteReason::Quota), "quota");
        assert_eq!(actor(DeleteReason::Admin), "admin");
        assert_eq!(actor(DeleteReason::Erasure), "admin");
    }

    #[tokio::test]
    async fn lines_are_json_and_an_unwritable_file_fails_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let clock: SharedClock = crate::clock::ManualClock::new();
        let cfg = AuditConfig {
            path: Some(path.clone()),
            ..AuditConfig::default()
        };
        let a = Audit::new(&cfg, clock.clone());
        a.upload(UploadEvent {
            path: "a/b.txt",
            size: 3,
            sha256: "abc",
            uploader: Some("u@example.org"),
            client: Some("192.0.2.200".parse().unwrap()),
            route: "put",
        });
        a.deletion("a/b.txt", DeleteReason::Admin, 3, None);
        a.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "upload");
        assert_eq!(lines[0]["client"], "192.0.2.0/24");
        assert_eq!(lines[0]["uploader"], "u@example.org");
        assert_eq!(lines[1]["by"], "admin");
        assert_eq!(lines[1]["reason"], "admin");

        let bad = AuditConfig {
            path: Some(dir.path().join("no/such/dir/audit.log")),
            ..AuditConfig::default()
        };
        let a = Audit::new(&bad, clock);
        a.deletion("x", DeleteReason::Expired, 1, None);
        a.flush().await;
    }
}
