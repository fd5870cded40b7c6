//! Schema migrations of the embedded catalog, applied at open.

use rusqlite::Connection;

use super::backend;
use crate::catalog::CatalogError;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: files and flags.
    "CREATE TABLE files (
        path TEXT PRIMARY KEY NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        uploader TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        deleted_at INTEGER,
        delete_reason TEXT
    );
    CREATE INDEX files_expiry ON files (expires_at)
        WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
    CREATE INDEX files_uploader ON files (uploader, created_at);
    CREATE INDEX files_created ON files (created_at);
    CREATE TABLE flags (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);",
    // 2: shared state (records, leases, sequences, claims). A lease row lives while it is
    // held; its tokens come from one counter (`counters.lease_token`) that only grows, so a
    // released or expired lease can be forgotten and a later grant still gets a larger token.
    "CREATE TABLE records (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE TABLE leases (
        name TEXT PRIMARY KEY NOT NULL,
        holder TEXT NOT NULL,
        token INTEGER NOT NULL,
        until_ms INTEGER NOT NULL
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
    CREATE TABLE seqs (name TEXT PRIMARY KEY NOT NULL, last INTEGER NOT NULL);
    CREATE TABLE claims (
        id TEXT PRIMARY KEY NOT NULL,
        uploader TEXT,
        bytes INTEGER NOT NULL,
        until INTEGER NOT NULL
    );
    CREATE INDEX claims_uploader ON claims (uploader) WHERE uploader IS NOT NULL;",
];

pub(super) fn migrate(conn: &mut Connection) -> Result<(), CatalogError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    let done = usize::try_from(version).unwrap_or(0);
    if done > MIGRATIONS.len() {
        return Err(CatalogError::Backend(format!(
            "catalog schema version {done} is newer than this binary ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(m).map_err(backend)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        tracing::info!(version = i + 1, "catalog schema migrated");
    }
    Ok(())
}
