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
//! PostgreSQL 11 or later (the trigger that keeps the live totals needs `EXECUTE FUNCTION`).
//!
//! Layout: `connect` (settings, pool, migrations, and the trigger that keeps the live
//! totals), `files` (file rows and flags), `shared` (records, leases, sequences, claims),
//! `feed` (the removal feed).
//!
//! Must not: see HTTP types, touch the files tree.

use std::future::Future;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::{
    Catalog, CatalogError, Claim, ClaimLimits, ClaimOutcome, DeleteReason, Entry, FileRow,
    ListQuery, Record, Stats, Usage,
};

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

mod connect;
mod feed;
mod files;
mod shared;

#[cfg(test)]
mod tests;

use feed::Feed;

/// Advisory lock keys ("sluice" and a number): schema migrations, space claims.
const MIGRATION_LOCK: i64 = 0x736c_7569_6365_0001;
const CLAIM_LOCK: i64 = 0x736c_7569_6365_0002;

/// Longest a call may take, waiting for a connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

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

impl PgCatalog {
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

impl Catalog for PgCatalog {
    fn insert(&self, row: FileRow) -> Result<(), CatalogError> {
        files::insert(self, row)
    }

    fn get(&self, path: &str) -> Result<Option<Entry>, CatalogError> {
        files::get(self, path)
    }

    fn delete(
        &self,
        path: &str,
        reason: DeleteReason,
        at: u64,
    ) -> Result<Option<FileRow>, CatalogError> {
        files::delete(self, path, reason, at)
    }

    fn expired(&self, now: u64, limit: usize) -> Result<Vec<FileRow>, CatalogError> {
        files::expired(self, now, limit)
    }

    fn list(&self, q: &ListQuery) -> Result<Vec<FileRow>, CatalogError> {
        files::list(self, q)
    }

    fn stats(&self, top: usize) -> Result<Stats, CatalogError> {
        files::stats(self, top)
    }

    fn usage(&self, uploader: &str, since: u64) -> Result<Usage, CatalogError> {
        files::usage(self, uploader, since)
    }

    fn oldest_of(&self, uploader: &str, limit: usize) -> Result<Vec<FileRow>, CatalogError> {
        files::oldest_of(self, uploader, limit)
    }

    fn get_flag(&self, key: &str) -> Result<Option<String>, CatalogError> {
        files::get_flag(self, key)
    }

    fn set_flag(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        files::set_flag(self, key, value)
    }

    fn record_get(&self, key: &str) -> Result<Option<Record>, CatalogError> {
        shared::record_get(self, key)
    }

    fn record_put(
        &self,
        key: &str,
        value: &[u8],
        expect: Option<u64>,
    ) -> Result<u64, CatalogError> {
        shared::record_put(self, key, value, expect)
    }

    fn record_delete(&self, key: &str) -> Result<(), CatalogError> {
        shared::record_delete(self, key)
    }

    fn record_list(&self, prefix: &str) -> Result<Vec<(String, Record)>, CatalogError> {
        shared::record_list(self, prefix)
    }

    fn lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
        steal: bool,
    ) -> Result<Option<u64>, CatalogError> {
        shared::lease(self, name, holder, now_ms, ttl_ms, steal)
    }

    fn lease_release(&self, name: &str, token: u64) -> Result<(), CatalogError> {
        shared::lease_release(self, name, token)
    }

    fn next_seq(&self, name: &str) -> Result<u64, CatalogError> {
        shared::next_seq(self, name)
    }

    fn drop_seq(&self, name: &str) -> Result<(), CatalogError> {
        shared::drop_seq(self, name)
    }

    fn claim(
        &self,
        c: &Claim,
        limits: ClaimLimits,
        now: u64,
    ) -> Result<ClaimOutcome, CatalogError> {
        shared::claim(self, c, limits, now)
    }

    fn release_claim(&self, id: &str) -> Result<(), CatalogError> {
        shared::release_claim(self, id)
    }

    fn watch_removed(&self) -> Option<mpsc::Receiver<String>> {
        feed::watch_removed(self)
    }
}
