//! Configuration of the operator features: retention, storage caps, per-uploader quotas, the
//! admin API and the audit log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::{AuthMode, KeyConfig};

/// `[retention]`: when stored files expire.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Files older than this (from their upload) expire. "0s" = never (the default).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Honour the `expires` claim of Prosody's mod_http_file_share slots: a file expires at
    /// the earlier of that time and `max_age`.
    pub honour_jwt_expires: bool,
    /// Rules for path prefixes (the longest matching prefix wins over `max_age`).
    pub rules: Vec<RetentionRule>,
    /// How often the sweeper deletes expired files.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Files deleted per sweep batch (the sweeper yields between batches).
    pub sweep_batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::ZERO,
            honour_jwt_expires: true,
            rules: Vec::new(),
            sweep_interval: Duration::from_secs(300),
            sweep_batch: 500,
        }
    }
}

/// One `[[retention.rules]]` entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionRule {
    /// Stored-path prefix, e.g. "avatars/".
    pub prefix: String,
    /// "0s" = never expire under this prefix.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl RetentionConfig {
    /// When a file uploaded at `created` to `path` expires, given the grant's own expiry.
    pub fn expires_at(&self, path: &str, created: u64, grant_expires: Option<u64>) -> Option<u64> {
        let age = self
            .rules
            .iter()
            .filter(|r| path.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
            .map_or(self.max_age, |r| r.max_age);
        let by_age = (!age.is_zero()).then(|| created.saturating_add(age.as_secs()));
        let by_grant = grant_expires.filter(|_| self.honour_jwt_expires);
        match (by_age, by_grant) {
            (Some(a), Some(g)) => Some(a.min(g)),
            (a, g) => a.or(g),
        }
    }
}

/// What happens when an upload would take an uploader past `quota.stored`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaAction {
    /// Refuse the upload (507).
    Refuse,
    /// Delete that uploader's oldest files until the upload fits (ejabberd's hard quota).
    EvictOldest,
}

/// `[quota]`: per-uploader limits, where the grant names the uploader.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Bytes one uploader may upload in any 24 hours (Prosody's `daily_quota`). 0 = no limit.
    pub daily: ByteSize,
    /// Bytes one uploader may have stored at once. 0 = no limit.
    pub stored: ByteSize,
    pub on_stored_exceeded: QuotaAction,
    /// Grant modes whose first path segment names the uploader (ejabberd's slots start with a
    /// hash of the JID: `["v"]` there). JWT slots always name the uploader (`sub`).
    pub uploader_from_first_segment: Vec<AuthMode>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            daily: ByteSize::b(0),
            stored: ByteSize::b(0),
            on_stored_exceeded: QuotaAction::Refuse,
            uploader_from_first_segment: Vec::new(),
        }
    }
}

/// `[admin]`: the admin API, on its own listener (never the public one).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Off unless set; a loopback address is strongly advised.
    pub listen: Option<SocketAddr>,
    /// The bearer token (`Authorization: Bearer <token>`), like a key of the key ring: one of
    /// `secret`, `secret_file`, `secret_env` (at least 16 bytes).
    pub token: Option<KeyConfig>,
}

/// `[audit]`: JSON lines for uploads, deletions and admin actions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// File to append to; unset = no audit log.
    pub path: Option<PathBuf>,
    /// Keep this many leading bits of IPv4 client addresses (32 = whole address, 0 = none).
    pub ipv4_prefix: u8,
    /// Keep this many leading bits of IPv6 client addresses.
    pub ipv6_prefix: u8,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: None,
            ipv4_prefix: 24,
            ipv6_prefix: 48,
        }
    }
}

/// `[rate_limit]`: token buckets per client address (IPv6 by /64) and per uploader. Each
/// `*_per_minute` is the long-run rate and `*_burst` what may come at once; 0 turns one off.
/// The defaults never bother a normal chat user (nor an office behind one address).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub uploads_per_minute: u32,
    pub uploads_burst: u32,
    pub uploader_uploads_per_minute: u32,
    pub uploader_uploads_burst: u32,
    pub creations_per_minute: u32,
    pub creations_burst: u32,
    pub uploader_creations_per_minute: u32,
    pub uploader_creations_burst: u32,
    pub downloads_per_minute: u32,
    pub downloads_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            uploads_per_minute: 600,
            uploads_burst: 300,
            uploader_uploads_per_minute: 300,
            uploader_uploads_burst: 150,
            creations_per_minute: 600,
            creations_burst: 300,
            uploader_creations_per_minute: 300,
            uploader_creations_burst: 150,
            downloads_per_minute: 3000,
            downloads_burst: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_the_earlier_of_age_rule_and_grant() {
        let mut r = RetentionConfig::default();
        assert_eq!(r.expires_at("a/b", 1000, None), None);
        assert_eq!(r.expires_at("a/b", 1000, Some(5000)), Some(5000));
        r.max_age = Duration::from_secs(100);
        assert_eq!(r.expires_at("a/b", 1000, None), Some(1100));
        assert_eq!(r.expires_at("a/b", 1000, Some(1050)), Some(1050));
        assert_eq!(r.expires_at("a/b", 1000, Some(9000)), Some(1100));
        r.rules = vec![
            RetentionRule {
                prefix: "keep/".into(),
                max_age: Duration::ZERO,
            },
            RetentionRule {
                prefix: "keep/short/".into(),
                max_age: Duration::from_secs(10),
            },
        ];
        assert_eq!(r.expires_at("keep/x", 1000, None), None);
        assert_eq!(r.expires_at("keep/short/x", 1000, None), Some(1010));
        r.honour_jwt_expires = false;
        assert_eq!(r.expires_at("keep/x", 1000, Some(5)), None);
    }
}
