//! Sessions across nodes: when several nodes share the catalog (PostgreSQL), a session's state
//! is the versioned catalog record `session:<id>` (any node finds it; every write expects the
//! version this node last saw, so a writer that another node overtook cannot record), and each
//! upload has one writer across nodes: the lease `upload:<id>`, renewed while the writer runs,
//! stolen by a newer request (a client that reconnected, through another node), taken over
//! from a dead node when it expires. The running SHA-256 travels in the record
//! ([`SessionMeta::hash_state`]), so no node reads the bytes back to continue it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sha2::digest::common::hazmat::SerializableState;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::{Session, SessionError, SessionMeta, SessionStore};
use crate::catalog::CatalogError;
pub use crate::cluster::Cluster;
use crate::storage::StorageError;

/// A held writer lease: renewed by a task until dropped, then released.
pub struct LeaseHold {
    stop: CancellationToken,
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn key(id: &str) -> String {
    format!("session:{id}")
}

/// The running hash, serialized (hex).
pub(super) fn save_hash(h: &Sha256) -> String {
    hex::encode(h.serialize())
}

/// A hash saved by [`save_hash`]; `None` if it does not parse.
pub(super) fn load_hash(s: &str) -> Option<Sha256> {
    let raw = hex::decode(s).ok()?;
    let arr = raw.as_slice().try_into().ok()?;
    Sha256::deserialize(arr).ok()
}

fn now_ms(store: &SessionStore) -> u64 {
    store.clock.now_millis()
}

impl SessionStore {
    /// Run a catalog call on the blocking pool.
    async fn catalog<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn crate::catalog::Catalog) -> Result<T, CatalogError> + Send + 'static,
    {
        crate::storage::on_catalog(&self.storage, f).await
    }

    /// The shared state of session `id` and its version.
    pub(super) async fn load_shared(
        &self,
        id: &str,
    ) -> Result<Option<(SessionMeta, u64)>, SessionError> {
        let k = key(id);
        let Some(r) = self.catalog(move |c| c.record_get(&k)).await? else {
            return Ok(None);
        };
        let meta = serde_json::from_slice::<SessionMeta>(&r.value)
            .map_err(|e| SessionError::Internal(format!("session state: {e}")))?;
        Ok(Some((meta, r.version)))
    }

    /// Write the shared state of `meta`: create it (`s = None`) or replace the version `s`
    /// last saw. Another node's write in between: [`StorageError::Superseded`].
    pub(super) async fn put_shared(
        &self,
        s: Option<&Session>,
        meta: &SessionMeta,
    ) -> Result<u64, StorageError> {
        let json = serde_json::to_vec(meta).map_err(|e| StorageError::Io(e.into()))?;
        let k = key(&meta.id);
        let expect = s.map(|s| s.version.load(Ordering::Acquire));
        let v = self
            .catalog(move |c| c.record_put(&k, &json, expect))
            .await?;
        if let Some(s) = s {
            s.version.store(v, Ordering::Release);
        }
        Ok(v)
    }

    pub(super) async fn delete_shared(&self, id: &str) {
        let k = key(id);
        if let Err(e) = self.catalog(move |c| c.record_delete(&k)).await {
            tracing::warn!(session = %id, error = %e, "deleting shared session state");
        }
    }

    /// Bring a live session up to the shared state: `false` if the state is gone. When
    /// another node wrote since, the in-memory hash is stale and the caller drops it.
    pub(super) async fn refresh(&self, s: &Session) -> Result<Option<bool>, SessionError> {
        let Some((meta, version)) = self.load_shared(&s.id).await? else {
            return Ok(None);
        };
        let changed = s.version.swap(version, Ordering::AcqRel) != version;
        if changed {
            if let Ok(mut cur) = s.meta.lock() {
                *cur = meta;
            }
        }
        Ok(Some(changed))
    }

    /// Become the one writer of `s` across nodes: take the lease `upload:<id>` (stealing it
    /// with `take_over`; otherwise waiting for it, at most one lease time), renewed every
    /// third of the lease time until the hold is dropped. A renewal that finds the lease
    /// taken cancels `writer` (the request stops; its state write would be refused anyway).
    pub(super) async fn take_lease(
        self: &Arc<Self>,
        cluster: &Cluster,
        s: &Session,
        take_over: bool,
        writer: CancellationToken,
    ) -> Result<LeaseHold, SessionError> {
        let name = format!("upload:{}", s.id);
        let holder = format!("{}/{}", cluster.node, super::new_id()?);
        let ttl = cluster.ttl_ms();
        let started = std::time::Instant::now();
        let token = loop {
            let steal = take_over || started.elapsed() >= cluster.lease_ttl;
            let (n, h, now) = (name.clone(), holder.clone(), now_ms(self));
            if let Some(t) = self
                .catalog(move |c| c.lease(&n, &h, now, ttl, steal))
                .await?
            {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let stop = CancellationToken::new();
        let (store, every, stop2) = (self.clone(), cluster.lease_ttl / 3, stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let (n, h, now) = (name.clone(), holder.clone(), now_ms(&store));
                match store
                    .catalog(move |c| c.lease(&n, &h, now, ttl, false))
                    .await
                {
                    Ok(Some(t)) if t == token => {}
                    Ok(_) => {
                        writer.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing an upload lease"),
                }
            }
            let n = name.clone();
            let _ = store.catalog(move |c| c.lease_release(&n, token)).await;
        });
        Ok(LeaseHold { stop })
    }

    /// Remove every expired session of every node, if this node holds the sweeper lease
    /// (`sweep:sessions`; held by one node at a time, taken over when its holder dies).
    pub(super) async fn sweep_shared(self: &Arc<Self>) -> Result<usize, SessionError> {
        let Some(cluster) = &self.shared else {
            return Ok(0);
        };
        // Every node forgets the expired sessions it looked up (the lease holder below
        // deletes their state and data), so its map holds only live ones.
        let now = self.now();
        if let Ok(mut l) = self.live.lock() {
            l.retain(|_, s| s.meta().expires_at >= now);
            self.metrics.open.set(l.len() as i64);
        }
        if !cluster
            .hold(&self.storage, "sweep:sessions", now_ms(self))
            .await
        {
            return Ok(0);
        }
        let records = self.catalog(|c| c.record_list("session:")).await?;
        let mut removed = 0;
        for (k, r) in records {
            let Some(id) = k.strip_prefix("session:") else {
                continue;
            };
            let expired = serde_json::from_slice::<SessionMeta>(&r.value)
                .map(|m| m.expires_at < now)
                .unwrap_or(true);
            if !expired {
                continue;
            }
            self.delete_files(id).await;
            self.metrics
                .events
                .with_label_values(&[protocol_label(&r.value), "expired"])
                .inc();
            removed += 1;
        }
        Ok(removed)
    }
}

/// The protocol label of a session's state (for the expiry metric).
fn protocol_label(state: &[u8]) -> &'static str {
    serde_json::from_slice::<SessionMeta>(state).map_or("tus", |m| m.protocol.label())
}
