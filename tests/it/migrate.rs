//! `sluice migrate-config` on hmac-file-server configurations: the real binary on the fixtures
//! under tests/fixtures/hmac-file-server/, its output parsed and validated like `check-config`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice::config::{AuthMode, Config};
use toml::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hmac-file-server")
        .join(name)
}

/// Run `sluice migrate-config <fixture>`: (stdout, stderr), after checking it succeeded.
fn migrate(name: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("migrate-config")
        .arg(fixture(name))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{name}: {stderr}");
    (stdout, stderr)
}

/// Every key of the input appears in the output as `[section] key = `, mapped (in the comment
/// above the Sluice key) or listed without an equivalent; a table that is not cited as a whole
/// has each of its keys cited.
fn assert_every_key_cited(input: &str, output: &str) {
    fn walk(section: &str, t: &toml::Table, output: &str, missing: &mut Vec<String>) {
        for (k, v) in t {
            let cite = format!("[{section}] {k} = ");
            if !section.is_empty() && output.contains(&cite) {
                continue;
            }
            match v {
                Value::Table(sub) if section.is_empty() => walk(k, sub, output, missing),
                Value::Table(sub) => walk(&format!("{section}.{k}"), sub, output, missing),
                _ => missing.push(cite),
            }
        }
    }
    let mut missing = Vec::new();
    walk("", &toml::from_str(input).unwrap(), output, &mut missing);
    assert!(
        missing.is_empty(),
        "input keys not in the output: {missing:?}\n{output}"
    );
}

fn check(name: &str) -> (Config, String, String) {
    let (out, err) = migrate(name);
    let config = Config::from_toml(&out).unwrap_or_else(|e| panic!("{name}: {e}\n{out}"));
    let input = std::fs::read_to_string(fixture(name)).unwrap();
    assert_every_key_cited(&input, &out);
    (config, out, err)
}

fn exts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn minimal_config_migrates() {
    let (c, _, err) = check("minimal.toml");
    assert_eq!(c.server.listen[0].to_string(), "0.0.0.0:8080");
    assert_eq!(c.storage.dir, PathBuf::from("./uploads"));
    assert_eq!(c.auth.keys.len(), 1);
    assert_eq!(
        c.auth.keys[0].secret.as_deref(),
        Some("minimal-fixture-secret-0123456789")
    );
    assert_eq!(
        c.auth.modes,
        [AuthMode::V, AuthMode::V2, AuthMode::Token, AuthMode::V3]
    );
    assert!(err.contains("./uploads/files/"), "{err}");
}

#[test]
fn typical_xmpp_config_migrates() {
    let (c, out, _) = check("xmpp.toml");
    assert_eq!(c.server.listen[0].to_string(), "127.0.0.1:8080");
    assert_eq!(
        c.storage.dir,
        PathBuf::from("/var/lib/hmac-file-server/uploads")
    );
    assert_eq!(c.storage.max_file_size.as_u64(), 1 << 30);
    assert_eq!(c.storage.min_free_space.as_u64(), 5 << 30);
    assert_eq!(
        c.storage.allowed_extensions,
        exts(&["jpg", "jpeg", "png", "gif", "webp", "mp4", "m4a", "ogg", "pdf", "txt", "gz"])
    );
    assert_eq!(c.retention.max_age, Duration::from_secs(30 * 86_400));
    assert_eq!(c.retention.sweep_interval, Duration::from_secs(3600));
    assert_eq!(c.resumable.session_ttl, Duration::from_secs(7200));
    assert_eq!(c.quota.stored.as_u64(), 500 << 20);
    assert_eq!(
        c.audit.path,
        Some(PathBuf::from("/var/log/hmac-file-server/audit.log"))
    );
    // 4800 s whole-request timeouts are not shorter than Sluice's idle timeouts: defaults stay.
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.auth.keys.len(), 1, "JWT was off: its secret is not a key");
    assert_eq!(
        c.auth.keys[0].secret.as_deref(),
        Some("xmpp-fixture-secret-shared-with-prosody")
    );
    assert!(!c.auth.modes.contains(&AuthMode::Jwt));
    for secret in [
        "redis-password-not-for-comments",
        "admin-token-not-for-comments",
        "unused-jwt-secret",
    ] {
        assert!(!out.contains(secret), "{secret} leaked into the output");
    }
    for reason in [
        "does not scan",
        "no Redis",
        "no request rate limit",
        "no effect a client",
    ] {
        assert!(
            out.replace("\n# ", " ").contains(reason),
            "{reason}:\n{out}"
        );
    }
}

#[test]
fn adaptive_template_config_migrates() {
    let (c, out, _) = check("adaptive.toml");
    assert_eq!(c.server.listen[0].to_string(), "0.0.0.0:8080");
    assert_eq!(c.storage.dir, PathBuf::from("/data/uploads"));
    assert_eq!(c.storage.max_file_size.as_u64(), 10 << 30);
    assert_eq!(
        c.storage.allowed_extensions,
        exts(&["jpg", "jpeg", "png", "gif", "mp4", "mov", "pdf", "txt"])
    );
    assert_eq!(
        c.retention.max_age,
        Duration::ZERO,
        "no filettl: files never expire"
    );
    assert!(c.auth.modes.contains(&AuthMode::Jwt));
    assert_eq!(c.auth.keys.len(), 2);
    assert_eq!(c.auth.keys[1].id, "jwt");
    let tiers: Vec<u64> = c.engine.tiers.iter().map(|t| t.as_u64()).collect();
    assert_eq!(tiers, [16 << 10, 64 << 10, 256 << 10, 1 << 20]);
    assert_eq!(c.engine.memory_cap.as_u64(), 512 << 20);
    assert_eq!(c.engine.history_ttl, Duration::from_secs(86_400));
    assert_eq!(c.engine.quality.excellent.as_u64(), 10 << 20);
    assert_eq!(c.engine.quality.good.as_u64(), 1 << 20);
    assert_eq!(c.engine.quality.fair.as_u64(), 100 << 10);
    assert_eq!(c.engine.clients.mobile_start_buffer.as_u64(), 32 << 10);
    assert_eq!(c.engine.clients.mobile_chunk.as_u64(), 512 << 10);
    assert_eq!(c.engine.clients.desktop_start_buffer.as_u64(), 64 << 10);
    assert_eq!(c.engine.clients.chunk_min.as_u64(), 256 << 10);
    assert_eq!(c.engine.clients.chunk_max.as_u64(), 10 << 20);
    assert_eq!(c.server.send_timeout, Duration::from_secs(30));
    assert!(out.contains("never read by hmac-file-server 3.4"), "{out}");
}

#[test]
fn output_file_is_written_private_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["migrate-config", "-o"])
        .arg(&path)
        .arg(fixture("xmpp.toml"))
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(status.stdout.is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let check = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn unreadable_input_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server\nlisten_address = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("migrate-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot parse"));
}
