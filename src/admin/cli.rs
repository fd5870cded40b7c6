//! `sluice admin ...`: a small client of the admin API (HTTP/1.1 through hyper's client
//! connection, one connection per request) printing tables, or the server's JSON (`--json`).
//! Address and token default to the config file's `[admin]` table; `--token-file` or
//! `SLUICE_ADMIN_TOKEN` override the token. A spinner with counts shows the progress of
//! `list --all` and `erase` when stdout is a terminal.
//! Must not: print or log the token.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::{FileOut, FilesPage, Removed, StatsOut};
use super::routes::LIST_MAX;
use crate::config::Config;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A sweep or a large erasure page can take a while.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Files erased per request, so progress shows between requests.
const ERASE_STEP: u64 = 500;
/// The environment variable holding the token.
pub const TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Admin API address (default: `[admin] listen` of the config).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// File whose first line is the admin token (default: $SLUICE_ADMIN_TOKEN, then
    /// `[admin] token` of the config).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// List stored files, ordered by path (one page; --all for every page).
    List {
        /// Only paths starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only this uploader's files.
        #[arg(long)]
        uploader: Option<String>,
        /// Uploaded at or after (seconds since the epoch).
        #[arg(long)]
        since: Option<u64>,
        /// Uploaded before (seconds since the epoch).
        #[arg(long)]
        until: Option<u64>,
        /// Start after this path (the `next` of a previous page).
        #[arg(long)]
        after: Option<String>,
        /// Files per page (at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Every page.
        #[arg(long)]
        all: bool,
    },
    /// Totals, free space and the top uploaders.
    Stats,
    /// Take a file down: it answers 410 from now on and its path cannot be used again.
    Delete {
        /// The stored path (decoded, as listed).
        path: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Only free the space: the path may be uploaded again (by default a deletion is a
        /// takedown: the path answers 410 for good).
        #[arg(long)]
        keep_path: bool,
    },
    /// Delete every file of one uploader (their paths are blocked, like takedowns).
    Erase { uploader: String },
    /// Delete expired files now.
    Sweep,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach the admin API at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("admin API: {0}")]
    Http(String),
    #[error("{status}: {reason}")]
    Status { status: StatusCode, reason: String },
    #[error("unexpected answer from the admin API: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The admin token: `--token-file`, else `$SLUICE_ADMIN_TOKEN`, else the config's.
// The `sluice admin` client reads its token file (a secret file, like the config's).
#[allow(clippy::disallowed_methods)]
fn token(args: &AdminArgs, config: &Config) -> Result<String, CliError> {
    if let Some(f) = &args.token_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| CliError::Setup(format!("cannot read {}: {e}", f.display())))?;
        return Ok(text.lines().next().unwrap_or("").trim().to_owned());
    }
    if let Ok(t) = std::env::var(TOKEN_ENV) {
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let Some(k) = &config.admin.token else {
        return Err(CliError::Setup(format!(
            "no admin token: pass --token-file, set {TOKEN_ENV} or [admin] token in the config"
        )));
    };
    let key =
        crate::config::load_key(k, "admin.token").map_err(|e| CliError::Setup(e.to_string()))?;
    String::from_utf8(key.secret).map_err(|_| CliError::Setup("admin token is not UTF-8".into()))
}

/// Run one `sluice admin` command.
pub async fn run(args: AdminArgs, config: &Config) -> Result<(), CliError> {
    let addr = args.addr.or(config.admin.listen).ok_or_else(|| {
        CliError::Setup("no admin address: pass --addr or set [admin] listen in the config".into())
    })?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", token(&args, config)?))
        .map_err(|_| CliError::Setup("the admin token is not valid header text".into()))?;
    auth.set_sensitive(true);
    let client = Client { addr, auth };
    let json = args.json;
    let progress = std::io::stdout().is_terminal();
    match args.command {
        AdminCommand::List {
            prefix,
            uploader,
            since,
            until,
            after,
            limit,
            all,
        } => {
            let mut q = Query::default();
            q.opt("prefix", prefix.as_deref());
            q.opt("uploader", uploader.as_deref());
            q.opt("since", since.map(|v| v.to_string()).as_deref());
            q.opt("until", until.map(|v| v.to_string()).as_deref());
            let limit = limit.unwrap_or(if all { LIST_MAX } else { 100 });
            q.opt("limit", Some(&limit.to_string()));
            list(&client, q, after, all, json, progress).await
        }
        AdminCommand::Stats => {
            let s: StatsOut = client.call(Method::GET, "/stats").await?;
            if json {
                return print_json(&s);
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "files       {}", s.files)?;
            writeln!(out, "stored      {} ({} bytes)", ByteSize(s.bytes), s.bytes)?;
            writeln!(out, "free        {}", ByteSize(s.free_bytes))?;
            if !s.top_uploaders.is_empty() {
                writeln!(out, "\n{:>8}  {:>12}  UPLOADER", "FILES", "BYTES")?;
                for u in &s.top_uploaders {
                    writeln!(
                        out,
                        "{:>8}  {:>12}  {}",
                        u.files,
                        ByteSize(u.bytes).to_string(),
                        u.uploader
                    )?;
                }
            }
            Ok(())
        }
        AdminCommand::Delete {
            path,
            reason,
            keep_path,
        } => {
            let mut q = Query::default();
            q.opt("reason", reason.as_deref());
            q.opt("keep_path", keep_path.then_some("1"));
            let r: Removed = client
                .call(
                    Method::DELETE,
                    &q.url(&format!("/files/{}", encode_path(&path))),
                )
                .await?;
            if json {
                return print_json(&r);
            }
            println!("taken down: {path} ({})", ByteSize(r.bytes));
            Ok(())
        }
        AdminCommand::Erase { uploader } => erase(&client, &uploader, json, progress).await,
        AdminCommand::Sweep => {
            let r: Removed = client.call(Method::POST, "/sweep").await?;
            if json {
                return print_json(&r);
            }
            println!("swept {} expired files ({})", r.files, ByteSize(r.bytes));
            Ok(())
        }
    }
}

async fn list(
    client: &Client,
    q: Query,
    mut after: Option<String>,
    all: bool,
    json: bool,
    progress: bool,
) -> Result<(), CliError> {
    let pb = spinner(progress && all);
    let mut collected = Vec::new();
    let mut shown = 0usize;
    if !json {
        println!(
            "{:>10}  {:<16}  {:<16}  {:<24}  PATH",
            "SIZE", "UPLOADED (UTC)", "EXPIRES (UTC)", "UPLOADER"
        );
    }
    loop {
        let mut page_q = q.clone();
        page_q.opt("after", after.as_deref());
        let page: FilesPage = client.call(Method::GET, &page_q.url("/files")).await?;
        shown += page.files.len();
        pb.set_message(format!("{shown} files"));
        after = page.next.clone();
        if json {
            collected.extend(page.files);
        } else {
            pb.suspend(|| print_rows(&page.files))?;
        }
        if !all || after.is_none() {
            break;
        }
    }
    pb.finish_and_clear();
    if json {
        return print_json(&FilesPage {
            files: collected,
            next: after,
        });
    }
    if let Some(next) = after {
        eprintln!("more files follow: --after {next:?} (or --all)");
    }
    Ok(())
}

fn print_rows(files: &[FileOut]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    for f in files {
        writeln!(
            out,
            "{:>10}  {:<16}  {:<16}  {:<24}  {}",
            ByteSize(f.size).to_string(),
            utc(f.uploaded_at),
            f.expires_at.map_or_else(|| "never".into(), utc),
            f.uploader.as_deref().unwrap_or("-"),
            f.path
        )?;
    }
    Ok(())
}

async fn erase(
    client: &Client,
    uploader: &str,
    json: bool,
    progress: bool,
) -> Result<(), CliError> {
    let pb = spinner(progress);
    let started = std::time::Instant::now();
    let mut total = Removed::default();
    loop {
        let mut q = Query::default();
        q.opt("uploader", Some(uploader));
        q.opt("limit", Some(&ERASE_STEP.to_string()));
        let r: Removed = client.call(Method::POST, &q.url("/erase")).await?;
        total.files += r.files;
        total.bytes += r.bytes;
        let rate = total.files as f64 / started.elapsed().as_secs_f64().max(0.001);
        pb.set_message(format!(
            "erased {} files ({}), {rate:.0} files/s",
            total.files,
            ByteSize(total.bytes)
        ));
        if !r.more {
            break;
        }
    }
    pb.finish_and_clear();
    if json {
        return print_json(&total);
    }
    println!(
        "erased {} files ({}) of {uploader}",
        total.files,
        ByteSize(total.bytes)
    );
    Ok(())
}

fn spinner(on: bool) -> ProgressBar {
    if !on {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
        pb.set_style(style);
    }
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn print_json(v: &impl Serialize) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Query parameters, percent-encoded.
#[derive(Clone, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn opt(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.0.push((k.to_owned(), v.to_owned()));
        }
    }

    fn url(&self, path: &str) -> String {
        if self.0.is_empty() {
            return path.to_owned();
        }
        let q = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&self.0)
            .finish();
        format!("{path}?{q}")
    }
}

/// Everything but RFC 3986 unreserved characters is encoded, per segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_path(decoded: &str) -> String {
    decoded
        .split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// `YYYY-MM-DD HH:MM` (UTC) of seconds since the epoch.
fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

struct Client {
    addr: SocketAddr,
    auth: HeaderValue,
}

impl Client {
    async fn call<T: DeserializeOwned>(&self, method: Method, uri: &str) -> Result<T, CliError> {
        let connect_err = |reason: String| CliError::Connect {
            addr: self.addr,
            reason,
        };
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                .await
                .map_err(|_| connect_err("timed out".into()))?
                .map_err(|e| connect_err(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CliError::Http(e.to_string()))?;
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, self.addr.to_string())
            .header(header::AUTHORIZATION, self.auth.clone())
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| CliError::Http(e.to_string()))?;
        let exchange = async move {
            let res = sender.send_request(req).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        // The connection is driven beside the request and ends with it (Connection: close).
        let (answer, _) =
            tokio::time::timeout(REQUEST_TIMEOUT, async { tokio::join!(exchange, conn) })
                .await
                .map_err(|_| CliError::Http("no answer in time".into()))?;
        let (status, body) = answer.map_err(|e| CliError::Http(e.to_string()))?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(CliError::Status { status, reason });
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13");
    }

    #[test]
    fn paths_and_queries_are_encoded() {
        assert_eq!(encode_path("a b/ü?.txt"), "a%20b/%C3%BC%3F.txt");
        let mut q = Query::default();
        q.opt("uploader", Some("a@b c"));
        q.opt("prefix", None);
        assert_eq!(q.url("/erase"), "/erase?uploader=a%40b+c");
        assert_eq!(Query::default().url("/sweep"), "/sweep");
    }
}
