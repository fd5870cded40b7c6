use std::time::Duration;

use toml::Value;

use super::engine::tiers;
use super::keys::listen_addr;
use super::units::{fmt_duration, fmt_size, parse_duration, parse_size};
use super::*;

const SECRET: &str = "a-secret-of-more-than-16-bytes";

/// Migrate, check the output validates, and return it (comment paragraphs unwrapped, so phrases
/// can be searched) and parsed as an untyped value.
fn out(input: &str) -> (String, Value) {
    let m = migrate(input).unwrap_or_else(|e| panic!("{e}\n{input}"));
    Config::from_toml(&m.config).unwrap();
    let v: Value = toml::from_str(&m.config).unwrap();
    let flat = m.config.replace("\n#   ", " ").replace("\n# ", " ");
    (flat, v)
}

fn at<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// (input, Sluice key, expected value as TOML): the mapping table, one rule per row.
const MAPPINGS: &[(&str, &str, &str)] = &[
    ("[server]\nlisten_address = \"8080\"", "server.listen", r#"["0.0.0.0:8080"]"#),
    ("[server]\nlisten_address = \":8081\"", "server.listen", r#"["0.0.0.0:8081"]"#),
    ("[server]\nlisten_address = 9000", "server.listen", r#"["0.0.0.0:9000"]"#),
    ("[server]\nlisten_address = \"127.0.0.1:8080\"", "server.listen", r#"["127.0.0.1:8080"]"#),
    ("[server]\nlisten_address = \"8080\"\nbind_ip = \"10.0.0.5\"", "server.listen", r#"["10.0.0.5:8080"]"#),
    ("[server]\nlisten_address = \"[::1]:8080\"", "server.listen", r#"["[::1]:8080"]"#),
    ("[server]\nstorage_path = \"/srv/uploads\"", "storage.dir", r#""/srv/uploads""#),
    ("[server]\nlisten_address = \"8080\"", "storage.dir", r#""./uploads""#),
    ("[server]\nmax_upload_size = \"10GB\"", "storage.max_file_size", r#""10GiB""#),
    ("[server]\nmax_upload_size = \"1.5GB\"", "storage.max_file_size", r#""1536MiB""#),
    ("[server]\nmin_free_bytes = \"5GB\"", "storage.min_free_space", r#""5GiB""#),
    ("[server]\nfilettlenabled = true\nfilettl = \"30d\"", "retention.max_age", r#""30d""#),
    ("[server]\nfilettlenabled = true\nmax_file_age = \"168h\"", "retention.max_age", r#""7d""#),
    ("[server]\nfilettlenabled = true\nfilettl = \"1d\"\nmax_file_age = \"2d\"", "retention.max_age", r#""1d""#),
    ("[server]\ncleanup_interval = \"1h\"", "retention.sweep_interval", r#""1h""#),
    ("[security]\nsecret = \"a-secret-of-more-than-16-bytes\"", "auth.modes", r#"["v", "v2", "token", "v3"]"#),
    ("[security]\nenablejwt = true", "auth.modes", r#"["v", "v2", "token", "v3", "jwt"]"#),
    ("[uploads]\nallowed_extensions = [\".JPG\", \"png\", \".tar.gz\", \".jpg\"]", "storage.allowed_extensions", r#"["jpg", "png", "gz"]"#),
    ("[uploads]\nchunk_size = \"10MB\"", "engine.clients.desktop_chunk", r#""10MiB""#),
    ("[uploads]\nchunk_size = \"fixed:2MB\"", "engine.clients.desktop_chunk", r#""2MiB""#),
    ("[uploads]\nsessiontimeout = \"1h\"", "resumable.session_ttl", r#""1h""#),
    ("[uploads]\nmin_chunk_size = \"256KB\"\nmax_chunk_size = \"10MB\"", "engine.clients.chunk_min", r#""256KiB""#),
    ("[uploads]\nmin_chunk_size = \"256KB\"\nmax_chunk_size = \"10MB\"", "engine.clients.chunk_max", r#""10MiB""#),
    ("[uploads]\nmax_chunk_size = \"512KB\"", "engine.clients.chunk_min", r#""512KiB""#),
    ("[uploads]\nchunk_adaptation_algorithm = \"fixed\"", "engine.mode", r#""fixed""#),
    ("[timeouts]\nreadtimeout = \"5s\"", "server.header_read_timeout", r#""5s""#),
    ("[timeouts]\nreadtimeout = \"5s\"", "server.body_idle_timeout", r#""5s""#),
    ("[timeouts]\nwritetimeout = \"20s\"", "server.send_timeout", r#""20s""#),
    ("[timeouts]\nshutdown = \"45s\"", "server.shutdown_grace", r#""45s""#),
    ("[quotas]\nenabled = true\ndefault = \"100MB\"", "quota.stored", r#""100MiB""#),
    ("[audit]\nenabled = true\noutput = \"file\"\npath = \"/var/log/hfs-audit.log\"", "audit.path", r#""/var/log/hfs-audit.log""#),
    ("[performance]\nmin_buffer_size = \"16KB\"\nmax_buffer_size = \"1MB\"", "engine.tiers", r#"["16KiB", "64KiB", "256KiB", "1MiB"]"#),
    ("[performance]\nmin_buffer_size = \"32KB\"\nmax_buffer_size = \"4MB\"", "engine.tiers", r#"["32KiB", "128KiB", "512KiB", "2MiB", "4MiB"]"#),
    ("[performance]\nmax_buffer_size = \"32MB\"", "engine.memory_cap", r#""64MiB""#),
    ("[performance]\nadaptive_buffers = false", "engine.mode", r#""fixed""#),
    ("[performance]\ninitial_buffer_size = \"64KB\"", "engine.clients.desktop_start_buffer", r#""64KiB""#),
    ("[performance]\nmax_memory_usage = \"512MB\"", "engine.memory_cap", r#""512MiB""#),
    ("[performance]\nprofile_persistence_duration = \"24h\"", "engine.history_ttl", r#""1d""#),
    ("[performance]\nbuffer_pool_preallocation = true", "engine.preallocate_per_tier", "2"),
    ("[streaming]\nquality_thresholds = [{ name = \"excellent\", min_throughput = \"10MB/s\", max_latency = \"50ms\" }, { name = \"good\", min_throughput = \"1MB/s\" }, { name = \"fair\", min_throughput = \"100KB/s\" }]", "engine.quality.good", r#""1MiB""#),
    ("[streaming]\nquality_thresholds = [{ name = \"good\", min_throughput = \"100MB/s\" }]", "engine.quality.good", r#""5MiB""#),
    ("[network_resilience]\nmobile_buffer_size = \"32KB\"\nmobile_chunk_size = \"512KB\"", "engine.clients.mobile_chunk", r#""512KiB""#),
    ("[network_interfaces]\nethernet = { buffer_size = \"1MB\", chunk_size = \"10MB\" }", "engine.clients.desktop_start_buffer", r#""1MiB""#),
    ("[network_interfaces]\ncellular = { buffer_size = \"128KB\", chunk_size = \"512KB\" }\nlte = { buffer_size = \"256KB\" }", "engine.clients.mobile_start_buffer", r#""128KiB""#),
    ("[network_resilience]\nmobile_buffer_size = \"32KB\"\n[network_interfaces]\ncellular = { buffer_size = \"128KB\" }", "engine.clients.mobile_start_buffer", r#""32KiB""#),
];

#[test]
fn mapping_table() {
    for (input, path, expected) in MAPPINGS {
        let (text, v) = out(input);
        let want: Value = toml::from_str::<Value>(&format!("x = {expected}")).unwrap()["x"].clone();
        assert_eq!(at(&v, path), Some(&want), "{input}\n→ {path}\n{text}");
    }
}

/// (input, Sluice key that must keep its default).
const KEPT_DEFAULTS: &[(&str, &str)] = &[
    (
        "[server]\nfilettlenabled = false\nfilettl = \"30d\"",
        "retention.max_age",
    ),
    ("[server]\nmax_upload_size = \"\"", "storage.max_file_size"),
    (
        "[timeouts]\nreadtimeout = \"4800s\"\nwritetimeout = \"4800s\"\nidletimeout = \"4800s\"",
        "server.header_read_timeout",
    ),
    (
        "[timeouts]\nreadtimeout = \"4800s\"",
        "server.body_idle_timeout",
    ),
    (
        "[uploads]\nchunk_size = \"adaptive\"",
        "engine.clients.desktop_chunk",
    ),
    (
        "[quotas]\nenabled = false\ndefault = \"100MB\"",
        "quota.stored",
    ),
    (
        "[audit]\nenabled = true\noutput = \"stdout\"\npath = \"/x\"",
        "audit.path",
    ),
    (
        "[uploads]\nallowed_extensions = [\"*\"]",
        "storage.allowed_extensions",
    ),
    (
        "[performance]\nmin_buffer_size = \"32KB\"\nmax_buffer_size = \"4MB\"",
        "engine.memory_cap",
    ),
    (
        "[security]\nenablejwt = false\njwtsecret = \"another-secret-0123456789\"",
        "auth.keys",
    ),
];

#[test]
fn keys_that_keep_sluice_defaults() {
    for (input, path) in KEPT_DEFAULTS {
        let (text, v) = out(input);
        assert_eq!(at(&v, path), None, "{input}\n→ {path}\n{text}");
    }
}

#[test]
fn inline_secret_becomes_a_key_with_a_secret_file_suggestion() {
    let (text, v) = out(&format!("[security]\nsecret = \"{SECRET}\"\n"));
    let keys = at(&v, "auth.keys").and_then(Value::as_array).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["secret"].as_str(), Some(SECRET));
    assert_eq!(keys[0]["id"].as_str(), Some("hmac-file-server"));
    assert!(text.contains("secret_file"), "{text}");
    assert!(text.contains("secret_env"), "{text}");
    // The secret appears once, as the value, never in a comment.
    assert_eq!(text.matches(SECRET).count(), 1, "{text}");
}

#[test]
fn distinct_jwt_secret_is_a_second_key_and_same_one_is_not() {
    let (_, v) = out(&format!(
        "[security]\nsecret = \"{SECRET}\"\nenablejwt = true\njwtsecret = \"jwt-secret-0123456789abc\"\n"
    ));
    let keys = at(&v, "auth.keys").and_then(Value::as_array).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1]["id"].as_str(), Some("jwt"));
    let (_, v) = out(&format!(
        "[security]\nsecret = \"{SECRET}\"\nenablejwt = true\njwtsecret = \"{SECRET}\"\n"
    ));
    assert_eq!(
        at(&v, "auth.keys").and_then(Value::as_array).unwrap().len(),
        1
    );
}

#[test]
fn short_secret_is_kept_with_a_warning() {
    let m = migrate("[security]\nsecret = \"short\"\n").unwrap();
    assert!(m.config.contains("WARNING"), "{}", m.config);
    assert!(
        m.notes.iter().any(|n| n.contains("16 bytes")),
        "{:?}",
        m.notes
    );
}

#[test]
fn secrets_never_reach_comments() {
    let input = "[redis]\nredispassword = \"hunter2-redis\"\n[admin.auth]\ntype = \"bearer\"\ntoken = \"admin-tok-123\"\n[security]\nenablejwt = false\njwtsecret = \"jwt-secret-xyz\"\n";
    let (text, _) = out(input);
    for s in ["hunter2-redis", "admin-tok-123", "jwt-secret-xyz"] {
        assert!(!text.contains(s), "{s} leaked:\n{text}");
    }
    assert!(
        text.contains("[redis] redispassword = <redacted>"),
        "{text}"
    );
    assert!(text.contains("[admin.auth] token = <redacted>"), "{text}");
}

#[test]
fn keys_without_equivalent_are_comments_with_their_reason() {
    let cases = [
        (
            "[server]\nnetworkevents = true",
            "[server] networkevents = true",
            "no effect a client",
        ),
        (
            "[clamav]\nclamavenabled = true",
            "[clamav] clamavenabled = true",
            "does not scan",
        ),
        (
            "[redis]\nredisenabled = true",
            "[redis] redisenabled = true",
            "no Redis",
        ),
        (
            "[server]\ndeduplication_enabled = true",
            "[server] deduplication_enabled",
            "never collapses",
        ),
        (
            "[server]\nmax_header_bytes = 1048576",
            "[server] max_header_bytes",
            "never read",
        ),
        (
            "[server]\nworker_scale_up_thresh = 50",
            "[server] worker_scale_up_thresh",
            "never read",
        ),
        (
            "[logging]\nlevel = \"warning\"",
            "[logging] level",
            "SLUICE_LOG=warn",
        ),
        (
            "[rate_limit]\nenabled = true",
            "[rate_limit] enabled",
            "no request rate limit",
        ),
        (
            "[admin]\nenabled = true",
            "[admin] enabled",
            "its own listener",
        ),
        (
            "[network_resilience]\nfast_detection = true",
            "[network_resilience] fast_detection",
            "no effect a client",
        ),
    ];
    for (input, cite, reason) in cases {
        let (text, _) = out(input);
        let tail = &text[text.find("no Sluice equivalent, grouped").expect(&text)..];
        assert!(
            tail.contains(cite) && tail.contains(reason),
            "{input}\n{text}"
        );
    }
}

#[test]
fn unknown_keys_and_sections_are_reported_not_dropped() {
    let (text, _) = out("[server]\nlistenport = \"8080\"\nfoo = 1\n[mystery]\nbar = \"x\"\n[mystery.deeper]\nbaz = true\n[uploads]\nblockedextensions = [\".exe\"]\n");
    for cite in [
        "[server] listenport",
        "[server] foo",
        "[mystery] bar",
        "[mystery.deeper] baz",
        "[uploads] blockedextensions",
    ] {
        assert!(text.contains(cite), "{cite} missing:\n{text}");
    }
    assert!(
        text.contains("3.4 spells it [server] listen_address"),
        "{text}"
    );
    assert!(text.contains("denied_extensions = [\"exe\"]"), "{text}");
    assert!(text.contains("unknown to hmac-file-server 3.4"), "{text}");
}

#[test]
fn keys_match_case_insensitively_like_their_loader() {
    let (_, v) = out("[Server]\nListen_Address = \"8080\"\nMAX_UPLOAD_SIZE = \"1GB\"\nFileTTLEnabled = true\nFileTTL = \"2d\"\n");
    assert_eq!(
        at(&v, "server.listen").unwrap()[0].as_str(),
        Some("0.0.0.0:8080")
    );
    assert_eq!(
        at(&v, "storage.max_file_size").unwrap().as_str(),
        Some("1GiB")
    );
    assert_eq!(at(&v, "retention.max_age").unwrap().as_str(), Some("2d"));
}

#[test]
fn invalid_toml_is_a_parse_error() {
    assert!(matches!(migrate("[server\n"), Err(MigrateError::Parse(_))));
}

#[test]
fn empty_input_gives_a_valid_config() {
    let (_, v) = out("");
    assert_eq!(at(&v, "storage.dir").unwrap().as_str(), Some("./uploads"));
}

#[test]
fn sizes_read_their_units_as_binary_multiples() {
    assert_eq!(parse_size("100MB"), Some(100 << 20));
    assert_eq!(parse_size("10gb"), Some(10 << 30));
    assert_eq!(parse_size("512 KiB"), Some(512 << 10));
    assert_eq!(parse_size("10MB/s"), Some(10 << 20));
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("lots"), None);
    assert_eq!(fmt_size(10 << 30), "10GiB");
    assert_eq!(fmt_size(1536 << 20), "1536MiB");
    assert_eq!(fmt_size(1000), "1000B");
    assert_eq!(fmt_size(0), "0B");
}

#[test]
fn durations_read_go_syntax_plus_days() {
    assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("300ms"), Some(Duration::from_millis(300)));
    assert_eq!(
        parse_duration("30d"),
        Some(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(
        parse_duration("2y"),
        Some(Duration::from_secs(730 * 86_400))
    );
    assert_eq!(parse_duration("soon"), None);
    assert_eq!(fmt_duration(Duration::from_secs(5400)), "1h 30m");
    assert_eq!(fmt_duration(Duration::from_millis(1500)), "1s 500ms");
    for d in ["1h 30m", "30d", "1s 500ms"] {
        assert!(
            humantime_serde::re::humantime::parse_duration(d).is_ok(),
            "{d}"
        );
    }
}

#[test]
fn listen_forms() {
    let v = |s: &str| Value::from(s);
    assert_eq!(
        listen_addr(&v("8080"), "").unwrap().to_string(),
        "0.0.0.0:8080"
    );
    assert_eq!(
        listen_addr(&v("localhost:80"), "").unwrap().to_string(),
        "127.0.0.1:80"
    );
    assert_eq!(listen_addr(&v(":80"), "::").unwrap().to_string(), "[::]:80");
    assert!(listen_addr(&v("eth0"), "").is_none());
}

#[test]
fn tiers_climb_by_four_to_the_maximum() {
    assert_eq!(
        tiers(16 << 10, 1 << 20),
        Some(vec![16 << 10, 64 << 10, 256 << 10, 1 << 20])
    );
    assert_eq!(tiers(64 << 10, 64 << 10), Some(vec![64 << 10]));
    assert_eq!(tiers(512, 1 << 20), None);
    assert_eq!(tiers(2 << 20, 1 << 20), None);
}
