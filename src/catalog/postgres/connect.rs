//! Connecting: the settings from `[catalog]`, the pool, and the schema brought up to date
//! under an advisory lock.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::{db, pool_err, OwnedRuntime, PgCatalog, MIGRATION_LOCK};
use crate::catalog::CatalogError;
use crate::config::CatalogConfig;

/// Schema migrations, applied in order; `sluice_schema` records which ran. Text that is
/// ordered or ranged over is `COLLATE "C"` (byte order, as in SQLite), whatever the database's
/// locale.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 2: live totals, per uploader (`usage`, a row while the uploader has a live file) and
    // overall (`usage_total`), so that claims and stats read a few rows instead of summing
    // every file. A trigger keeps them in the transaction of every write to `files` (a row
    // that stops being live is taken off, one that becomes live added), whichever statement
    // or node (an older binary during an upgrade included) made it. The overall total is
    // spread over 16 slots, each writer adding to the slot of its backend, so that writers
    // on different connections seldom wait for one row's lock; the total is their sum.
    // `files` is locked against writes first, so the totals filled in from its rows miss
    // none made while this runs.
    r#"LOCK TABLE files IN SHARE ROW EXCLUSIVE MODE;
    CREATE TABLE usage (
        uploader TEXT COLLATE "C" PRIMARY KEY,
        files BIGINT NOT NULL,
        bytes BIGINT NOT NULL
    );
    CREATE TABLE usage_total (
        slot INTEGER PRIMARY KEY,
        files BIGINT NOT NULL,
        bytes BIGINT NOT NULL
    );
    INSERT INTO usage (uploader, files, bytes)
        SELECT uploader, COUNT(*), SUM(size) FROM files
        WHERE deleted_at IS NULL AND uploader IS NOT NULL GROUP BY uploader;
    INSERT INTO usage_total (slot, files, bytes)
        SELECT s, 0, 0 FROM generate_series(0, 15) AS s;
    UPDATE usage_total SET (files, bytes) =
        (SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE deleted_at IS NULL)
        WHERE slot = 0;
    CREATE FUNCTION sluice_usage_add(who TEXT, d_files BIGINT, d_bytes BIGINT)
    RETURNS VOID LANGUAGE plpgsql AS $$
    BEGIN
        IF who IS NOT NULL THEN
            INSERT INTO usage AS u (uploader, files, bytes) VALUES (who, d_files, d_bytes)
                ON CONFLICT (uploader) DO UPDATE
                SET files = u.files + d_files, bytes = u.bytes + d_bytes;
            IF d_files < 0 THEN
                DELETE FROM usage WHERE uploader = who AND files = 0;
            END IF;
        END IF;
        UPDATE usage_total SET files = files + d_files, bytes = bytes + d_bytes
            WHERE slot = pg_backend_pid() % 16;
    END $$;
    CREATE FUNCTION sluice_files_usage() RETURNS TRIGGER LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            IF OLD.deleted_at IS NULL THEN
                PERFORM sluice_usage_add(OLD.uploader, -1, -OLD.size);
            END IF;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            IF NEW.deleted_at IS NULL THEN
                PERFORM sluice_usage_add(NEW.uploader, 1, NEW.size);
            END IF;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER files_usage AFTER INSERT OR UPDATE OR DELETE ON files
        FOR EACH ROW EXECUTE FUNCTION sluice_files_usage();"#,
];

/// Connections when `pool_size` is 0.
const DEFAULT_POOL: usize = 8;
const POOL_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
