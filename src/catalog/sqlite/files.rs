//! File rows: the writes the writer thread applies (insert, delete, flags) and the read
//! queries (get, expired, list, stats, usage, oldest first).

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{backend, to_i64, to_u64};
use crate::catalog::{
    CatalogError, DeleteReason, Entry, FileRow, ListQuery, Stats, UploaderStats, Usage,
};
use crate::storage::FileMeta;

const COLUMNS: &str =
    "path, size, sha256, content_type, uploader, created_at, expires_at, deleted_at, delete_reason";

fn row_of(r: &Row<'_>) -> rusqlite::Result<Entry> {
    let deleted_at: Option<i64> = r.get(7)?;
    let reason: Option<String> = r.get(8)?;
    Ok(Entry {
        row: FileRow {
            path: r.get(0)?,
            meta: FileMeta {
                size: to_u64(r.get(1)?),
                sha256: r.get(2)?,
                content_type: r.get(3)?,
                uploader: r.get(4)?,
                uploaded_at: to_u64(r.get(5)?),
                expires_at: r.get::<_, Option<i64>>(6)?.map(to_u64),
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

/// Record a newly published file: create-only, a freed path (not taken down) used again.
pub(super) fn insert(tx: &Connection, row: &FileRow) -> Result<(), CatalogError> {
    let existing: Option<(Option<i64>, Option<String>)> = tx
        .prepare_cached("SELECT deleted_at, delete_reason FROM files WHERE path = ?1")
        .and_then(|mut s| {
            s.query_row([&row.path], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    match existing {
        Some((None, _)) => return Err(CatalogError::Exists),
        Some((Some(_), reason))
            if reason
                .as_deref()
                .and_then(DeleteReason::parse)
                .is_some_and(DeleteReason::is_takedown) =>
        {
            return Err(CatalogError::TakenDown)
        }
        Some(_) => {
            tx.prepare_cached("DELETE FROM files WHERE path = ?1")
                .and_then(|mut s| s.execute([&row.path]))
                .map_err(backend)?;
        }
        None => {}
    }
    let m = &row.meta;
    tx.prepare_cached(
        "INSERT INTO files (path, size, sha256, content_type, uploader, created_at, \
         expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            row.path,
            to_i64(m.size),
            m.sha256,
            m.content_type,
            m.uploader,
            to_i64(m.uploaded_at),
            m.expires_at.map(to_i64),
        ])
    })
    .map_err(backend)?;
    Ok(())
}

/// Mark the live row of `path` deleted; a takedown of a path without one blocks it.
pub(super) fn delete(
    tx: &Connection,
    path: &str,
    reason: DeleteReason,
    at: u64,
) -> Result<Option<FileRow>, CatalogError> {
    let live = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM files WHERE path = ?1 AND deleted_at IS NULL"
        ))
        .and_then(|mut s| s.query_row([path], row_of).optional())
        .map_err(backend)?;
    match &live {
        Some(_) => {
            tx.prepare_cached(
                "UPDATE files SET deleted_at = ?2, delete_reason = ?3 WHERE path = ?1",
            )
            .and_then(|mut s| s.execute(params![path, to_i64(at), reason.as_str()]))
            .map_err(backend)?;
        }
        None if reason.is_takedown() => {
            // Block the path even though nothing is stored there (yet).
            tx.prepare_cached(
                "INSERT INTO files (path, size, sha256, content_type, created_at, \
                 deleted_at, delete_reason) VALUES (?1, 0, '', '', ?2, ?2, ?3) \
                 ON CONFLICT (path) DO UPDATE SET deleted_at = excluded.deleted_at, \
                 delete_reason = excluded.delete_reason",
            )
            .and_then(|mut s| s.execute(params![path, to_i64(at), reason.as_str()]))
            .map_err(backend)?;
        }
        None => {}
    }
    Ok(live.map(|e| e.row))
}

pub(super) fn set_flag(tx: &Connection, k: &str, v: &str) -> Result<(), CatalogError> {
    tx.prepare_cached(
        "INSERT INTO flags (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute(params![k, v]))
    .map_err(backend)?;
    Ok(())
}

fn collect(
    conn: &Connection,
    sql: &str,
    p: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<FileRow>> {
    let mut s = conn.prepare_cached(sql)?;
    let rows = s.query_map(p, row_of)?;
    rows.map(|r| r.map(|e| e.row)).collect()
}

pub(super) fn get(c: &Connection, path: &str) -> rusqlite::Result<Option<Entry>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM files WHERE path = ?1"))?
        .query_row([path], row_of)
        .optional()
}

pub(super) fn expired(c: &Connection, now: u64, limit: usize) -> rusqlite::Result<Vec<FileRow>> {
    collect(
        c,
        &format!(
            "SELECT {COLUMNS} FROM files WHERE deleted_at IS NULL AND expires_at IS NOT \
             NULL AND expires_at <= ?1 ORDER BY expires_at, path LIMIT ?2"
        ),
        &[&to_i64(now), &to_i64(limit as u64)],
    )
}

pub(super) fn list(c: &Connection, q: &ListQuery) -> rusqlite::Result<Vec<FileRow>> {
    // A prefix is a range of paths: [prefix, prefix + U+10FFFF).
    let lo = q.prefix.clone().unwrap_or_default();
    let hi = q.prefix.as_ref().map(|p| format!("{p}\u{10FFFF}"));
    let after = q.after.clone().unwrap_or_default();
    collect(
        c,
        &format!(
            "SELECT {COLUMNS} FROM files WHERE deleted_at IS NULL \
             AND path >= ?1 AND (?2 IS NULL OR path < ?2) AND path > ?3 \
             AND (?4 IS NULL OR uploader = ?4) \
             AND (?5 IS NULL OR created_at >= ?5) AND (?6 IS NULL OR created_at < ?6) \
             ORDER BY path LIMIT ?7"
        ),
        &[
            &lo,
            &hi,
            &after,
            &q.uploader,
            &q.since.map(to_i64),
            &q.until.map(to_i64),
            &to_i64(q.limit as u64),
        ],
    )
}

/// Live totals from the rows the triggers keep (see `schema`), not a scan of the files.
pub(super) fn stats(c: &Connection, top: usize) -> rusqlite::Result<Stats> {
    let (files, bytes): (i64, i64) = c.query_row(
        "SELECT COALESCE(SUM(files), 0), COALESCE(SUM(bytes), 0) FROM usage_total",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut s = c.prepare_cached(
        "SELECT uploader, files, bytes FROM usage ORDER BY bytes DESC, uploader LIMIT ?1",
    )?;
    let top_uploaders = s
        .query_map([to_i64(top as u64)], |r| {
            Ok(UploaderStats {
                uploader: r.get(0)?,
                files: to_u64(r.get(1)?),
                bytes: to_u64(r.get(2)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Stats {
        files: to_u64(files),
        bytes: to_u64(bytes),
        top_uploaders,
    })
}

pub(super) fn usage(c: &Connection, uploader: &str, since: u64) -> rusqlite::Result<Usage> {
    c.query_row(
        "SELECT \
           COALESCE(SUM(CASE WHEN deleted_at IS NULL THEN size ELSE 0 END), 0), \
           COALESCE(SUM(CASE WHEN created_at >= ?2 THEN size ELSE 0 END), 0), \
           MIN(CASE WHEN created_at >= ?2 THEN created_at END) \
         FROM files WHERE uploader = ?1",
        params![uploader, to_i64(since)],
        |r| {
            Ok(Usage {
                stored_bytes: to_u64(r.get(0)?),
                uploaded_since: to_u64(r.get(1)?),
                first_since: r.get::<_, Option<i64>>(2)?.map(to_u64),
            })
        },
    )
}

pub(super) fn oldest_of(
    c: &Connection,
    uploader: &str,
    limit: usize,
) -> rusqlite::Result<Vec<FileRow>> {
    collect(
        c,
        &format!(
            "SELECT {COLUMNS} FROM files WHERE deleted_at IS NULL AND uploader = ?1 \
             ORDER BY created_at, path LIMIT ?2"
        ),
        &[&uploader, &to_i64(limit as u64)],
    )
}

pub(super) fn get_flag(c: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    c.query_row("SELECT value FROM flags WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
}
