//! The shared catalog: PostgreSQL, for several nodes on one database (`catalog.url =
//! "postgres://..."`). The same contract as the embedded SQLite catalog, exact across nodes:
//! create-only inserts and record creates rest on primary keys, compare-and-swap and leases
//! on single `UPDATE ... RETURNING` statements, claims on a transaction-scoped advisory lock,
//! sequences and lease tokens on rows and a sequence that only grow.
//!
//! Runtime: the trait is synchronous and its callers sit on tokio's blocking pool, so the
//! catalog owns a small tokio runtime of its own (two workers, `sluice-pg`) that drives the
//! connection pool and the removal feed. A call hands its future to that runtime and waits
//! for the answer on a plain channel: it works from any thread (a blocking-pool thread, a
//! plain thread, a test) and does not depend on, or panic in, the caller's runtime. Dropping
//! the catalog stops the runtime in the background, so that is safe anywhere too.
//!
//! Removals: a delete of a live row and every takedown `NOTIFY sluice_removed, path` in their
//! own transaction; [`PgCatalog::watch_removed`] feeds receivers from one `LISTEN` connection
//! per catalog (reconnected with back-off, pinged so that a dead peer is noticed).
//!
//! The schema lives in the database's search path (a database of its own is best); its
//! migrations are built in and run by [`PgCatalog::connect`] under an advisory lock, so nodes
//! starting together apply each one once. Connections are plain TCP (no TLS support here:
//! keep the database on a trusted network or a tunnel). The password, which may come from
//! the URL, `password_file` or `password_env`, is never logged, and the URL neither.
//!
//! Must not: see HTTP types, touch the files tree.

use std::future::Future;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls, Row};

use super::{
    Catalog, CatalogError, Claim, ClaimLimits, ClaimOutcome, DeleteReason, Entry, FileRow,
    ListQuery, Record, Stats, UploaderStats, Usage,
};
use crate::config::CatalogConfig;
use crate::storage::FileMeta;

/// Schema migrations, applied in order; `sluice_schema` records which ran. Text that is
/// ordered or ranged over is `COLLATE "C"` (byte order, as in SQLite), whatever the database's
/// locale.
const MIGRATIONS: &[&str] = &[
    // 1: files, flags and the shared state.
    r#"CREATE TABLE files (
        path TEXT COLLATE "C" PRIMARY KEY,
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        uploader TEXT COLLATE "C",
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        deleted_at BIGINT,
        delete_reason TEXT
    );
    CREATE INDEX files_expiry ON files (expires_at, path)
        WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
    CREATE INDEX files_uploader ON files (uploader, created_at);
    CREATE INDEX files_created ON files (created_at);
    CREATE TABLE flags (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE records (
        key TEXT COLLATE "C" PRIMARY KEY,
        value BYTEA NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE TABLE leases (
        name TEXT COLLATE "C" PRIMARY KEY,
        holder TEXT NOT NULL,
        token BIGINT NOT NULL,
        until_ms BIGINT NOT NULL
    );
    CREATE SEQUENCE lease_tokens AS BIGINT;
    CREATE TABLE seqs (name TEXT COLLATE "C" PRIMARY KEY, last BIGINT NOT NULL);
    CREATE TABLE claims (
        id TEXT COLLATE "C" PRIMARY KEY,
        uploader TEXT COLLATE "C",
        bytes BIGINT NOT NULL,
        until BIGINT NOT NULL
    );
    CREATE INDEX claims_uploader ON claims (uploader) WHERE uploader IS NOT NULL;"#,
];

/// Advisory lock keys ("sluice" and a number): schema migrations, space claims.
const MIGRATION_LOCK: i64 = 0x736c_7569_6365_0001;
const CLAIM_LOCK: i64 = 0x736c_7569_6365_0002;

/// The notification channel of removed paths.
const REMOVED_CHANNEL: &str = "sluice_removed";
/// PostgreSQL refuses notification payloads of 8000 bytes or more.
const NOTIFY_MAX: usize = 7_999;

/// Connections when `pool_size` is 0.
const DEFAULT_POOL: usize = 8;
/// Longest a call may take, waiting for a connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const POOL_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The removal feed pings its connection this often, and gives up on it after the timeout.
const FEED_PING: Duration = Duration::from_secs(15);
const FEED_PING_TIMEOUT: Duration = Duration::from_secs(10);
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long `watch_removed` waits for the feed's first `LISTEN`.
const FEED_READY_WAIT: Duration = Duration::from_secs(10);
/// Attempts of a delete that races an insert of the same path (see `delete`).
const DELETE_ATTEMPTS: usize = 8;
/// Attempts of a lease whose row keeps being released under it (see `lease`).
const LEASE_ATTEMPTS: usize = 8;

/// The catalog on PostgreSQL (see the module docs).
pub struct PgCatalog {
    pool: Pool,
    /// For the feed's own connection (not pooled: it keeps `LISTEN`ing).
    pg: tokio_postgres::Config,
    feed: Arc<Feed>,
    /// Last, so the pool's connections are dropped before their runtime stops.
    rt: OwnedRuntime,
}

/// The catalog's runtime; stopped without waiting when dropped (which is allowed on any
/// thread, an async one included).
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl OwnedRuntime {
    fn handle(&self) -> Result<&tokio::runtime::Handle, CatalogError> {
        self.0
            .as_ref()
            .map(tokio::runtime::Runtime::handle)
            .ok_or_else(|| CatalogError::Backend("catalog runtime stopped".into()))
    }
}

fn db(e: tokio_postgres::Error) -> CatalogError {
    if let Some(d) = e.as_db_error() {
        if *d.code() == SqlState::DISK_FULL {
            return CatalogError::NoSpace;
        }
        return CatalogError::Backend(d.to_string());
    }
    // "error connecting to server: Connection refused", "connection closed", ...
    match std::error::Error::source(&e) {
        Some(cause) => CatalogError::Backend(format!("{e}: {cause}")),
        None => CatalogError::Backend(e.to_string()),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> CatalogError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db(e),
        e => CatalogError::Backend(format!("catalog connection pool: {e}")),
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

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

fn record_of(r: &Row, first: usize) -> Result<Record, CatalogError> {
    Ok(Record {
        value: r.try_get(first).map_err(db)?,
        version: to_u64(r.try_get(first + 1).map_err(db)?),
    })
}

/// The reasons that take a path down for good.
fn takedown_reasons() -> Vec<&'static str> {
    DeleteReason::ALL
        .iter()
        .filter(|r| r.is_takedown())
        .map(|r| r.as_str())
        .collect()
}

/// The connection settings of `cfg`: its URL, the password from `password_file` or
/// `password_env` when set (in that order), else the URL's.
// The password file is read once, at start-up, outside the storage module (STYLE.md).
#[allow(clippy::disallowed_methods)]
fn pg_config(cfg: &CatalogConfig) -> Result<tokio_postgres::Config, CatalogError> {
    // The URL may hold a password: errors name the option at fault, never the URL.
    let mut pg: tokio_postgres::Config = cfg.url.parse().map_err(|e: tokio_postgres::Error| {
        let cause = std::error::Error::source(&e)
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        CatalogError::Backend(format!("catalog.url is not a PostgreSQL URL{cause}"))
    })?;
    if let Some(path) = &cfg.password_file {
        let password = std::fs::read_to_string(path).map_err(|e| {
            CatalogError::Backend(format!("catalog.password_file {}: {e}", path.display()))
        })?;
        pg.password(password.trim_end_matches(['\n', '\r']));
    } else if let Some(var) = &cfg.password_env {
        let password = std::env::var(var).map_err(|_| {
            CatalogError::Backend(format!(
                "catalog.password_env: environment variable {var} is not set"
            ))
        })?;
        pg.password(password);
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("sluice");
    }
    // Notice a dead peer in about a minute rather than the kernel's two hours.
    pg.keepalives_idle(Duration::from_secs(30));
    Ok(pg)
}

impl PgCatalog {
    /// Connect to the database of `cfg` (`url`, `password_file` / `password_env`, `pool_size`
    /// connections, 0 meaning 8) and bring its schema up to date. Synchronous: it blocks until
    /// the first connection is made and the migrations ran, and may be called from any thread
    /// (on an async thread, prefer `spawn_blocking`, as for every catalog call).
    pub fn connect(cfg: &CatalogConfig) -> Result<PgCatalog, CatalogError> {
        let pg = pg_config(cfg)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-pg")
            .enable_all()
            .build()
            .map_err(|e| CatalogError::Backend(format!("catalog runtime: {e}")))?;
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let size = if cfg.pool_size == 0 {
            DEFAULT_POOL
        } else {
            cfg.pool_size
        };
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| CatalogError::Backend(format!("catalog connection pool: {e}")))?;
        let catalog = PgCatalog {
            pool,
            pg,
            feed: Arc::default(),
            rt: OwnedRuntime(Some(rt)),
        };
        let pool = catalog.pool.clone();
        catalog.run(async move { migrate(&pool).await })?;
        Ok(catalog)
    }

    /// Run `f` on the catalog's runtime and wait for it (see the module docs).
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, CatalogError>> + Send + 'static,
    ) -> Result<T, CatalogError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.rt.handle()?.spawn(async move {
            let out = tokio::time::timeout(CALL_TIMEOUT, f)
                .await
                .unwrap_or_else(|_| Err(CatalogError::Backend("catalog call timed out".into())));
            let _ = tx.send(out);
        });
        rx.recv()
            .map_err(|_| CatalogError::Backend("catalog runtime stopped".into()))?
    }

    /// A pooled connection, then `f` on it, on the catalog's runtime.
    fn query<T: Send + 'static>(
        &self,
        sql: &'static str,
        params: Params,
        f: impl FnOnce(Vec<Row>) -> Result<T, CatalogError> + Send + 'static,
    ) -> Result<T, CatalogError> {
        let pool = self.pool.clone();
        self.run(async move {
            let c = pool.get().await.map_err(pool_err)?;
            let stmt = c.prepare_cached(sql).await.map_err(db)?;
            let refs = params.refs();
            f(c.query(&stmt, &refs).await.map_err(db)?)
        })
    }
}

/// Owned query parameters (a call's future must own what it sends).
struct Params(Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>);

impl Params {
    fn refs(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        self.0
            .iter()
            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect()
    }
}

macro_rules! params {
    ($($p:expr),* $(,)?) => {
        Params(vec![$(Box::new($p) as Box<dyn tokio_postgres::types::ToSql + Send + Sync>),*])
    };
}

/// Apply the missing migrations in one transaction under an advisory lock: a node that
/// starts while another migrates waits, then finds the work done.
async fn migrate(pool: &Pool) -> Result<(), CatalogError> {
    let mut c = pool.get().await.map_err(pool_err)?;
    let tx = c.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sluice_schema (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(db)?;
    let done: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM sluice_schema", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db)?;
    let done = usize::try_from(done).unwrap_or(0);
    if done > MIGRATIONS.len() {
        return Err(CatalogError::Backend(format!(
            "catalog schema version {done} is newer than this binary ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(done) {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(m).await.map_err(db)?;
        tx.execute(
            "INSERT INTO sluice_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db)?;
        tracing::info!(version, "catalog schema migrated");
    }
    tx.commit().await.map_err(db)
}

impl Catalog for PgCatalog {
    fn insert(&self, row: FileRow) -> Result<(), CatalogError> {
        let pool = self.pool.clone();
        self.run(async move {
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

    fn get(&self, path: &str) -> Result<Option<Entry>, CatalogError> {
        self.query(
            "SELECT path, size, sha256, content_type, uploader, created_at, expires_at, \
             deleted_at, delete_reason FROM files WHERE path = $1",
            params![path.to_owned()],
            |rows| rows.first().map(entry_of).transpose(),
        )
    }

    fn delete(
        &self,
        path: &str,
        reason: DeleteReason,
        at: u64,
    ) -> Result<Option<FileRow>, CatalogError> {
        let pool = self.pool.clone();
        let path = path.to_owned();
        self.run(async move {
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

    fn expired(&self, now: u64, limit: usize) -> Result<Vec<FileRow>, CatalogError> {
        self.query(
            "SELECT path, size, sha256, content_type, uploader, created_at, expires_at, \
             deleted_at, delete_reason FROM files WHERE deleted_at IS NULL \
             AND expires_at IS NOT NULL AND expires_at <= $1 \
             ORDER BY expires_at, path LIMIT $2",
            params![to_i64(now), to_i64(limit as u64)],
            |rows| rows_of(&rows),
        )
    }

    fn list(&self, q: &ListQuery) -> Result<Vec<FileRow>, CatalogError> {
        // A prefix is a range of paths: [prefix, prefix + U+10FFFF), as in SQLite.
        let lo = q.prefix.clone().unwrap_or_default();
        let hi = q.prefix.as_ref().map(|p| format!("{p}\u{10FFFF}"));
        self.query(
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

    fn stats(&self, top: usize) -> Result<Stats, CatalogError> {
        let pool = self.pool.clone();
        self.run(async move {
            let c = pool.get().await.map_err(pool_err)?;
            let totals = c
                .query_one(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM files \
                     WHERE deleted_at IS NULL",
                    &[],
                )
                .await
                .map_err(db)?;
            let top_uploaders = c
                .query(
                    "SELECT uploader, COUNT(*), SUM(size)::BIGINT FROM files \
                     WHERE deleted_at IS NULL AND uploader IS NOT NULL \
                     GROUP BY uploader ORDER BY SUM(size) DESC, uploader LIMIT $1",
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

    fn usage(&self, uploader: &str, since: u64) -> Result<Usage, CatalogError> {
        self.query(
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

    fn oldest_of(&self, uploader: &str, limit: usize) -> Result<Vec<FileRow>, CatalogError> {
        self.query(
            "SELECT path, size, sha256, content_type, uploader, created_at, expires_at, \
             deleted_at, delete_reason FROM files WHERE deleted_at IS NULL AND uploader = $1 \
             ORDER BY created_at, path LIMIT $2",
            params![uploader.to_owned(), to_i64(limit as u64)],
            |rows| rows_of(&rows),
        )
    }

    fn get_flag(&self, key: &str) -> Result<Option<String>, CatalogError> {
        self.query(
            "SELECT value FROM flags WHERE key = $1",
            params![key.to_owned()],
            |rows| rows.first().map(|r| r.try_get(0)).transpose().map_err(db),
        )
    }

    fn set_flag(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        self.query(
            "INSERT INTO flags (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key.to_owned(), value.to_owned()],
            |_| Ok(()),
        )
    }

    fn record_get(&self, key: &str) -> Result<Option<Record>, CatalogError> {
        self.query(
            "SELECT value, version FROM records WHERE key = $1",
            params![key.to_owned()],
            |rows| rows.first().map(|r| record_of(r, 0)).transpose(),
        )
    }

    fn record_put(
        &self,
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
            None => self.query(
                "INSERT INTO records (key, value, version) VALUES ($1, $2, 1) \
                 ON CONFLICT (key) DO NOTHING RETURNING version",
                params![key, value],
                version,
            ),
            Some(v) => self.query(
                "UPDATE records SET value = $2, version = version + 1 \
                 WHERE key = $1 AND version = $3 RETURNING version",
                params![key, value, to_i64(v)],
                version,
            ),
        }
    }

    fn record_delete(&self, key: &str) -> Result<(), CatalogError> {
        self.query(
            "DELETE FROM records WHERE key = $1",
            params![key.to_owned()],
            |_| Ok(()),
        )
    }

    fn record_list(&self, prefix: &str) -> Result<Vec<(String, Record)>, CatalogError> {
        let hi = format!("{prefix}\u{10FFFF}");
        self.query(
            "SELECT key, value, version FROM records WHERE key >= $1 AND key < $2 ORDER BY key",
            params![prefix.to_owned(), hi],
            |rows| {
                rows.iter()
                    .map(|r| Ok((r.try_get(0).map_err(db)?, record_of(r, 1)?)))
                    .collect()
            },
        )
    }

    fn lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
        steal: bool,
    ) -> Result<Option<u64>, CatalogError> {
        let pool = self.pool.clone();
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let (now, until) = (to_i64(now_ms), to_i64(now_ms.saturating_add(ttl_ms)));
        self.run(async move {
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

    fn lease_release(&self, name: &str, token: u64) -> Result<(), CatalogError> {
        self.query(
            "DELETE FROM leases WHERE name = $1 AND token = $2",
            params![name.to_owned(), to_i64(token)],
            |_| Ok(()),
        )
    }

    fn next_seq(&self, name: &str) -> Result<u64, CatalogError> {
        self.query(
            "INSERT INTO seqs (name, last) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET last = seqs.last + 1 RETURNING last",
            params![name.to_owned()],
            |rows| match rows.first() {
                Some(r) => Ok(to_u64(r.try_get(0).map_err(db)?)),
                None => Err(CatalogError::Backend("next_seq: no row".into())),
            },
        )
    }

    fn drop_seq(&self, name: &str) -> Result<(), CatalogError> {
        self.query(
            "DELETE FROM seqs WHERE name = $1",
            params![name.to_owned()],
            |_| Ok(()),
        )
    }

    fn claim(
        &self,
        c: &Claim,
        limits: ClaimLimits,
        now: u64,
    ) -> Result<ClaimOutcome, CatalogError> {
        let pool = self.pool.clone();
        let claim = c.clone();
        self.run(async move { claim_space(&pool, &claim, limits, to_i64(now)).await })
    }

    fn release_claim(&self, id: &str) -> Result<(), CatalogError> {
        self.query(
            "DELETE FROM claims WHERE id = $1",
            params![id.to_owned()],
            |_| Ok(()),
        )
    }

    fn watch_removed(&self) -> Option<mpsc::Receiver<String>> {
        let (tx, rx) = mpsc::channel();
        lock(&self.feed.watchers).push(tx);
        let start = {
            let mut s = lock(&self.feed.state);
            !std::mem::replace(&mut s.started, true)
        };
        if start {
            match self.rt.handle() {
                Ok(h) => {
                    h.spawn(feed_loop(self.pg.clone(), self.feed.clone()));
                }
                Err(_) => return None,
            }
        }
        // "From now on": removals after this returns reach `rx` once the feed listens.
        let s = lock(&self.feed.state);
        let (s, wait) = self
            .feed
            .changed
            .wait_timeout_while(s, FEED_READY_WAIT, |s| !s.listening)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if wait.timed_out() && !s.listening {
            tracing::warn!("catalog removal feed not listening yet; it keeps trying");
        }
        Some(rx)
    }
}

/// Check `c` against `limits` and record it if it fits, atomically across nodes: every
/// claim takes the same transaction-scoped advisory lock, so checks and inserts of claims
/// never interleave.
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
               (SELECT COALESCE(SUM(size), 0) FROM files WHERE deleted_at IS NULL) \
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
               (SELECT COALESCE(SUM(size), 0) FROM files \
                WHERE deleted_at IS NULL AND uploader = $3) \
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

/// The removal feed: the receivers of `watch_removed` and the state of its connection.
#[derive(Default)]
struct Feed {
    watchers: Mutex<Vec<mpsc::Sender<String>>>,
    state: Mutex<FeedState>,
    changed: Condvar,
}

#[derive(Default)]
struct FeedState {
    started: bool,
    listening: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Feed {
    fn set_listening(&self, on: bool) {
        lock(&self.state).listening = on;
        self.changed.notify_all();
    }

    /// Hand `path` to every watcher; forget those that hung up.
    fn publish(&self, path: &str) {
        lock(&self.watchers).retain(|w| w.send(path.to_owned()).is_ok());
    }
}

/// Keep one connection `LISTEN`ing, reconnecting with back-off, for the catalog's lifetime
/// (the runtime's shutdown ends it). Removals while it reconnects are missed.
async fn feed_loop(pg: tokio_postgres::Config, feed: Arc<Feed>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let e = listen(&pg, &feed).await;
        feed.set_listening(false);
        match e {
            // It listened, so the next attempt starts quickly.
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::warn!(error = %e, "catalog removal feed: connection lost"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(FEED_BACKOFF_MAX);
    }
}

/// One connection of the feed: `LISTEN`, then pass notifications on until it fails.
async fn listen(pg: &tokio_postgres::Config, feed: &Arc<Feed>) -> Result<(), CatalogError> {
    let (client, mut conn) = pg.connect(NoTls).await.map_err(db)?;
    let to = feed.clone();
    let mut driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => to.publish(n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(db(e)),
                None => return Ok(()),
            }
        }
    });
    let ready = client
        .batch_execute(&format!("LISTEN {REMOVED_CHANNEL}"))
        .await
        .map_err(db);
    if let Err(e) = ready {
        driver.abort();
        return Err(e);
    }
    feed.set_listening(true);
    let mut ping = tokio::time::interval(FEED_PING);
    ping.reset();
    let out = loop {
        tokio::select! {
            ended = &mut driver => {
                break match ended {
                    Ok(r) => r,
                    Err(e) => Err(CatalogError::Backend(format!("feed task: {e}"))),
                };
            }
            _ = ping.tick() => {
                match tokio::time::timeout(FEED_PING_TIMEOUT, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break Err(db(e)),
                    Err(_) => break Err(CatalogError::Backend("feed ping timed out".into())),
                }
            }
        }
    };
    driver.abort();
    out
}

/// Against a real server: `SLUICE_TEST_POSTGRES_URL` (see `tests/services/postgres.sh`)
/// names a role that may create databases; each test makes its own and drops it after.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::catalog::contract;

    const ENV: &str = "SLUICE_TEST_POSTGRES_URL";
    /// Bound on every wait for the removal feed.
    const FEED_WAIT: Duration = Duration::from_secs(10);

    /// A database of this test's own, dropped at the end.
    struct TestDb {
        admin: String,
        name: String,
        url: String,
    }

    fn try_admin_run(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
            let driver = tokio::spawn(conn);
            let out = client.batch_execute(sql).await;
            drop(client);
            let _ = driver.await;
            out
        })
    }

    fn admin_run(url: &str, sql: &str) {
        try_admin_run(url, sql).unwrap();
    }

    /// `url` with its database name replaced.
    fn with_db(url: &str, name: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let authority = match base[scheme_end..].find('/') {
            Some(i) => &base[..scheme_end + i],
            None => base,
        };
        match query {
            Some(q) => format!("{authority}/{name}?{q}"),
            None => format!("{authority}/{name}"),
        }
    }

    impl TestDb {
        /// `None` (and a line saying so) when no server is configured.
        fn new(tag: &str) -> Option<TestDb> {
            let Ok(admin) = std::env::var(ENV) else {
                eprintln!("skipped: {ENV} unset");
                return None;
            };
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "sluice_t_{tag}_{}_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                getrandom::u64().unwrap() % 1_000_000
            );
            // A collation that is not byte order where the server has ICU (PostgreSQL 15+),
            // so the schema's own collation is what the contract's ordering checks see.
            let icu = format!(
                "CREATE DATABASE {name} ENCODING 'UTF8' LOCALE_PROVIDER icu \
                 ICU_LOCALE 'en-US' LOCALE 'C' TEMPLATE template0"
            );
            if try_admin_run(&admin, &icu).is_err() {
                admin_run(&admin, &format!("CREATE DATABASE {name}"));
            }
            let url = with_db(&admin, &name);
            Some(TestDb { admin, name, url })
        }

        fn config(&self) -> CatalogConfig {
            CatalogConfig {
                url: self.url.clone(),
                pool_size: 4,
                ..CatalogConfig::default()
            }
        }

        fn node(&self) -> PgCatalog {
            PgCatalog::connect(&self.config()).unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            admin_run(
                &self.admin,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            );
        }
    }

    #[test]
    fn with_db_replaces_only_the_database_name() {
        assert_eq!(
            with_db("postgres://u:p@h:5/db?sslmode=disable", "x"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(with_db("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn postgres_passes_the_catalog_contract() {
        let Some(t) = TestDb::new("contract") else {
            return;
        };
        contract::run(&t.node());
    }

    #[test]
    fn nodes_starting_together_migrate_once() {
        let Some(t) = TestDb::new("migrate") else {
            return;
        };
        let cfg = t.config();
        let go = Arc::new(Barrier::new(4));
        let nodes: Vec<_> = (0..4)
            .map(|_| {
                let (cfg, go) = (cfg.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    PgCatalog::connect(&cfg).map(|_| ())
                })
            })
            .collect();
        for n in nodes {
            n.join().unwrap().unwrap();
        }
        // A restart finds the schema current and keeps the rows.
        let a = t.node();
        a.insert(contract::row("m/1", 1, 1, None, None)).unwrap();
        drop(a);
        assert!(t.node().get("m/1").unwrap().is_some());
    }

    /// Run `f(node, i)` on `n` threads at once, alternating between the two nodes.
    fn race<T: Send + 'static>(
        nodes: &[Arc<PgCatalog>; 2],
        n: usize,
        f: impl Fn(&PgCatalog, usize) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let go = Arc::new(Barrier::new(n));
        let f = Arc::new(f);
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let (node, go, f) = (nodes[i % 2].clone(), go.clone(), f.clone());
                std::thread::spawn(move || {
                    go.wait();
                    f(&node, i)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    fn two_nodes(t: &TestDb) -> [Arc<PgCatalog>; 2] {
        [Arc::new(t.node()), Arc::new(t.node())]
    }

    #[test]
    fn nodes_racing_one_path_publish_it_once() {
        let Some(t) = TestDb::new("insert") else {
            return;
        };
        let nodes = two_nodes(&t);
        let results = race(&nodes, 50, |c, i| {
            c.insert(contract::row("race/one", i as u64, 1, None, None))
        });
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert!(results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(CatalogError::Exists))));
        // Once expired, the path is free again, once.
        nodes[0]
            .delete("race/one", DeleteReason::Expired, 10)
            .unwrap()
            .unwrap();
        let again = race(&nodes, 20, |c, _| {
            c.insert(contract::row("race/one", 1, 11, None, None))
        });
        assert_eq!(again.iter().filter(|r| r.is_ok()).count(), 1);
        // Taken down while others insert: never both a live row and a takedown.
        let mixed = race(&nodes, 20, |c, i| {
            if i == 7 {
                c.delete("race/two", DeleteReason::Admin, 12).map(|_| ())
            } else {
                c.insert(contract::row("race/two", 1, 12, None, None))
            }
        });
        let e = nodes[1].get("race/two").unwrap().unwrap();
        assert_eq!(
            e.deleted.map(|d| d.0),
            Some(DeleteReason::Admin),
            "{mixed:?}"
        );
        assert!(matches!(
            nodes[0].insert(contract::row("race/two", 1, 13, None, None)),
            Err(CatalogError::TakenDown)
        ));
    }

    #[test]
    fn claims_racing_from_two_nodes_stay_within_the_limits() {
        let Some(t) = TestDb::new("claims") else {
            return;
        };
        let nodes = two_nodes(&t);
        let limits = ClaimLimits {
            total: Some(100),
            per_uploader: Some(30),
        };
        // A few rounds: an interleaving that breaks the limits shows up in one of them.
        for round in 0..4 {
            let results = race(&nodes, 40, move |c, i| {
                let uploader = (i % 4 < 2).then(|| "u@x".to_owned());
                let claim = Claim {
                    id: format!("r{round}c{i}"),
                    uploader: uploader.clone(),
                    bytes: 10,
                    until: 2_000,
                };
                (uploader, c.claim(&claim, limits, 1_000).unwrap())
            });
            let granted = |who: Option<&str>| {
                results
                    .iter()
                    .filter(|(u, o)| {
                        *o == ClaimOutcome::Granted && (who.is_none() || u.as_deref() == who)
                    })
                    .count()
            };
            // Twenty claims without an uploader are enough to fill the total exactly.
            assert_eq!(granted(None), 10, "{results:?}");
            assert!(granted(Some("u@x")) <= 3, "{results:?}");
            for (_, o) in &results {
                match *o {
                    ClaimOutcome::Granted => {}
                    ClaimOutcome::OverTotal { used } => assert!(used + 10 > 100 && used <= 100),
                    ClaimOutcome::OverUploader { used } => assert!(used + 10 > 30 && used <= 30),
                }
            }
            for i in 0..40 {
                nodes[i % 2]
                    .release_claim(&format!("r{round}c{i}"))
                    .unwrap();
            }
        }
    }

    #[test]
    fn leases_and_sequences_hold_across_nodes() {
        let Some(t) = TestDb::new("leases") else {
            return;
        };
        let nodes = two_nodes(&t);
        // One of many racing holders gets a free lease.
        let first = race(&nodes, 20, |c, i| {
            c.lease("w/1", &format!("h{i}"), 1_000, 500, false).unwrap()
        });
        let winners: Vec<_> = first.iter().flatten().collect();
        assert_eq!(winners.len(), 1, "{first:?}");
        let t1 = *winners[0];
        // Racing steals each get their own, larger token; the last one holds the lease.
        let steals: Vec<u64> = race(&nodes, 10, |c, i| {
            c.lease("w/1", &format!("s{i}"), 1_100, 500, true)
                .unwrap()
                .unwrap()
        });
        let mut sorted = steals.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
        assert!(sorted[0] > t1);
        let top = *sorted.last().unwrap();
        let holder = format!("s{}", steals.iter().position(|&s| s == top).unwrap());
        // The holder renews through the other node, keeping its token; stale releases from
        // either node leave it be.
        assert_eq!(
            nodes[1].lease("w/1", &holder, 1_200, 500, false).unwrap(),
            Some(top)
        );
        nodes[0].lease_release("w/1", t1).unwrap();
        nodes[1].lease_release("w/1", sorted[0]).unwrap();
        assert_eq!(nodes[0].lease("w/1", "x", 1_300, 500, false).unwrap(), None);
        // Expired: taken over from the other node with a larger token; released, the same.
        let t2 = nodes[0]
            .lease("w/1", "x", 1_700, 500, false)
            .unwrap()
            .unwrap();
        assert!(t2 > top);
        nodes[1].lease_release("w/1", t2).unwrap();
        let t3 = nodes[1]
            .lease("w/1", "y", 1_701, 500, false)
            .unwrap()
            .unwrap();
        assert!(t3 > t2);
        // A released lease raced for by many: one winner, above every earlier token.
        nodes[0].lease_release("w/1", t3).unwrap();
        let after = race(&nodes, 20, |c, i| {
            c.lease("w/1", &format!("r{i}"), 1_800, 500, false).unwrap()
        });
        let won: Vec<_> = after.iter().flatten().collect();
        assert_eq!(won.len(), 1, "{after:?}");
        assert!(*won[0] > t3);
        // Sequence numbers drawn from both nodes at once: 1..=200, each once.
        let mut drawn: Vec<u64> = race(&nodes, 8, |c, _| {
            (0..25)
                .map(|_| c.next_seq("parts/1").unwrap())
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect();
        drawn.sort_unstable();
        assert_eq!(drawn, (1..=200).collect::<Vec<_>>());
    }

    #[test]
    fn removals_on_one_node_reach_the_watchers_of_another() {
        let Some(t) = TestDb::new("feed") else {
            return;
        };
        let (a, b) = (t.node(), t.node());
        let w1 = b.watch_removed().unwrap();
        let w2 = b.watch_removed().unwrap();
        a.insert(contract::row("feed/x", 1, 1, None, None)).unwrap();
        a.delete("feed/x", DeleteReason::Admin, 2).unwrap();
        assert_eq!(w1.recv_timeout(FEED_WAIT).unwrap(), "feed/x");
        assert_eq!(w2.recv_timeout(FEED_WAIT).unwrap(), "feed/x");
        // Expiry of a live row, and a takedown of a path never stored.
        a.insert(contract::row("feed/y", 1, 1, None, Some(5)))
            .unwrap();
        a.delete("feed/y", DeleteReason::Expired, 6).unwrap();
        a.delete("feed/z", DeleteReason::Erasure, 7).unwrap();
        assert_eq!(w1.recv_timeout(FEED_WAIT).unwrap(), "feed/y");
        assert_eq!(w1.recv_timeout(FEED_WAIT).unwrap(), "feed/z");
        // A watcher that hung up does not stop the others.
        drop(w2);
        a.insert(contract::row("feed/w", 1, 1, None, None)).unwrap();
        a.delete("feed/w", DeleteReason::Removed, 8).unwrap();
        assert_eq!(w1.recv_timeout(FEED_WAIT).unwrap(), "feed/w");
    }

    #[test]
    fn the_feed_reconnects_after_losing_its_connection() {
        let Some(t) = TestDb::new("reconnect") else {
            return;
        };
        let (a, b) = (t.node(), t.node());
        let w = b.watch_removed().unwrap();
        // Cut the feed's connection, as a server restart or a network fault would.
        admin_run(
            &t.url,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND query LIKE 'LISTEN%'",
                t.name
            ),
        );
        // Removals go on until one arrives: those made while the feed reconnects are lost.
        let deadline = std::time::Instant::now() + FEED_WAIT;
        let mut n = 0;
        let got = loop {
            assert!(std::time::Instant::now() < deadline, "feed never came back");
            n += 1;
            let path = format!("rc/{n}");
            a.delete(&path, DeleteReason::Admin, 1).unwrap();
            if let Ok(p) = w.recv_timeout(Duration::from_millis(200)) {
                break p;
            }
        };
        assert!(got.starts_with("rc/"));
    }

    #[test]
    fn calls_work_from_any_thread_and_drop_anywhere() {
        let Some(t) = TestDb::new("threads") else {
            return;
        };
        // A plain thread, no runtime.
        let c = Arc::new(t.node());
        c.set_flag("f", "1").unwrap();
        // The blocking pool of another runtime, and even (blocking it) an async thread.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let c2 = c.clone();
        rt.block_on(async move {
            let c3 = c2.clone();
            let v = tokio::task::spawn_blocking(move || c3.get_flag("f").unwrap())
                .await
                .unwrap();
            assert_eq!(v.as_deref(), Some("1"));
            assert_eq!(c2.get_flag("f").unwrap().as_deref(), Some("1"));
            // The last handle dropped on an async thread: the catalog's runtime stops
            // without blocking, no panic.
            drop(c2);
        });
        drop(c);
        rt.block_on(async {
            let fresh = tokio::task::spawn_blocking({
                let cfg = t.config();
                move || PgCatalog::connect(&cfg).unwrap()
            })
            .await
            .unwrap();
            drop(fresh);
        });
    }

    #[test]
    // The test writes the password file that `connect` reads.
    #[allow(clippy::disallowed_methods)]
    fn passwords_come_from_a_file_or_the_environment_and_are_never_shown() {
        let Some(t) = TestDb::new("password") else {
            return;
        };
        let pg: tokio_postgres::Config = t.url.parse().unwrap();
        let Some(password) = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
        else {
            eprintln!("skipped: {ENV} has no password");
            return;
        };
        let bare = t.url.replacen(&format!(":{password}@"), "@", 1);
        assert_ne!(bare, t.url);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, format!("{password}\n")).unwrap();
        let cfg = CatalogConfig {
            url: bare.clone(),
            password_file: Some(file.clone()),
            ..t.config()
        };
        PgCatalog::connect(&cfg)
            .unwrap()
            .set_flag("pw", "file")
            .unwrap();
        let var = format!("SLUICE_TEST_PG_PASSWORD_{}", std::process::id());
        std::env::set_var(&var, &password);
        let cfg = CatalogConfig {
            url: bare.clone(),
            password_env: Some(var),
            ..t.config()
        };
        PgCatalog::connect(&cfg).unwrap();
        // A wrong password fails, and the error shows neither password.
        let wrong = "not-the-password-1234";
        std::fs::write(&file, wrong).unwrap();
        let cfg = CatalogConfig {
            url: bare,
            password_file: Some(file),
            ..t.config()
        };
        let e = PgCatalog::connect(&cfg).err().unwrap().to_string();
        assert!(!e.contains(wrong) && !e.contains(&password), "{e}");
        // Nor does a URL that does not parse.
        let e = PgCatalog::connect(&CatalogConfig {
            url: format!("{}?port=not-a-port", t.url),
            ..t.config()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(!e.contains(&password), "{e}");
    }
}
