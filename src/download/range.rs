//! HTTP byte-range resolution and `multipart/byteranges` framing (RFC 9110 §14).
//!
//! This module owns the protocol math of a range request: it turns a `Range` header value and a
//! file length into a [`RangeOutcome`], formats `Content-Range` values, and plans the exact byte
//! layout of a `multipart/byteranges` body ([`MultipartPlan`]) so that the response can carry an
//! exact `Content-Length` while the file itself is streamed part by part.
//!
//! It must not do I/O, read the clock or see the request: it is pure and never buffers file bytes.
//! Preconditions (`If-Range` included) are decided in `conditional.rs` before this module is asked;
//! when they say "do not honour the range", the caller does not call [`resolve`] at all.
//!
//! Syntax is checked with `http-range-header` (0.4) after a small pre-pass; its `validate` step is
//! deliberately not used, because its semantics differ from ours (see [`resolve`]).

use std::fmt;

/// A satisfiable byte range, inclusive on both ends, always within the file it was resolved for.
///
/// Invariant (upheld by [`resolve`]): `start <= end_inclusive < file_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    /// First byte offset.
    pub start: u64,
    /// Last byte offset (inclusive).
    pub end_inclusive: u64,
}

impl ByteRange {
    /// Number of bytes in the range (0 only if the invariant `start <= end_inclusive` is broken).
    pub fn len(&self) -> u64 {
        self.end_inclusive
            .checked_sub(self.start)
            .map_or(0, |d| d.saturating_add(1))
    }

    /// True only for a range that breaks the `start <= end_inclusive` invariant.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What to send for a GET, given its `Range` header and the file length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No (usable) `Range` header: 200 with the whole file.
    Full,
    /// 206 with one `Content-Range: bytes a-b/len` (also when several ranges coalesced into one).
    Single(ByteRange),
    /// 206 `multipart/byteranges`: two or more ranges, sorted, non-overlapping and non-adjacent.
    Multi(Vec<ByteRange>),
    /// 416 with `Content-Range: bytes */len` (see [`unsatisfied_content_range`]).
    Unsatisfiable,
}

/// One syntactically valid `range-spec`, before it meets the file length.
#[derive(Debug, Clone, Copy)]
enum Spec {
    /// `first-` or `first-last`.
    From { first: u64, last: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// Resolves a `Range` header value against a file of `file_len` bytes.
///
/// `header` is the single `Range` field value (pass `None` when the request has none, when it
/// is not visible ASCII, or when it appears more than once). Rules, with the RFC 9110 section:
///
/// - No header, a unit other than `bytes` (§14.2), or invalid syntax anywhere in the set,
///   including a reversed `bytes=5-2` (§14.1.1) → [`RangeOutcome::Full`]: the header is ignored.
///   The unit is compared case-insensitively, optional whitespace around commas and empty list
///   elements are accepted (§5.6.1). Numbers must be plain digits without leading zeros and fit
///   in a `u64`; anything else is treated as invalid (a `http-range-header` strictness we keep).
/// - More than `max_ranges` range-specs (counted as written, before coalescing; `-0` counts)
///   → [`RangeOutcome::Full`]. Serving the whole representation with 200 is always a correct
///   answer to a range request (§14.2: a server MAY ignore `Range`), it costs one file read
///   rather than an unbounded number of seeks and part headers, and a client that asked for
///   hundreds of ranges can cope with a full body. `max_ranges == 0` disables ranges entirely.
/// - `first-last` and `first-` are satisfiable when `first < file_len`; `last` past the end is
///   clamped to `file_len - 1` (§14.1.1).
/// - `-n` is satisfiable when `n > 0` and `file_len > 0`; `n >= file_len` means the whole file,
///   served as a 206 `Single(0..=len-1)` (§14.1.1). So `bytes=-0` and `bytes=len-` are
///   unsatisfiable, and a 0-byte file satisfies no range at all.
/// - If no range-spec is satisfiable → [`RangeOutcome::Unsatisfiable`] (416, §15.5.17);
///   unsatisfiable specs next to satisfiable ones are dropped.
/// - Satisfiable ranges are sorted and overlapping or adjacent ones merged (§14.2 allows a server
///   to coalesce); one range left → [`RangeOutcome::Single`], never a one-part multipart.
pub fn resolve(header: Option<&str>, file_len: u64, max_ranges: usize) -> RangeOutcome {
    let Some(header) = header else {
        return RangeOutcome::Full;
    };
    let Some(specs) = parse_specs(header, max_ranges) else {
        return RangeOutcome::Full;
    };

    let mut ranges: Vec<ByteRange> = specs
        .iter()
        .filter_map(|spec| satisfiable(*spec, file_len))
        .collect();
    if ranges.is_empty() {
        // RFC 9110 §14.1.1: a range set is unsatisfiable when no range-spec in it is.
        return RangeOutcome::Unsatisfiable;
    }
    coalesce(&mut ranges);
    match <[ByteRange; 1]>::try_from(ranges) {
        Ok([single]) => RangeOutcome::Single(single),
        Err(many) => RangeOutcome::Multi(many),
    }
}

/// Parses the header into range-specs; `None` means "ignore the header" (invalid or too many).
fn parse_specs(header: &str, max_ranges: usize) -> Option<Vec<Spec>> {
    let (unit, set) = header.trim_matches(is_ows).split_once('=')?;
    // RFC 9110 §14.1: range units are case-insensitive; §14.2: ignore units we don't know.
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }

    // Pre-pass over the list (RFC 9110 §5.6.1): trim OWS, skip empty elements, count, and pull
    // out `-0` suffixes, which http-range-header 0.4 rejects as a syntax error although they are
    // valid syntax that is merely unsatisfiable. Everything else is rebuilt as a canonical
    // `bytes=a,b,c` for the crate to check digit by digit.
    let mut count = 0usize;
    let mut specs = Vec::new();
    let mut canonical = String::with_capacity(set.len() + 6);
    canonical.push_str("bytes=");
    for element in set.split(',').map(|e| e.trim_matches(is_ows)) {
        if element.is_empty() {
            continue;
        }
        count += 1;
        if count > max_ranges {
            return None;
        }
        if let Some(digits) = element.strip_prefix('-') {
            if !digits.is_empty() && digits.bytes().all(|b| b == b'0') {
                specs.push(Spec::Suffix(0));
                continue;
            }
        }
        if canonical.len() > "bytes=".len() {
            canonical.push(',');
        }
        canonical.push_str(element);
    }
    if count == 0 {
        // `bytes=` or `bytes=,`: range-set needs at least one element.
        return None;
    }

    if count == specs.len() {
        return Some(specs);
    }
    let parsed = http_range_header::parse_range_header(&canonical).ok()?;
    for range in parsed.ranges {
        use http_range_header::{EndPosition, StartPosition};
        let spec = match (range.start, range.end) {
            (StartPosition::Index(first), EndPosition::Index(last)) => {
                // RFC 9110 §14.1.1: a range-spec is invalid if last-pos < first-pos. We check
                // before clamping: the crate's own `validate` clamps first and then reports
                // past-EOF ranges as "reversed", losing the difference between 200 and 416.
                if last < first {
                    return None;
                }
                Spec::From {
                    first,
                    last: Some(last),
                }
            }
            (StartPosition::Index(first), EndPosition::LastByte) => {
                Spec::From { first, last: None }
            }
            (StartPosition::FromLast(n), _) => Spec::Suffix(n),
        };
        specs.push(spec);
    }
    Some(specs)
}

/// Optional whitespace (RFC 9110 §5.6.3): space and horizontal tab.
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The part of `spec` inside a file of `file_len` bytes, if any (RFC 9110 §14.1.1).
fn satisfiable(spec: Spec, file_len: u64) -> Option<ByteRange> {
    let last_byte = file_len.checked_sub(1)?; // a 0-byte file satisfies nothing
    match spec {
        Spec::From { first, last } => (first < file_len).then(|| ByteRange {
            start: first,
            end_inclusive: last.map_or(last_byte, |l| l.min(last_byte)),
        }),
        // `-0` is unsatisfiable; a suffix longer than the file is the whole file.
        Spec::Suffix(n) => (n > 0).then(|| ByteRange {
            start: file_len.saturating_sub(n),
            end_inclusive: last_byte,
        }),
    }
}

/// Sorts and merges overlapping or adjacent ranges in place.
fn coalesce(ranges: &mut Vec<ByteRange>) {
    ranges.sort_unstable_by_key(|r| (r.start, r.end_inclusive));
    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match merged.last_mut() {
            // `end_inclusive < file_len <= u64::MAX`, so `+ 1` cannot overflow.
            Some(prev) if r.start <= prev.end_inclusive.saturating_add(1) => {
                prev.end_inclusive = prev.end_inclusive.max(r.end_inclusive);
            }
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}

/// `Content-Range` value for a 206 part: `bytes a-b/len` (RFC 9110 §14.4).
pub fn content_range(r: &ByteRange, len: u64) -> String {
    format!("bytes {}-{}/{}", r.start, r.end_inclusive, len)
}

/// `Content-Range` value for a 416: `bytes */len` (RFC 9110 §14.4, §15.5.17).
pub fn unsatisfied_content_range(len: u64) -> String {
    format!("bytes */{len}")
}

/// Longest boundary RFC 2046 §5.1.1 allows.
const MAX_BOUNDARY_LEN: usize = 70;
const BOUNDARY_PREFIX: &str = "sluice";

/// A multipart boundary made from `seed`: `sluice` followed by the hex of up to 32 seed bytes.
///
/// Pass fresh random bytes (16 or more) for each response: a predictable boundary (say, derived
/// from the ETag) lets whoever uploaded the file plant the delimiter inside it and confuse
/// clients that split parts by searching for the boundary. An empty seed gives `sluice`.
pub fn boundary_from(seed: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let take = (MAX_BOUNDARY_LEN - BOUNDARY_PREFIX.len()) / 2;
    let mut out = String::with_capacity(MAX_BOUNDARY_LEN);
    out.push_str(BOUNDARY_PREFIX);
    for b in seed.iter().take(take) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// Why a [`MultipartPlan`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultipartError {
    /// Boundary empty, longer than 70 bytes, or not made of the RFC 2046 `bchars` that are also
    /// token characters (ASCII letters, digits and `'+_-.`).
    InvalidBoundary,
    /// The part `Content-Type` is not a valid header value.
    InvalidContentType,
    /// No ranges were given.
    NoRanges,
    /// A range is reversed or reaches past the end of the file.
    RangeOutOfBounds,
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidBoundary => "invalid multipart boundary",
            Self::InvalidContentType => "invalid part content type",
            Self::NoRanges => "multipart plan needs at least one range",
            Self::RangeOutOfBounds => "range outside the file",
        })
    }
}

impl std::error::Error for MultipartError {}

/// One part of a `multipart/byteranges` body: its header bytes, then the file bytes of `range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `\r\n--BOUNDARY\r\nContent-Type: ...\r\nContent-Range: bytes a-b/len\r\n\r\n`.
    pub header: Vec<u8>,
    /// The file bytes to send right after `header`.
    pub range: ByteRange,
}

/// The exact layout of a `multipart/byteranges` body (RFC 9110 §14.6), computed up front.
///
/// Send, in order, for each part `part.header` then the file bytes of `part.range`, and finally
/// [`closing`](Self::closing). The body is then exactly [`total_len`](Self::total_len) bytes,
/// so the response carries a `Content-Length` instead of chunked framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartPlan {
    parts: Vec<Part>,
    closing: Vec<u8>,
    boundary: String,
    total_len: u64,
}

impl MultipartPlan {
    /// Plans a body for `ranges` of a file of `file_len` bytes whose parts have `content_type`.
    ///
    /// `ranges` are used in the given order (those from [`resolve`] are already sorted and
    /// coalesced). `boundary` must follow RFC 2046 §5.1.1 (see [`boundary_from`]).
    pub fn new(
        ranges: &[ByteRange],
        file_len: u64,
        content_type: &str,
        boundary: &str,
    ) -> Result<Self, MultipartError> {
        if !is_valid_boundary(boundary) {
            return Err(MultipartError::InvalidBoundary);
        }
        // Rejects CR, LF and other controls, so nothing can be injected into the part headers.
        if http::HeaderValue::from_str(content_type).is_err() || content_type.is_empty() {
            return Err(MultipartError::InvalidContentType);
        }
        if ranges.is_empty() {
            return Err(MultipartError::NoRanges);
        }
        let mut parts = Vec::with_capacity(ranges.len());
        let mut total_len: u64 = 0;
        for range in ranges {
            if range.start > range.end_inclusive || range.end_inclusive >= file_len {
                return Err(MultipartError::RangeOutOfBounds);
            }
            let header = format!(
                "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: {}\r\n\r\n",
                content_range(range, file_len)
            )
            .into_bytes();
            total_len = total_len
                .saturating_add(header.len() as u64)
                .saturating_add(range.len());
            parts.push(Part {
                header,
                range: *range,
            });
        }
        let closing = format!("\r\n--{boundary}--\r\n").into_bytes();
        total_len = total_len.saturating_add(closing.len() as u64);
        Ok(Self {
            parts,
            closing,
            boundary: boundary.to_owned(),
            total_len,
        })
    }

    /// The parts, in the order they are to be sent.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The closing delimiter `\r\n--BOUNDARY--\r\n`, sent after the last part's bytes.
    pub fn closing(&self) -> &[u8] {
        &self.closing
    }

    /// The boundary, as given.
    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// The response `Content-Type`: `multipart/byteranges; boundary=BOUNDARY`.
    pub fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary)
    }

    /// Exact body length in bytes: the response's `Content-Length`.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }
}

/// RFC 2046 §5.1.1: 1 to 70 `bchars`, not ending in a space. We also refuse characters that
/// would need quoting in the `boundary=` parameter, since [`MultipartPlan::content_type`] does
/// not quote it.
fn is_valid_boundary(boundary: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"'+_-.".contains(&b);
    (1..=MAX_BOUNDARY_LEN).contains(&boundary.len()) && boundary.bytes().all(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 16;

    fn r(start: u64, end_inclusive: u64) -> ByteRange {
        ByteRange {
            start,
            end_inclusive,
        }
    }

    fn res(header: &str, len: u64) -> RangeOutcome {
        resolve(Some(header), len, MAX)
    }

    // ---- RFC 9110 §14.1.1 forms -------------------------------------------------------------

    #[test]
    fn no_range_header_serves_full() {
        assert_eq!(resolve(None, 100, MAX), RangeOutcome::Full);
    }

    #[test]
    fn closed_range_is_single() {
        assert_eq!(res("bytes=0-499", 10_000), RangeOutcome::Single(r(0, 499)));
        assert_eq!(
            res("bytes=500-999", 10_000),
            RangeOutcome::Single(r(500, 999))
        );
    }

    #[test]
    fn safari_probe_zero_to_one_is_single() {
        assert_eq!(res("bytes=0-1", 10), RangeOutcome::Single(r(0, 1)));
    }

    #[test]
    fn open_ended_range_runs_to_eof() {
        // Chrome's `<video>` first request and `curl -C -` / `wget -c` resumes.
        assert_eq!(res("bytes=0-", 10), RangeOutcome::Single(r(0, 9)));
        assert_eq!(res("bytes=7-", 10), RangeOutcome::Single(r(7, 9)));
        assert_eq!(res("bytes=9-", 10), RangeOutcome::Single(r(9, 9)));
    }

    #[test]
    fn suffix_range_is_last_n_bytes() {
        assert_eq!(res("bytes=-3", 10), RangeOutcome::Single(r(7, 9)));
        assert_eq!(res("bytes=-10", 10), RangeOutcome::Single(r(0, 9)));
    }

    #[test]
    fn suffix_longer_than_file_serves_whole_file() {
        assert_eq!(res("bytes=-500", 10), RangeOutcome::Single(r(0, 9)));
        assert_eq!(
            res("bytes=-18446744073709551615", 10),
            RangeOutcome::Single(r(0, 9))
        );
    }

    #[test]
    fn end_past_eof_is_clamped() {
        assert_eq!(res("bytes=5-500", 10), RangeOutcome::Single(r(5, 9)));
        assert_eq!(
            res("bytes=0-18446744073709551615", 10),
            RangeOutcome::Single(r(0, 9))
        );
    }

    // ---- invalid → ignore the header (200) ---------------------------------------------------

    #[test]
    fn reversed_range_is_invalid_and_ignored() {
        assert_eq!(res("bytes=5-2", 10), RangeOutcome::Full);
        // Reversed *and* past EOF is still invalid, not unsatisfiable.
        assert_eq!(res("bytes=50-20", 10), RangeOutcome::Full);
        // One invalid spec spoils the whole set.
        assert_eq!(res("bytes=0-1,5-2", 10), RangeOutcome::Full);
        assert_eq!(res("bytes=5-2", 0), RangeOutcome::Full);
    }

    #[test]
    fn non_bytes_unit_is_ignored() {
        assert_eq!(res("items=0-5", 10), RangeOutcome::Full);
        assert_eq!(res("bits=0-5", 10), RangeOutcome::Full);
        assert_eq!(res("0-5", 10), RangeOutcome::Full);
    }

    #[test]
    fn range_unit_is_case_insensitive() {
        assert_eq!(res("Bytes=0-1", 10), RangeOutcome::Single(r(0, 1)));
        assert_eq!(res("BYTES=0-1", 10), RangeOutcome::Single(r(0, 1)));
    }

    #[test]
    fn malformed_syntax_is_ignored() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=a-b",
            "bytes=1",
            "bytes=1-2-3",
            "bytes=--1",
            "bytes=+1-2",
            "bytes=-1-2",
            "bytes=1-+2",
            "bytes=0x10-20",
            "bytes=1 -2",
            "bytes=1- 2",
            "bytes=0-1;2-3",
            "bytes=0-1,bytes=2-3",
            "bytes==0-1",
            "bytes=0-99999999999999999999",
            "bytes=99999999999999999999-",
            "bytes=1-2,x",
            "bytes=１-2",
        ] {
            assert_eq!(res(h, 10), RangeOutcome::Full, "{h:?}");
        }
    }

    #[test]
    fn leading_zeros_are_ignored_like_http_range_header_does() {
        // Valid per the ABNF (1*DIGIT), rejected by http-range-header 0.4; 200 is still correct.
        assert_eq!(res("bytes=00-5", 10), RangeOutcome::Full);
        assert_eq!(res("bytes=0-05", 10), RangeOutcome::Full);
        assert_eq!(res("bytes=-05", 10), RangeOutcome::Full);
    }

    #[test]
    fn whitespace_around_commas_and_empty_elements_are_accepted() {
        // RFC 9110 §5.6.1 list syntax.
        let want = RangeOutcome::Multi(vec![r(0, 1), r(4, 5)]);
        assert_eq!(res("bytes=0-1, 4-5", 10), want);
        assert_eq!(res("bytes=0-1 ,\t4-5", 10), want);
        assert_eq!(res("bytes=0-1,,4-5,", 10), want);
        assert_eq!(res(" bytes=0-1,4-5 ", 10), want);
        assert_eq!(res("bytes= 0-1,4-5", 10), want);
    }

    // ---- unsatisfiable (416) -----------------------------------------------------------------

    #[test]
    fn zero_suffix_is_unsatisfiable() {
        assert_eq!(res("bytes=-0", 10), RangeOutcome::Unsatisfiable);
        assert_eq!(res("bytes=-00", 10), RangeOutcome::Unsatisfiable);
        assert_eq!(res("bytes=-0,-0", 10), RangeOutcome::Unsatisfiable);
    }

    #[test]
    fn start_at_file_len_is_unsatisfiable() {
        assert_eq!(res("bytes=10-", 10), RangeOutcome::Unsatisfiable);
        assert_eq!(res("bytes=10-20", 10), RangeOutcome::Unsatisfiable);
        assert_eq!(res("bytes=11-11", 10), RangeOutcome::Unsatisfiable);
    }

    #[test]
    fn zero_byte_file_any_valid_range_is_unsatisfiable() {
        for h in [
            "bytes=0-",
            "bytes=0-0",
            "bytes=0-10",
            "bytes=-1",
            "bytes=-0",
        ] {
            assert_eq!(res(h, 0), RangeOutcome::Unsatisfiable, "{h:?}");
        }
        assert_eq!(res("bytes=0-,-5", 0), RangeOutcome::Unsatisfiable);
    }

    #[test]
    fn unsatisfiable_specs_next_to_satisfiable_ones_are_dropped() {
        assert_eq!(res("bytes=-0,2-3", 10), RangeOutcome::Single(r(2, 3)));
        assert_eq!(res("bytes=20-30,2-3", 10), RangeOutcome::Single(r(2, 3)));
        assert_eq!(
            res("bytes=0-0,20-,-0,8-", 10),
            RangeOutcome::Multi(vec![r(0, 0), r(8, 9)])
        );
    }

    // ---- several ranges ----------------------------------------------------------------------

    #[test]
    fn disjoint_ranges_are_multi_and_sorted() {
        assert_eq!(
            res("bytes=8-9,0-1,4-5", 10),
            RangeOutcome::Multi(vec![r(0, 1), r(4, 5), r(8, 9)])
        );
    }

    #[test]
    fn overlapping_ranges_are_coalesced() {
        assert_eq!(
            res("bytes=0-5,3-7,20-30", 100),
            RangeOutcome::Multi(vec![r(0, 7), r(20, 30)])
        );
        assert_eq!(
            res("bytes=0-50,10-20,60-70", 100),
            RangeOutcome::Multi(vec![r(0, 50), r(60, 70)])
        );
    }

    #[test]
    fn adjacent_ranges_are_coalesced() {
        assert_eq!(
            res("bytes=0-4,5-9,20-30", 100),
            RangeOutcome::Multi(vec![r(0, 9), r(20, 30)])
        );
    }

    #[test]
    fn ranges_coalescing_into_one_are_single_not_multipart() {
        assert_eq!(res("bytes=0-4,5-9", 10), RangeOutcome::Single(r(0, 9)));
        assert_eq!(res("bytes=0-1,0-1", 10), RangeOutcome::Single(r(0, 1)));
        assert_eq!(res("bytes=-5,0-", 10), RangeOutcome::Single(r(0, 9)));
        assert_eq!(res("bytes=2-3,-100", 10), RangeOutcome::Single(r(0, 9)));
    }

    #[test]
    fn more_than_max_ranges_serves_full() {
        // Counted as written, before coalescing: three identical ranges are three.
        assert_eq!(
            resolve(Some("bytes=0-1,0-1,0-1"), 10, 2),
            RangeOutcome::Full
        );
        assert_eq!(
            resolve(Some("bytes=0-1,4-5"), 10, 2),
            RangeOutcome::Multi(vec![r(0, 1), r(4, 5)])
        );
        // `-0` counts too; empty list elements do not.
        assert_eq!(resolve(Some("bytes=0-1,-0,4-5"), 10, 2), RangeOutcome::Full);
        assert_eq!(
            resolve(Some("bytes=0-1,,,4-5"), 10, 2),
            RangeOutcome::Multi(vec![r(0, 1), r(4, 5)])
        );
        let many = format!("bytes={}", vec!["0-0"; 10_000].join(","));
        assert_eq!(resolve(Some(&many), 10, 100), RangeOutcome::Full);
    }

    #[test]
    fn max_ranges_zero_disables_ranges() {
        assert_eq!(resolve(Some("bytes=0-1"), 10, 0), RangeOutcome::Full);
    }

    // ---- header values -----------------------------------------------------------------------

    #[test]
    fn content_range_formats_inclusive_bounds_and_length() {
        assert_eq!(content_range(&r(0, 499), 1234), "bytes 0-499/1234");
        assert_eq!(content_range(&r(9, 9), 10), "bytes 9-9/10");
    }

    #[test]
    fn unsatisfied_content_range_is_star_slash_len() {
        assert_eq!(unsatisfied_content_range(0), "bytes */0");
        assert_eq!(unsatisfied_content_range(1234), "bytes */1234");
    }

    #[test]
    fn byte_range_len_is_inclusive() {
        assert_eq!(r(0, 0).len(), 1);
        assert_eq!(r(5, 9).len(), 5);
        assert!(!r(5, 9).is_empty());
        assert!(r(9, 5).is_empty());
    }

    // ---- multipart ---------------------------------------------------------------------------

    #[test]
    fn boundary_from_seed_is_hex_and_at_most_70_chars() {
        assert_eq!(boundary_from(&[0x00, 0xab, 0xff]), "sluice00abff");
        assert_eq!(boundary_from(&[]), "sluice");
        let long = boundary_from(&[0x5a; 100]);
        assert_eq!(long.len(), 70);
        assert!(is_valid_boundary(&long));
    }

    #[test]
    fn multipart_plan_lays_out_parts_exactly() {
        let plan =
            MultipartPlan::new(&[r(0, 1), r(5, 7)], 10, "text/plain", "B0UND").expect("plan");
        assert_eq!(plan.parts().len(), 2);
        assert_eq!(
            plan.parts()[0].header,
            b"\r\n--B0UND\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n"
        );
        assert_eq!(
            plan.parts()[1].header,
            b"\r\n--B0UND\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-7/10\r\n\r\n"
        );
        assert_eq!(plan.closing(), b"\r\n--B0UND--\r\n");
        assert_eq!(plan.content_type(), "multipart/byteranges; boundary=B0UND");
        let file = b"0123456789";
        let mut body = Vec::new();
        for part in plan.parts() {
            body.extend_from_slice(&part.header);
            body.extend_from_slice(
                &file[part.range.start as usize..=part.range.end_inclusive as usize],
            );
        }
        body.extend_from_slice(plan.closing());
        assert_eq!(
            body,
            b"\r\n--B0UND\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\
              \r\n--B0UND\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-7/10\r\n\r\n567\
              \r\n--B0UND--\r\n"
        );
        assert_eq!(plan.total_len(), body.len() as u64);
    }

    #[test]
    fn multipart_plan_rejects_bad_input() {
        let ok = [r(0, 1)];
        assert_eq!(
            MultipartPlan::new(&ok, 10, "text/plain", ""),
            Err(MultipartError::InvalidBoundary)
        );
        assert_eq!(
            MultipartPlan::new(&ok, 10, "text/plain", "a b"),
            Err(MultipartError::InvalidBoundary)
        );
        assert_eq!(
            MultipartPlan::new(&ok, 10, "text/plain", "a\r\nX"),
            Err(MultipartError::InvalidBoundary)
        );
        assert_eq!(
            MultipartPlan::new(&ok, 10, "text/plain", &"a".repeat(71)),
            Err(MultipartError::InvalidBoundary)
        );
        assert_eq!(
            MultipartPlan::new(&ok, 10, "text/plain\r\nX-Evil: 1", "b"),
            Err(MultipartError::InvalidContentType)
        );
        assert_eq!(
            MultipartPlan::new(&ok, 10, "", "b"),
            Err(MultipartError::InvalidContentType)
        );
        assert_eq!(
            MultipartPlan::new(&[], 10, "text/plain", "b"),
            Err(MultipartError::NoRanges)
        );
        assert_eq!(
            MultipartPlan::new(&[r(5, 10)], 10, "text/plain", "b"),
            Err(MultipartError::RangeOutOfBounds)
        );
        assert_eq!(
            MultipartPlan::new(&[r(5, 4)], 10, "text/plain", "b"),
            Err(MultipartError::RangeOutOfBounds)
        );
    }

    // ---- property tests ----------------------------------------------------------------------

    #[derive(Debug, Clone)]
    enum GenSpec {
        Closed(u64, u64),
        Open(u64),
        Suffix(u64),
    }

    impl GenSpec {
        fn render(&self) -> String {
            match self {
                GenSpec::Closed(a, b) => format!("{a}-{b}"),
                GenSpec::Open(a) => format!("{a}-"),
                GenSpec::Suffix(n) => format!("-{n}"),
            }
        }

        /// The clamped bytes this spec selects in a file of `len` bytes, as a half-open range.
        fn clamped(&self, len: u64) -> std::ops::Range<u64> {
            match *self {
                GenSpec::Closed(a, b) => a.min(len)..(b.saturating_add(1)).min(len),
                GenSpec::Open(a) => a.min(len)..len,
                GenSpec::Suffix(n) => len.saturating_sub(n)..len,
            }
        }
    }

    fn gen_spec() -> impl Strategy<Value = GenSpec> {
        prop_oneof![
            (0u64..12_000, 0u64..3_000).prop_map(|(a, d)| GenSpec::Closed(a, a + d)),
            (0u64..12_000).prop_map(GenSpec::Open),
            (0u64..12_000).prop_map(GenSpec::Suffix),
            // Small values, so that ranges collide, touch and hit the edges often.
            (0u64..20, 0u64..20).prop_map(|(a, d)| GenSpec::Closed(a, a + d)),
            (0u64..20).prop_map(GenSpec::Suffix),
        ]
    }

    fn header_for(specs: &[GenSpec], sep: &str) -> String {
        let list: Vec<String> = specs.iter().map(GenSpec::render).collect();
        format!("bytes={}", list.join(sep))
    }

    fn bytes_covered(ranges: &[ByteRange], len: u64) -> Vec<bool> {
        let mut covered = vec![false; len as usize];
        for r in ranges {
            for b in r.start..=r.end_inclusive {
                covered[b as usize] = true;
            }
        }
        covered
    }

    fn build_body(file: &[u8], plan: &MultipartPlan) -> Vec<u8> {
        let mut body = Vec::new();
        for part in plan.parts() {
            body.extend_from_slice(&part.header);
            body.extend_from_slice(
                &file[part.range.start as usize..=part.range.end_inclusive as usize],
            );
        }
        body.extend_from_slice(plan.closing());
        body
    }

    /// Polls a future that needs no I/O to completion (the multipart body is all in memory).
    fn block_on<F: std::future::Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..1_000_000 {
            if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
        }
        panic!("future did not complete");
    }

    /// Parses a `multipart/byteranges` body with `multer` (an independent parser) into
    /// `(Content-Type, Content-Range, bytes)` per part.
    fn parse_with_multer(body: Vec<u8>, boundary: &str) -> Vec<(String, String, Vec<u8>)> {
        let stream = futures_util::stream::once(async move {
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(body))
        });
        let mut multipart = multer::Multipart::new(stream, boundary);
        block_on(async move {
            let mut parts = Vec::new();
            while let Some(field) = multipart.next_field().await.expect("multer: next field") {
                let header = |name: &str| {
                    field
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let ct = header("content-type");
                let cr = header("content-range");
                let data = field.bytes().await.expect("multer: field bytes");
                parts.push((ct, cr, data.to_vec()));
            }
            parts
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn resolved_ranges_are_in_file_sorted_disjoint_and_cover_the_request(
            len in 0u64..10_000,
            specs in prop::collection::vec(gen_spec(), 1..8),
            spaced in any::<bool>(),
        ) {
            let header = header_for(&specs, if spaced { ", " } else { "," });
            let outcome = resolve(Some(&header), len, MAX);

            let mut expected = vec![false; len as usize];
            for spec in &specs {
                for b in spec.clamped(len) {
                    expected[b as usize] = true;
                }
            }
            let any_expected = expected.iter().any(|&b| b);

            let ranges = match outcome {
                RangeOutcome::Full => {
                    return Err(TestCaseError::fail(format!("valid header {header:?} ignored")));
                }
                RangeOutcome::Unsatisfiable => {
                    prop_assert!(!any_expected, "{header:?} len {len}: 416 but bytes were requested");
                    return Ok(());
                }
                RangeOutcome::Single(r) => vec![r],
                RangeOutcome::Multi(rs) => {
                    prop_assert!(rs.len() >= 2, "Multi with one range");
                    rs
                }
            };
            for r in &ranges {
                prop_assert!(r.start <= r.end_inclusive && r.end_inclusive < len, "{r:?} len {len}");
            }
            for w in ranges.windows(2) {
                // Sorted, non-overlapping and non-adjacent: a gap of at least one byte.
                prop_assert!(w[0].end_inclusive + 1 < w[1].start, "{:?}", w);
            }
            prop_assert_eq!(bytes_covered(&ranges, len), expected);
        }

        #[test]
        fn a_reversed_spec_anywhere_ignores_the_header(
            len in 0u64..10_000,
            specs in prop::collection::vec(gen_spec(), 0..5),
            a in 1u64..12_000,
            d in 1u64..100,
            at in 0usize..5,
        ) {
            let mut rendered: Vec<String> = specs.iter().map(GenSpec::render).collect();
            let at = at.min(rendered.len());
            rendered.insert(at, format!("{}-{}", a, a.saturating_sub(d)));
            let header = format!("bytes={}", rendered.join(","));
            prop_assert_eq!(resolve(Some(&header), len, MAX), RangeOutcome::Full);
        }

        #[test]
        fn arbitrary_header_never_panics(header in ".{0,64}", len in 0u64..100) {
            let _ = resolve(Some(&header), len, MAX);
            let _ = resolve(Some(&format!("bytes={header}")), len, MAX);
        }

        #[test]
        fn multipart_body_has_total_len_and_parses_back(
            content in prop::collection::vec(any::<u8>(), 1..3_000),
            specs in prop::collection::vec(gen_spec(), 1..8),
            seed in prop::collection::vec(any::<u8>(), 16),
        ) {
            let len = content.len() as u64;
            let header = header_for(&specs, ",");
            let ranges = match resolve(Some(&header), len, MAX) {
                RangeOutcome::Single(r) => vec![r],
                RangeOutcome::Multi(rs) => rs,
                _ => return Ok(()),
            };
            let boundary = boundary_from(&seed);
            let plan = MultipartPlan::new(&ranges, len, "application/octet-stream", &boundary)
                .expect("plan");
            let body = build_body(&content, &plan);
            prop_assert_eq!(body.len() as u64, plan.total_len());

            let parts = parse_with_multer(body, &boundary);
            prop_assert_eq!(parts.len(), ranges.len());
            for ((ct, cr, data), r) in parts.iter().zip(&ranges) {
                prop_assert_eq!(ct, "application/octet-stream");
                prop_assert_eq!(cr, &format!("bytes {}-{}/{}", r.start, r.end_inclusive, len));
                prop_assert_eq!(
                    &data[..],
                    &content[r.start as usize..=r.end_inclusive as usize]
                );
            }
        }
    }
}
