//! Session persistence through the store: the state record of each session (written after
//! its data is flushed, so the recorded offset never claims bytes that are not stored) and the
//! start-up recovery of every unfinished session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::Registry;

use super::{Protocol, Session, SessionError, SessionMeta, SessionMetrics, SessionStore};
use crate::storage::{Staged, StorageError, Store};

impl SessionStore {
    /// Open the store and reload every unfinished session (cutting data back to the recorded
    /// offset; removing orphans).
    pub async fn open(
        storage: Arc<dyn Store>,
        config: &crate::config::Config,
        registry: &Registry,
        clock: crate::clock::SharedClock,
        space: Arc<crate::ops::space::Space>,
    ) -> Result<Self, SessionError> {
        let store = Self {
            storage,
            ttl: config.resumable.session_ttl,
            max: config.resumable.max_sessions,
            live: Mutex::new(HashMap::new()),
            tombstones: Mutex::new(HashMap::new()),
            metrics: SessionMetrics::register(registry)
                .map_err(|e| SessionError::Internal(e.to_string()))?,
            clock,
            retention: config.retention.clone(),
            space,
            audit: Default::default(),
            shared: None,
        };
        store
            .reload()
            .await
            .map_err(|e| SessionError::Internal(format!("reloading sessions: {e}")))?;
        Ok(store)
    }

    async fn reload(&self) -> Result<(), StorageError> {
        if self.shared.is_some() {
            // Sessions are found in the shared catalog when asked for; another node may be
            // creating one right now, so nothing here is an orphan.
            return Ok(());
        }
        let st = &self.storage;
        let mut live = HashMap::new();
        for (id, bytes) in st.list_records().await? {
            let parsed = bytes.and_then(|b| serde_json::from_slice::<SessionMeta>(&b).ok());
            let Some(mut meta) = parsed else {
                tracing::warn!(session = %id, "unreadable session state; removing");
                let _ = st.delete_record(&id).await;
                let _ = st.delete_staged(&id).await;
                continue;
            };
            if !meta.completed && !meta.partial {
                // A crash between publishing and recording completion leaves the staged
                // object published under its final name too: finish.
                if st.stat_staged(&id).await.is_ok_and(|s| s.published) {
                    let _ = st.delete_staged(&id).await;
                    meta.completed = true;
                    meta.offset = meta.length.unwrap_or(meta.offset);
                    self.persist(None, &meta).await?;
                }
            }
            if !meta.completed && meta.protocol != Protocol::Chunked {
                // Bytes past the recorded offset were never acknowledged: drop them.
                match st.stat_staged(&id).await {
                    Ok(s) if s.len < meta.offset => {
                        tracing::warn!(
                            session = %id,
                            "staged data shorter than recorded offset; removing"
                        );
                        let _ = st.delete_record(&id).await;
                        let _ = st.delete_staged(&id).await;
                        continue;
                    }
                    Ok(_) => drop(st.reopen(&id, Some(meta.offset)).await?),
                    Err(_) => {
                        let _ = st.delete_record(&id).await;
                        continue;
                    }
                }
            }
            live.insert(id.clone(), Arc::new(Session::new(id, meta, None)));
        }
        // Data without state is the orphan of a crash during creation.
        for id in st.list_staged().await? {
            if !live.contains_key(&id) {
                let _ = st.delete_staged(&id).await;
            }
        }
        self.metrics.open.set(live.len() as i64);
        if let Ok(mut l) = self.live.lock() {
            *l = live;
        }
        Ok(())
    }

    /// Write a session's state record: with a shared catalog, versioned there (`s`: the
    /// session whose last seen version the write expects; `None` creates the record), else in
    /// the store. Returns the record's new version (0 in the store).
    pub(super) async fn persist(
        &self,
        s: Option<&Session>,
        meta: &SessionMeta,
    ) -> Result<u64, StorageError> {
        if self.shared.is_some() {
            return self.put_shared(s, meta).await;
        }
        let json = serde_json::to_vec(meta).map_err(|e| StorageError::Io(e.into()))?;
        self.storage.put_record(&meta.id, json).await.map(|()| 0)
    }

    /// Flush `data` (per durability), then persist `meta`: the recorded offset never claims
    /// bytes that are not stored.
    pub(super) async fn record(
        &self,
        s: &Session,
        data: Option<&Staged>,
        meta: &SessionMeta,
    ) -> Result<(), SessionError> {
        if let Some(d) = data {
            d.flush().await.map_err(StorageError::from)?;
        }
        self.persist(Some(s), meta).await?;
        Ok(())
    }

    /// Delete a session's data and state record.
    pub(super) async fn delete_files(&self, id: &str) {
        let _ = self.storage.delete_staged(id).await;
        if self.shared.is_some() {
            self.delete_shared(id).await;
        } else {
            let _ = self.storage.delete_record(id).await;
        }
    }
}
