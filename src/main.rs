//! The `sluice` binary: CLI → config → telemetry → bind → `server::run`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use sluice::config::{Config, Settings};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "XEP-0363 upload server with resumable uploads and Range downloads"
)]
struct Cli {
    /// Configuration file (TOML). Without it an embedded default serves on 127.0.0.1:8080,
    /// storing under ./data.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate a configuration file and print the effective configuration, secrets redacted.
    CheckConfig {
        /// File to check (defaults to --config).
        path: Option<PathBuf>,
    },
    /// Print a Sluice configuration equivalent to an hmac-file-server configuration; every key
    /// without an equivalent becomes a comment saying why.
    MigrateConfig {
        /// The hmac-file-server config file (TOML).
        input: PathBuf,
        /// Write the result to this file instead of stdout (created with mode 0600: it may hold
        /// the secret).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Talk to the admin API: list, stats, delete (takedown), erase, sweep.
    Admin(sluice::admin::cli::AdminArgs),
    /// Exit 0 if the server answers GET /health (for container HEALTHCHECKs).
    Healthcheck {
        /// Address to probe; defaults to the first listen address of the config.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::from_file(p)?,
        None => Config::embedded_default()?,
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { path } => {
            let path = path.or(cli.config);
            let config = load(path.as_ref())?;
            print!("{}", config.redacted_toml());
            eprintln!("config OK");
            Ok(())
        }
        Command::MigrateConfig { input, output } => migrate_config(&input, output.as_deref()),
        Command::Healthcheck { addr } => {
            let addr = match addr {
                Some(a) => a,
                None => *load(cli.config.as_ref())?
                    .server
                    .listen
                    .first()
                    .context("no listen address")?,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(healthcheck(addr))
        }
        Command::Admin(args) => {
            let config = load(cli.config.as_ref())?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(sluice::admin::cli::run(args, &config))?;
            Ok(())
        }
        Command::Serve => {
            init_tracing();
            let settings = load(cli.config.as_ref())?.resolve()?;
            if let Some(path) = &settings.generated_secret {
                print_first_start(&settings, path);
            }
            // Blocking file I/O runs on tokio's blocking pool; on a small machine a few dozen
            // threads keep the disk busy, and more only cost memory (thread stacks, RSS).
            let blocking = settings.config.server.blocking_threads;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(blocking)
                .build()?
                .block_on(serve(settings, cli.config.clone()))
        }
    }
}

// `sluice migrate-config` reads one config and writes another: configuration files, not
// stored data.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
fn migrate_config(input: &std::path::Path, output: Option<&std::path::Path>) -> Result<()> {
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let m = match sluice::migrate::migrate(&text) {
        Err(sluice::migrate::MigrateError::Invalid { reason, config }) => {
            eprint!("{config}");
            bail!("the migrated config does not validate ({reason}); please report this");
        }
        r => r?,
    };
    match output {
        Some(path) => {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            opts.open(path)
                .and_then(|mut f| f.write_all(m.config.as_bytes()))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => print!("{}", m.config),
    }
    for note in &m.notes {
        eprintln!("note: {note}");
    }
    Ok(())
}

/// Listening sockets handed over by systemd socket activation (or any parent that follows
/// the `LISTEN_FDS` protocol, such as a test holding a pre-bound port): a restart then
/// refuses no connection, since the socket outlives the process.
fn inherited_listeners() -> Result<Vec<tokio::net::TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::new();
    for i in 0..fds.len() {
        let Some(l) = fds
            .take_tcp_listener(i)
            .with_context(|| format!("LISTEN_FDS socket {i} is not a TCP listener"))?
        else {
            continue;
        };
        l.set_nonblocking(true)?;
        out.push(tokio::net::TcpListener::from_std(l)?);
    }
    Ok(out)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(settings: Settings, config_file: Option<PathBuf>) -> Result<()> {
    let addrs = settings.config.server.listen.clone();
    let admin_addr = settings.config.admin.listen;
    let tls_config = settings.config.tls.clone();
    let state = sluice::state::AppState::new(settings).await?;
    if let Some(f) = config_file {
        // SIGHUP (`systemctl reload`) re-reads it.
        let _ = state.config_file.set(f);
    }
    let mut listeners = inherited_listeners()?;
    if listeners.is_empty() {
        for a in &addrs {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a}"))?;
            listeners.push(l);
        }
    } else {
        tracing::info!(
            count = listeners.len(),
            "using listening sockets passed by the service manager (LISTEN_FDS); `listen` is ignored"
        );
    }
    for l in &listeners {
        tracing::info!(addr = %l.local_addr()?, "listening");
    }
    let admin = match admin_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (admin)"))?,
        ),
        None => None,
    };
    let mut unix = Vec::new();
    let server_cfg = &state.config().server;
    for p in &server_cfg.unix_listen {
        let l = sluice::server::unix::bind(
            p,
            server_cfg.unix_mode_bits().unwrap_or(0o660),
            server_cfg.unix_group.as_deref(),
        )
        .with_context(|| format!("cannot listen on unix socket {}", p.display()))?;
        tracing::info!(path = %p.display(), "listening (unix)");
        unix.push(l);
    }
    let mut tls = Vec::new();
    for t in &tls_config {
        let certs = sluice::server::tls::CertStore::open(&t.cert, &t.key)
            .with_context(|| format!("TLS listener {}", t.listen))?;
        let listener = tokio::net::TcpListener::bind(t.listen)
            .await
            .with_context(|| format!("cannot listen on {} (TLS)", t.listen))?;
        tracing::info!(addr = %listener.local_addr()?, cert = %t.cert.display(), "listening (TLS)");
        tls.push(sluice::server::TlsListener { listener, certs });
    }
    let audit = state.audit.clone();
    let listeners = sluice::server::Listeners {
        plain: listeners,
        tls,
        unix,
        admin,
    };
    sluice::server::serve(listeners, state, shutdown_signal()).await?;
    audit.flush().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn healthcheck(addr: std::net::SocketAddr) -> Result<()> {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.take(4096).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .context("health check timed out")??;
    let head = String::from_utf8_lossy(&buf);
    if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
        println!("healthy");
        Ok(())
    } else {
        bail!("unhealthy: {}", head.lines().next().unwrap_or(""))
    }
}

/// Printed once, when the secret was generated on this start.
fn print_first_start(settings: &Settings, path: &std::path::Path) {
    let secret = settings
        .keys
        .first()
        .map(|k| String::from_utf8_lossy(&k.secret).into_owned())
        .unwrap_or_default();
    let listen = settings
        .config
        .server
        .listen
        .first()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let base = format!("http://{listen}{}", settings.config.server.url_prefix);
    let max = settings.config.storage.max_file_size.as_u64();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        r#"
Sluice generated an upload secret and saved it to {path} (mode 0600).
It is printed only this once.

    secret: {secret}

Prosody (mod_http_upload_external from prosody-modules):

    Component "upload.example.org" "http_upload_external"
        http_upload_external_base_url = "{base}/"
        http_upload_external_secret = "{secret}"
        http_upload_external_file_size_limit = {max}

Prosody 0.12+ (mod_http_file_share handing out slots that Sluice stores):

    Component "share.example.org" "http_file_share"
        http_file_share_base_url = "{base}"
        http_file_share_secret = "{secret}"
        http_file_share_size_limit = {max}

ejabberd (mod_http_upload):

    modules:
      mod_http_upload:
        put_url: "{base}"
        get_url: "{base}"
        external_secret: "{secret}"
        max_size: {max}

(Behind a reverse proxy, replace {base} with the public https URL.)
"#,
        path = path.display()
    );
}
