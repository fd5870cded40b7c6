//! Shared state for several nodes: versioned records (create-only on the primary key,
//! compare-and-swap in one `UPDATE ... RETURNING`), leases with fencing tokens from one
//! sequence, sequences, and space claims under a transaction-scoped advisory lock.

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::{db, pool_err, to_i64, to_u64, Params, PgCatalog, CLAIM_LOCK};
use crate::catalog::{CatalogError, Claim, ClaimLimits, ClaimOutcome, Record};

/// Attempts of a lease whose row keeps being released under it (see `lease`).
const LEASE_ATTEMPTS: usize = 8;

fn record_of(r: &Row, first: usize) -> Result<Record, CatalogError> {
    Ok(Record {
        value: r.try_get(first).map_err(db)?,
        version: to_u64(r.try_get(first + 1).map_err(db)?),
    })
}

pub(super) fn record_get(catalog: &PgCatalog, key: &str) -> Result<Option<Record>, CatalogError> {
    catalog.query(
        "SELECT value, version FROM records WHERE key = $1",
        params![key.to_owned()],
        |rows| rows.first().map(|r| record_of(r, 0)).transpose(),
    )
}

pub(super) fn record_put(
    catalog: &PgCatalog,
    key: &str,
    value: &[u8],
    expect: Option<u64>,
) -> Result<u64, CatalogError> {
    let (key, value) = (key.to_owned(), value.to_vec());
    let version = |rows: Vec<Row>| match rows.first() {
        Some(r) => Ok(to_u64(r.try_get(0).map_err(db)?)),
        None => Err(CatalogError::Conflict),
    };
    match expect {
        // Racing creators meet at the primary key: one inserts, the others find it.
        None => catalog.query(
            "INSERT INTO records (key, value, version) VALUES ($1, $2, 1) \
             ON CONFLICT (key) DO NOTHING RETURNING version",
            params![key, value],
            version,
        ),
        Some(v) => catalog.query(
            "UPDATE records SET value = $2, version = version + 1 \
             WHERE key = $1 AND version = $3 RETURNING version",
            params![key, value, to_i64(v)],
            version,
        ),
    }
}

pub(super) fn record_delete(catalog: &PgCatalog, key: &str) -> Result<(), CatalogError> {
    catalog.query(
        "DELETE FROM records WHERE key = $1",
        params![key.to_owned()],
        |_| Ok(()),
    )
}

pub(super) fn record_list(
    catalog: &PgCatalog,
    prefix: &str,
) -> Result<Vec<(String, Record)>, CatalogError> {
    let hi = format!("{prefix}\u{10FFFF}");
    catalog.query(
        "SELECT key, value, version FROM records WHERE key >= $1 AND key < $2 ORDER BY key",
        params![prefix.to_owned(), hi],
        |rows| {
            rows.iter()
                .map(|r| Ok((r.try_get(0).map_err(db)?, record_of(r, 1)?)))
                .collect()
        },
    )
}

pub(super) fn lease(
    catalog: &PgCatalog,
    name: &str,
    holder: &str,
    now_ms: u64,
    ttl_ms: u64,
    steal: bool,
) -> Result<Option<u64>, CatalogError> {
    let pool = catalog.pool.clone();
    let (name, holder) = (name.to_owned(), holder.to_owned());
    let (now, until) = (to_i64(now_ms), to_i64(now_ms.saturating_add(ttl_ms)));
    catalog.run(async move {
        let mut c = pool.get().await.map_err(pool_err)?;
        for _ in 0..LEASE_ATTEMPTS {
            let tx = c.transaction().await.map_err(db)?;
            // A free name gets a placeholder row (token 0) that the update below turns
            // into a grant. Inserting first means the token is drawn after any earlier
            // holder's row was gone, so it is larger than every token the name had.
            tx.execute(
                "INSERT INTO leases (name, holder, token, until_ms) VALUES ($1, $2, 0, $3) \
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &holder, &until],
            )
            .await
            .map_err(db)?;
            // The decision and the token in one statement, under the row's lock: a
            // renewal keeps its token, a grant or a steal draws a new one.
            let granted = tx
                .query_opt(
                    "UPDATE leases SET token = CASE \
                       WHEN token <> 0 AND holder = $2 AND NOT $5 THEN token \
                       ELSE nextval('lease_tokens') END, \
                     holder = $2, until_ms = $3 \
                     WHERE name = $1 AND (token = 0 OR holder = $2 OR until_ms <= $4 OR $5) \
                     RETURNING token",
                    &[&name, &holder, &until, &now, &steal],
                )
                .await
                .map_err(db)?;
            if let Some(r) = granted {
                let token: i64 = r.try_get(0).map_err(db)?;
                tx.commit().await.map_err(db)?;
                return Ok(Some(to_u64(token)));
            }
            // Refused: held by another, unless its row went away (a release) while
            // we waited on it; then try again.
            let held = tx
                .query_opt("SELECT 1 FROM leases WHERE name = $1", &[&name])
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            if held.is_some() {
                return Ok(None);
            }
        }
        // Released and taken again under us every time: someone else has it.
        Ok(None)
    })
}

pub(super) fn lease_release(
    catalog: &PgCatalog,
    name: &str,
    token: u64,
) -> Result<(), CatalogError> {
    catalog.query(
        "DELETE FROM leases WHERE name = $1 AND token = $2",
        params![name.to_owned(), to_i64(token)],
        |_| Ok(()),
    )
}

pub(super) fn next_seq(catalog: &PgCatalog, name: &str) -> Result<u64, CatalogError> {
    catalog.query(
        "INSERT INTO seqs (name, last) VALUES ($1, 1) \
         ON CONFLICT (name) DO UPDATE SET last = seqs.last + 1 RETURNING last",
        params![name.to_owned()],
        |rows| match rows.first() {
            Some(r) => Ok(to_u64(r.try_get(0).map_err(db)?)),
            None => Err(CatalogError::Backend("next_seq: no row".into())),
        },
    )
}

pub(super) fn drop_seq(catalog: &PgCatalog, name: &str) -> Result<(), CatalogError> {
    catalog.query(
        "DELETE FROM seqs WHERE name = $1",
        params![name.to_owned()],
        |_| Ok(()),
    )
}

pub(super) fn claim(
    catalog: &PgCatalog,
    c: &Claim,
    limits: ClaimLimits,
    now: u64,
) -> Result<ClaimOutcome, CatalogError> {
    let pool = catalog.pool.clone();
    let claim = c.clone();
    catalog.run(async move { claim_space(&pool, &claim, limits, to_i64(now)).await })
}

pub(super) fn release_claim(catalog: &PgCatalog, id: &str) -> Result<(), CatalogError> {
    catalog.query(
        "DELETE FROM claims WHERE id = $1",
        params![id.to_owned()],
        |_| Ok(()),
    )
}

/// Check `c` against `limits` and record it if it fits, atomically across nodes: every
/// claim takes the same transaction-scoped advisory lock, so checks and inserts of claims
/// never interleave. Live files count through the totals the trigger keeps (see `connect`):
/// a claim reads a few rows, however many files there are.
async fn claim_space(
    pool: &Pool,
    c: &Claim,
    limits: ClaimLimits,
    now: i64,
) -> Result<ClaimOutcome, CatalogError> {
    let mut conn = pool.get().await.map_err(pool_err)?;
    let tx = conn.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK])
        .await
        .map_err(db)?;
    tx.execute("DELETE FROM claims WHERE until <= $1", &[&now])
        .await
        .map_err(db)?;
    // Sums in NUMERIC, capped into BIGINT.
    let used = |sql: &'static str, uploader: Option<String>| {
        let (tx, id) = (&tx, &c.id);
        async move {
            let r = match &uploader {
                None => tx.query_one(sql, &[&now, id]).await,
                Some(u) => tx.query_one(sql, &[&now, id, u]).await,
            }
            .map_err(db)?;
            r.try_get::<_, i64>(0).map(to_u64).map_err(db)
        }
    };
    if let Some(total) = limits.total {
        let used = used(
            "SELECT LEAST( \
               (SELECT COALESCE(SUM(bytes), 0) FROM usage_total) \
               + (SELECT COALESCE(SUM(bytes), 0) FROM claims WHERE until > $1 AND id <> $2), \
               9223372036854775807)::BIGINT",
            None,
        )
        .await?;
        if used.saturating_add(c.bytes) > total {
            return Ok(ClaimOutcome::OverTotal { used });
        }
    }
    if let (Some(cap), Some(uploader)) = (limits.per_uploader, &c.uploader) {
        let used = used(
            "SELECT LEAST( \
               COALESCE((SELECT bytes FROM usage WHERE uploader = $3), 0) \
               + (SELECT COALESCE(SUM(bytes), 0) FROM claims \
                  WHERE until > $1 AND id <> $2 AND uploader = $3), \
               9223372036854775807)::BIGINT",
            Some(uploader.clone()),
        )
        .await?;
        if used.saturating_add(c.bytes) > cap {
            return Ok(ClaimOutcome::OverUploader { used });
        }
    }
    tx.execute(
        "INSERT INTO claims (id, uploader, bytes, until) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET uploader = excluded.uploader, bytes = excluded.bytes, \
         until = excluded.until",
        &[&c.id, &c.uploader, &to_i64(c.bytes), &to_i64(c.until)],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(ClaimOutcome::Granted)
}
