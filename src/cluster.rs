//! Several nodes on one shared catalog (PostgreSQL) and one object store: who this node is,
//! the chores only one node does at a time (leases), and the removal feed that keeps every
//! node's caches honest.
//!
//! Must not: see HTTP types. Catalog calls block: they run on the blocking pool here.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::storage::Store;

/// This node in the cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Names this node in leases and logs.
    pub node: String,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
}

impl Cluster {
    /// The cluster of `config`, when its catalog is shared.
    pub fn from_config(config: &Config) -> Option<Self> {
        if !config.catalog.is_shared() {
            return None;
        }
        let node = if config.cluster.node_id.is_empty() {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "node".into());
            format!("{host}-{}", std::process::id())
        } else {
            config.cluster.node_id.clone()
        };
        Some(Self {
            node,
            lease_ttl: config.cluster.lease_ttl,
        })
    }

    /// The lease time in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Take or renew the chore lease `name` for this node: whether this node holds it now.
    /// A failing catalog counts as not held (the chore waits for the next round).
    pub async fn hold(&self, storage: &Arc<dyn Store>, name: &'static str, now_ms: u64) -> bool {
        let (node, ttl) = (self.node.clone(), self.ttl_ms());
        match crate::storage::on_catalog(storage, move |c| c.lease(name, &node, now_ms, ttl, false))
            .await
        {
            Ok(held) => held.is_some(),
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "taking a chore lease");
                false
            }
        }
    }
}

/// Feed every path removed by any node (expiry, deletion, takedown) to `forget`, until
/// `stop`: a takedown on one node stops every node serving the file from its caches at once.
/// Nothing to do where the catalog has no removal feed (one node).
pub fn watch_removals<F>(catalog: &dyn Catalog, stop: CancellationToken, forget: F)
where
    F: Fn(&str) + Send + 'static,
{
    let Some(rx) = catalog.watch_removed() else {
        return;
    };
    std::thread::Builder::new()
        .name("sluice-removals".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(path) => forget(&path),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .map(drop)
        .unwrap_or_else(|e| tracing::error!(error = %e, "starting the removal watcher"));
}
