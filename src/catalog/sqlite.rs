//! The embedded catalog: SQLite (bundled, so nothing is installed) in WAL mode, its file under
//! `storage.dir`. One writer thread applies every write; the inserts of concurrent uploads that
//! queue while a commit is running share the next commit (one fsync for all of them). Reads use
//! their own connections and never wait for the writer.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    Catalog, CatalogError, Claim, ClaimLimits, ClaimOutcome, DeleteReason, Entry, FileRow,
    ListQuery, Record, Stats, UploaderStats, Usage,
};
use crate::storage::FileMeta;

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
];

/// Most writes committed together.
const BATCH_MAX: usize = 256;
/// Reader connections kept open.
const READERS_MAX: usize = 8;

enum Write {
    Insert(FileRow),
    Delete {
        path: String,
        reason: DeleteReason,
        at: u64,
    },
    Flag(String, String),
}

enum Written {
    Done,
    Deleted(Option<FileRow>),
}

type Reply = mpsc::SyncSender<Result<Written, CatalogError>>;

pub struct SqliteCatalog {
    path: std::path::PathBuf,
    writer: Mutex<mpsc::Sender<(Write, Reply)>>,
    readers: Mutex<Vec<Connection>>,
}

fn backend(e: rusqlite::Error) -> CatalogError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.code == rusqlite::ErrorCode::DiskFull {
            return CatalogError::NoSpace;
        }
    }
    CatalogError::Backend(e.to_string())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

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

/// Page cache of each reader connection: point lookups and short pages need little, and up to
/// `READERS_MAX` of them stay open (SQLite's default is 2 MiB each).
const READER_CACHE_KIB: u32 = 512;

fn open_conn(path: &Path, durable: bool) -> Result<Connection, CatalogError> {
    let c = Connection::open(path).map_err(backend)?;
    c.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend)?;
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA foreign_keys = ON;",
        if durable { "FULL" } else { "NORMAL" }
    ))
    .map_err(backend)?;
    Ok(c)
}

impl SqliteCatalog {
    /// Open (creating and migrating) the catalog at `path`. `durable`: every commit is fsynced
    /// before it returns (`storage.durability = "fsync"`).
    pub fn open(path: &Path, durable: bool) -> Result<Self, CatalogError> {
        let mut conn = open_conn(path, durable)?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel::<(Write, Reply)>();
        std::thread::Builder::new()
            .name("sluice-catalog".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| CatalogError::Backend(e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            writer: Mutex::new(tx),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn write(&self, w: Write) -> Result<Written, CatalogError> {
        let (reply, wait) = mpsc::sync_channel(1);
        self.writer
            .lock()
            .map_err(|_| CatalogError::Backend("writer lock poisoned".into()))?
            .send((w, reply))
            .map_err(|_| CatalogError::Backend("catalog writer stopped".into()))?;
        wait.recv()
            .map_err(|_| CatalogError::Backend("catalog writer stopped".into()))?
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, CatalogError> {
        let conn = self.readers.lock().ok().and_then(|mut r| r.pop());
        let conn = match conn {
            Some(c) => c,
            // Readers need no fsync of their own.
            None => {
                let c = open_conn(&self.path, false)?;
                c.execute_batch(&format!("PRAGMA cache_size = -{READER_CACHE_KIB};"))
                    .map_err(backend)?;
                c
            }
        };
        let out = f(&conn).map_err(backend);
        if let Ok(mut r) = self.readers.lock() {
            if r.len() < READERS_MAX {
                r.push(conn);
            }
        }
        out
    }
}

fn migrate(conn: &mut Connection) -> Result<(), CatalogError> {
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

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<(Write, Reply)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let results = apply_batch(&mut conn, &batch);
        for ((_, reply), r) in batch.into_iter().zip(results) {
            let _ = reply.send(r);
        }
    }
}

/// One transaction for the whole batch; a failed commit fails every write in it.
fn apply_batch(
    conn: &mut Connection,
    batch: &[(Write, Reply)],
) -> Vec<Result<Written, CatalogError>> {
    let tx = match conn.transaction() {
        Ok(t) => t,
        Err(e) => {
            let e = backend(e);
            return batch.iter().map(|_| Err(clone_err(&e))).collect();
        }
    };
    let mut results: Vec<Result<Written, CatalogError>> =
        batch.iter().map(|(w, _)| apply(&tx, w)).collect();
    if let Err(e) = tx.commit() {
        let e = backend(e);
        results = batch.iter().map(|_| Err(clone_err(&e))).collect();
    }
    results
}

fn clone_err(e: &CatalogError) -> CatalogError {
    match e {
        CatalogError::Exists => CatalogError::Exists,
        CatalogError::TakenDown => CatalogError::TakenDown,
        CatalogError::NoSpace => CatalogError::NoSpace,
        CatalogError::Conflict => CatalogError::Conflict,
        CatalogError::Backend(s) => CatalogError::Backend(s.clone()),
    }
}

fn apply(tx: &rusqlite::Transaction<'_>, w: &Write) -> Result<Written, CatalogError> {
    match w {
        Write::Insert(row) => {
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
            Ok(Written::Done)
        }
        Write::Delete { path, reason, at } => {
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
                    .and_then(|mut s| s.execute(params![path, to_i64(*at), reason.as_str()]))
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
                    .and_then(|mut s| s.execute(params![path, to_i64(*at), reason.as_str()]))
                    .map_err(backend)?;
                }
                None => {}
            }
            Ok(Written::Deleted(live.map(|e| e.row)))
        }
        Write::Flag(k, v) => {
            tx.prepare_cached(
                "INSERT INTO flags (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute(params![k, v]))
            .map_err(backend)?;
            Ok(Written::Done)
        }
    }
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

impl Catalog for SqliteCatalog {
    fn insert(&self, row: FileRow) -> Result<(), CatalogError> {
        self.write(Write::Insert(row)).map(|_| ())
    }

    fn get(&self, path: &str) -> Result<Option<Entry>, CatalogError> {
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM files WHERE path = ?1"))?
                .query_row([path], row_of)
                .optional()
        })
    }

    fn delete(
        &self,
        path: &str,
        reason: DeleteReason,
        at: u64,
    ) -> Result<Option<FileRow>, CatalogError> {
        match self.write(Write::Delete {
            path: path.to_owned(),
            reason,
            at,
        })? {
            Written::Deleted(r) => Ok(r),
            Written::Done => Ok(None),
        }
    }

    fn expired(&self, now: u64, limit: usize) -> Result<Vec<FileRow>, CatalogError> {
        self.read(|c| {
            collect(
                c,
                &format!(
                    "SELECT {COLUMNS} FROM files WHERE deleted_at IS NULL AND expires_at IS NOT \
                     NULL AND expires_at <= ?1 ORDER BY expires_at, path LIMIT ?2"
                ),
                &[&to_i64(now), &to_i64(limit as u64)],
            )
        })
    }

    fn list(&self, q: &ListQuery) -> Result<Vec<FileRow>, CatalogError> {
        // A prefix is a range of paths: [prefix, prefix + U+10FFFF).
        let lo = q.prefix.clone().unwrap_or_default();
        let hi = q.prefix.as_ref().map(|p| format!("{p}\u{10FFFF}"));
        let after = q.after.clone().unwrap_or_default();
        self.read(|c| {
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
        })
    }

    fn stats(&self, top: usize) -> Result<Stats, CatalogError> {
        self.read(|c| {
            let (files, bytes): (i64, i64) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE deleted_at IS NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut s = c.prepare_cached(
                "SELECT uploader, COUNT(*), SUM(size) FROM files \
                 WHERE deleted_at IS NULL AND uploader IS NOT NULL \
                 GROUP BY uploader ORDER BY SUM(size) DESC, uploader LIMIT ?1",
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
        })
    }

    fn usage(&self, uploader: &str, since: u64) -> Result<Usage, CatalogError> {
        self.read(|c| {
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
        })
    }

    fn oldest_of(&self, uploader: &str, limit: usize) -> Result<Vec<FileRow>, CatalogError> {
        self.read(|c| {
            collect(
                c,
                &format!(
                    "SELECT {COLUMNS} FROM files WHERE deleted_at IS NULL AND uploader = ?1 \
                     ORDER BY created_at, path LIMIT ?2"
                ),
                &[&uploader, &to_i64(limit as u64)],
            )
        })
    }

    fn get_flag(&self, key: &str) -> Result<Option<String>, CatalogError> {
        self.read(|c| {
            c.query_row("SELECT value FROM flags WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    fn set_flag(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        self.write(Write::Flag(key.to_owned(), value.to_owned()))
            .map(|_| ())
    }

    // STUBS (being implemented): shared-state methods.
    fn record_get(&self, _key: &str) -> Result<Option<Record>, CatalogError> {
        Err(stub())
    }
    fn record_put(&self, _k: &str, _v: &[u8], _e: Option<u64>) -> Result<u64, CatalogError> {
        Err(stub())
    }
    fn record_delete(&self, _key: &str) -> Result<(), CatalogError> {
        Err(stub())
    }
    fn record_list(&self, _prefix: &str) -> Result<Vec<(String, Record)>, CatalogError> {
        Err(stub())
    }
    fn lease(
        &self,
        _n: &str,
        _h: &str,
        _now: u64,
        _ttl: u64,
        _s: bool,
    ) -> Result<Option<u64>, CatalogError> {
        Err(stub())
    }
    fn lease_release(&self, _name: &str, _token: u64) -> Result<(), CatalogError> {
        Err(stub())
    }
    fn next_seq(&self, _name: &str) -> Result<u64, CatalogError> {
        Err(stub())
    }
    fn drop_seq(&self, _name: &str) -> Result<(), CatalogError> {
        Err(stub())
    }
    fn claim(&self, _c: &Claim, _l: ClaimLimits, _now: u64) -> Result<ClaimOutcome, CatalogError> {
        Err(stub())
    }
    fn release_claim(&self, _id: &str) -> Result<(), CatalogError> {
        Err(stub())
    }
}

fn stub() -> CatalogError {
    CatalogError::Backend("not implemented yet".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_passes_the_catalog_contract() {
        let dir = tempfile::tempdir().unwrap();
        let c = SqliteCatalog::open(&dir.path().join("catalog.sqlite3"), false).unwrap();
        super::super::contract::run(&c);
    }

    #[test]
    fn reopening_keeps_rows_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.sqlite3");
        {
            let c = SqliteCatalog::open(&p, true).unwrap();
            c.insert(super::super::contract::row("a/b", 3, 10, None, None))
                .unwrap();
        }
        let c = SqliteCatalog::open(&p, true).unwrap();
        assert_eq!(c.get("a/b").unwrap().unwrap().row.meta.size, 3);
    }

    #[test]
    fn concurrent_inserts_share_commits_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::sync::Arc::new(
            SqliteCatalog::open(&dir.path().join("catalog.sqlite3"), true).unwrap(),
        );
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        c.insert(super::super::contract::row(
                            &format!("t{t}/f{i}"),
                            1,
                            1,
                            None,
                            None,
                        ))
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.stats(0).unwrap().files, 200);
    }
}
