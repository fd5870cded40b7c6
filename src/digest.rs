//! RFC 9530 integrity fields (pure): a client's `Content-Digest` / `Repr-Digest` on an upload
//! parsed into claims Sluice can check, and the `Repr-Digest` value Sluice sends.
//!
//! Sluice hashes every upload with SHA-256 while streaming, so a `sha-256` claim costs
//! nothing; `sha-512` is computed only when a client asks for it. Other algorithms (and the
//! deprecated insecure ones of RFC 9530 §5) are ignored, as §2 allows: a field naming only
//! those is as good as no field. A field that is not a valid structured-field dictionary of
//! byte sequences (RFC 9651) is refused with 400.

use base64::Engine as _;
use sfv::{BareItem, Dictionary, ListEntry, Parser};

/// Algorithms Sluice verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Sha256,
    Sha512,
}

/// One digest a client claims for what it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub algo: Algo,
    pub value: Vec<u8>,
}

/// Why a digest field is refused (400, with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("{0} is not a valid digest field (RFC 9530: a dictionary like sha-256=:base64:)")]
    Malformed(&'static str),
    #[error("{0} {1} has the wrong length")]
    WrongLength(&'static str, &'static str),
}

/// What `Want-Repr-Digest` / `Want-Content-Digest` advertise (RFC 9530 §4): sha-256 preferred.
pub const WANTED: &str = "sha-256=10, sha-512=3";

/// The claims of one field value (`field` names it in errors).
pub fn parse(field: &'static str, value: &[u8]) -> Result<Vec<Claim>, DigestError> {
    let dict: Dictionary = Parser::new(value)
        .parse_dictionary()
        .map_err(|_| DigestError::Malformed(field))?;
    let mut out = Vec::new();
    for (key, entry) in &dict {
        let (algo, name, len) = match key.as_str() {
            "sha-256" => (Algo::Sha256, "sha-256", 32),
            "sha-512" => (Algo::Sha512, "sha-512", 64),
            _ => continue,
        };
        let ListEntry::Item(item) = entry else {
            return Err(DigestError::Malformed(field));
        };
        let BareItem::ByteSequence(bytes) = &item.bare_item else {
            return Err(DigestError::Malformed(field));
        };
        if bytes.len() != len {
            return Err(DigestError::WrongLength(field, name));
        }
        out.push(Claim {
            algo,
            value: bytes.clone(),
        });
    }
    Ok(out)
}

/// Claims of every `name` field line of a request (several lines form one dictionary).
pub fn from_headers(
    headers: &http::HeaderMap,
    name: &'static str,
) -> Result<Vec<Claim>, DigestError> {
    let mut out = Vec::new();
    for v in headers.get_all(name) {
        out.extend(parse(name, v.as_bytes())?);
    }
    Ok(out)
}

/// Claims about a whole upload sent in one request with no content coding: there the content
/// and the representation are the same bytes, so `Content-Digest` and `Repr-Digest` both
/// describe the file (RFC 9530 §2, §3).
pub fn whole_upload_claims(headers: &http::HeaderMap) -> Result<Vec<Claim>, DigestError> {
    let mut claims = from_headers(headers, "content-digest")?;
    claims.extend(from_headers(headers, "repr-digest")?);
    Ok(claims)
}

/// Whether every claim matches: `sha256` is the file's SHA-256, `sha512` its SHA-512 when one
/// was computed (a sha-512 claim without one fails).
pub fn all_match(claims: &[Claim], sha256: &[u8], sha512: Option<&[u8]>) -> bool {
    claims.iter().all(|c| match c.algo {
        Algo::Sha256 => c.value == sha256,
        Algo::Sha512 => sha512 == Some(c.value.as_slice()),
    })
}

/// The `Repr-Digest` value for a stored file's SHA-256 (lowercase hex).
pub fn repr_digest(sha256_hex: &str) -> Option<String> {
    // Decoded into a fixed array and encoded into one preallocated string: this runs on every
    // download response.
    let mut raw = [0u8; 32];
    hex::decode_to_slice(sha256_hex, &mut raw).ok()?;
    let mut out = String::with_capacity(56);
    out.push_str("sha-256=:");
    base64::engine::general_purpose::STANDARD.encode_string(raw, &mut out);
    out.push(':');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // SHA-256 and SHA-512 of "hello" (RFC 9530 Appendix B uses {"hello": "world"}; any known
    // value serves).
    const HELLO_256: &str = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
    const HELLO_512: &str =
        "m3HSJL1i83hdltRq0+o9czGb+8KJDKra4t/3JRlnPKcjI8PZm6XBHXx6zG4UuMXaDEZjR1wuXDre9G9zvN7AQw==";

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    #[test]
    fn sha256_and_sha512_claims_parse() {
        let v = format!("sha-256=:{HELLO_256}:, sha-512=:{HELLO_512}:");
        let c = parse("content-digest", v.as_bytes()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].algo, Algo::Sha256);
        assert_eq!(c[0].value, b64(HELLO_256));
        assert_eq!(c[1].algo, Algo::Sha512);
    }

    #[test]
    fn unknown_and_insecure_algorithms_are_ignored() {
        let c = parse(
            "repr-digest",
            b"md5=:XUFAKrxLKna5cZ2REBfFkg==:, unixsum=:AAA=:",
        )
        .unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn malformed_fields_are_refused() {
        assert!(matches!(
            parse("content-digest", b"sha-256=abc"),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            parse("content-digest", b"sha-256=:not base64!:"),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            parse("content-digest", b"sha-256=:AAAA:"),
            Err(DigestError::WrongLength(_, "sha-256"))
        ));
        assert!(matches!(
            parse("content-digest", b"sha-256=(:AAAA:)"),
            Err(DigestError::Malformed(_))
        ));
    }

    #[test]
    fn matching_needs_every_claim() {
        let claims = parse(
            "content-digest",
            format!("sha-256=:{HELLO_256}:").as_bytes(),
        )
        .unwrap();
        assert!(all_match(&claims, &b64(HELLO_256), None));
        assert!(!all_match(&claims, &[0u8; 32], None));
        let claims = parse(
            "content-digest",
            format!("sha-512=:{HELLO_512}:").as_bytes(),
        )
        .unwrap();
        assert!(!all_match(&claims, &b64(HELLO_256), None));
        assert!(all_match(&claims, &b64(HELLO_256), Some(&b64(HELLO_512))));
        assert!(all_match(&[], &[0u8; 32], None));
    }

    #[test]
    fn repr_digest_is_base64_of_the_raw_hash() {
        let hex = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(repr_digest(hex).unwrap(), format!("sha-256=:{HELLO_256}:"));
    }
}
