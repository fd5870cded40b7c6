//! File rows: create-only inserts on the primary key, deletes that notify the removal feed,
//! the read queries (get, expired, list, stats, usage, oldest first), and flags.

use tokio_postgres::Row;

use super::feed::{NOTIFY_MAX, REMOVED_CHANNEL};
use super::{db, pool_err, to_i64, to_u64, Params, PgCatalog};
use crate::catalog::{
    CatalogError, DeleteReason, Entry, FileRow, ListQuery, Stats, UploaderStats, Usage,
};
use crate::storage::FileMeta;

/// Attempts of a delete that races an insert of the same path (see `delete`).
const DELETE_ATTEMPTS: usize = 8;

fn entry_of(r: &Row) -> Result<Entry, CatalogError> {
    let deleted_at: Option<i64> = r.try_get(7).map_err(db)?;
    let reason: Option<String> = r.try_get(8).map_err(db)?;
    Ok(Entry {
        row: FileRow {
            path: r.try_get(0).map_err(db)?,
            meta: FileMeta {
                size: to_u64(r.try_get(1).map_err(db)?),
                sha256: r.try_get(2).map_err(db)?,
                content_type: r.try_get(3).map_err(db)?,
                uploader: r.try_get(4).map_err(db)?,
                uploaded_at: to_u64(r.try_get(5).map_err(db)?),
                expires_at: r.try_get::<_, Option<i64>>(6).map_err(db)?.map(to_u64),
            },
        },
        deleted: deleted_at.map(|at| {
            (
                reason
                    .as_deref()
                    .and_then(DeleteReason::parse)
                    .unwrap_or(DeleteReason::Missing),
                to_u64(at),
            )
        }),
    })
}

fn rows_of(rows: &[Row]) -> Result<Vec<FileRow>, CatalogError> {
    rows.iter().map(|r| entry_of(r).map(|e| e.row)).collect()
}

/// The reasons that take a path down for good.
fn takedown_reasons() -> Vec<&'static str> {
    DeleteReason::ALL
        .iter()
        .filter(|r| r.is_takedown())
        .map(|r| r.as_str())
        .collect()
}

pub(super) fn insert(catalog: &PgCatalog, row: FileRow) -> Result<(), CatalogError> {
    let pool = catalog.pool.clone();
    catalog.run(async move {
        let c = pool.get().await.map_err(pool_err)?;
        let m = &row.meta;
        // One statement: a new path is inserted, a freed one (deleted, not taken down)
        // replaced; a live or taken-down row stays and nothing is returned. Racing
        // inserts of one path meet at its primary key, and one of them wins.
        let stmt = c
            .prepare_cached(
                "INSERT INTO files (path, size, sha256, content_type, uploader, created_at, \
                 expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (path) DO UPDATE SET size = excluded.size, \
                 sha256 = excluded.sha256, content_type = excluded.content_type, \
                 uploader = excluded.uploader, created_at = excluded.created_at, \
                 expires_at = excluded.expires_at, deleted_at = NULL, delete_reason = NULL \
                 WHERE files.deleted_at IS NOT NULL AND (files.delete_reason IS NULL \
                 OR files.delete_reason <> ALL($8)) \
                 RETURNING 1",
            )
            .await
            .map_err(db)?;
        let written = c
            .query_opt(
                &stmt,
                &[
                    &row.path,
                    &to_i64(m.size),
                    &m.sha256,
                    &m.content_type,
                    &m.uploader,
                    &to_i64(m.uploaded_at),
                    &m.expires_at.map(to_i64),
                    &takedown_reasons(),
                ],
            )
            .await
            .map_err(db)?;
        if written.is_some() {
            return Ok(());
        }
        // Refused: say why (a row freed since then was live when we tried).
        let reason: Option<Option<String>> = c
            .query_opt(
                "SELECT delete_reason FROM files WHERE path = $1 AND deleted_at IS NOT NULL",
                &[&row.path],
            )
            .await
            .map_err(db)?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(db)?;
        let taken_down = reason
            .flatten()
            .as_deref()
            .and_then(DeleteReason::parse)
            .is_some_and(DeleteReason::is_takedown);
        Err(if taken_down {
            CatalogError::TakenDown
        } else {
            CatalogError::Exists
        })
    })
}

pub(super) fn get(catalog: &PgCatalog, path: &str) -> Result<Option<Entry>, CatalogError> {
    catalog.query(
        "SELECT path, size, sha256, content_type, uploader, created_at, expires_at, \
         deleted_at, delete_reason FROM files WHERE path = $1",
        params![path.to_owned()],
        |rows| rows.first().map(entry_of).transpose(),
    )
}

pub(super) fn delete(
    catalog: &PgCatalog,
    path: &str,
    reason: DeleteReason,
    at: u64,
) -> Result<Option<FileRow>, CatalogError> {
    let pool = catalog.pool.clone();
    let path = path.to_owned();
    catalog.run(async move {
        let mut c = pool.get().await.map_err(pool_err)?;
        let (at, why) = (to_i64(at), reason.as_str());
        for _ in 0..DELETE_ATTEMPTS {
            let tx = c.transaction().await.map_err(db)?;
            let live = tx
                .query_opt(
                    "UPDATE files SET deleted_at = $2, delete_reason = $3 \
                     WHERE path = $1 AND deleted_at IS NULL RETURNING path, size, sha256, \
                     content_type, uploader, created_at, expires_at, deleted_at, \
                     delete_reason",
                    &[&path, &at, &why],
                )
                .await
                .map_err(db)?;
            let removed = match live {
                Some(r) => Some(entry_of(&r)?.row),
                None if reason.is_takedown() => {
                    // Block the path even though nothing is stored there (yet). A row
                    // that turned live since the update is taken down on the next turn.
                    let blocked = tx
                        .query_opt(
                            "INSERT INTO files (path, size, sha256, content_type, \
                             created_at, deleted_at, delete_reason) \
                             VALUES ($1, 0, '', '', $2, $2, $3) \
                             ON CONFLICT (path) DO UPDATE SET \
                             deleted_at = excluded.deleted_at, \
                             delete_reason = excluded.delete_reason \
                             WHERE files.deleted_at IS NOT NULL RETURNING 1",
                            &[&path, &at, &why],
                        )
                        .await
                        .map_err(db)?;
                    if blocked.is_none() {
                        tx.rollback().await.map_err(db)?;
                        continue;
                    }
                    None
                }
                None => {
                    tx.commit().await.map_err(db)?;
                    return Ok(None);
                }
            };
            // Delivered to every listener when (and only if) this transaction commits.
            if path.len() <= NOTIFY_MAX {
                tx.execute("SELECT pg_notify($1, $2)", &[&REMOVED_CHANNEL, &path])
                    .await
                    .map_err(db)?;
            } else {
                tracing::warn!(
                    bytes = path.len(),
                    "path too long for the removal feed; other nodes keep it cached"
                );
            }
            tx.commit().await.map_err(db)?;
            return Ok(removed);
        }
        Err(CatalogError::Backend(
            "takedown kept racing inserts of the path".into(),
        ))
    })
}

pub(super) fn expired(
    catalog: &PgCatalog,
    now: u64,
    limit: usize,
) -> Result<Vec<FileRow>, CatalogError> {
    catalog.query(
        "SELECT path, size, sha256, content_type, uploader, created_at, expires_at, \
         deleted_at, delete_reason FROM files WHERE deleted_at IS NULL \
         AND expires_at IS NOT NULL AND expires_at <= $1 \
         ORDER BY expires_at, path LIMIT $2",
        params![to_i64(now), to_i64(limit as u64)],
        |rows| rows_of(&rows),
    )
}

pub(super) fn list(catalog: &PgCatalog, q: &ListQuery) -> Result<Vec<FileRow>, CatalogError> {
    // A prefix is a range of paths: [prefix, prefix + U+10FFFF), as in SQLite.
    let lo = q.prefix.clone().unwrap_or_default();
    let hi = q.prefix.as_ref().map(|p| format!("{p}\u{10FFFF}"));
    catalog.query(
        "SELECT path, size, sha256, content_type, uploader, created_at, expires_at, \
         deleted_at, delete_reason FROM files WHERE deleted_at IS NULL \
         AND path >= $1 AND ($2::TEXT IS NULL OR path < $2) AND path > $3 \
         AND ($4::TEXT IS NULL OR uploader = $4) \
         AND ($5::BIGINT IS NULL OR created_at >= $5) \
         AND ($6::BIGINT IS NULL OR created_at < $6) \
         ORDER BY path LIMIT $7",
        params![
            lo,
            hi,
            q.after.clone().unwrap_or_default(),
            q.uploader.clone(),
            q.since.map(to_i64),
            q.until.map(to_i64),
            to_i64(q.limit as u64),
        ],
        |rows| rows_of(&rows),
    )
}

/// Live totals from the rows the trigger keeps (see `connect`), not a scan of the files.
pub(super) fn stats(catalog: &PgCatalog, top: usize) -> Result<Stats, CatalogError> {
    let pool = catalog.pool.clone();
    catalog.run(async move {
        let c = pool.get().await.map_err(pool_err)?;
        let totals = c
            .query_one(
                "SELECT COALESCE(SUM(files), 0)::BIGINT, COALESCE(SUM(bytes), 0)::BIGINT \
                 FROM usage_total",
                &[],
            )
            .await
            .map_err(db)?;
        let top_uploaders = c
            .query(
                "SELECT uploader, files, bytes FROM usage \
                 ORDER BY bytes DESC, uploader LIMIT $1",
                &[&to_i64(top as u64)],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok(UploaderStats {
                    uploader: r.try_get(0)?,
                    files: to_u64(r.try_get(1)?),
                    bytes: to_u64(r.try_get(2)?),
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(db)?;
        Ok(Stats {
            files: to_u64(totals.try_get(0).map_err(db)?),
            bytes: to_u64(totals.try_get(1).map_err(db)?),
            top_uploaders,
        })
    })
}

pub(super) fn usage(
    catalog: &PgCatalog,
    uploader: &str,
    since: u64,
) -> Result<Usage, CatalogError> {
    catalog.query(
        "SELECT \
           COALESCE(SUM(CASE WHEN deleted_at IS NULL THEN size ELSE 0 END), 0)::BIGINT, \
           COALESCE(SUM(CASE WHEN created_at >= $2 THEN size ELSE 0 END), 0)::BIGINT, \
           MIN(CASE WHEN created_at >= $2 THEN created_at END) \
         FROM files WHERE uploader = $1",
        params![uploader.to_owned(), to_i64(since)],
        |rows| {
            let r = rows
                .first()
                .ok_or_else(|| CatalogError::Backend("usage: no row".into()))?;
            Ok(Usage {
                stored_bytes: to_u64(r.try_get(0).map_err(db)?),
                uploaded_since: to_u64(r.try_get(1).map_err(db)?),
                first_since: r.try_get::<_, Option<i64>>(2).map_err(db)?.map(to_u64),
            })
        },
    )
}

pub(super) fn oldest_of(
    catalog: &PgCatalog,
    uploader: &str,
    limit: usize,
) -> Result<Vec<FileRow>, CatalogError> {
    catalog.query(
        "SELECT path, size, sha256, content_type, uploader, created_at, expires_at, \
         deleted_at, delete_reason FROM files WHERE deleted_at IS NULL AND uploader = $1 \
         ORDER BY created_at, path LIMIT $2",
        params![uploader.to_owned(), to_i64(limit as u64)],
        |rows| rows_of(&rows),
    )
}

pub(super) fn get_flag(catalog: &PgCatalog, key: &str) -> Result<Option<String>, CatalogError> {
    catalog.query(
        "SELECT value FROM flags WHERE key = $1",
        params![key.to_owned()],
        |rows| rows.first().map(|r| r.try_get(0)).transpose().map_err(db),
    )
}

pub(super) fn set_flag(catalog: &PgCatalog, key: &str, value: &str) -> Result<(), CatalogError> {
    catalog.query(
        "INSERT INTO flags (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key.to_owned(), value.to_owned()],
        |_| Ok(()),
    )
}
