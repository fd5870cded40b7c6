//! Handlers for the keys that shape Sluice's listener, storage, retention, key ring, quota and
//! audit log (see the table in [`super::map`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use toml::Value;

use super::units::{duration, fmt_duration, fmt_size, size};
use super::{At, Ctx, KeyOut, Src};
use crate::config::ServerConfig;

pub(super) fn listen(c: &mut Ctx, s: &Src) {
    let bind = c
        .get("server", "bind_ip")
        .and_then(Value::as_str)
        .unwrap_or("");
    match listen_addr(s.value, bind.trim()) {
        Some(a) if a.ip().is_unspecified() => {
            let why = format!(
                "all interfaces, as hmac-file-server listened (\"[::]:{0}\" takes IPv6 too on Linux). Behind a reverse proxy, \"127.0.0.1:{0}\" is safer",
                a.port()
            );
            c.out
                .map(s, ("server", "listen"), vec![a.to_string()].into(), &why);
        }
        Some(a) => c.out.map(
            s,
            ("server", "listen"),
            vec![a.to_string()].into(),
            "the address hmac-file-server listened on",
        ),
        None => c.out.skip(
            s,
            "not an address Sluice can read: server.listen keeps its default 127.0.0.1:8080",
        ),
    }
}

/// hmac-file-server's `listen_address` (`"8080"`, `":8080"`, `"0.0.0.0:8080"`, 8080) and
/// `bind_ip` (empty = all interfaces) → one socket address.
pub(super) fn listen_addr(v: &Value, bind_ip: &str) -> Option<SocketAddr> {
    let text = match v {
        Value::Integer(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return None,
    };
    let (host, port) = match text.parse::<u16>() {
        Ok(p) => ("", p),
        Err(_) => {
            let (h, p) = text.rsplit_once(':')?;
            (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse().ok()?,
            )
        }
    };
    let host = if bind_ip.is_empty() { host } else { bind_ip };
    let ip: IpAddr = match host {
        "" | "*" => Ipv4Addr::UNSPECIFIED.into(),
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?,
    };
    Some(SocketAddr::new(ip, port))
}

pub(super) fn bind_ip(c: &mut Ctx, s: &Src) {
    c.out.attach(
        s,
        ("server", "listen"),
        "the address part of server.listen (empty = all interfaces)",
    );
}

pub(super) fn storage_path(c: &mut Ctx, s: &Src) {
    let Some(dir) = s.value.as_str().map(str::trim).filter(|d| !d.is_empty()) else {
        return c.out.skip(s, "empty: storage.dir keeps its default ./data");
    };
    c.out.map(s, ("storage", "dir"), dir.into(), "Sluice serves only <dir>/files/ (its catalog, staging and metadata sit beside it). To keep serving the old uploads, move them into <dir>/files/ under the same paths before the first start: Sluice catalogs them then");
    c.out.notes.push(format!(
        "storage: Sluice serves {dir}/files/, not {dir}/ itself; move the existing uploads into {dir}/files/ (same relative paths) before the first start"
    ));
}

pub(super) fn max_upload(c: &mut Ctx, s: &Src) {
    match size(s.value) {
        Some(b) if b > 0 => c.out.map(s, ("storage", "max_file_size"), fmt_size(b).into(), "largest upload (413 above it); keep it equal to the limit the XMPP server announces"),
        _ if s.value.as_str().is_some_and(|v| v.trim().is_empty() || v.trim() == "0") => c.out.skip(s, "no limit in hmac-file-server; Sluice needs one: storage.max_file_size keeps its default 100MiB, set it to the limit the XMPP server announces"),
        _ => c.out.skip(s, "not a size Sluice can read; storage.max_file_size keeps its default 100MiB"),
    }
}

pub(super) fn ttl_on(c: &Ctx) -> bool {
    c.get("server", "filettlenabled").and_then(Value::as_bool) == Some(true)
}

pub(super) fn ttl(c: &mut Ctx, s: &Src) {
    if !ttl_on(c) {
        return c.out.skip(s, "file expiry was off (filettlenabled is not true): retention.max_age stays \"0s\" (never)");
    }
    match duration(s.value) {
        Some(d) if !d.is_zero() => c.out.map(
            s,
            ("retention", "max_age"),
            fmt_duration(d).into(),
            "files expire this long after their upload (hmac-file-server went by the file's mtime)",
        ),
        _ => c.out.skip(
            s,
            "not a duration Sluice can read; retention.max_age stays \"0s\" (never)",
        ),
    }
}

pub(super) fn ttl_flag(c: &mut Ctx, s: &Src) {
    if s.value.as_bool() == Some(true) {
        c.out.attach(s, ("retention", "max_age"), "file expiry on");
    } else {
        c.out.skip(s, "file expiry was off (filettlenabled is not true): retention.max_age stays \"0s\" (never)");
    }
}

pub(super) fn secret(c: &mut Ctx, s: &Src) {
    let Some(secret) = s.value.as_str().filter(|v| !v.is_empty()) else {
        return c.out.skip(s, "empty: with no [[auth.keys]] Sluice generates a secret on first start and prints it with Prosody and ejabberd snippets");
    };
    let mut comments = vec![super::comment(&s.cite(), "the secret Prosody or ejabberd signs upload slots with, copied inline to keep what you had. Better keep it out of this file: write it to /etc/sluice/secret (mode 0600) and replace the `secret` line with secret_file = \"/etc/sluice/secret\", or with secret_env = \"SLUICE_SECRET\"")];
    if secret.len() < 16 {
        comments.push(short_secret(c));
    }
    c.out.keys.push(KeyOut {
        id: "hmac-file-server",
        secret: secret.to_owned(),
        comments,
    });
    c.out.notes.push(
        "auth: the secret was copied inline; consider secret_file or secret_env instead".into(),
    );
}

pub(super) fn short_secret(c: &mut Ctx) -> String {
    c.out.notes.push("auth: a secret is shorter than 16 bytes, which Sluice refuses; the key reads a new one from the environment variable named below: set a secret of at least 16 bytes there and in the XMPP server".into());
    super::comment("WARNING", "the old secret is shorter than the 16 bytes Sluice requires and is not carried over: put a new secret of at least 16 bytes in the environment variable below and in the XMPP server")
}

pub(super) const MODES: &[&str] = &["v", "v2", "token", "v3"];
pub(super) const MODES_WHY: &str = "the grant modes hmac-file-server accepted with its secret: v (Prosody v1, ejabberd), v2 and token (Prosody v2, Metronome) and v3 (its own signed, expiring links)";

pub(super) fn jwt_on(c: &Ctx) -> bool {
    c.get("security", "enablejwt").and_then(Value::as_bool) == Some(true)
}

pub(super) fn enable_jwt(c: &mut Ctx, s: &Src) {
    if !jwt_on(c) {
        return c
            .out
            .skip(s, "JWT grants were off: \"jwt\" stays out of auth.modes");
    }
    let mut modes: Vec<&str> = MODES.to_vec();
    modes.push("jwt");
    c.out.set(("auth", "modes"), modes.into(), MODES_WHY);
    c.out.attach(s, ("auth", "modes"), "JWT bearer grants were on. Sluice's \"jwt\" mode verifies Prosody mod_http_file_share's slot tokens (HS256 and that module's claims); tokens minted for hmac-file-server's own POST route will not verify");
}

pub(super) fn jwt_secret(c: &mut Ctx, s: &Src) {
    let theirs = c.get("security", "secret").and_then(Value::as_str);
    match s.value.as_str().filter(|v| !v.is_empty()) {
        _ if !jwt_on(c) => c.out.skip(s, "JWT grants were off (enablejwt is not true)"),
        None => c
            .out
            .skip(s, "empty: JWTs are checked against the key ring"),
        Some(j) if Some(j) == theirs => c.out.attach(
            s,
            ("auth", "modes"),
            "the same as [security] secret, already in the key ring",
        ),
        Some(j) => {
            let mut comments = vec![super::comment(&s.cite(), "the JWT secret. Sluice's key ring is shared by every grant mode, so this secret also verifies v, v2, token and v3 slots: remove this key if that is not wanted")];
            if j.len() < 16 {
                comments.push(short_secret(c));
            }
            c.out.keys.push(KeyOut {
                id: "jwt",
                secret: j.to_owned(),
                comments,
            });
        }
    }
}

/// Bare lowercase extensions (dots dropped; of `tar.gz` only `gz` counts), deduplicated, and
/// whether a `*` (anything) was among them.
pub(super) fn extension_list(items: &[Value]) -> (Vec<Value>, bool) {
    let mut out: Vec<Value> = Vec::new();
    let mut any = false;
    for e in items.iter().filter_map(Value::as_str) {
        let e = e.trim().to_ascii_lowercase();
        let last = e.rsplit('.').next().unwrap_or_default();
        any |= last == "*";
        let v = Value::from(last);
        if !last.is_empty() && last != "*" && !last.contains('/') && !out.contains(&v) {
            out.push(v);
        }
    }
    (out, any)
}

pub(super) fn extensions(c: &mut Ctx, s: &Src) {
    let Some(items) = s.value.as_array() else {
        return c.out.skip(
            s,
            "not a list: storage.allowed_extensions stays empty (every extension)",
        );
    };
    match extension_list(items) {
        (_, true) => c.out.skip(s, "\"*\" allows every extension: storage.allowed_extensions stays empty (no allow-list)"),
        (list, false) => c.out.map(s, ("storage", "allowed_extensions"), Value::Array(list), "the upload allow-list as bare lowercase extensions (dots dropped); only the last extension of a name counts, as in hmac-file-server"),
    }
}

pub(super) fn timeout(c: &mut Ctx, s: &Src) {
    let server = ServerConfig::default();
    let (targets, why): (&[(At, Duration)], &str) = match s.key.to_ascii_lowercase().as_str() {
        "readtimeout" => (&[(("server", "header_read_timeout"), server.header_read_timeout), (("server", "body_idle_timeout"), server.body_idle_timeout)], "Go's ReadTimeout bounds a whole request, body included, so a large upload on a slow link had to finish within it. Sluice bounds the request head (header_read_timeout) and silence within a body (body_idle_timeout): an upload that keeps moving is never cut off"),
        "writetimeout" => (&[(("server", "send_timeout"), server.send_timeout)], "Go's WriteTimeout caps a whole response, so a long download was cut off midway. Sluice's send_timeout (with min_send_rate) cuts only a client that stops reading"),
        _ => (&[(("server", "header_read_timeout"), server.header_read_timeout)], "Go's IdleTimeout closes idle keep-alive connections; Sluice closes a connection that sends nothing for header_read_timeout"),
    };
    let Some(d) = duration(s.value) else {
        return c.out.skip(
            s,
            "not a duration Sluice can read; Sluice's timeouts keep their defaults",
        );
    };
    let mut tightened = false;
    for &(at, default) in targets {
        let current = c
            .out
            .get(at)
            .and_then(Value::as_str)
            .and_then(super::units::parse_duration);
        if !d.is_zero() && d < current.unwrap_or(default) {
            let why = format!(
                "[{}] {} is shorter than Sluice's default (see above)",
                s.section, s.key
            );
            c.out.set(at, fmt_duration(d).into(), &why);
            tightened = true;
        }
    }
    let why = if tightened {
        format!("{why}. Shorter than Sluice's default, so it was taken")
    } else {
        format!("{why}. Not shorter than Sluice's defaults, which stay")
    };
    c.out.note("server", s, &why);
}

pub(super) fn log_level(c: &mut Ctx, s: &Src) {
    let level = match s.value.as_str().map(str::to_ascii_lowercase).as_deref() {
        Some(l @ ("trace" | "debug" | "info" | "error")) => l.to_owned(),
        Some("warn" | "warning") => "warn".into(),
        Some("fatal" | "panic") => "error".into(),
        _ => "info".into(),
    };
    c.out.skip(s, &format!("the log level is not in Sluice's config file: set the environment variable SLUICE_LOG={level} (systemd: Environment=SLUICE_LOG={level})"));
}

pub(super) fn quota(c: &mut Ctx, s: &Src) {
    if c.get("quotas", "enabled").and_then(Value::as_bool) != Some(true) {
        return c.out.skip(s, "quotas were off (enabled is not true)");
    }
    if s.key.eq_ignore_ascii_case("enabled") {
        return c.out.attach(s, ("quota", "stored"), "quotas on");
    }
    match size(s.value) {
        Some(b) if b > 0 => c.out.map(s, ("quota", "stored"), fmt_size(b).into(), "bytes one uploader may have stored. Sluice knows the uploader from a JWT's sub, or from the first path segment for the modes in quota.uploader_from_first_segment (ejabberd: [\"v\"]); Prosody's v1/v2 slots name nobody, so no quota applies to them"),
        _ => c.out.skip(s, "not a positive size: quota.stored stays \"0B\" (no limit)"),
    }
}

pub(super) fn audit(c: &mut Ctx, s: &Src) {
    if c.get("audit", "enabled").and_then(Value::as_bool) != Some(true) {
        return c.out.skip(s, "the audit log was off (enabled is not true)");
    }
    let to_stdout = c
        .get("audit", "output")
        .and_then(Value::as_str)
        .is_some_and(|o| o.eq_ignore_ascii_case("stdout"));
    let at = ("audit", "path");
    match s.key.to_ascii_lowercase().as_str() {
        "path" if to_stdout => c.out.skip(s, "their audit log went to stdout; Sluice's is a file ([audit] path)"),
        "path" => match s.value.as_str() {
            Some(p) if !p.is_empty() => c.out.map(s, at, p.into(), "JSON lines for uploads, deletions and admin actions (client addresses truncated to audit.ipv4_prefix / ipv6_prefix bits)"),
            _ => c.out.skip(s, "no path: Sluice's audit log stays off"),
        },
        "format" if !s.value.as_str().is_some_and(|f| f.eq_ignore_ascii_case("json")) => c.out.skip(s, "Sluice writes JSON lines only"),
        "events" => c.out.skip(s, "Sluice audits uploads, deletions and admin actions; the set is fixed"),
        "format" => c.out.attach(s, at, "Sluice's audit log is JSON lines too"),
        "output" => c.out.attach(s, at, "Sluice's audit log is a file too"),
        _ => c.out.attach(s, at, "the audit log was on"),
    }
}
