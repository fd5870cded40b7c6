//! The key table: every hmac-file-server 3.4 key this migration knows (from
//! docs/hmac-file-server-config.md), and what becomes of it in Sluice.

use toml::Value;

use super::engine::*;
use super::keys::*;
use super::units::{duration, fmt_duration, fmt_size, size};
use super::{At, Ctx, Src};
use crate::config::{ClientsConfig, EngineConfig, QualityConfig};

/// What becomes of one input key.
pub(super) enum Rule {
    /// A size, written to this Sluice key.
    Size(At, &'static str),
    /// A duration (zero = keep Sluice's default), written to this Sluice key.
    Duration(At, &'static str),
    /// Mapped by a function (keys that combine, or need a decision).
    Fn(fn(&mut Ctx, &Src)),
    /// No Sluice equivalent, for this reason.
    None(&'static str),
}

use Rule::{Duration as Dur, Fn, None as No, Size};

const DEAD: &str = "never read by hmac-file-server 3.4 (at most its config validator knows it), \
    so it had no effect";
const ALWAYS_ON: &str = "never read by hmac-file-server 3.4; Sluice always serves Range requests \
    (206), ETag and Last-Modified preconditions and Cache-Control (download.cache_control)";
const INTENT: &str = "from the adaptive template, never read by hmac-file-server 3.4";
const NET: &str = "server-side network interface monitoring and switching: no effect a client \
    can see; Sluice adapts each transfer to its own measured throughput";

/// (their section, their key: exact, `prefix*` or `*`, all lowercase; rule). Sections are
/// visited in this order, and when two keys set one Sluice key the earlier one wins.
pub(super) const TABLE: &[(&str, &str, Rule)] = &[
    ("server", "listen_address", Fn(listen)),
    ("server", "bind_ip", Fn(bind_ip)),
    ("server", "storage_path", Fn(storage_path)),
    ("server", "max_upload_size", Fn(max_upload)),
    ("server", "min_free_bytes", Size(("storage", "min_free_space"), "free space to leave on the storage filesystem (507 before an upload would eat into it; Sluice checks it per upload, not only at start)")),
    ("server", "filettl", Fn(ttl)),
    ("server", "max_file_age", Fn(ttl)),
    ("server", "filettlenabled", Fn(ttl_flag)),
    ("server", "cleanup_interval", Dur(("retention", "sweep_interval"), "how often expired files are deleted")),
    ("server", "deduplication_enabled", No("deduplication by SHA-256, which in 3.4 never collapses duplicates; Sluice stores each upload as its own immutable file (every XMPP slot is a fresh path)")),
    ("server", "file_naming", No("Sluice always stores a file under the path the grant signed, which is what the XMPP GET URL names (\"HMAC\" naming broke those URLs)")),
    ("server", "metricsenabled", No("Sluice always serves Prometheus metrics at /metrics on its main listener, no second port; restrict /metrics at the reverse proxy if needed")),
    ("server", "metricsport", No("Sluice always serves Prometheus metrics at /metrics on its main listener, no second port; restrict /metrics at the reverse proxy if needed")),
    ("server", "unixsocket", No("Sluice listens on TCP (server.listen, or sockets handed over by systemd socket activation); use a loopback address behind the reverse proxy")),
    ("server", "pidfilepath", No("no PID file: run Sluice under systemd, which tracks the process (README: Running under systemd)")),
    ("server", "clean_upon_exit", No("no PID file: run Sluice under systemd, which tracks the process (README: Running under systemd)")),
    ("server", "networkevents", No("it watched the server's own network interfaces and paused uploads on a change: no effect a client could see; Sluice adapts each transfer to its measured throughput")),
    ("server", "force_protocol", No("it configured the outbound dialer of an unused client; Sluice makes no outbound connections")),
    ("server", "autoadjustworkers", No("cosmetic in hmac-file-server; Sluice runs on tokio (server.max_connections, server.blocking_threads)")),
    ("server", "precaching", No("a stub in hmac-file-server; Sluice keeps hot small files in memory ([download] hot_cache)")),
    ("server", "metrics_path", No(DEAD)),
    ("server", "max_header_bytes", No(DEAD)),
    ("server", "pre_cache*", No(DEAD)),
    ("server", "global_extensions", No(DEAD)),
    ("server", "enable_dynamic_workers", No(DEAD)),
    ("server", "worker_scale_*", No(DEAD)),
    ("security", "secret", Fn(secret)),
    ("security", "enablejwt", Fn(enable_jwt)),
    ("security", "jwtsecret", Fn(jwt_secret)),
    ("security", "jwtalgorithm", No("validator-only in hmac-file-server; Sluice's JWT grants are HS256, as Prosody's mod_http_file_share signs them")),
    ("security", "jwtexpiration", No("validator-only in hmac-file-server; a JWT carries its own exp claim (auth.clock_skew is the tolerance)")),
    ("performance", "adaptive_buffers", Fn(engine_mode)),
    ("performance", "min_buffer_size", Fn(buffer_bounds)),
    ("performance", "max_buffer_size", Fn(buffer_bounds)),
    ("performance", "initial_buffer_size", Size(("engine.clients", "desktop_start_buffer"), "the first buffer of a desktop client, before anything is measured (mobile and server clients have their own)")),
    ("performance", "profile_persistence_duration", Dur(("engine", "history_ttl"), "how long a client's measured throughput is remembered")),
    ("performance", "max_memory_usage", Size(("engine", "memory_cap"), "cap on the transfer buffer pool (theirs was meant for the whole process)")),
    ("performance", "buffer_pool_preallocation", Fn(prealloc)),
    ("performance", "buffer_optimization_interval", No("Sluice re-sizes the buffer after every buffer, not on an interval")),
    ("performance", "client_profiling", No("always on in Sluice: per-client throughput history (engine.history_capacity, engine.history_ttl)")),
    ("performance", "connection_type_detection", No("Sluice guesses a client's strategy (mobile, desktop, server) from its User-Agent ([engine.clients]) and refines it with live figures")),
    ("performance", "performance_history_samples", No("Sluice keeps one smoothed throughput figure per client, not a list of samples")),
    ("performance", "gc_optimization", No("Sluice has no garbage collector to tune")),
    ("performance", "*", No(INTENT)),
    ("uploads", "allowed_extensions", Fn(extensions)),
    ("uploads", "chunk_size", Fn(chunk_size)),
    ("uploads", "min_chunk_size", Size(("engine.clients", "chunk_min"), "lower bound of the chunk size Sluice advises resumable-upload clients")),
    ("uploads", "max_chunk_size", Size(("engine.clients", "chunk_max"), "upper bound of the chunk size Sluice advises resumable-upload clients")),
    ("uploads", "chunk_adaptation_algorithm", Fn(chunk_algorithm)),
    ("uploads", "sessiontimeout", Dur(("resumable", "session_ttl"), "an unfinished upload session expires this long after its last append")),
    ("uploads", "chunked_uploads_enabled", No("never read by hmac-file-server 3.4 (its chunked routes were always on); Sluice's [resumable] (on by default) serves its chunked protocol, tus and the IETF draft")),
    ("uploads", "resumable_uploads_enabled", No("never read by hmac-file-server 3.4 (its chunked routes were always on); Sluice's [resumable] (on by default) serves its chunked protocol, tus and the IETF draft")),
    ("uploads", "maxretries", No("validator-only in hmac-file-server; retrying is the client's business")),
    ("uploads", "concurrent_chunk_uploads", No("never read by hmac-file-server 3.4; Sluice's chunk advice already follows each client's measured throughput (engine.clients)")),
    ("uploads", "upload_acceleration", No("never read by hmac-file-server 3.4; Sluice's chunk advice already follows each client's measured throughput (engine.clients)")),
    ("uploads", "network_aware_chunking", No("never read by hmac-file-server 3.4; Sluice's chunk advice already follows each client's measured throughput (engine.clients)")),
    ("downloads", "chunked_downloads_enabled", No(ALWAYS_ON)),
    ("downloads", "resumable_downloads_enabled", No(ALWAYS_ON)),
    ("downloads", "range_requests", No(ALWAYS_ON)),
    ("downloads", "etag_support", No(ALWAYS_ON)),
    ("downloads", "last_modified_support", No(ALWAYS_ON)),
    ("downloads", "cache_control_headers", No(ALWAYS_ON)),
    ("downloads", "bandwidth_estimation", No(ALWAYS_ON)),
    ("downloads", "quality_adaptation", No(ALWAYS_ON)),
    ("downloads", "progressive_download", No(ALWAYS_ON)),
    ("downloads", "*", No("never read by hmac-file-server 3.4 (its downloads ignore [downloads]); Sluice serves every stored file to anyone with its URL")),
    ("timeouts", "readtimeout", Fn(timeout)),
    ("timeouts", "writetimeout", Fn(timeout)),
    ("timeouts", "idletimeout", Fn(timeout)),
    ("timeouts", "shutdown", Dur(("server", "shutdown_grace"), "on SIGTERM in-flight requests get this long to finish (hmac-file-server hard-coded 30s)")),
    ("timeouts", "*", No("never read by hmac-file-server 3.4; Sluice's timeouts are idle timeouts, which a slow transfer that keeps moving never hits")),
    ("logging", "level", Fn(log_level)),
    ("logging", "*", No("Sluice logs to stderr (journald under systemd), which handles files and rotation")),
    ("quotas", "default", Fn(quota)),
    ("quotas", "enabled", Fn(quota)),
    ("quotas", "tracking", No("Sluice counts each uploader's stored bytes in its catalog")),
    ("quotas", "custom", No("Sluice has no per-user quota overrides: quota.stored applies to every uploader")),
    ("audit", "path", Fn(audit)),
    ("audit", "*", Fn(audit)),
    ("rate_limit", "*", No("Sluice has no request rate limit; it caps connections per client address (server.max_connections_per_client, server.connection_cap_exempt) and bytes per uploader per day (quota.daily)")),
    ("admin", "*", No("hmac-file-server's admin API has no compatible counterpart. Sluice's admin API (list, stats, takedown, erase, sweep; `sluice admin`) runs on its own listener: set [admin] listen = \"127.0.0.1:8081\" and token = { secret_file = \"...\" } to turn it on")),
    ("admin.auth", "*", No("credentials of hmac-file-server's admin API; Sluice's admin API takes a bearer token ([admin] token)")),
    ("clamav", "*", No("virus scanning after upload (3.4 in practice never scanned); Sluice does not scan: run a scanner over <storage.dir>/files out of band")),
    ("redis", "*", No("Sluice keeps upload sessions and quota counters in its own catalog (SQLite under storage.dir): no Redis")),
    ("key_rotation", "*", No("it generated keys the XMPP server never learns; Sluice rotates by listing the new and the old secret as two [[auth.keys]] (README: Secrets and key rotation)")),
    ("metadata", "*", No("Sluice's catalog (<storage.dir>/catalog.sqlite3) is built in")),
    ("validation", "*", No("Sluice does not sniff content: it stores the bytes as sent, with the content type the grant signed; restrict by extension with storage.allowed_extensions / denied_extensions")),
    ("deduplication", "*", No("deduplication by SHA-256, which in 3.4 never collapses duplicates; Sluice stores each upload as its own immutable file")),
    ("iso", "*", No("ISO container storage (broken in 3.4); Sluice stores plain files")),
    ("versioning", "*", No("validator-only in hmac-file-server; Sluice files are immutable (a second PUT to a path gets 409)")),
    ("workers", "*", No("Sluice runs on tokio: server.max_connections bounds concurrent clients, server.blocking_threads the file I/O threads")),
    ("compression", "*", No("never read by hmac-file-server 3.4; Sluice stores and serves the bytes as uploaded")),
    ("build", "*", No("build metadata, nothing to configure")),
    ("streaming", "quality_thresholds", Fn(quality)),
    ("streaming", "*", No("from the adaptive template, never read by 3.4: retries, backoff and circuit breaking are the client's business")),
    ("network_resilience", "mobile_buffer_size", Size(("engine.clients", "mobile_start_buffer"), "the first buffer of a mobile client (guessed from its User-Agent)")),
    ("network_resilience", "mobile_chunk_size", Size(("engine.clients", "mobile_chunk"), "the chunk advised to a mobile client without history")),
    ("network_resilience", "*", No(NET)),
    ("network_interfaces", "ethernet", Fn(iface)),
    ("network_interfaces", "cellular", Fn(iface)),
    ("network_interfaces", "lte", Fn(iface)),
    ("network_interfaces", "*", No("Sluice has no strategy per link type: a client is mobile, desktop or server by its User-Agent, and its live figures set the buffer")),
    ("client_optimization", "*", No("from the adaptive template, never read by 3.4; Sluice's per-strategy buffers and chunks are [engine.clients]")),
    ("handoff", "*", No(NET)),
    ("monitoring", "*", No("from the adaptive template, never read by 3.4; Sluice exports Prometheus metrics at /metrics")),
    ("experimental", "*", No(INTENT)),
];

/// The rule for a key (exact match first, then `prefix*`, then the section's `*`).
pub(super) fn rule(section: &str, key: &str) -> Option<&'static Rule> {
    TABLE
        .iter()
        .filter(|(s, _, _)| *s == section)
        .find(|(_, k, _)| *k == key)
        .or_else(|| {
            TABLE
                .iter()
                .filter(|(s, _, _)| *s == section)
                .find(|(_, k, _)| {
                    k.strip_suffix('*')
                        .is_some_and(|p| !p.is_empty() && key.starts_with(p))
                })
        })
        .or_else(|| TABLE.iter().find(|(s, k, _)| *s == section && *k == "*"))
        .map(|(_, _, r)| r)
}

/// Whether `section` (dotted, lowercase) has rules of its own (a table to walk into).
pub(super) fn is_section(section: &str) -> bool {
    TABLE.iter().any(|(s, _, _)| *s == section)
}

/// Visiting order of a key within its section (or of a section at the top level).
pub(super) fn order(section: &str, key: &str) -> usize {
    let sub = super::join(section, key);
    TABLE
        .iter()
        .position(|(s, k, _)| (*s == section && *k == key) || *s == sub)
        .unwrap_or(usize::MAX)
}

/// Keys of the adaptive template that 3.4 never read but whose intent maps onto `[engine]`.
pub(super) fn intent_only(section: &str, key: &str) -> bool {
    matches!(
        section,
        "performance" | "streaming" | "network_resilience" | "network_interfaces"
    ) || (section == "uploads"
        && matches!(
            key,
            "min_chunk_size" | "max_chunk_size" | "chunk_adaptation_algorithm"
        ))
}

/// The comment for a key the table does not know.
pub(super) fn unknown(_section: &str, key: &str, value: &Value) -> String {
    const SPELLINGS: &[(&str, &str)] = &[
        ("listenport", "[server] listen_address"),
        ("storagepath", "[server] storage_path"),
        ("maxfilesize", "[server] max_upload_size"),
        ("minfreebytes", "[server] min_free_bytes"),
        ("deduplicationenabled", "[server] deduplication_enabled"),
        ("allowedextensions", "[uploads] allowed_extensions"),
    ];
    let base =
        "unknown to hmac-file-server 3.4, which silently ignores unknown keys, so it had no effect";
    if let Some((_, real)) = SPELLINGS.iter().find(|(k, _)| *k == key) {
        return format!(
            "{base} (3.4 spells it {real}; set that Sluice key by hand if you meant it)"
        );
    }
    if matches!(
        key,
        "blockedextensions" | "blocked_extensions" | "denied_extensions"
    ) {
        let list = value
            .as_array()
            .map(|a| extension_list(a).0)
            .unwrap_or_default();
        return format!(
            "{base}; to refuse these extensions in Sluice, set [storage] denied_extensions = {}",
            Value::Array(list)
        );
    }
    base.to_owned()
}

pub(super) fn size_rule(c: &mut Ctx, s: &Src, at: At, why: &str) {
    match size(s.value) {
        Some(b) => c.out.map(s, at, fmt_size(b).into(), why),
        None => c
            .out
            .skip(s, "not a size Sluice can read; the Sluice default stays"),
    }
}

pub(super) fn duration_rule(c: &mut Ctx, s: &Src, at: At, why: &str) {
    match duration(s.value) {
        Some(d) if !d.is_zero() => c.out.map(s, at, fmt_duration(d).into(), why),
        Some(_) => c.out.skip(s, "zero (none): the Sluice default stays"),
        None => c.out.skip(
            s,
            "not a duration Sluice can read; the Sluice default stays",
        ),
    }
}

/// Cross-field fixes after every key was visited, so the result validates.
pub(super) fn finish(c: &mut Ctx) {
    if c.out.get(("auth", "modes")).is_none() {
        let why = format!("{MODES_WHY}. Add \"jwt\" for Prosody's mod_http_file_share");
        c.out.set(("auth", "modes"), MODES.to_vec().into(), &why);
    }
    if c.out.get(("storage", "dir")).is_none() && c.get("server", "storage_path").is_none() {
        c.out.set(("storage", "dir"), "./uploads".into(), "hmac-file-server's default storage_path; Sluice serves <dir>/files/ (move old uploads there)");
    }
    let read = |c: &Ctx, at: At| {
        c.out
            .get(at)
            .and_then(Value::as_str)
            .and_then(super::units::parse_size)
    };
    let engine = EngineConfig::default();
    let tiers: Vec<u64> = match c.out.get(("engine", "tiers")).and_then(Value::as_array) {
        Some(t) => t
            .iter()
            .filter_map(Value::as_str)
            .filter_map(super::units::parse_size)
            .collect(),
        None => engine.tiers.iter().map(|t| t.as_u64()).collect(),
    };
    let fixed = read(c, ("engine", "fixed_buffer")).unwrap_or(engine.fixed_buffer.as_u64());
    if !tiers.contains(&fixed) {
        if let Some(&t) = tiers.iter().min_by_key(|t| t.abs_diff(fixed)) {
            c.out.set(
                ("engine", "fixed_buffer"),
                fmt_size(t).into(),
                "must be one of engine.tiers: the tier nearest the default",
            );
        }
    }
    let largest = tiers.last().copied().unwrap_or(0);
    if read(c, ("engine", "memory_cap")).unwrap_or(engine.memory_cap.as_u64()) < 2 * largest {
        c.out.set(
            ("engine", "memory_cap"),
            fmt_size(2 * largest).into(),
            "raised to hold two of the largest tier",
        );
    }
    let clients = ClientsConfig::default();
    let (min_set, max_set) = (
        read(c, ("engine.clients", "chunk_min")),
        read(c, ("engine.clients", "chunk_max")),
    );
    let (min, max) = (
        min_set.unwrap_or(clients.chunk_min.as_u64()),
        max_set.unwrap_or(clients.chunk_max.as_u64()),
    );
    if min == 0 || min > max {
        let (lo, hi) = match (min_set, max_set) {
            (Some(_), None) if min > 0 => (min, min),
            (None, Some(_)) if max > 0 => (max, max),
            _ => (clients.chunk_min.as_u64(), clients.chunk_max.as_u64()),
        };
        c.out.set(
            ("engine.clients", "chunk_min"),
            fmt_size(lo).into(),
            "adjusted so that 0 < chunk_min <= chunk_max",
        );
        c.out.set(
            ("engine.clients", "chunk_max"),
            fmt_size(hi).into(),
            "adjusted so that 0 < chunk_min <= chunk_max",
        );
    }
    let q = QualityConfig::default();
    let floor =
        |c: &Ctx, k, d: bytesize::ByteSize| read(c, ("engine.quality", k)).unwrap_or(d.as_u64());
    let (e, g, f) = (
        floor(c, "excellent", q.excellent),
        floor(c, "good", q.good),
        floor(c, "fair", q.fair),
    );
    if !(e > g && g > f) {
        for (k, d) in [
            ("excellent", q.excellent),
            ("good", q.good),
            ("fair", q.fair),
        ] {
            c.out.set(
                ("engine.quality", k),
                fmt_size(d.as_u64()).into(),
                "the floors must satisfy excellent > good > fair: Sluice's defaults restored",
            );
        }
    }
}
