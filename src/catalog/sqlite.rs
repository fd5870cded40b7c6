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
    RecordPut {
        key: String,
        value: Vec<u8>,
        expect: Option<u64>,
    },
    RecordDelete(String),
    Lease {
        name: String,
        holder: String,
        now_ms: u64,
        ttl_ms: u64,
        steal: bool,
    },
    LeaseRelease {
        name: String,
        token: u64,
    },
    NextSeq(String),
    DropSeq(String),
    Claim {
        claim: Claim,
        limits: ClaimLimits,
        now: u64,
    },
    ReleaseClaim(String),
}

enum Written {
    Done,
    Deleted(Option<FileRow>),
    Version(u64),
    Token(Option<u64>),
    Seq(u64),
    Claimed(ClaimOutcome),
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

/// One transaction for the whole batch; a failed commit fails every write in it. Each write
/// runs under its own savepoint, so one that fails half-way (a refused claim, a full disk)
/// leaves nothing behind in the shared commit.
fn apply_batch(
    conn: &mut Connection,
    batch: &[(Write, Reply)],
) -> Vec<Result<Written, CatalogError>> {
    let mut tx = match conn.transaction() {
        Ok(t) => t,
        Err(e) => {
            let e = backend(e);
            return batch.iter().map(|_| Err(clone_err(&e))).collect();
        }
    };
    let mut results: Vec<Result<Written, CatalogError>> = batch
        .iter()
        .map(|(w, _)| {
            let sp = tx.savepoint().map_err(backend)?;
            let r = apply(&sp, w)?;
            sp.commit().map_err(backend)?;
            Ok(r)
        })
        .collect();
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

fn apply(tx: &Connection, w: &Write) -> Result<Written, CatalogError> {
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
        Write::RecordPut { key, value, expect } => {
            record_put(tx, key, value, *expect).map(Written::Version)
        }
        Write::RecordDelete(key) => {
            tx.prepare_cached("DELETE FROM records WHERE key = ?1")
                .and_then(|mut s| s.execute([key]))
                .map_err(backend)?;
            Ok(Written::Done)
        }
        Write::Lease {
            name,
            holder,
            now_ms,
            ttl_ms,
            steal,
        } => lease(tx, name, holder, *now_ms, *ttl_ms, *steal).map(Written::Token),
        Write::LeaseRelease { name, token } => {
            tx.prepare_cached("DELETE FROM leases WHERE name = ?1 AND token = ?2")
                .and_then(|mut s| s.execute(params![name, to_i64(*token)]))
                .map_err(backend)?;
            Ok(Written::Done)
        }
        Write::NextSeq(name) => tx
            .prepare_cached(
                "INSERT INTO seqs (name, last) VALUES (?1, 1) \
                 ON CONFLICT (name) DO UPDATE SET last = last + 1 RETURNING last",
            )
            .and_then(|mut s| s.query_row([name], |r| r.get::<_, i64>(0)))
            .map(|n| Written::Seq(to_u64(n)))
            .map_err(backend),
        Write::DropSeq(name) => {
            tx.prepare_cached("DELETE FROM seqs WHERE name = ?1")
                .and_then(|mut s| s.execute([name]))
                .map_err(backend)?;
            Ok(Written::Done)
        }
        Write::Claim { claim, limits, now } => {
            claim_space(tx, claim, *limits, *now).map(Written::Claimed)
        }
        Write::ReleaseClaim(id) => {
            tx.prepare_cached("DELETE FROM claims WHERE id = ?1")
                .and_then(|mut s| s.execute([id]))
                .map_err(backend)?;
            Ok(Written::Done)
        }
    }
}

/// Create (`expect = None`) or compare-and-swap the record `key`; the new version.
fn record_put(
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

/// Grant, renew or refuse the lease `name` (the trait's rules); the writer thread makes it
/// atomic. A new grant takes the next value of the lease-token counter.
fn lease(
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

/// Check `c` against `limits` (live files plus unexpired claims other than `c.id` itself)
/// and record it if it fits; lapsed claims are pruned on the way.
fn claim_space(
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
                "SELECT (SELECT COALESCE(SUM(size), 0) FROM files WHERE deleted_at IS NULL) \
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
                "SELECT (SELECT COALESCE(SUM(size), 0) FROM files \
                         WHERE deleted_at IS NULL AND uploader = ?3) \
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
            _ => Err(unexpected()),
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

    fn record_get(&self, key: &str) -> Result<Option<Record>, CatalogError> {
        self.read(|c| {
            c.prepare_cached("SELECT value, version FROM records WHERE key = ?1")?
                .query_row([key], |r| {
                    Ok(Record {
                        value: r.get(0)?,
                        version: to_u64(r.get(1)?),
                    })
                })
                .optional()
        })
    }

    fn record_put(
        &self,
        key: &str,
        value: &[u8],
        expect: Option<u64>,
    ) -> Result<u64, CatalogError> {
        match self.write(Write::RecordPut {
            key: key.to_owned(),
            value: value.to_vec(),
            expect,
        })? {
            Written::Version(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    fn record_delete(&self, key: &str) -> Result<(), CatalogError> {
        self.write(Write::RecordDelete(key.to_owned())).map(|_| ())
    }

    fn record_list(&self, prefix: &str) -> Result<Vec<(String, Record)>, CatalogError> {
        // The same range as `list`'s prefix: [prefix, prefix + U+10FFFF).
        let hi = format!("{prefix}\u{10FFFF}");
        self.read(|c| {
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
        })
    }

    fn lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
        steal: bool,
    ) -> Result<Option<u64>, CatalogError> {
        match self.write(Write::Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            now_ms,
            ttl_ms,
            steal,
        })? {
            Written::Token(t) => Ok(t),
            _ => Err(unexpected()),
        }
    }

    fn lease_release(&self, name: &str, token: u64) -> Result<(), CatalogError> {
        self.write(Write::LeaseRelease {
            name: name.to_owned(),
            token,
        })
        .map(|_| ())
    }

    fn next_seq(&self, name: &str) -> Result<u64, CatalogError> {
        match self.write(Write::NextSeq(name.to_owned()))? {
            Written::Seq(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    fn drop_seq(&self, name: &str) -> Result<(), CatalogError> {
        self.write(Write::DropSeq(name.to_owned())).map(|_| ())
    }

    fn claim(
        &self,
        c: &Claim,
        limits: ClaimLimits,
        now: u64,
    ) -> Result<ClaimOutcome, CatalogError> {
        match self.write(Write::Claim {
            claim: c.clone(),
            limits,
            now,
        })? {
            Written::Claimed(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    fn release_claim(&self, id: &str) -> Result<(), CatalogError> {
        self.write(Write::ReleaseClaim(id.to_owned())).map(|_| ())
    }
}

/// The writer answered a write with another write's kind of result (a bug).
fn unexpected() -> CatalogError {
    CatalogError::Backend("catalog writer answered with the wrong kind of result".into())
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

    #[test]
    fn tokens_and_sequences_keep_growing_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.sqlite3");
        let (token, seq) = {
            let c = SqliteCatalog::open(&p, true).unwrap();
            let t = c.lease("up/1", "n1", 1_000, 100, false).unwrap().unwrap();
            c.lease_release("up/1", t).unwrap();
            c.next_seq("parts/1").unwrap();
            (t, c.next_seq("parts/1").unwrap())
        };
        let c = SqliteCatalog::open(&p, true).unwrap();
        assert!(c.lease("up/1", "n2", 1_001, 100, false).unwrap().unwrap() > token);
        assert_eq!(c.next_seq("parts/1").unwrap(), seq + 1);
    }

    #[test]
    fn concurrent_swaps_of_one_version_let_exactly_one_win() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::sync::Arc::new(
            SqliteCatalog::open(&dir.path().join("catalog.sqlite3"), false).unwrap(),
        );
        c.record_put("k", b"v", None).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (
                        c.record_put("k", b"w", Some(1)).is_ok(),
                        c.record_put(&format!("k{i}"), b"v", None).is_ok(),
                    )
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.0).count(), 1);
        assert!(results.iter().all(|r| r.1));
        assert_eq!(c.record_get("k").unwrap().unwrap().version, 2);
    }
}
