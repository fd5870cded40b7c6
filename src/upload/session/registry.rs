//! The session registry: the live sessions by id, creation under the open-session cap, lookup
//! (expired ones answer "gone"), the single writer of each session, removal and the expiry
//! sweeper.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{
    is_session_id, new_id, NewSession, Protocol, Session, SessionError, SessionMeta, SessionStore,
    WriteGuard, TOMBSTONES_MAX,
};

impl SessionStore {
    /// Unfinished sessions (finished ones only linger to answer HEAD; they hold no data).
    pub fn open_count(&self) -> usize {
        self.live
            .lock()
            .map(|l| l.values().filter(|s| !s.meta().completed).count())
            .unwrap_or(0)
    }

    /// Partial (concatenation) uploads open for `target`, finished or not.
    pub fn partials_for_target(&self, target: &str) -> usize {
        self.live
            .lock()
            .map(|l| {
                l.values()
                    .filter(|s| {
                        let m = s.meta();
                        m.partial && m.target.as_deref() == Some(target)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// The unfinished session already open for `target` by `protocol`, if any.
    pub fn open_for_target(&self, target: &str, protocol: Protocol) -> Option<Arc<Session>> {
        self.live.lock().ok().and_then(|l| {
            l.values()
                .find(|s| {
                    let m = s.meta();
                    !m.completed
                        && !m.partial
                        && m.protocol == protocol
                        && m.target.as_deref() == Some(target)
                })
                .cloned()
        })
    }

    /// Create a session (and its empty data file).
    pub async fn create(self: &Arc<Self>, n: NewSession) -> Result<Arc<Session>, SessionError> {
        if self.open_count() >= self.max {
            return Err(SessionError::TooMany);
        }
        if let Some(t) = &n.target {
            self.storage.check_free(t).await?;
        }
        let id = new_id()?;
        let now = self.now();
        let chunks = match (n.chunk_size, n.length) {
            (Some(c), Some(l)) if c > 0 => vec![false; usize::try_from(l.div_ceil(c)).unwrap_or(0)],
            _ => Vec::new(),
        };
        let meta = SessionMeta {
            id: id.clone(),
            protocol: n.protocol,
            target: n.target.map(|t| t.as_str().to_owned()),
            length: n.length,
            grant_size: n.grant_size,
            offset: 0,
            content_type: n.content_type,
            metadata: n.metadata,
            partial: n.partial,
            concat_parts: None,
            chunk_size: n.chunk_size,
            chunks,
            uploader: n.uploader,
            file_expires: n.file_expires,
            created_at: now,
            expires_at: now + self.ttl.as_secs(),
            completed: false,
            sha256: None,
            hash_state: None,
        };
        // The empty data first, then the state that names it.
        drop(self.storage.stage_named(&id).await?);
        let version = self.persist(None, &meta).await?;
        let session = Arc::new(Session::new(id.clone(), meta, Some(Sha256::new())));
        session
            .version
            .store(version, std::sync::atomic::Ordering::Release);
        if let Ok(mut l) = self.live.lock() {
            l.insert(id, session.clone());
            self.metrics.open.set(l.len() as i64);
        }
        self.metrics
            .events
            .with_label_values(&[n.protocol.label(), "created"])
            .inc();
        Ok(session)
    }

    /// Look a session of `protocol` up: a session is reachable only through the protocol
    /// that created it.
    pub async fn get_for(
        self: &Arc<Self>,
        id: &str,
        protocol: Protocol,
    ) -> Result<Arc<Session>, SessionError> {
        let s = self.get(id).await?;
        if s.meta().protocol != protocol {
            return Err(SessionError::NotFound);
        }
        Ok(s)
    }

    /// Look a session up; expired ones are removed on the spot (410). With a shared catalog,
    /// the shared state is read every time (another node may have written it).
    pub async fn get(self: &Arc<Self>, id: &str) -> Result<Arc<Session>, SessionError> {
        if !is_session_id(id) {
            return Err(SessionError::NotFound);
        }
        let found = self.live.lock().ok().and_then(|l| l.get(id).cloned());
        let found = match (&self.shared, found) {
            (None, found) => found,
            (Some(_), Some(s)) => match self.refresh(&s).await? {
                Some(_) => Some(s),
                None => {
                    self.forget(id);
                    None
                }
            },
            (Some(_), None) => match self.load_shared(id).await? {
                Some((meta, version)) => {
                    let s = Arc::new(Session::new(id.to_owned(), meta, None));
                    s.version
                        .store(version, std::sync::atomic::Ordering::Release);
                    if let Ok(mut l) = self.live.lock() {
                        let s = l.entry(id.to_owned()).or_insert(s).clone();
                        self.metrics.open.set(l.len() as i64);
                        Some(s)
                    } else {
                        Some(s)
                    }
                }
                None => None,
            },
        };
        match found {
            Some(s) => {
                if s.meta().expires_at < self.now() {
                    self.remove(&s, "expired").await;
                    return Err(SessionError::Gone);
                }
                Ok(s)
            }
            None => {
                let gone = self
                    .tombstones
                    .lock()
                    .map(|t| t.contains_key(id))
                    .unwrap_or(false);
                Err(if gone {
                    SessionError::Gone
                } else {
                    SessionError::NotFound
                })
            }
        }
    }

    /// Drop a session this node knew that another node removed.
    fn forget(&self, id: &str) {
        if let Ok(mut l) = self.live.lock() {
            l.remove(id);
            self.metrics.open.set(l.len() as i64);
        }
    }

    /// Remove a session and its files (termination, expiry).
    pub async fn remove(self: &Arc<Self>, s: &Arc<Session>, event: &'static str) {
        s.preempt();
        let removed = self.live.lock().ok().and_then(|mut l| {
            let r = l.remove(&s.id);
            self.metrics.open.set(l.len() as i64);
            r
        });
        if removed.is_none() {
            return;
        }
        if let Ok(mut t) = self.tombstones.lock() {
            if t.len() >= TOMBSTONES_MAX {
                let cutoff = Instant::now() - self.ttl;
                t.retain(|_, at| *at > cutoff);
                if t.len() >= TOMBSTONES_MAX {
                    t.clear();
                }
            }
            t.insert(s.id.clone(), Instant::now());
        }
        let protocol = s.meta().protocol;
        self.metrics
            .events
            .with_label_values(&[protocol.label(), event])
            .inc();
        // Wait for a writer that is still finishing, then delete.
        let _w = s.writer.lock().await;
        self.delete_files(&s.id).await;
    }

    /// Delete every expired session. Returns how many were removed. With a shared catalog,
    /// one node at a time sweeps every node's sessions (the lease `sweep:sessions`).
    pub async fn sweep(self: &Arc<Self>) -> usize {
        if self.shared.is_some() {
            return match self.sweep_shared().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "sweeping shared upload sessions");
                    0
                }
            };
        }
        let now = self.now();
        let expired: Vec<Arc<Session>> = self
            .live
            .lock()
            .map(|l| {
                l.values()
                    .filter(|s| s.meta().expires_at < now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for s in &expired {
            self.remove(s, "expired").await;
        }
        expired.len()
    }

    /// Become the one writer of `s`. With `take_over`, an in-flight writer is told to stop
    /// (it keeps what it received); otherwise this waits for it. With a shared catalog, the
    /// writer is also the one across nodes (a lease), and the session is brought up to the
    /// shared state first.
    pub async fn acquire<'a>(
        self: &Arc<Self>,
        s: &'a Session,
        take_over: bool,
    ) -> Result<WriteGuard<'a>, SessionError> {
        let token = CancellationToken::new();
        if take_over {
            s.preempt();
        }
        let mut state = s.writer.lock().await;
        // Writes left running by a request that was dropped mid-append finish first.
        s.io.close();
        s.io.wait().await;
        s.io.reopen();
        let lease = match &self.shared {
            Some(cluster) => {
                let hold = self
                    .take_lease(cluster, s, take_over, token.clone())
                    .await?;
                if self.refresh(s).await?.is_none() {
                    return Err(SessionError::NotFound);
                }
                // Another node may have written since this node last did: the running hash
                // comes from the shared state (it travels with the offset it covers).
                state.hasher = None;
                Some(hold)
            }
            None => None,
        };
        let generation = s
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Ok(mut cur) = s.current.lock() {
            *cur = Some((generation, token.clone()));
        }
        Ok(WriteGuard {
            session: s,
            state,
            token,
            generation,
            _lease: lease,
        })
    }
}

/// Removal waits for the writer lock; the caller still holds it, so remove from a task.
pub(super) async fn drop_guard_then_remove(store: &Arc<SessionStore>, s: &Arc<Session>) {
    let (store, s) = (store.clone(), s.clone());
    tokio::spawn(async move { store.remove(&s, "terminated").await });
}

/// Used by the sweeper task.
pub async fn sweep_loop(store: Arc<SessionStore>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {
                let n = store.sweep().await;
                if n > 0 {
                    tracing::info!(expired = n, "swept expired upload sessions");
                }
            }
        }
    }
}
