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

/// What a configuration reload replaces at once: a request reads one snapshot
/// ([`AppState::live`]) and never mixes two configurations.
pub struct Live {
    pub config: Arc<Config>,
    pub auth: Authorizer,
    /// Rules for uploads (with extension lists).
    pub upload_rules: PathRules,
    /// Rules for downloads (shape only: a file stored before a list change stays reachable).
    pub download_rules: PathRules,
    /// Rate limits per client address and uploader (new buckets after a reload).
    pub rate_limits: crate::ratelimit::RateLimits,
    /// The proxies whose forwarding headers are believed.
    pub proxies: crate::net::TrustedProxies,
}

impl Live {
    fn build(settings: Settings, clock: crate::clock::SharedClock) -> Self {
        let config = settings.config;
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
        let rate_limits = crate::ratelimit::RateLimits::new(
            &config.rate_limit,
            config.server.connection_cap_exempt.clone(),
            clock,
        );
        Self {
            proxies: crate::net::TrustedProxies::from_config(&config.server),
            config: Arc::new(config),
            auth,
            upload_rules,
            download_rules,
            rate_limits,
        }
    }
}

pub struct AppState {
    /// The reloadable part (configuration, key ring, path rules, rate limits).
    live: arc_swap::ArcSwap<Live>,
    /// Where files live (the filesystem backend; any [`Store`] will do).
    pub storage: Arc<dyn Store>,
    pub engine: Engine,
    pub metrics: Metrics,
    /// Hot small files (see `download::cache`).
    pub hot: crate::download::cache::HotCache,
    /// Resumable upload sessions (`None` when `[resumable] enabled = false`).
    pub sessions: Option<Arc<SessionStore>>,
    /// Time for expiry, quotas and caches (a manual clock in tests).
    pub clock: crate::clock::SharedClock,
    /// Storage cap, free-space reserve and quota accounting.
    pub space: Arc<crate::ops::space::Space>,
    /// The audit log (a no-op when `[audit] path` is unset).
    pub audit: crate::admin::audit::Audit,
    /// The admin API's token (`None`: the admin API is off).
    pub admin_token: Option<crate::admin::AdminToken>,
    /// The configuration file, re-read on SIGHUP (unset: the embedded default, no reload).
    pub config_file: std::sync::OnceLock<std::path::PathBuf>,
    /// This node among several sharing the catalog (`None`: one node).
    pub cluster: Option<crate::cluster::Cluster>,
}

/// The store the configuration names, on its catalog: the filesystem or S3, on the embedded
/// SQLite catalog or a shared PostgreSQL one. An S3 store that does not refuse a second
/// create-only write is refused here (publishing would not be create-only on it).
async fn open_storage(
    config: &Config,
    cluster: Option<&crate::cluster::Cluster>,
) -> Result<Arc<dyn Store>, StateError> {
    use crate::config::{Backend, Durability};
    let dir = &config.storage.dir;
    let durable = config.storage.durability == Durability::Fsync;
    let shared: Option<Arc<dyn crate::catalog::Catalog>> = if config.catalog.is_shared() {
        let cfg = config.catalog.clone();
        let pg =
            tokio::task::spawn_blocking(move || crate::catalog::postgres::PgCatalog::connect(&cfg))
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
                .map_err(StorageError::from)?;
        Some(Arc::new(pg))
    } else {
        None
    };
    Ok(match config.storage.backend {
        Backend::Fs => Arc::new(match shared {
            Some(c) => FsStorage::open_with(dir, config.storage.durability, c)?,
            None => FsStorage::open(dir, config.storage.durability)?,
        }),
        Backend::S3 => {
            let catalog = match shared {
                Some(c) => c,
                None => Arc::new(crate::storage::open_sqlite_catalog(dir, durable)?),
            };
            let node = cluster.map_or_else(|| "local".to_owned(), |c| c.node.clone());
            let s = crate::storage::S3Storage::open(
                &config.storage.s3,
                catalog,
                dir.join("spool"),
                node,
            )
            .await?;
            s.probe_create_only().await?;
            Arc::new(s)
        }
    })
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
        let admin_token = settings
            .admin_token
            .as_ref()
            .map(|k| crate::admin::AdminToken::new(&k.secret));
        let live = Live::build(settings, clock.clone());
        let config = live.config.clone();
        let audit = crate::admin::audit::Audit::new(&config.audit, clock.clone());
        let cluster = crate::cluster::Cluster::from_config(&config);
        let storage = open_storage(&config, cluster.as_ref()).await?;
        let metrics = Metrics::new()?;
        let engine = Engine::new(
            &config.engine,
            config.server.body_idle_timeout,
            &metrics.registry,
        )?;
        let totals = storage
            .catalog()
            .stats(0)
            .map_err(crate::storage::StorageError::from)?;
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
            store.shared = cluster.clone();
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
            live: arc_swap::ArcSwap::from_pointee(live),
            storage,
            engine,
            metrics,
            sessions,
            clock,
            space,
            audit,
            admin_token,
            config_file: std::sync::OnceLock::new(),
            cluster,
        }))
    }

    /// Re-read the configuration file (SIGHUP, `systemctl reload`). An invalid file is
    /// refused with a log line and the running configuration stays.
    pub fn reload_from_file(&self) {
        let Some(path) = self.config_file.get() else {
            tracing::info!("SIGHUP: no configuration file (embedded default); nothing to reload");
            return;
        };
        let result = Config::from_file(path)
            .map_err(|e| e.to_string())
            .and_then(|c| c.resolve().map_err(|e| e.to_string()));
        let label = match result {
            Ok(settings) => {
                let restart = self.reload(settings);
                if restart.is_empty() {
                    tracing::info!(file = %path.display(), "configuration reloaded");
                } else {
                    tracing::warn!(
                        file = %path.display(),
                        needs_restart = ?restart,
                        "configuration reloaded; these changes take effect after a restart"
                    );
                }
                "ok"
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "configuration not reloaded; the running one stays");
                "error"
            }
        };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
    }

    /// The current reloadable snapshot.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The current configuration (a snapshot: hold it for a whole request).
    pub fn config(&self) -> Arc<Config> {
        self.live.load().config.clone()
    }

    /// Apply a new configuration: the key ring, limits, path rules, retention and quotas,
    /// CORS, rate limits and download settings take effect for the next request. Returns the
    /// keys that differ but only take effect after a restart (listeners, storage, engine,
    /// resumable sessions, server timeouts and caps, the admin API, the audit log).
    pub fn reload(&self, settings: Settings) -> Vec<&'static str> {
        let old = self.config();
        let new = &settings.config;
        let mut restart = Vec::new();
        let mut differs = |name: &'static str, same: bool| {
            if !same {
                restart.push(name);
            }
        };
        let s = |c: &Config| toml::to_string(&c.server).unwrap_or_default();
        let mut server_old = old.server.clone();
        let mut server_new = new.server.clone();
        // Read per request: these do change live.
        server_old.url_prefix.clear();
        server_new.url_prefix.clear();
        server_old.trusted_proxies.clear();
        server_new.trusted_proxies.clear();
        server_old.trust_forwarded_for = false;
        server_new.trust_forwarded_for = false;
        server_old.max_header_size = server_new.max_header_size;
        server_old.drain_limit = server_new.drain_limit;
        differs("server (listeners, timeouts, connection caps)", {
            let a = Config {
                server: server_old,
                ..Config::default()
            };
            let b = Config {
                server: server_new,
                ..Config::default()
            };
            s(&a) == s(&b)
        });
        differs("storage.dir", old.storage.dir == new.storage.dir);
        differs(
            "storage.durability",
            old.storage.durability == new.storage.durability,
        );
        differs(
            "storage.max_total_size / min_free_space",
            old.storage.max_total_size == new.storage.max_total_size
                && old.storage.min_free_space == new.storage.min_free_space,
        );
        let t = |v: &dyn erased::Ser| v.render();
        differs("engine", t(&old.engine) == t(&new.engine));
        differs("resumable", t(&old.resumable) == t(&new.resumable));
        differs("admin", t(&old.admin) == t(&new.admin));
        differs("audit", t(&old.audit) == t(&new.audit));
        differs("tls listeners", t(&old.tls) == t(&new.tls));
        differs(
            "download.hot_cache / hot_cache_ttl",
            old.download.hot_cache == new.download.hot_cache
                && old.download.hot_cache_ttl == new.download.hot_cache_ttl,
        );
        self.live
            .store(Arc::new(Live::build(settings, self.clock.clone())));
        restart
    }
}

/// Comparing config tables by their TOML rendering (they carry no `PartialEq`).
mod erased {
    pub trait Ser {
        fn render(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn render(&self) -> String {
            toml::to_string(&Wrap { v: self }).unwrap_or_default()
        }
    }
    #[derive(serde::Serialize)]
    struct Wrap<'a, T: serde::Serialize> {
        v: &'a T,
    }
}
