//! Upload grants: who may PUT what.
//!
//! Owns the key ring and the decision for every grant mode of protocols.md §1: `v`, `v2`,
//! `token`, `v3` (HMAC over the signed path) and the Prosody mod_http_file_share JWT (Bearer).
//! Must not: log MACs, tokens, query strings or secrets; look at the body; touch storage.

pub mod jwt;
pub mod mac;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{AuthMode, Key};

/// What a request presents for authorisation, already parsed by the router.
#[derive(Debug, Clone, Copy)]
pub struct GrantRequest<'a> {
    pub method: &'a str,
    /// Percent-decoded path with the URL prefix and leading `/` removed.
    pub path: &'a str,
    /// Raw query string (never logged).
    pub query: Option<&'a str>,
    /// The declared body length (the signed size).
    pub content_length: u64,
    pub content_type: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub now: SystemTime,
}

/// A verified grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub mode: AuthMode,
    pub key_id: String,
    /// The uploader's bare JID, known in JWT mode only.
    pub uploader: Option<String>,
    /// The content type the grant signs (`v2`/`token`: the candidate that matched the MAC;
    /// JWT: the `filetype` claim). The file is stored and served with this type, never with
    /// an unsigned header that merely came along.
    pub content_type: Option<String>,
    /// When the uploaded file should expire, if the grant says (the JWT `expires` claim of
    /// newer Prosody versions).
    pub file_expires: Option<u64>,
}

/// Why a grant was refused. `reason()` is a closed set used as a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing upload signature (v, v2, token or v3 query parameter)")]
    Missing,
    #[error("upload signature does not match")]
    BadMac,
    #[error("upload signature has expired")]
    Expired,
    #[error("v3 signature requires a numeric expires parameter")]
    BadExpires,
    #[error("grant mode {0} is disabled on this server")]
    ModeDisabled(&'static str),
    #[error("missing or malformed bearer token")]
    BearerMissing,
    #[error("bearer token is invalid or expired")]
    BearerInvalid,
    #[error("token slot or filename does not match the upload path")]
    SlotMismatch,
    #[error("Content-Length does not match the token's filesize")]
    SizeMismatch,
}

impl AuthError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::BadMac => "bad_mac",
            AuthError::Expired => "expired",
            AuthError::BadExpires => "bad_expires",
            AuthError::ModeDisabled(_) => "mode_disabled",
            AuthError::BearerMissing => "bearer_missing",
            AuthError::BearerInvalid => "bearer_invalid",
            AuthError::SlotMismatch => "slot_mismatch",
            AuthError::SizeMismatch => "size_mismatch",
        }
    }
}

/// The key ring plus enabled modes.
#[derive(Debug, Clone)]
pub struct Authorizer {
    keys: Vec<Key>,
    modes: Vec<AuthMode>,
    skew: Duration,
}

/// MAC parameters found in a query string.
#[derive(Default)]
struct QueryGrant {
    v: Option<String>,
    v2: Option<String>,
    token: Option<String>,
    v3: Option<String>,
    expires: Option<String>,
}

fn parse_query(query: Option<&str>) -> QueryGrant {
    let mut q = QueryGrant::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "v" => &mut q.v,
            "v2" => &mut q.v2,
            "token" => &mut q.token,
            "v3" => &mut q.v3,
            "expires" => &mut q.expires,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v.into_owned());
        }
    }
    q
}

impl Authorizer {
    pub fn new(keys: Vec<Key>, modes: Vec<AuthMode>, skew: Duration) -> Self {
        Self { keys, modes, skew }
    }

    fn enabled(&self, m: AuthMode) -> bool {
        self.modes.contains(&m)
    }

    /// Whether a request with no grant at all gets 401 with `WWW-Authenticate: Bearer` (JWT
    /// mode is on, so a bearer token is a way in: protocols.md §1.3) rather than 403.
    pub fn challenges_bearer(&self) -> bool {
        self.enabled(AuthMode::Jwt)
    }

    /// Verify the grant of an upload request.
    pub fn authorize(&self, r: &GrantRequest<'_>) -> Result<Grant, AuthError> {
        // Only a Bearer credential selects JWT mode; other schemes (a proxy's or browser's
        // Basic auth) fall through to the query grants.
        if let Some(auth) = r.authorization.filter(|a| is_bearer(a)) {
            if self.enabled(AuthMode::Jwt) {
                return self.authorize_jwt(auth, r);
            }
        }
        let q = parse_query(r.query);
        // Highest mode present wins: v3 > v2 > token > v (protocols.md §1.2, §1.4).
        if let Some(mac) = &q.v3 {
            return self.authorize_v3(mac, q.expires.as_deref(), r);
        }
        let (mode, mac) = if let Some(mac) = &q.v2 {
            (AuthMode::V2, mac)
        } else if let Some(mac) = &q.token {
            (AuthMode::Token, mac)
        } else if let Some(mac) = &q.v {
            (AuthMode::V, mac)
        } else if self.challenges_bearer() {
            return Err(AuthError::BearerMissing);
        } else {
            return Err(AuthError::Missing);
        };
        if !self.enabled(mode) {
            return Err(AuthError::ModeDisabled(mode_name(mode)));
        }
        let signed_types = (mode != AuthMode::V).then(|| v2_content_types(r));
        let candidates: Vec<Vec<u8>> = match &signed_types {
            None => vec![mac::message_v1(r.path, r.content_length)],
            Some(types) => types
                .iter()
                .map(|ct| mac::message_v2(r.path, r.content_length, ct))
                .collect(),
        };
        // Every key and every candidate is checked (no early exit on the secret-dependent
        // comparison itself; the loop bounds are public).
        let mut found: Option<(&Key, usize)> = None;
        for key in &self.keys {
            for (i, msg) in candidates.iter().enumerate() {
                if mac::verify_hex(&key.secret, msg, mac) && found.is_none() {
                    found = Some((key, i));
                }
            }
        }
        match found {
            Some((key, i)) => Ok(Grant {
                mode,
                key_id: key.id.clone(),
                uploader: None,
                content_type: signed_types.and_then(|t| t.into_iter().nth(i)),
                file_expires: None,
            }),
            None => Err(AuthError::BadMac),
        }
    }

    fn authorize_v3(
        &self,
        mac: &str,
        expires: Option<&str>,
        r: &GrantRequest<'_>,
    ) -> Result<Grant, AuthError> {
        if !self.enabled(AuthMode::V3) {
            return Err(AuthError::ModeDisabled("v3"));
        }
        let expires: u64 = expires
            .and_then(|e| e.parse().ok())
            .ok_or(AuthError::BadExpires)?;
        let msg = mac::message_v3(r.method, expires, r.path);
        let key = self
            .keys
            .iter()
            .find(|k| mac::verify_hex(&k.secret, &msg, mac))
            .ok_or(AuthError::BadMac)?;
        // Expiry is checked after the MAC so an attacker learns nothing from timing about
        // whether a forged link would have been fresh.
        let now = r
            .now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if now > expires.saturating_add(self.skew.as_secs()) {
            return Err(AuthError::Expired);
        }
        Ok(Grant {
            mode: AuthMode::V3,
            key_id: key.id.clone(),
            uploader: None,
            content_type: None,
            file_expires: None,
        })
    }

    fn authorize_jwt(&self, authorization: &str, r: &GrantRequest<'_>) -> Result<Grant, AuthError> {
        let token = authorization
            .get(7..)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::BearerMissing)?;
        let (key, claims) = self
            .keys
            .iter()
            .find_map(|k| jwt::verify(token, &k.secret, self.skew, r.now).map(|c| (k, c)))
            .ok_or(AuthError::BearerInvalid)?;
        let (slot, filename) = r.path.split_once('/').unwrap_or((r.path, ""));
        if claims.slot != slot || claims.filename != filename {
            return Err(AuthError::SlotMismatch);
        }
        if claims.filesize != r.content_length {
            return Err(AuthError::SizeMismatch);
        }
        Ok(Grant {
            mode: AuthMode::Jwt,
            key_id: key.id.clone(),
            uploader: claims.sub,
            content_type: claims.filetype,
            file_expires: claims.expires,
        })
    }
}

fn is_bearer(authorization: &str) -> bool {
    authorization
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
}

/// The content types a v2/token MAC may have been computed over (protocols.md §1.2): the PUT's
/// Content-Type, the type guessed from the extension, and `application/octet-stream`.
fn v2_content_types(r: &GrantRequest<'_>) -> Vec<String> {
    let mut out = Vec::with_capacity(3);
    if let Some(ct) = r.content_type {
        out.push(ct.to_owned());
    }
    if let Some(g) = mime_guess::from_path(r.path).first_raw() {
        if !out.iter().any(|c| c == g) {
            out.push(g.to_owned());
        }
    }
    if !out.iter().any(|c| c == "application/octet-stream") {
        out.push("application/octet-stream".to_owned());
    }
    out
}

pub fn mode_name(m: AuthMode) -> &'static str {
    match m {
        AuthMode::V => "v",
        AuthMode::V2 => "v2",
        AuthMode::Token => "token",
        AuthMode::V3 => "v3",
        AuthMode::Jwt => "jwt",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(modes: Vec<AuthMode>) -> Authorizer {
        Authorizer::new(
            vec![
                Key {
                    id: "new".into(),
                    secret: b"new-secret-0123456789".to_vec(),
                },
                Key {
                    id: "old".into(),
                    secret: b"mysecret".to_vec(),
                },
            ],
            modes,
            Duration::from_secs(60),
        )
    }

    fn all() -> Authorizer {
        authz(vec![
            AuthMode::V,
            AuthMode::V2,
            AuthMode::Token,
            AuthMode::V3,
            AuthMode::Jwt,
        ])
    }

    fn req<'a>(path: &'a str, query: &'a str, len: u64, ct: Option<&'a str>) -> GrantRequest<'a> {
        GrantRequest {
            method: "PUT",
            path,
            query: Some(query),
            content_length: len,
            content_type: ct,
            authorization: None,
            now: SystemTime::now(),
        }
    }

    #[test]
    fn v1_vector_accepted_with_old_key_in_ring() {
        let q = "v=7b8879e2d1c733b423a70cde30cecc3a3c64a03f790d1b5bcbb2a6aca52b477e";
        let g = all()
            .authorize(&req("thomas/abc/catmetal.jpg", q, 23026, None))
            .unwrap();
        assert_eq!(g.mode, AuthMode::V);
        assert_eq!(g.key_id, "old");
    }

    #[test]
    fn basic_auth_header_does_not_hide_a_query_grant() {
        let q = "v=7b8879e2d1c733b423a70cde30cecc3a3c64a03f790d1b5bcbb2a6aca52b477e";
        let mut r = req("thomas/abc/catmetal.jpg", q, 23026, None);
        r.authorization = Some("Basic dXNlcjpwYXNz");
        assert_eq!(all().authorize(&r).unwrap().mode, AuthMode::V);
    }

    #[test]
    fn v1_wrong_size_rejected() {
        let q = "v=7b8879e2d1c733b423a70cde30cecc3a3c64a03f790d1b5bcbb2a6aca52b477e";
        let e = all()
            .authorize(&req("thomas/abc/catmetal.jpg", q, 23027, None))
            .unwrap_err();
        assert_eq!(e, AuthError::BadMac);
    }

    #[test]
    fn v2_accepts_header_type_guessed_type_or_octet_stream() {
        let q = "v2=7318cd44d4c40731e3b2ff869f553ab2326eae631868e7b8054db20d4aee1c06";
        let a = all();
        // Header matches.
        assert!(a
            .authorize(&req(
                "thomas/abc/catmetal.jpg",
                q,
                23026,
                Some("image/jpeg")
            ))
            .is_ok());
        // No header (Psi): guessed from .jpg.
        assert!(a
            .authorize(&req("thomas/abc/catmetal.jpg", q, 23026, None))
            .is_ok());
        // Empty header (Converse.js): guessed.
        assert!(a
            .authorize(&req("thomas/abc/catmetal.jpg", q, 23026, Some("")))
            .is_ok());
    }

    #[test]
    fn v2_octet_stream_fallback() {
        let key = b"mysecret";
        let mac = mac::sign_hex(
            key,
            &mac::message_v2("x/file.bin2", 5, "application/octet-stream"),
        );
        let q = format!("v2={mac}");
        assert!(all()
            .authorize(&req("x/file.bin2", &q, 5, Some("text/plain")))
            .is_ok());
    }

    #[test]
    fn v2_wins_over_v_when_both_present() {
        let v = "7b8879e2d1c733b423a70cde30cecc3a3c64a03f790d1b5bcbb2a6aca52b477e";
        let q = format!("v={v}&v2=00");
        let e = all()
            .authorize(&req("thomas/abc/catmetal.jpg", &q, 23026, None))
            .unwrap_err();
        assert_eq!(e, AuthError::BadMac);
    }

    #[test]
    fn token_mode_uses_v2_message() {
        let q = "token=7318cd44d4c40731e3b2ff869f553ab2326eae631868e7b8054db20d4aee1c06";
        let g = all()
            .authorize(&req(
                "thomas/abc/catmetal.jpg",
                q,
                23026,
                Some("image/jpeg"),
            ))
            .unwrap();
        assert_eq!(g.mode, AuthMode::Token);
    }

    #[test]
    fn disabled_mode_refused() {
        let q = "v=7b8879e2d1c733b423a70cde30cecc3a3c64a03f790d1b5bcbb2a6aca52b477e";
        let e = authz(vec![AuthMode::V2])
            .authorize(&req("thomas/abc/catmetal.jpg", q, 23026, None))
            .unwrap_err();
        assert_eq!(e, AuthError::ModeDisabled("v"));
    }

    #[test]
    fn missing_grant_is_bearer_challenge_when_jwt_on_else_missing() {
        assert_eq!(
            all().authorize(&req("a/b", "", 1, None)).unwrap_err(),
            AuthError::BearerMissing
        );
        assert_eq!(
            authz(vec![AuthMode::V, AuthMode::V2])
                .authorize(&req("a/b", "", 1, None))
                .unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            authz(vec![AuthMode::Jwt])
                .authorize(&req("a/b", "", 1, None))
                .unwrap_err(),
            AuthError::BearerMissing
        );
    }

    #[test]
    fn v3_fresh_accepted_expired_rejected_and_skew_honoured() {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let a = all();
        let mk = |exp: u64| {
            let m = mac::sign_hex(b"mysecret", &mac::message_v3("PUT", exp, "a/b.txt"));
            format!("v3={m}&expires={exp}")
        };
        let q = mk(secs + 100);
        assert!(a.authorize(&req("a/b.txt", &q, 3, None)).is_ok());
        let q = mk(secs - 30); // within 60 s skew
        assert!(a.authorize(&req("a/b.txt", &q, 3, None)).is_ok());
        let q = mk(secs - 3600);
        assert_eq!(
            a.authorize(&req("a/b.txt", &q, 3, None)).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn v3_without_expires_or_over_path_alone_rejected() {
        let a = all();
        let m = mac::sign_hex(b"mysecret", b"/a/b.txt");
        let q = format!("v3={m}");
        assert_eq!(
            a.authorize(&req("a/b.txt", &q, 3, None)).unwrap_err(),
            AuthError::BadExpires
        );
        let q = format!("v3={m}&expires=99999999999");
        assert_eq!(
            a.authorize(&req("a/b.txt", &q, 3, None)).unwrap_err(),
            AuthError::BadMac
        );
    }

    #[test]
    fn v3_binds_method() {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 100;
        let m = mac::sign_hex(b"mysecret", &mac::message_v3("GET", exp, "a/b.txt"));
        let q = format!("v3={m}&expires={exp}");
        assert_eq!(
            all().authorize(&req("a/b.txt", &q, 3, None)).unwrap_err(),
            AuthError::BadMac
        );
    }

    fn jwt_req<'a>(path: &'a str, len: u64, auth: &'a str) -> GrantRequest<'a> {
        GrantRequest {
            method: "PUT",
            path,
            query: None,
            content_length: len,
            content_type: None,
            authorization: Some(auth),
            now: SystemTime::now(),
        }
    }

    #[test]
    fn jwt_accepted_and_checks_slot_filename_size() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let tok = jwt::sign_for_tests(
            b"new-secret-0123456789",
            "slot-1",
            "my file.txt",
            10,
            now + 300,
        );
        let auth = format!("Bearer {tok}");
        let g = all()
            .authorize(&jwt_req("slot-1/my file.txt", 10, &auth))
            .unwrap();
        assert_eq!(g.mode, AuthMode::Jwt);
        assert_eq!(g.uploader.as_deref(), Some("user@example.com"));
        assert_eq!(
            all()
                .authorize(&jwt_req("slot-2/my file.txt", 10, &auth))
                .unwrap_err(),
            AuthError::SlotMismatch
        );
        assert_eq!(
            all()
                .authorize(&jwt_req("slot-1/my file.txt", 11, &auth))
                .unwrap_err(),
            AuthError::SizeMismatch
        );
    }

    #[test]
    fn jwt_expired_bad_sig_or_garbled_rejected() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expired = jwt::sign_for_tests(b"mysecret", "s", "f", 1, now - 3600);
        let wrong = jwt::sign_for_tests(b"not-in-ring-secret", "s", "f", 1, now + 300);
        for tok in [expired, wrong, "garbage".to_owned()] {
            let auth = format!("Bearer {tok}");
            assert_eq!(
                all().authorize(&jwt_req("s/f", 1, &auth)).unwrap_err(),
                AuthError::BearerInvalid
            );
        }
        assert_eq!(
            all()
                .authorize(&jwt_req("s/f", 1, "Basic abc"))
                .unwrap_err(),
            AuthError::BearerMissing
        );
    }
}
