//! Shared state for several nodes, embedded: versioned records, leases with fencing tokens,
//! sequences and space claims. Writes run on the writer thread, which makes each atomic.

use rusqlite::{params, Connection, OptionalExtension};

use super::{backend, to_i64, to_u64};
use crate::catalog::{CatalogError, Claim, ClaimLimits, ClaimOutcome, Record};

pub(super) fn record_get(c: &Connection, key: &str) -> rusqlite::Result<Option<Record>> {
    c.prepare_cached("SELECT value, version FROM records WHERE key = ?1")?
        .query_row([key], |r| {
            Ok(Record {
                value: r.get(0)?,
                version: to_u64(r.get(1)?),
            })
        })
        .optional()
}

/// Create (`expect = None`) or compare-and-swap the record `key`; the new version.
pub(super) fn record_put(
    tx: &Connection,
    key: &str,
    value: &[u8],
    expect: Option<u64>,
) -> Result<u64, CatalogError> {
    let written: Option<i64> = match expect {
        None => tx
            .prepare_cached(
                "INSERT INTO records (key, value, version) VALUES (?1, ?2, 1) \
                 ON CONFLICT (key) DO NOTHING RETURNING version",
            )
            .and_then(|mut s| s.query_row(params![key, value], |r| r.get(0)).optional()),
        Some(v) => tx
            .prepare_cached(
                "UPDATE records SET value = ?2, version = version + 1 \
                 WHERE key = ?1 AND version = ?3 RETURNING version",
            )
            .and_then(|mut s| {
                s.query_row(params![key, value, to_i64(v)], |r| r.get(0))
                    .optional()
            }),
    }
    .map_err(backend)?;
    written.map(to_u64).ok_or(CatalogError::Conflict)
}

pub(super) fn record_delete(tx: &Connection, key: &str) -> Result<(), CatalogError> {
    tx.prepare_cached("DELETE FROM records WHERE key = ?1")
        .and_then(|mut s| s.execute([key]))
        .map_err(backend)?;
    Ok(())
}

pub(super) fn record_list(c: &Connection, prefix: &str) -> rusqlite::Result<Vec<(String, Record)>> {
    // The same range as `list`'s prefix: [prefix, prefix + U+10FFFF).
    let hi = format!("{prefix}\u{10FFFF}");
    c.prepare_cached(
        "SELECT key, value, version FROM records WHERE key >= ?1 AND key < ?2 \
         ORDER BY key",
    )?
    .query_map([prefix, hi.as_str()], |r| {
        Ok((
            r.get(0)?,
            Record {
                value: r.get(1)?,
                version: to_u64(r.get(2)?),
            },
        ))
    })?
    .collect()
}

/// Grant, renew or refuse the lease `name` (the trait's rules); the writer thread makes it
/// atomic. A new grant takes the next value of the lease-token counter.
pub(super) fn lease(
    tx: &Connection,
    name: &str,
    holder: &str,
    now_ms: u64,
    ttl_ms: u64,
    steal: bool,
) -> Result<Option<u64>, CatalogError> {
    let until = to_i64(now_ms.saturating_add(ttl_ms));
    let current: Option<(String, i64, i64)> = tx
        .prepare_cached("SELECT holder, token, until_ms FROM leases WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(backend)?;
    let token = match current {
        // A renewal: same holder, no steal; the token stays (nobody held it in between).
        Some((h, token, _)) if h == holder && !steal => token,
        // Another holder's, unexpired.
        Some((_, _, held_until)) if held_until > to_i64(now_ms) && !steal => return Ok(None),
        // Free, expired, or stolen: a new token, larger than any handed out before.
        _ => tx
            .prepare_cached(
                "INSERT INTO counters (name, value) VALUES ('lease_token', 1) \
                 ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
            )
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(backend)?,
    };
    tx.prepare_cached(
        "INSERT INTO leases (name, holder, token, until_ms) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = excluded.token, \
         until_ms = excluded.until_ms",
    )
    .and_then(|mut s| s.execute(params![name, holder, token, until]))
    .map_err(backend)?;
    Ok(Some(to_u64(token)))
}

pub(super) fn lease_release(tx: &Connection, name: &str, token: u64) -> Result<(), CatalogError> {
    tx.prepare_cached("DELETE FROM leases WHERE name = ?1 AND token = ?2")
        .and_then(|mut s| s.execute(params![name, to_i64(token)]))
        .map_err(backend)?;
    Ok(())
}

pub(super) fn next_seq(tx: &Connection, name: &str) -> Result<u64, CatalogError> {
    tx.prepare_cached(
        "INSERT INTO seqs (name, last) VALUES (?1, 1) \
         ON CONFLICT (name) DO UPDATE SET last = last + 1 RETURNING last",
    )
    .and_then(|mut s| s.query_row([name], |r| r.get::<_, i64>(0)))
    .map(to_u64)
    .map_err(backend)
}

pub(super) fn drop_seq(tx: &Connection, name: &str) -> Result<(), CatalogError> {
    tx.prepare_cached("DELETE FROM seqs WHERE name = ?1")
        .and_then(|mut s| s.execute([name]))
        .map_err(backend)?;
    Ok(())
}

/// Check `c` against `limits` (live files plus unexpired claims other than `c.id` itself)
/// and record it if it fits; lapsed claims are pruned on the way. Live files count through
/// the totals the triggers keep (see `schema`): a claim reads two rows, however many files.
pub(super) fn claim_space(
    tx: &Connection,
    c: &Claim,
    limits: ClaimLimits,
    now: u64,
) -> Result<ClaimOutcome, CatalogError> {
    let now = to_i64(now);
    tx.prepare_cached("DELETE FROM claims WHERE until <= ?1")
        .and_then(|mut s| s.execute([now]))
        .map_err(backend)?;
    if let Some(total) = limits.total {
        let used: i64 = tx
            .prepare_cached(
                "SELECT COALESCE((SELECT bytes FROM usage_total), 0) \
                 + (SELECT COALESCE(SUM(bytes), 0) FROM claims WHERE until > ?1 AND id <> ?2)",
            )
            .and_then(|mut s| s.query_row(params![now, c.id], |r| r.get(0)))
            .map_err(backend)?;
        let used = to_u64(used);
        if used.saturating_add(c.bytes) > total {
            return Ok(ClaimOutcome::OverTotal { used });
        }
    }
    if let (Some(cap), Some(uploader)) = (limits.per_uploader, &c.uploader) {
        let used: i64 = tx
            .prepare_cached(
                "SELECT COALESCE((SELECT bytes FROM usage WHERE uploader = ?3), 0) \
                 + (SELECT COALESCE(SUM(bytes), 0) FROM claims \
                    WHERE until > ?1 AND id <> ?2 AND uploader = ?3)",
            )
            .and_then(|mut s| s.query_row(params![now, c.id, uploader], |r| r.get(0)))
            .map_err(backend)?;
        let used = to_u64(used);
        if used.saturating_add(c.bytes) > cap {
            return Ok(ClaimOutcome::OverUploader { used });
        }
    }
    tx.prepare_cached(
        "INSERT INTO claims (id, uploader, bytes, until) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (id) DO UPDATE SET uploader = excluded.uploader, bytes = excluded.bytes, \
         until = excluded.until",
    )
    .and_then(|mut s| s.execute(params![c.id, c.uploader, to_i64(c.bytes), to_i64(c.until)]))
    .map_err(backend)?;
    Ok(ClaimOutcome::Granted)
}

pub(super) fn release_claim(tx: &Connection, id: &str) -> Result<(), CatalogError> {
    tx.prepare_cached("DELETE FROM claims WHERE id = ?1")
        .and_then(|mut s| s.execute([id]))
        .map_err(backend)?;
    Ok(())
}
