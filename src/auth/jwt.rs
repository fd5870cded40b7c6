//! Prosody mod_http_file_share tokens (protocols.md §1.3): HS256 compact JWS verified with the
//! `jsonwebtoken` crate. Pure: token in, claims out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

/// The claims Prosody puts in an upload slot token.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SlotClaims {
    /// Uploader's bare JID.
    #[serde(default)]
    pub sub: Option<String>,
    pub slot: String,
    pub filename: String,
    pub filesize: u64,
    #[serde(default)]
    pub filetype: Option<String>,
    pub exp: u64,
    #[serde(default)]
    pub iat: Option<u64>,
    /// File expiry (later Prosody versions).
    #[serde(default)]
    pub expires: Option<u64>,
}

/// Verify signature and expiry (with `skew`) and return the claims.
pub fn verify(token: &str, secret: &[u8], skew: Duration, now: SystemTime) -> Option<SlotClaims> {
    let mut v = Validation::new(Algorithm::HS256);
    // We check `exp` ourselves against `now` so tests and callers control the clock.
    v.validate_exp = false;
    v.required_spec_claims.clear();
    v.validate_aud = false;
    let data = decode::<SlotClaims>(token, &DecodingKey::from_secret(secret), &v).ok()?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now > data.claims.exp.saturating_add(skew.as_secs()) {
        return None;
    }
    Some(data.claims)
}

/// Test helper: a token shaped like Prosody's.
#[cfg(test)]
pub fn sign_for_tests(secret: &[u8], slot: &str, filename: &str, size: u64, exp: u64) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let claims = SlotClaims {
        sub: Some("user@example.com".into()),
        slot: slot.into(),
        filename: filename.into(),
        filesize: size,
        filetype: Some("text/plain".into()),
        exp,
        iat: Some(exp.saturating_sub(300)),
        expires: None,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_alg_none_rejected() {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let t = sign_for_tests(b"k", "s", "f", 3, exp);
        let c = verify(&t, b"k", Duration::ZERO, SystemTime::now()).unwrap();
        assert_eq!(
            (c.slot.as_str(), c.filename.as_str(), c.filesize),
            ("s", "f", 3)
        );
        // alg=none with the same payload must not verify.
        let parts: Vec<&str> = t.split('.').collect();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        let forged = format!("{none_header}.{}.", parts[1]);
        assert!(verify(&forged, b"k", Duration::ZERO, SystemTime::now()).is_none());
    }
}
