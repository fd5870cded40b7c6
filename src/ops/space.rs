//! Space admission: the global byte cap, the free-space reserve and per-uploader quotas,
//! decided from the declared length before a body is read. An admitted upload holds a
//! [`Reservation`] until it is published (its bytes then count as stored) or fails (the
//! reservation is returned on drop), so concurrent uploads cannot together cross a limit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::catalog::{Claim, ClaimLimits, ClaimOutcome, DeleteReason};
use crate::config::{Config, QuotaAction};
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::{on_catalog, Store};

/// Rolling window of the daily quota.
const DAY: u64 = 24 * 3600;

/// Byte accounting shared by every upload.
pub struct Space {
    root: PathBuf,
    max_total: u64,
    min_free: u64,
    /// Bytes and count of live stored files.
    stored: AtomicU64,
    files: AtomicU64,
    /// Admitted and not yet published or released: (total, per uploader).
    reserved: Mutex<(u64, HashMap<String, u64>)>,
    /// The filesystem's free space and when it was read (`statfs` at most every
    /// [`FREE_SPACE_FRESH`], so a small upload is admitted without a hop to the blocking pool).
    free_seen: Mutex<Option<(std::time::Instant, u64)>>,
}

/// How long a reading of the free space is used. ENOSPC still answers 507 (nothing
/// published) if uploads in between fill the disk faster.
const FREE_SPACE_FRESH: std::time::Duration = std::time::Duration::from_millis(100);

/// Bytes held for one upload in flight.
pub struct Reservation {
    space: Arc<Space>,
    bytes: u64,
    uploader: Option<String>,
    /// With several nodes: the claim in the shared catalog that holds the bytes against the
    /// cluster's cap and the uploader's stored quota (dropped with the reservation).
    claim: Option<(Arc<dyn Store>, String)>,
}

impl Reservation {
    /// The upload was published: its bytes now count as stored.
    pub fn published(self) {
        self.space.added(self.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((storage, id)) = self.claim.take() {
            // Published: the row counts now; failed: the bytes are free again.
            let release = move || {
                if let Err(e) = storage.catalog().release_claim(&id) {
                    tracing::warn!(error = %e, "releasing a space claim (it lapses by itself)");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(release)),
                Err(_) => release(),
            }
        }
        if let Ok(mut r) = self.space.reserved.lock() {
            r.0 = r.0.saturating_sub(self.bytes);
            if let Some(u) = &self.uploader {
                if let Some(n) = r.1.get_mut(u) {
                    *n = n.saturating_sub(self.bytes);
                    if *n == 0 {
                        r.1.remove(u);
                    }
                }
            }
        }
    }
}

impl Space {
    pub fn new(config: &Config, files: u64, stored: u64) -> Self {
        Self {
            root: config.storage.dir.clone(),
            max_total: config.storage.max_total_size.as_u64(),
            min_free: config.storage.min_free_space.as_u64(),
            stored: AtomicU64::new(stored),
            files: AtomicU64::new(files),
            reserved: Mutex::new((0, HashMap::new())),
            free_seen: Mutex::new(None),
        }
    }

    /// Bytes of live stored files.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Acquire)
    }

    /// Live stored files.
    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Acquire)
    }

    /// Free bytes on the storage filesystem.
    pub fn free(&self) -> u64 {
        fs4::available_space(&self.root).unwrap_or(0)
    }

    /// A file of `bytes` was published without a reservation (a resumable upload, admitted
    /// when its session was created).
    pub fn added(&self, bytes: u64) {
        self.stored.fetch_add(bytes, Ordering::AcqRel);
        self.files.fetch_add(1, Ordering::AcqRel);
    }

    /// A stored file of `bytes` was removed.
    pub fn released(&self, bytes: u64) {
        for (counter, by) in [(&self.stored, bytes), (&self.files, 1)] {
            let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(s.saturating_sub(by))
            });
        }
    }

    /// The free space, from a recent reading if there is one (else `statfs`: blocking).
    fn free_now(&self) -> u64 {
        if let Some(free) = self.free_recent() {
            return free;
        }
        let free = fs4::available_space(&self.root).unwrap_or(u64::MAX);
        if let Ok(mut f) = self.free_seen.lock() {
            *f = Some((std::time::Instant::now(), free));
        }
        free
    }

    /// The last reading of the free space, if it is fresh.
    fn free_recent(&self) -> Option<u64> {
        let f = self.free_seen.lock().ok()?;
        f.filter(|(at, _)| at.elapsed() < FREE_SPACE_FRESH)
            .map(|(_, free)| free)
    }

    /// Bytes an uploader has admitted but not yet published.
    fn in_flight(&self, uploader: &str) -> u64 {
        self.reserved
            .lock()
            .map(|r| r.1.get(uploader).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Hold `bytes` against the cap, the free-space reserve and the uploader's quotas
    /// (blocking: reads the filesystem's free space). The uploader's bytes in flight are read
    /// under the same lock that records this reservation, so concurrent uploads of one
    /// uploader cannot together pass a quota.
    /// With `shared` (several nodes), the cap and the stored quota are checked again, across
    /// nodes, by a claim in the shared catalog ([`claim_shared`]): here only this node's
    /// in-flight bytes would count, so the cap is left to the claim.
    fn reserve(
        self: &Arc<Self>,
        bytes: u64,
        uploader: Option<&str>,
        quota: Option<QuotaCheck>,
        shared: bool,
    ) -> Result<Reservation, (Refusal, Option<u64>)> {
        let free = if self.min_free > 0 {
            self.free_now()
        } else {
            u64::MAX
        };
        let mut r = self.reserved.lock().map_err(|_| (Refusal::Cap, None))?;
        if let (Some(u), Some(q)) = (uploader, quota) {
            let in_flight = r.1.get(u).copied().unwrap_or(0);
            if q.daily > 0 && q.uploaded + in_flight + bytes > q.daily {
                return Err((Refusal::DailyQuota, Some(q.retry_after)));
            }
            if q.stored_max > 0 && q.stored + in_flight + bytes > q.stored_max {
                return Err((Refusal::StoredQuota, None));
            }
        }
        if !shared && self.max_total > 0 && self.stored() + r.0 + bytes > self.max_total {
            return Err((Refusal::Cap, None));
        }
        if self.min_free > 0 && free.saturating_sub(r.0) < bytes.saturating_add(self.min_free) {
            return Err((Refusal::Reserve, None));
        }
        r.0 += bytes;
        if let Some(u) = uploader {
            *r.1.entry(u.to_owned()).or_insert(0) += bytes;
        }
        Ok(Reservation {
            space: self.clone(),
            bytes,
            uploader: uploader.map(str::to_owned),
            claim: None,
        })
    }
}

/// An uploader's figures from the catalog, checked when the reservation is taken.
#[derive(Debug, Clone, Copy)]
struct QuotaCheck {
    /// Bytes uploaded in the window, and stored now (in-flight uploads not included).
    uploaded: u64,
    stored: u64,
    daily: u64,
    stored_max: u64,
    /// Seconds until the oldest upload of the window leaves it.
    retry_after: u64,
}

/// Why an upload is not admitted (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Cap,
    Reserve,
    DailyQuota,
    StoredQuota,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Cap => "cap",
            Refusal::Reserve => "reserve",
            Refusal::DailyQuota => "daily_quota",
            Refusal::StoredQuota => "stored_quota",
        }
    }

    pub const ALL: [Refusal; 4] = [
        Refusal::Cap,
        Refusal::Reserve,
        Refusal::DailyQuota,
        Refusal::StoredQuota,
    ];
}

/// Admit an upload of `bytes` by `uploader`: per-uploader quotas (evicting the uploader's
/// oldest files first when configured), the global cap and the free-space reserve.
pub async fn admit(
    state: &Arc<AppState>,
    uploader: Option<&str>,
    bytes: u64,
) -> Result<Reservation, ApiError> {
    let quota = match uploader {
        Some(u) => quota_figures(state, u, bytes).await?,
        None => None,
    };
    let space = state.space.clone();
    let u = uploader.map(str::to_owned);
    let shared = state.cluster.is_some();
    // With a fresh free-space reading the reservation needs no system call: no hop.
    let r = if space.free_recent().is_some() || space.min_free == 0 {
        space.reserve(bytes, u.as_deref(), quota, shared)
    } else {
        tokio::task::spawn_blocking(move || space.reserve(bytes, u.as_deref(), quota, shared))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    };
    let mut r = r.map_err(|(refusal, retry)| refused(state, refusal, retry))?;
    if shared {
        claim_shared(state, &mut r, quota).await?;
    }
    Ok(r)
}

/// How long a claim holds space for an upload in flight: past it, a node that died mid-upload
/// no longer holds the space.
const CLAIM_TTL: u64 = 6 * 3600;

/// With several nodes: hold the upload's bytes in the shared catalog against the cluster's
/// cap and the uploader's stored quota, atomically with every other node's claims and files.
async fn claim_shared(
    state: &Arc<AppState>,
    r: &mut Reservation,
    quota: Option<QuotaCheck>,
) -> Result<(), ApiError> {
    let total = state.config().storage.max_total_size.as_u64();
    let per_uploader = quota.map_or(0, |q| q.stored_max);
    if total == 0 && (per_uploader == 0 || r.uploader.is_none()) {
        return Ok(());
    }
    let mut raw = [0u8; 12];
    getrandom::fill(&mut raw).map_err(|e| ApiError::Internal(e.to_string()))?;
    let claim = Claim {
        id: format!("up:{}", hex::encode(raw)),
        uploader: r.uploader.clone(),
        bytes: r.bytes,
        until: state.clock.now_secs() + CLAIM_TTL,
    };
    let limits = ClaimLimits {
        total: (total > 0).then_some(total),
        per_uploader: (per_uploader > 0).then_some(per_uploader),
    };
    let (now, c) = (state.clock.now_secs(), claim.clone());
    let outcome = on_catalog(&state.storage, move |cat| cat.claim(&c, limits, now)).await?;
    match outcome {
        ClaimOutcome::Granted => {
            r.claim = Some((state.storage.clone(), claim.id));
            Ok(())
        }
        ClaimOutcome::OverTotal { .. } => Err(refused(state, Refusal::Cap, None)),
        ClaimOutcome::OverUploader { .. } => Err(refused(state, Refusal::StoredQuota, None)),
    }
}

fn refused(state: &AppState, r: Refusal, retry_after: Option<u64>) -> ApiError {
    state.metrics.refusals.with_label_values(&[r.label()]).inc();
    match r {
        Refusal::Cap => ApiError::InsufficientStorage("the server's storage cap is reached"),
        Refusal::Reserve => ApiError::InsufficientStorage("the server's disk is nearly full"),
        Refusal::StoredQuota => {
            ApiError::InsufficientStorage("this uploader's storage quota is used up")
        }
        Refusal::DailyQuota => ApiError::QuotaExceeded {
            retry_after: retry_after.unwrap_or(DAY),
        },
    }
}

/// The uploader's catalog figures for the quota check, after evicting its oldest files when
/// the upload would not fit its stored quota and eviction is configured. `None`: no quota.
async fn quota_figures(
    state: &Arc<AppState>,
    uploader: &str,
    bytes: u64,
) -> Result<Option<QuotaCheck>, ApiError> {
    let q = &state.config().quota;
    let (daily, stored_max) = (q.daily.as_u64(), q.stored.as_u64());
    if daily == 0 && stored_max == 0 {
        return Ok(None);
    }
    loop {
        let now = state.clock.now_secs();
        let u = uploader.to_owned();
        // The window holds uploads of the last 24 hours: one made exactly a day ago has just
        // left it.
        let usage = on_catalog(&state.storage, move |c| {
            c.usage(&u, now.saturating_sub(DAY) + 1)
        })
        .await?;
        let figures = QuotaCheck {
            uploaded: usage.uploaded_since,
            stored: usage.stored_bytes,
            daily,
            stored_max,
            retry_after: usage
                .first_since
                .map_or(DAY, |t| (t + DAY).saturating_sub(now).max(1)),
        };
        let in_flight = state.space.in_flight(uploader);
        let fits = stored_max == 0 || usage.stored_bytes + in_flight + bytes <= stored_max;
        let daily_ok = daily == 0 || usage.uploaded_since + in_flight + bytes <= daily;
        if fits
            || !daily_ok
            || q.on_stored_exceeded == QuotaAction::Refuse
            || bytes + in_flight > stored_max
        {
            return Ok(Some(figures));
        }
        // Evict this uploader's oldest stored file and look again. The upload being admitted
        // is not stored yet, so it can never be the one evicted.
        let u = uploader.to_owned();
        let oldest = on_catalog(&state.storage, move |c| c.oldest_of(&u, 1)).await?;
        let Some(victim) = oldest.into_iter().next() else {
            return Ok(Some(figures));
        };
        super::remove_file(state, &victim.path, DeleteReason::Quota).await?;
    }
}
