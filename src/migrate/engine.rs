//! Handlers for the keys whose intent maps onto Sluice's streaming engine: buffer tiers and
//! memory, client strategies and chunk advice, quality classes (see the table in
//! [`super::map`]).

use toml::Value;

use super::units::{fmt_size, size};
use super::{At, Ctx, Src};

pub(super) fn chunk_size(c: &mut Ctx, s: &Src) {
    let text = s.value.as_str().map(str::trim).unwrap_or_default();
    if text.eq_ignore_ascii_case("adaptive") {
        return c.out.skip(s, "\"adaptive\": Sluice's chunk advice adapts per client already ([engine.clients] *_chunk, chunk_min, chunk_max)");
    }
    let fixed = text.strip_prefix("fixed:").map(super::units::parse_size);
    match fixed.unwrap_or_else(|| size(s.value)) {
        Some(b) if b > 0 => c.out.map(s, ("engine.clients", "desktop_chunk"), fmt_size(b).into(), "the chunk advised to a desktop client without history (mobile and server clients keep their own; with history the advice follows the measured rate)"),
        _ => c.out.skip(s, "not a size Sluice can read; the chunk advice keeps its defaults"),
    }
}

pub(super) fn chunk_algorithm(c: &mut Ctx, s: &Src) {
    let mode = match s.value.as_str().map(str::to_ascii_lowercase).as_deref() {
        Some("fixed") => "fixed",
        Some("adaptive" | "predictive") => "adaptive",
        _ => {
            return c
                .out
                .skip(s, "unknown algorithm: engine.mode stays \"adaptive\"")
        }
    };
    c.out.map(s, ("engine", "mode"), mode.into(), "buffer sizing: \"adaptive\" follows each transfer's measured rate, \"fixed\" uses engine.fixed_buffer");
}

pub(super) fn engine_mode(c: &mut Ctx, s: &Src) {
    let mode = if s.value.as_bool() == Some(false) {
        "fixed"
    } else {
        "adaptive"
    };
    c.out.map(s, ("engine", "mode"), mode.into(), "buffer sizing: \"adaptive\" follows each transfer's measured rate, \"fixed\" uses engine.fixed_buffer");
}

/// Tiers from `min` to `max`, each four times the last (the top one is `max` itself).
pub(super) fn tiers(min: u64, max: u64) -> Option<Vec<u64>> {
    if min < 1024 || min > max {
        return None;
    }
    let mut t = vec![min];
    while t[t.len() - 1].saturating_mul(4) < max {
        t.push(t[t.len() - 1] * 4);
    }
    if t[t.len() - 1] != max {
        t.push(max);
    }
    Some(t)
}

pub(super) fn buffer_bounds(c: &mut Ctx, s: &Src) {
    if c.out.get(("engine", "tiers")).is_some() {
        return c
            .out
            .attach(s, ("engine", "tiers"), "the other bound of the tiers");
    }
    let get = |k| c.get("performance", k).and_then(size);
    let (min, max) = (
        get("min_buffer_size").unwrap_or(16 << 10),
        get("max_buffer_size").unwrap_or(1 << 20),
    );
    match tiers(min, max) {
        Some(t) => {
            let list: Vec<String> = t.into_iter().map(fmt_size).collect();
            c.out.map(s, ("engine", "tiers"), list.into(), "buffer tiers from min_buffer_size to max_buffer_size, each four times the last");
        }
        None => c.out.skip(s, "no tiers fit (need 1KiB <= min_buffer_size <= max_buffer_size): engine.tiers keeps its default"),
    }
}

pub(super) fn prealloc(c: &mut Ctx, s: &Src) {
    let n = if s.value.as_bool() == Some(true) {
        2
    } else {
        0
    };
    c.out.map(
        s,
        ("engine", "preallocate_per_tier"),
        Value::Integer(n),
        "buffers allocated per tier at startup (theirs was a switch; Sluice takes a count)",
    );
}

pub(super) fn quality(c: &mut Ctx, s: &Src) {
    let mut first = true;
    for t in s
        .value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_table)
    {
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let key = match name.as_str() {
            "excellent" => "excellent",
            "good" => "good",
            "fair" => "fair",
            _ => continue,
        };
        if let Some(b) = t.get("min_throughput").and_then(size) {
            let at = ("engine.quality", key);
            if first {
                c.out.map(s, at, fmt_size(b).into(), "min_throughput of the classes of the same name become Sluice's throughput floors (per second). max_latency has no equivalent: Sluice classes by throughput, and a stall lowers the class");
            } else {
                c.out
                    .set(at, fmt_size(b).into(), "from the same quality_thresholds");
            }
            first = false;
        }
    }
    if first {
        c.out.skip(s, "no excellent, good or fair class with a min_throughput: [engine.quality] keeps its defaults");
    }
}

pub(super) fn iface(c: &mut Ctx, s: &Src) {
    let (start, chunk): (At, At) = if s.key.eq_ignore_ascii_case("ethernet") {
        (
            ("engine.clients", "desktop_start_buffer"),
            ("engine.clients", "desktop_chunk"),
        )
    } else {
        (
            ("engine.clients", "mobile_start_buffer"),
            ("engine.clients", "mobile_chunk"),
        )
    };
    let t = s.value.as_table();
    let why = "Sluice has no strategy per link type; the nearest is a client's strategy by User-Agent (ethernet: desktop; cellular, lte: mobile). timeout_multiplier and priority have no equivalent";
    let mut any = false;
    for (k, at) in [("buffer_size", start), ("chunk_size", chunk)] {
        if let Some(b) = t.and_then(|t| t.get(k)).and_then(size) {
            any = true;
            c.out.map(s, at, fmt_size(b).into(), why);
        }
    }
    if !any {
        c.out.skip(s, why);
    }
}
