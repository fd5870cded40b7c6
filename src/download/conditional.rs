//! Conditional request evaluation for downloads (RFC 9110 §13).
//!
//! This module owns the decision between "go on", 304 and 412, in the order of RFC 9110 §13.2.2,
//! and whether a `Range` header may be honoured (`If-Range`, §13.1.5). It also formats the strong
//! ETag Sluice derives from a file's SHA-256.
//!
//! It is pure: it must not touch storage, the clock or a response. The caller evaluates
//! preconditions only for a representation that exists and would otherwise get a 2xx (§13.2.1:
//! a 404 or an auth failure ignores them), and sends `ETag` and `Last-Modified` with a 304.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;

/// The request's conditional header field values, trimmed or not.
///
/// Fill each from the request's header map. If a list field (`If-Match`, `If-None-Match`) occurs
/// on several lines, join them with `", "` first; if a value is not visible ASCII, pass
/// `Some("")` rather than `None`, so that it evaluates as "matches nothing" instead of vanishing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a str>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a str>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a str>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<&'a str>,
    /// `If-Range`.
    pub if_range: Option<&'a str>,
}

/// The current validators of the selected representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validators<'a> {
    /// The strong ETag as sent in the `ETag` field, quotes included (see [`format_etag`]).
    pub etag: &'a str,
    /// `Last-Modified`; sub-second precision is dropped before any comparison, as HTTP-dates
    /// carry whole seconds only.
    pub last_modified: SystemTime,
}

/// The result of evaluating preconditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the request. `honour_range` says whether a `Range` header may be used: false when
    /// `If-Range` does not match, and always false for methods other than GET, for which RFC 9110
    /// §14.2 says a server MUST ignore `Range` (this includes HEAD).
    Proceed {
        /// Whether to resolve the `Range` header (a 206/416 is possible) or send 200 in full.
        honour_range: bool,
    },
    /// 304 Not Modified (GET/HEAD only).
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// Evaluates the preconditions of a request for an existing representation (RFC 9110 §13.2.2).
///
/// 1. `If-Match` present: unless it is `*` or lists an ETag that matches the current one by
///    strong comparison → [`Precondition::Failed`].
/// 2. Else, `If-Unmodified-Since` present and a valid HTTP-date: modified after it → `Failed`.
/// 3. `If-None-Match` present: `*` or an ETag that matches by weak comparison →
///    [`Precondition::NotModified`] for GET/HEAD, `Failed` for other methods.
/// 4. Else, for GET/HEAD, `If-Modified-Since` present and a valid HTTP-date: not modified after
///    it → `NotModified`.
/// 5. GET only: `If-Range` absent → honour the range; an ETag → honour when it matches by strong
///    comparison (a weak tag never does); an HTTP-date → honour when it equals `Last-Modified`
///    exactly; anything else → send the full representation.
///
/// A malformed ETag list matches nothing; a malformed date is ignored (§13.1.3, §13.1.4).
pub fn evaluate(
    method: &Method,
    conditions: &Conditions<'_>,
    current: &Validators<'_>,
) -> Precondition {
    let safe = *method == Method::GET || *method == Method::HEAD;
    let current_tag = EntityTag::parse_exact(current.etag);
    let last_modified = whole_seconds(current.last_modified);

    // Step 1 (§13.1.1): If-Match uses the strong comparison.
    if let Some(if_match) = conditions.if_match {
        if !list_matches(if_match, current_tag.as_ref(), Comparison::Strong) {
            return Precondition::Failed;
        }
    } else if let Some(date) = conditions.if_unmodified_since.and_then(parse_date) {
        // Step 2 (§13.1.4): only without If-Match; an invalid date is ignored.
        if last_modified > date {
            return Precondition::Failed;
        }
    }

    // Step 3 (§13.1.2): If-None-Match uses the weak comparison.
    if let Some(if_none_match) = conditions.if_none_match {
        if list_matches(if_none_match, current_tag.as_ref(), Comparison::Weak) {
            return if safe {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if safe {
        // Step 4 (§13.1.3): only GET/HEAD, only without If-None-Match; invalid dates ignored.
        if let Some(date) = conditions.if_modified_since.and_then(parse_date) {
            if last_modified <= date {
                return Precondition::NotModified;
            }
        }
    }

    // Step 5 (§13.1.5, §14.2): Range is defined for GET only.
    let honour_range = *method == Method::GET
        && conditions
            .if_range
            .is_none_or(|v| if_range_matches(v, current_tag.as_ref(), last_modified));
    Precondition::Proceed { honour_range }
}

/// A strong ETag for a file whose content hash is `sha256_hex`: `"<hex>"`.
///
/// The hash identifies the bytes exactly, so the tag is strong (RFC 9110 §8.8.3) and valid for
/// `If-Range` and `If-Match`. `sha256_hex` must be hex digits (they are all valid `etagc`).
pub fn format_etag(sha256_hex: &str) -> String {
    debug_assert!(sha256_hex.bytes().all(|b| b.is_ascii_hexdigit()));
    format!("\"{sha256_hex}\"")
}

/// §13.1.5: an entity-tag must match strongly, an HTTP-date must equal `Last-Modified` exactly.
fn if_range_matches(
    value: &str,
    current: Option<&EntityTag<'_>>,
    last_modified: SystemTime,
) -> bool {
    let value = value.trim_matches(is_ows);
    if value.starts_with('"') || value.starts_with("W/") {
        return match (EntityTag::parse_exact(value), current) {
            (Some(tag), Some(current)) => tag.matches(current, Comparison::Strong),
            _ => false,
        };
    }
    parse_date(value) == Some(last_modified)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    /// §8.8.3.2: both strong and the opaque tags equal.
    Strong,
    /// §8.8.3.2: opaque tags equal, weakness ignored.
    Weak,
}

/// An entity-tag (§8.8.3): `[W/] DQUOTE *etagc DQUOTE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    /// The tag between the quotes.
    opaque: &'a str,
}

impl<'a> EntityTag<'a> {
    fn matches(&self, other: &EntityTag<'_>, comparison: Comparison) -> bool {
        let weakness_ok = comparison == Comparison::Weak || !(self.weak || other.weak);
        weakness_ok && self.opaque == other.opaque
    }

    /// Parses one entity-tag at the start of `s`, returning it and the rest of `s`.
    fn parse_prefix(s: &'a str) -> Option<(Self, &'a str)> {
        let (weak, s) = match s.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let s = s.strip_prefix('"')?;
        let end = s.find('"')?;
        let opaque = &s[..end];
        // etagc = %x21 / %x23-7E / obs-text: no controls, no space, no DEL.
        if !opaque
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        {
            return None;
        }
        Some((Self { weak, opaque }, &s[end + 1..]))
    }

    /// Parses a value that must be exactly one entity-tag (OWS around it allowed).
    fn parse_exact(s: &'a str) -> Option<Self> {
        match Self::parse_prefix(s.trim_matches(is_ows)) {
            Some((tag, "")) => Some(tag),
            _ => None,
        }
    }
}

/// Evaluates `If-Match`/`If-None-Match`: `*` matches any existing representation, otherwise
/// some listed tag must match `current`. A malformed list matches nothing.
fn list_matches(list: &str, current: Option<&EntityTag<'_>>, comparison: Comparison) -> bool {
    let mut rest = list.trim_matches(is_ows);
    if rest == "*" {
        return true;
    }
    let mut matched = false;
    loop {
        // §5.6.1: skip OWS and empty list elements.
        rest = rest.trim_start_matches(|c| is_ows(c) || c == ',');
        if rest.is_empty() {
            return matched;
        }
        let Some((tag, after)) = EntityTag::parse_prefix(rest) else {
            return false;
        };
        let after = after.trim_start_matches(is_ows);
        if !(after.is_empty() || after.starts_with(',')) {
            return false;
        }
        matched |= current.is_some_and(|c| tag.matches(c, comparison));
        rest = after;
    }
}

/// Optional whitespace (§5.6.3): space and horizontal tab.
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// An HTTP-date in any of the three formats recipients must accept (§5.6.7).
fn parse_date(value: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(value.trim_matches(is_ows)).ok()
}

/// Drops sub-second precision (HTTP-dates have whole seconds only).
fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sun, 06 Nov 1994 08:49:37 GMT, the RFC's example date.
    const LM_SECS: u64 = 784_111_777;
    const LM_IMF: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const LM_RFC850: &str = "Sunday, 06-Nov-94 08:49:37 GMT";
    const LM_ASCTIME: &str = "Sun Nov  6 08:49:37 1994";
    const ETAG: &str = "\"abc\"";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    fn current() -> Validators<'static> {
        Validators {
            etag: ETAG,
            last_modified: at(LM_SECS),
        }
    }

    fn get(c: Conditions<'_>) -> Precondition {
        evaluate(&Method::GET, &c, &current())
    }

    const PROCEED: Precondition = Precondition::Proceed { honour_range: true };
    const PROCEED_FULL: Precondition = Precondition::Proceed {
        honour_range: false,
    };

    #[test]
    fn no_conditions_proceed_and_honour_range() {
        assert_eq!(get(Conditions::default()), PROCEED);
    }

    // ---- step 1: If-Match (§13.1.1, strong comparison) ----------------------------------------

    #[test]
    fn if_match_star_proceeds() {
        let c = Conditions {
            if_match: Some("*"),
            ..Default::default()
        };
        assert_eq!(get(c), PROCEED);
    }

    #[test]
    fn if_match_listing_current_etag_proceeds() {
        for v in [
            ETAG,
            "\"x\", \"abc\"",
            " \"x\" ,\t\"abc\" ",
            "\"x\",,\"abc\"",
        ] {
            let c = Conditions {
                if_match: Some(v),
                ..Default::default()
            };
            assert_eq!(get(c), PROCEED, "{v:?}");
        }
    }

    #[test]
    fn if_match_mismatch_is_412() {
        for v in ["\"x\"", "\"x\", \"y\"", "\"ABC\"", "\"abc \"", ""] {
            let c = Conditions {
                if_match: Some(v),
                ..Default::default()
            };
            assert_eq!(get(c), Precondition::Failed, "{v:?}");
        }
    }

    #[test]
    fn if_match_uses_strong_comparison_so_weak_tags_fail() {
        let c = Conditions {
            if_match: Some("W/\"abc\""),
            ..Default::default()
        };
        assert_eq!(get(c), Precondition::Failed);
    }

    #[test]
    fn if_match_malformed_list_matches_nothing() {
        for v in ["abc", "\"abc", "\"abc\" junk", "\"abc\", x", "W/abc", "**"] {
            let c = Conditions {
                if_match: Some(v),
                ..Default::default()
            };
            assert_eq!(get(c), Precondition::Failed, "{v:?}");
        }
    }

    #[test]
    fn if_match_applies_to_every_method() {
        let c = Conditions {
            if_match: Some("\"x\""),
            ..Default::default()
        };
        for m in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
            assert_eq!(evaluate(&m, &c, &current()), Precondition::Failed, "{m}");
        }
    }

    // ---- step 2: If-Unmodified-Since (§13.1.4) ------------------------------------------------

    #[test]
    fn if_unmodified_since_before_last_modified_is_412() {
        let d = date(LM_SECS - 1);
        let c = Conditions {
            if_unmodified_since: Some(&d),
            ..Default::default()
        };
        assert_eq!(get(c), Precondition::Failed);
    }

    #[test]
    fn if_unmodified_since_at_or_after_last_modified_proceeds() {
        for d in [date(LM_SECS), date(LM_SECS + 1)] {
            let c = Conditions {
                if_unmodified_since: Some(&d),
                ..Default::default()
            };
            assert_eq!(get(c), PROCEED, "{d}");
        }
    }

    #[test]
    fn if_unmodified_since_invalid_date_is_ignored() {
        for d in [
            "yesterday",
            "",
            "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
        ] {
            let c = Conditions {
                if_unmodified_since: Some(d),
                ..Default::default()
            };
            assert_eq!(get(c), PROCEED, "{d:?}");
        }
    }

    #[test]
    fn if_unmodified_since_is_ignored_when_if_match_is_present() {
        let d = date(LM_SECS - 1);
        let c = Conditions {
            if_match: Some(ETAG),
            if_unmodified_since: Some(&d),
            ..Default::default()
        };
        assert_eq!(get(c), PROCEED);
    }

    // ---- step 3: If-None-Match (§13.1.2, weak comparison) -------------------------------------

    #[test]
    fn if_none_match_star_is_304() {
        let c = Conditions {
            if_none_match: Some("*"),
            ..Default::default()
        };
        assert_eq!(get(c), Precondition::NotModified);
        assert_eq!(
            evaluate(&Method::HEAD, &c, &current()),
            Precondition::NotModified
        );
    }

    #[test]
    fn if_none_match_listing_current_etag_is_304() {
        for v in [ETAG, "\"x\", \"abc\"", "\"a,b\", \"abc\""] {
            let c = Conditions {
                if_none_match: Some(v),
                ..Default::default()
            };
            assert_eq!(get(c), Precondition::NotModified, "{v:?}");
        }
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let c = Conditions {
            if_none_match: Some("W/\"abc\""),
            ..Default::default()
        };
        assert_eq!(get(c), Precondition::NotModified);
    }

    #[test]
    fn if_none_match_mismatch_proceeds() {
        for v in ["\"x\"", "\"a,b\"", "\"ab\", \"c\"", "garbage"] {
            let c = Conditions {
                if_none_match: Some(v),
                ..Default::default()
            };
            assert_eq!(get(c), PROCEED, "{v:?}");
        }
    }

    #[test]
    fn if_none_match_on_other_methods_is_412() {
        for v in ["*", ETAG] {
            let c = Conditions {
                if_none_match: Some(v),
                ..Default::default()
            };
            for m in [Method::PUT, Method::POST, Method::DELETE] {
                assert_eq!(
                    evaluate(&m, &c, &current()),
                    Precondition::Failed,
                    "{m} {v}"
                );
            }
        }
    }

    #[test]
    fn if_match_failure_wins_over_if_none_match() {
        let c = Conditions {
            if_match: Some("\"x\""),
            if_none_match: Some(ETAG),
            ..Default::default()
        };
        assert_eq!(get(c), Precondition::Failed);
    }

    #[test]
    fn if_unmodified_since_failure_wins_over_if_none_match() {
        let d = date(LM_SECS - 1);
        let c = Conditions {
            if_unmodified_since: Some(&d),
            if_none_match: Some("*"),
            ..Default::default()
        };
        assert_eq!(get(c), Precondition::Failed);
    }

    // ---- step 4: If-Modified-Since (§13.1.3) --------------------------------------------------

    #[test]
    fn if_modified_since_not_modified_is_304() {
        for d in [date(LM_SECS), date(LM_SECS + 3600)] {
            let c = Conditions {
                if_modified_since: Some(&d),
                ..Default::default()
            };
            assert_eq!(get(c), Precondition::NotModified, "{d}");
            assert_eq!(
                evaluate(&Method::HEAD, &c, &current()),
                Precondition::NotModified
            );
        }
    }

    #[test]
    fn if_modified_since_accepts_all_three_date_formats() {
        for d in [LM_IMF, LM_RFC850, LM_ASCTIME] {
            let c = Conditions {
                if_modified_since: Some(d),
                ..Default::default()
            };
            assert_eq!(get(c), Precondition::NotModified, "{d}");
        }
    }

    #[test]
    fn if_modified_since_modified_after_proceeds() {
        let d = date(LM_SECS - 1);
        let c = Conditions {
            if_modified_since: Some(&d),
            ..Default::default()
        };
        assert_eq!(get(c), PROCEED);
    }

    #[test]
    fn if_modified_since_is_ignored_for_other_methods() {
        let d = date(LM_SECS);
        let c = Conditions {
            if_modified_since: Some(&d),
            ..Default::default()
        };
        assert_eq!(evaluate(&Method::PUT, &c, &current()), PROCEED_FULL);
    }

    #[test]
    fn if_modified_since_invalid_date_is_ignored() {
        let c = Conditions {
            if_modified_since: Some("not a date"),
            ..Default::default()
        };
        assert_eq!(get(c), PROCEED);
    }

    #[test]
    fn if_modified_since_is_ignored_when_if_none_match_is_present() {
        let d = date(LM_SECS + 3600);
        let c = Conditions {
            if_none_match: Some("\"x\""),
            if_modified_since: Some(&d),
            ..Default::default()
        };
        assert_eq!(get(c), PROCEED);
    }

    #[test]
    fn sub_second_last_modified_compares_in_whole_seconds() {
        let v = Validators {
            etag: ETAG,
            last_modified: at(LM_SECS) + Duration::from_millis(999),
        };
        let c = Conditions {
            if_modified_since: Some(LM_IMF),
            ..Default::default()
        };
        assert_eq!(evaluate(&Method::GET, &c, &v), Precondition::NotModified);
        let c = Conditions {
            if_range: Some(LM_IMF),
            ..Default::default()
        };
        assert_eq!(evaluate(&Method::GET, &c, &v), PROCEED);
    }

    // ---- step 5: If-Range (§13.1.5) -----------------------------------------------------------

    #[test]
    fn if_range_strong_etag_match_honours_range() {
        let c = Conditions {
            if_range: Some(ETAG),
            ..Default::default()
        };
        assert_eq!(get(c), PROCEED);
    }

    #[test]
    fn if_range_other_etag_serves_full() {
        let c = Conditions {
            if_range: Some("\"x\""),
            ..Default::default()
        };
        assert_eq!(get(c), PROCEED_FULL);
    }

    #[test]
    fn weak_etag_never_matches_if_range() {
        let c = Conditions {
            if_range: Some("W/\"abc\""),
            ..Default::default()
        };
        assert_eq!(get(c), PROCEED_FULL);
        // Nor does a weak current ETag.
        let v = Validators {
            etag: "W/\"abc\"",
            last_modified: at(LM_SECS),
        };
        let c = Conditions {
            if_range: Some("\"abc\""),
            ..Default::default()
        };
        assert_eq!(evaluate(&Method::GET, &c, &v), PROCEED_FULL);
    }

    #[test]
    fn if_range_date_equal_to_last_modified_honours_range() {
        for d in [LM_IMF, LM_RFC850, LM_ASCTIME] {
            let c = Conditions {
                if_range: Some(d),
                ..Default::default()
            };
            assert_eq!(get(c), PROCEED, "{d}");
        }
    }

    #[test]
    fn if_range_date_not_exactly_last_modified_serves_full() {
        for d in [date(LM_SECS - 1), date(LM_SECS + 1)] {
            let c = Conditions {
                if_range: Some(&d),
                ..Default::default()
            };
            assert_eq!(get(c), PROCEED_FULL, "{d}");
        }
    }

    #[test]
    fn if_range_garbage_serves_full() {
        for v in ["", "abc", "\"abc\", \"def\"", "\"abc", "*"] {
            let c = Conditions {
                if_range: Some(v),
                ..Default::default()
            };
            assert_eq!(get(c), PROCEED_FULL, "{v:?}");
        }
    }

    #[test]
    fn range_is_never_honoured_for_methods_other_than_get() {
        // RFC 9110 §14.2: GET is the only method with range handling; a server MUST ignore Range.
        for m in [Method::HEAD, Method::PUT, Method::POST] {
            assert_eq!(
                evaluate(&m, &Conditions::default(), &current()),
                PROCEED_FULL,
                "{m}"
            );
        }
    }

    #[test]
    fn passing_preconditions_still_consult_if_range() {
        let d = date(LM_SECS - 1);
        let c = Conditions {
            if_match: Some(ETAG),
            if_modified_since: Some(&d),
            if_range: Some("\"x\""),
            ..Default::default()
        };
        assert_eq!(get(c), PROCEED_FULL);
    }

    // ---- ETag formatting ----------------------------------------------------------------------

    #[test]
    fn format_etag_is_a_quoted_strong_tag() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let tag = format_etag(hex);
        assert_eq!(tag, format!("\"{hex}\""));
        let v = Validators {
            etag: &tag,
            last_modified: at(LM_SECS),
        };
        let c = Conditions {
            if_range: Some(&tag),
            ..Default::default()
        };
        assert_eq!(evaluate(&Method::GET, &c, &v), PROCEED);
    }

    proptest! {
        #[test]
        fn arbitrary_header_values_never_panic(
            a in ".{0,40}", b in ".{0,40}", c in ".{0,40}", d in ".{0,40}", e in ".{0,40}",
            get_method in any::<bool>(),
        ) {
            let conditions = Conditions {
                if_match: Some(&a),
                if_none_match: Some(&b),
                if_modified_since: Some(&c),
                if_unmodified_since: Some(&d),
                if_range: Some(&e),
            };
            let method = if get_method { Method::GET } else { Method::PUT };
            let _ = evaluate(&method, &conditions, &current());
        }

        #[test]
        fn if_range_date_honours_range_only_on_exact_second(
            lm in 2u64..4_000_000_000,
            offset in 0u64..5,
        ) {
            let probe = lm + offset - 2;
            let v = Validators { etag: ETAG, last_modified: at(lm) };
            let d = date(probe);
            let c = Conditions { if_range: Some(&d), ..Default::default() };
            let expected = Precondition::Proceed { honour_range: lm == probe };
            prop_assert_eq!(evaluate(&Method::GET, &c, &v), expected);
        }
    }
}
