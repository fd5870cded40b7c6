//! hmac-file-server's sizes and durations, read leniently and written back in Sluice's units.
//!
//! Its sizes are `"100MB"`, `"10GB"` (binary multiples, case-insensitive), throughputs
//! `"10MB/s"`; its durations are Go's (`"1h30m"`, `"4800s"`) plus days, weeks and years
//! (`"30d"`, `"2y"`). Sluice reads `"100MiB"` and `"30d"`, `"1h 30m"`.

use std::time::Duration;

use toml::Value;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// A size value: a string with a unit, or an integer number of bytes.
pub(super) fn size(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(n) => u64::try_from(*n).ok(),
        Value::String(s) => parse_size(s),
        _ => None,
    }
}

/// `"10GB"`, `"512 KiB"`, `"1.5g"`, `"10MB/s"`, `"4096"` → bytes (binary multiples).
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_suffix("/s").unwrap_or(s).trim_end();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => KIB,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => GIB,
        "T" | "TB" | "TIB" => TIB,
        _ => return None,
    };
    let bytes = n * mult as f64;
    (bytes.is_finite() && (0.0..1.8e19).contains(&bytes)).then(|| bytes.round() as u64)
}

/// Bytes in the largest binary unit that divides them: `"10GiB"`, `"1536KiB"`, `"100B"`.
pub(super) fn fmt_size(b: u64) -> String {
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if b != 0 && b.is_multiple_of(unit) {
            return format!("{}{name}", b / unit);
        }
    }
    format!("{b}B")
}

/// A duration value: a Go-style string, or an integer number of seconds.
pub(super) fn duration(v: &Value) -> Option<Duration> {
    match v {
        Value::Integer(n) => u64::try_from(*n).ok().map(Duration::from_secs),
        Value::String(s) => parse_duration(s),
        _ => None,
    }
}

/// `"24h"`, `"1h30m"`, `"1.5h"`, `"300ms"`, `"30d"`, `"2y"`, `"0"`.
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..n_end].parse().ok()?;
        rest = rest[n_end..].trim_start();
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
            .unwrap_or(rest.len());
        let secs = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 7.0 * 86_400.0,
            "y" => 365.0 * 86_400.0,
            _ => return None,
        };
        total += n * secs;
        rest = rest[u_end..].trim_start();
    }
    (total.is_finite() && total < 1e15).then(|| Duration::from_secs_f64(total))
}

/// A duration as Sluice (humantime) reads it: `"30d"`, `"1h 30m"`, `"250ms"`, `"0s"`.
pub(super) fn fmt_duration(d: Duration) -> String {
    let mut parts = Vec::new();
    let mut s = d.as_secs();
    for (unit, name) in [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")] {
        if s >= unit {
            parts.push(format!("{}{name}", s / unit));
            s %= unit;
        }
    }
    let ms = d.subsec_millis();
    if ms > 0 {
        parts.push(format!("{ms}ms"));
    }
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}
