//! Operator features over the catalog: removing files (expiry, quota eviction, takedown,
//! erasure), the expiry sweeper, the storage caps and per-uploader quotas.
//!
//! Every removal goes through [`remove_file`], so the catalog, the caches, the metrics and the
//! space accounting stay in step: a removed file is never served again, not even from the hot
//! cache. Must not: parse requests (handlers pass what they decided).

pub mod space;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::catalog::{DeleteReason, FileRow};
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::{PathRules, StoredPath};

/// Remove a stored file for `reason` (see [`crate::storage::Store::remove`]). A takedown
/// of a path with no file still blocks the path. Returns the removed row.
pub async fn remove_file(
    state: &Arc<AppState>,
    path: &str,
    reason: DeleteReason,
) -> Result<Option<FileRow>, ApiError> {
    let p = StoredPath::parse(path, &PathRules::default())?;
    let now = state.clock.now_secs();
    // The hot cache forgets the file before and after the row changes, so no GET that starts
    // after this call serves it.
    state.hot.remove(p.as_str());
    let row = state.storage.remove(&p, reason, now).await?;
    state.hot.remove(p.as_str());
    if let Some(r) = &row {
        state.space.released(r.meta.size);
        state
            .metrics
            .deletions
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::info!(
            reason = reason.as_str(),
            bytes = r.meta.size,
            "file removed"
        );
        // Who removed it follows from why (see `admin::audit::actor`).
        state
            .audit
            .deletion(&r.path, reason, r.meta.size, r.meta.uploader.as_deref());
    }
    Ok(row)
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct SweepReport {
    pub files: u64,
    pub bytes: u64,
}

/// Delete every file expired at the clock's now, in batches of `retention.sweep_batch`.
/// Only catalogued files are candidates, so a file being published (no row yet) is never
/// touched.
pub async fn sweep(state: &Arc<AppState>) -> Result<SweepReport, ApiError> {
    let started = Instant::now();
    let mut report = SweepReport::default();
    let batch = state.config().retention.sweep_batch;
    loop {
        let now = state.clock.now_secs();
        let rows =
            crate::storage::on_catalog(&state.storage, move |c| c.expired(now, batch)).await?;
        let n = rows.len();
        for r in rows {
            if remove_file(state, &r.path, DeleteReason::Expired)
                .await?
                .is_some()
            {
                report.files += 1;
                report.bytes += r.meta.size;
            }
        }
        if n < batch {
            break;
        }
        tokio::task::yield_now().await;
    }
    state
        .metrics
        .sweep_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(report)
}

/// Age past which staging leftovers are removed (or twice the resumable session lifetime, if
/// longer), so a live upload's parts are never taken.
const LEFTOVER_AGE: Duration = Duration::from_secs(48 * 3600);

/// The expiry sweeper: a sweep every `retention.sweep_interval` until `stop`.
pub async fn sweep_loop(state: Arc<AppState>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {
                // With several nodes, one sweeps at a time (the others' rounds find the
                // lease held and skip).
                if let Some(c) = &state.cluster {
                    if !c.hold(&state.storage, "sweep:files", state.clock.now_millis()).await {
                        continue;
                    }
                }
                match sweep(&state).await {
                    Ok(r) if r.files > 0 => tracing::info!(files = r.files, bytes = r.bytes, "swept expired files"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
                }
                // Leftovers of crashed uploads (S3 staging objects, unfinished multipart
                // uploads): old enough that no live upload can own them.
                match state.storage.sweep_leftovers(LEFTOVER_AGE.max(state.config().resumable.session_ttl * 2)).await {
                    Ok(n) if n > 0 => tracing::info!(leftovers = n, "removed leftovers of crashed uploads"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweeping upload leftovers failed"),
                }
            }
        }
    }
}
