//! Schema migrations of the embedded catalog, applied at open.

use rusqlite::Connection;

use super::backend;
use crate::catalog::CatalogError;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 3: live totals, per uploader (`usage`, a row while the uploader has a live file) and
    // overall (`usage_total`, one row), so that claims and stats read two rows instead of
    // summing every file. Triggers keep them in the transaction of every write to `files`
    // (a row that stops being live is taken off, one that becomes live added), whichever
    // statement made it; the migration fills them from the rows already there.
    "CREATE TABLE usage (
        uploader TEXT PRIMARY KEY NOT NULL,
        files INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE TABLE usage_total (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        files INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    INSERT INTO usage (uploader, files, bytes)
        SELECT uploader, COUNT(*), SUM(size) FROM files
        WHERE deleted_at IS NULL AND uploader IS NOT NULL GROUP BY uploader;
    INSERT INTO usage_total (id, files, bytes)
        SELECT 0, COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE deleted_at IS NULL;
    CREATE TRIGGER usage_add_on_insert AFTER INSERT ON files WHEN NEW.deleted_at IS NULL
    BEGIN
        INSERT INTO usage (uploader, files, bytes)
            SELECT NEW.uploader, 1, NEW.size WHERE NEW.uploader IS NOT NULL
            ON CONFLICT (uploader) DO UPDATE
            SET files = files + 1, bytes = bytes + excluded.bytes;
        UPDATE usage_total SET files = files + 1, bytes = bytes + NEW.size;
    END;
    CREATE TRIGGER usage_add_on_update AFTER UPDATE ON files WHEN NEW.deleted_at IS NULL
    BEGIN
        INSERT INTO usage (uploader, files, bytes)
            SELECT NEW.uploader, 1, NEW.size WHERE NEW.uploader IS NOT NULL
            ON CONFLICT (uploader) DO UPDATE
            SET files = files + 1, bytes = bytes + excluded.bytes;
        UPDATE usage_total SET files = files + 1, bytes = bytes + NEW.size;
    END;
    CREATE TRIGGER usage_sub_on_update AFTER UPDATE ON files WHEN OLD.deleted_at IS NULL
    BEGIN
        UPDATE usage SET files = files - 1, bytes = bytes - OLD.size
            WHERE uploader = OLD.uploader;
        DELETE FROM usage WHERE uploader = OLD.uploader AND files = 0;
        UPDATE usage_total SET files = files - 1, bytes = bytes - OLD.size;
    END;
    CREATE TRIGGER usage_sub_on_delete AFTER DELETE ON files WHEN OLD.deleted_at IS NULL
    BEGIN
        UPDATE usage SET files = files - 1, bytes = bytes - OLD.size
            WHERE uploader = OLD.uploader;
        DELETE FROM usage WHERE uploader = OLD.uploader AND files = 0;
        UPDATE usage_total SET files = files - 1, bytes = bytes - OLD.size;
    END;",
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
