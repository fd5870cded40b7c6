//! Session operations: append (contiguous protocols), write a chunk (any order), fill from
//! parts (tus concatenation), set a deferred length, and complete (publish through the
//! store's create-only commit). Bytes move through the engine into the session's staged
//! object; the state record follows the data.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::registry::drop_guard_then_remove;
use super::{
    AppendCheck, Appended, CheckKind, Protocol, Session, SessionError, SessionMeta, SessionStore,
    WriteGuard,
};
use crate::engine::{Client, Engine, EngineError, Expect, Sink};
use crate::storage::{FileMeta, StorageError, StoredPath};

impl SessionStore {
    /// Append `body` at the session's offset (contiguous protocols). `max` bounds this
    /// append; `checksum` discards the whole append on mismatch.
    #[allow(clippy::too_many_arguments)]
    pub async fn append<B>(
        self: &Arc<Self>,
        engine: &Engine,
        s: &Session,
        guard: &mut WriteGuard<'_>,
        body: B,
        exact: Option<u64>,
        max: u64,
        checksum: Option<AppendCheck>,
        client: &Client,
    ) -> Result<Appended, SessionError>
    where
        B: http_body::Body + Unpin,
        B::Error: std::fmt::Display,
    {
        let meta = s.meta();
        let start = meta.offset;
        // The staged data, cut back to the recorded offset.
        let staged = self.storage.reopen(&s.id, Some(start)).await?;
        let saved = meta
            .hash_state
            .as_deref()
            .and_then(super::shared::load_hash);
        let hasher = match guard.state.hasher.take().or(saved) {
            Some(h) => h,
            None => engine
                .hash_object(staged.reader(), start)
                .await
                .map_err(|e| SessionError::Internal(format!("rebuilding hash: {e}")))?,
        };
        let (digest, expected) = match checksum {
            Some(c) => (Some(c.digest), Some((c.expected, c.kind))),
            None => (None, None),
        };
        let mut sink = Sink::resume(staged, start, hasher.clone());
        sink.chunk = digest;
        sink.tracker = Some(s.io.clone());
        let result = engine
            .receive_resumable(
                body,
                sink,
                Expect { exact, max },
                client,
                Some(guard.token.clone()),
            )
            .await;
        let (sink, interrupted, error) = match result {
            Ok(sink) => (Some(sink), false, None),
            Err(f) => {
                let keep = matches!(
                    f.error,
                    EngineError::Client(_) | EngineError::IdleTimeout | EngineError::Cancelled
                ) && expected.is_none();
                if keep {
                    (f.sink, true, None)
                } else {
                    (None, false, Some(f.error))
                }
            }
        };
        let Some(sink) = sink else {
            // Discard this append entirely: cut back, keep the old hash.
            guard.state.hasher = Some(hasher);
            let _ = self.storage.reopen(&s.id, Some(start)).await;
            return Err(match error {
                Some(EngineError::TooLarge) => SessionError::TooLarge { max },
                Some(e) => SessionError::Engine(e),
                None => SessionError::ClientGone,
            });
        };
        if let (Some((exp, kind)), Some(d)) = (&expected, sink.chunk.clone()) {
            if d.finish() != *exp {
                guard.state.hasher = Some(hasher);
                drop(sink);
                let _ = self.storage.reopen(&s.id, Some(start)).await;
                return Err(match kind {
                    CheckKind::TusChecksum => SessionError::ChecksumMismatch,
                    CheckKind::ContentDigest => SessionError::DigestMismatch,
                });
            }
        }
        let written = sink.written;
        let new_offset = start + written;
        let mut m = meta.clone();
        m.offset = new_offset;
        m.expires_at = self.now() + self.ttl.as_secs();
        m.hash_state = Some(super::shared::save_hash(&sink.hasher));
        // Data first, then the offset that claims it.
        self.record(s, Some(&sink.staged), &m).await?;
        guard.state.hasher = Some(sink.hasher);
        if let Ok(mut cur) = s.meta.lock() {
            *cur = m;
        }
        Ok(Appended {
            offset: new_offset,
            interrupted,
        })
    }

    /// Write one chunk at `index * chunk_size` (chunked protocol: any order).
    pub async fn write_chunk<B>(
        self: &Arc<Self>,
        engine: &Engine,
        s: &Session,
        guard: &mut WriteGuard<'_>,
        body: B,
        index: usize,
        client: &Client,
    ) -> Result<SessionMeta, SessionError>
    where
        B: http_body::Body + Unpin,
        B::Error: std::fmt::Display,
    {
        let meta = s.meta();
        let (Some(cs), Some(len)) = (meta.chunk_size, meta.length) else {
            return Err(SessionError::NotChunked);
        };
        if index >= meta.chunks.len() {
            return Err(SessionError::ChunkOutOfRange);
        }
        let off = index as u64 * cs;
        let want = cs.min(len - off);
        let staged = self.storage.reopen(&s.id, None).await?;
        let sink = engine
            .receive(
                body,
                Sink::resume(staged, off, Sha256::new()),
                Expect {
                    exact: Some(want),
                    max: want,
                },
                client,
            )
            .await
            .map_err(|e| match e {
                EngineError::TooLarge => SessionError::TooLarge { max: want },
                other => SessionError::Engine(other),
            })?;
        let mut m = meta;
        m.chunks[index] = true;
        m.hash_state = None;
        m.offset = m
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, got)| **got)
            .map(|(i, _)| cs.min(len - i as u64 * cs))
            .sum();
        m.expires_at = self.now() + self.ttl.as_secs();
        self.record(s, Some(&sink.staged), &m).await?;
        // Out-of-order chunks: the whole-file hash is rebuilt at completion.
        guard.state.hasher = None;
        if let Ok(mut cur) = s.meta.lock() {
            *cur = m.clone();
        }
        Ok(m)
    }

    /// Fill a new session with the concatenation of other sessions' data (tus final upload;
    /// `parts`: each part's session id and length), recording the parts' URLs (`part_urls`).
    #[allow(clippy::too_many_arguments)]
    pub async fn fill_from_parts(
        self: &Arc<Self>,
        engine: &Engine,
        s: &Session,
        guard: &mut WriteGuard<'_>,
        parts: Vec<(String, u64)>,
        part_urls: String,
        total: u64,
    ) -> Result<(), SessionError> {
        let dest = self.storage.reopen(&s.id, Some(0)).await?;
        let mut readers = Vec::with_capacity(parts.len());
        for (id, len) in parts {
            readers.push((self.storage.reopen(&id, None).await?.reader(), len));
        }
        let hasher = engine
            .concat(readers, &dest)
            .await
            .map_err(StorageError::from)?;
        let mut m = s.meta();
        m.offset = total;
        m.concat_parts = Some(part_urls);
        m.hash_state = Some(super::shared::save_hash(&hasher));
        self.record(s, Some(&dest), &m).await?;
        guard.state.hasher = Some(hasher);
        if let Ok(mut cur) = s.meta.lock() {
            *cur = m;
        }
        Ok(())
    }

    /// Set a deferred length (tus `Upload-Length` on a later PATCH).
    pub async fn set_length(
        self: &Arc<Self>,
        s: &Session,
        length: u64,
    ) -> Result<(), SessionError> {
        let mut m = s.meta();
        m.length = Some(length);
        self.record(s, None, &m).await?;
        if let Ok(mut cur) = s.meta.lock() {
            *cur = m;
        }
        Ok(())
    }

    /// Finish a fully received session: publish it at its target (atomic, never replacing;
    /// 409 if the name was taken meanwhile, and then the session is removed) or, for a partial
    /// upload, just mark it complete.
    pub async fn complete(
        self: &Arc<Self>,
        engine: &Engine,
        s: &Arc<Session>,
        guard: &mut WriteGuard<'_>,
    ) -> Result<SessionMeta, SessionError> {
        let mut m = s.meta();
        let len = m.length.unwrap_or(m.offset);
        let saved = m.hash_state.as_deref().and_then(super::shared::load_hash);
        let hasher = match guard.state.hasher.take().or(saved) {
            Some(h) if m.protocol != Protocol::Chunked => h,
            _ => {
                let staged = self.storage.reopen(&s.id, None).await?;
                engine
                    .hash_object(staged.reader(), len)
                    .await
                    .map_err(|e| SessionError::Internal(format!("hashing: {e}")))?
            }
        };
        let sha = hex::encode(hasher.finalize());
        m.completed = true;
        m.sha256 = Some(sha.clone());
        m.offset = len;
        if let Some(target) = m.target.clone().filter(|_| !m.partial) {
            let path = StoredPath::parse(&target, &crate::storage::PathRules::default())?;
            let now = self.now();
            let file_meta = FileMeta {
                size: len,
                sha256: sha,
                content_type: m.content_type.clone(),
                uploaded_at: now,
                uploader: m.uploader.clone(),
                expires_at: self.retention.expires_at(&target, now, m.file_expires),
            };
            let staged = self.storage.reopen(&s.id, None).await?;
            if let Err(e) = self.storage.commit(staged, &path, &file_meta).await {
                if matches!(e, StorageError::Exists | StorageError::PathConflict) {
                    self.metrics
                        .events
                        .with_label_values(&[m.protocol.label(), "conflict"])
                        .inc();
                    drop_guard_then_remove(self, s).await;
                }
                return Err(e.into());
            }
            self.space.added(len);
            self.audit.upload(crate::admin::audit::UploadEvent {
                path: &target,
                size: len,
                sha256: m.sha256.as_deref().unwrap_or(""),
                uploader: m.uploader.as_deref(),
                client: None,
                route: m.protocol.label(),
            });
        }
        self.record(s, None, &m).await?;
        if let Ok(mut cur) = s.meta.lock() {
            *cur = m.clone();
        }
        self.metrics
            .events
            .with_label_values(&[m.protocol.label(), "completed"])
            .inc();
        Ok(m)
    }
}
