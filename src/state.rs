//! `AppState`: built once from validated [`Settings`]; shared by every request.

use std::sync::Arc;

use crate::auth::Authorizer;
use crate::config::{Config, Settings};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::storage::{FsStorage, PathRules, StorageError, Store};
use crate::upload::session::SessionStore;

/// Errors building the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("sessions: {0}")]
    Sessions(#[from] crate::upload::session::SessionError),
}

pub struct AppState {
    pub config: Config,
    /// Where files live (the filesystem backend; any [`Store`] will do).
    pub storage: Arc<dyn Store>,
    pub auth: Authorizer,
    pub engine: Engine,
    pub metrics: Metrics,
    /// Hot small files (see `download::cache`).
    pub hot: crate::download::cache::HotCache,
    /// Resumable upload sessions (`None` when `[resumable] enabled = false`).
    pub sessions: Option<Arc<SessionStore>>,
    /// Rules for uploads (with extension lists).
    pub upload_rules: PathRules,
    /// Rules for downloads (shape only: a file stored before a list change stays reachable).
    pub download_rules: PathRules,
    /// Time for expiry, quotas and caches (a manual clock in tests).
    pub clock: crate::clock::SharedClock,
    /// Storage cap, free-space reserve and quota accounting.
    pub space: Arc<crate::ops::space::Space>,
    /// Rate limits per client address and uploader.
    pub rate_limits: crate::ratelimit::RateLimits,
    /// The audit log (a no-op when `[audit] path` is unset).
    pub audit: crate::admin::audit::Audit,
    /// The admin API's token (`None`: the admin API is off).
    pub admin_token: Option<crate::admin::AdminToken>,
}

impl AppState {
    pub async fn new(settings: Settings) -> Result<Arc<Self>, StateError> {
        Self::with_clock(settings, Arc::new(crate::clock::SystemClock)).await
    }

    /// Like [`AppState::new`], with time from `clock` (tests pass a manual clock).
    pub async fn with_clock(
        settings: Settings,
        clock: crate::clock::SharedClock,
    ) -> Result<Arc<Self>, StateError> {
        let config = settings.config;
        let audit = crate::admin::audit::Audit::new(&config.audit, clock.clone());
        let admin_token = settings
            .admin_token
            .map(|k| crate::admin::AdminToken::new(&k.secret));
        let storage: Arc<dyn Store> = Arc::new(FsStorage::open(
            &config.storage.dir,
            config.storage.durability,
        )?);
        let metrics = Metrics::new()?;
        let engine = Engine::new(
            &config.engine,
            config.server.body_idle_timeout,
            &metrics.registry,
        )?;
        let lower = |v: &Vec<String>| v.iter().map(|e| e.to_ascii_lowercase()).collect();
        let upload_rules = PathRules {
            max_filename_bytes: config.storage.max_filename_bytes,
            max_path_bytes: config.storage.max_path_bytes,
            allowed_extensions: lower(&config.storage.allowed_extensions),
            denied_extensions: lower(&config.storage.denied_extensions),
        };
        let download_rules = PathRules {
            allowed_extensions: Vec::new(),
            denied_extensions: Vec::new(),
            ..upload_rules.clone()
        };
        let auth = Authorizer::new(
            settings.keys,
            config.auth.modes.clone(),
            config.auth.clock_skew,
        );
        let totals = storage
            .catalog()
            .stats(0)
            .map_err(crate::storage::StorageError::from)?;
        let rate_limits = crate::ratelimit::RateLimits::new(
            &config.rate_limit,
            config.server.connection_cap_exempt.clone(),
            clock.clone(),
        );
        let space = Arc::new(crate::ops::space::Space::new(
            &config,
            totals.files,
            totals.bytes,
        ));
        let sessions = if config.resumable.enabled {
            let mut store = SessionStore::open(
                storage.clone(),
                &config,
                &metrics.registry,
                clock.clone(),
                space.clone(),
            )
            .await?;
            store.audit = audit.clone();
            Some(Arc::new(store))
        } else {
            None
        };
        let hot_bytes = config
            .download
            .hot_cache
            .as_u64()
            .min(config.engine.memory_cap.as_u64() / 4);
        let hot = crate::download::cache::HotCache::new(
            usize::try_from(hot_bytes).unwrap_or(0),
            config.download.hot_cache_ttl,
            clock.clone(),
        );
        Ok(Arc::new(Self {
            hot,
            config,
            storage,
            auth,
            engine,
            metrics,
            sessions,
            upload_rules,
            download_rules,
            clock,
            space,
            rate_limits,
            audit,
            admin_token,
        }))
    }
}
