//! Real clients against the real server: curl and wget resuming truncated downloads, and a
//! headless Chromium whose page fetches a byte range from Sluice (cross-origin, with CORS).
//!
//! The tools come from Debian packages that `.ci/run` installs; under CI a missing tool fails
//! the test, elsewhere the test says it skipped and returns.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{tool} must be installed in CI"
        );
        eprintln!("{tool} not installed; skipping");
    }
    found
}

async fn run(mut cmd: Command) -> std::process::Output {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("tool timed out")
    .unwrap()
    .unwrap();
    out
}

async fn stored(s: &TestServer, path: &str, len: usize, seed: u64) -> Vec<u8> {
    let body = data(len, seed);
    assert_eq!(s.put(path, body.clone()).await, StatusCode::CREATED);
    body
}

fn truncated_copy(dir: &Path, body: &[u8], keep: usize) -> std::path::PathBuf {
    let p = dir.join("partial.bin");
    std::fs::write(&p, &body[..keep]).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_resumes_a_truncated_download() {
    if !have("curl") {
        return;
    }
    let s = TestServer::start().await;
    let body = stored(&s, "dl/video.mp4", 3_000_000, 11).await;
    let tmp = tempfile::tempdir().unwrap();
    let out = truncated_copy(tmp.path(), &body, 1_234_567);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "-C", "-", "-o"])
        .arg(&out)
        .arg(s.url("dl/video.mp4"));
    let res = run(cmd).await;
    assert!(
        res.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), body);
    assert!(
        s.metric("sluice_download_range_requests_total{outcome=\"single\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        s.metric("sluice_download_bytes_total").await,
        (3_000_000 - 1_234_567) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wget_continues_a_truncated_download() {
    if !have("wget") {
        return;
    }
    let s = TestServer::start().await;
    let body = stored(&s, "dl/archive.bin", 2_500_000, 12).await;
    let tmp = tempfile::tempdir().unwrap();
    let out = truncated_copy(tmp.path(), &body, 999_999);
    let mut cmd = Command::new("wget");
    cmd.args(["-q", "-c", "-O"])
        .arg(&out)
        .arg(s.url("dl/archive.bin"));
    let res = run(cmd).await;
    assert!(
        res.status.success(),
        "wget: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), body);
    assert_eq!(
        s.metric("sluice_download_bytes_total").await,
        (2_500_000 - 999_999) as f64
    );
}

/// A one-page HTTP server on another origin, so the page's fetch() is cross-origin.
async fn serve_page(html: String) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_fetches_ranges_cross_origin() {
    let chromium = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    let Some(chromium) = chromium else {
        assert!(
            std::env::var("CI").is_err(),
            "chromium must be installed in CI"
        );
        eprintln!("chromium not installed; skipping");
        return;
    };
    let s = TestServer::start().await;
    let body = stored(&s, "web/clip.webm", 200_000, 13).await;
    let url = s.url("web/clip.webm");
    let html = format!(
        r#"<!doctype html><html><body>pending<script>
const hex = b => Array.from(b, x => x.toString(16).padStart(2, '0')).join('');
async function one(range) {{
  const r = await fetch("{url}", {{ headers: {{ Range: range }} }});
  const b = new Uint8Array(await r.arrayBuffer());
  return r.status + ' ' + r.headers.get('Content-Range') + ' ' + b.length + ' ' + hex(b.slice(0, 8)) + ' ' + hex(b.slice(-8));
}}
(async () => {{
  try {{
    const a = await one('bytes=1000-1999');
    const b = await one('bytes=0-1');
    const c = await one('bytes=-100');
    document.body.textContent = 'RESULT|' + a + '|' + b + '|' + c + '|END';
  }} catch (e) {{ document.body.textContent = 'RESULT|error ' + e + '|END'; }}
}})();
</script></body></html>"#
    );
    let (page, server) = serve_page(html).await;
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--virtual-time-budget=15000",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("http://{page}/"));
    let out = run(cmd).await;
    server.abort();
    let dom = String::from_utf8_lossy(&out.stdout);
    let result = dom
        .split("RESULT|")
        .nth(1)
        .and_then(|r| r.split("|END").next())
        .unwrap_or_else(|| {
            panic!(
                "no result in page: {dom}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let h = |b: &[u8]| hex::encode(b);
    let want = [
        format!(
            "206 bytes 1000-1999/200000 1000 {} {}",
            h(&body[1000..1008]),
            h(&body[1992..2000])
        ),
        format!(
            "206 bytes 0-1/200000 2 {} {}",
            h(&body[0..2]),
            h(&body[0..2])
        ),
        format!(
            "206 bytes 199900-199999/200000 100 {} {}",
            h(&body[199900..199908]),
            h(&body[199992..200000])
        ),
    ];
    eprintln!("chromium page result: {result}");
    let got: Vec<&str> = result.split('|').collect();
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
}
