//! Server wiring: health, metrics format, CORS, h2c, header limits and timeouts, shutdown.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::AsyncReadExt;

use crate::common::*;

#[tokio::test]
async fn health_and_unknown_routes() {
    let s = TestServer::start().await;
    let r = s
        .client
        .get(format!("{}/health", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.get_bytes("no/such.file").await.0, StatusCode::NOT_FOUND);
    let r = s.client.delete(s.url("a/b")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.headers()["allow"].to_str().unwrap().contains("PUT"));
    let r = s
        .client
        .get(format!("{}/upload/a/%ff", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn cors_preflight_and_actual_response() {
    let s = TestServer::start().await;
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("slot/f.jpg"))
        .header("origin", "https://chat.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    for m in ["OPTIONS", "HEAD", "GET", "PUT"] {
        assert!(methods.contains(m), "{methods}");
    }
    let allow = h["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allow.contains("Authorization")
            && allow.contains("Content-Type")
            && allow.contains("Range")
    );
    assert!(h.contains_key("access-control-max-age"));

    assert_eq!(
        s.put("slot/f.jpg", b"abc".to_vec()).await,
        StatusCode::CREATED
    );
    let r = s
        .client
        .get(s.url("slot/f.jpg"))
        .header("origin", "https://chat.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let expose = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    for e in ["Content-Length", "Content-Range", "ETag", "Accept-Ranges"] {
        assert!(expose.contains(e), "{expose}");
    }
}

#[tokio::test]
async fn cors_with_credentials_echoes_listed_origin_only() {
    let s = TestServer::start_with(|c| {
        c.cors.allow_origins = vec!["https://ok.example".into()];
        c.cors.allow_credentials = true;
    })
    .await;
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("a/b"))
        .header("origin", "https://ok.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://ok.example"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("a/b"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn http2_prior_knowledge_on_the_same_port() {
    let s = TestServer::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(T)
        .build()
        .unwrap();
    let body = data(200_000, 5);
    let r = h2
        .put(s.put_v1("h2/x.bin", body.len() as u64))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = h2.get(s.url("h2/x.bin")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    // And HTTP/1.1 still works on the same port.
    assert_eq!(s.get_bytes("h2/x.bin").await.1, body);
}

#[tokio::test]
async fn slow_header_is_cut_off() {
    let s =
        TestServer::start_with(|c| c.server.header_read_timeout = Duration::from_millis(500)).await;
    let mut c = s.connect().await;
    write(&mut c, b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // The server closes the connection (with or without a 408) long before our 30 s bound.
    let _ = tokio::time::timeout(T, c.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn oversized_header_is_refused() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let big = "a".repeat(64 * 1024);
    write(
        &mut c,
        format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    let resp = read_until(&mut c, "\r\n\r\n").await;
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 431"),
        "{resp}"
    );
    // Within hyper's read buffer but over max_header_size (16 KiB): 431 from Sluice.
    let mid = "b".repeat(20 * 1024);
    let resp = raw_request(
        &s,
        &format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Mid: {mid}\r\n\r\n"),
        b"",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // The server is still healthy for others.
    let r = s
        .client
        .get(format!("{}/health", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_upload_finish_and_stops_accepting() {
    let mut s = TestServer::start().await;
    let url = s.put_v1("g/inflight.bin", 20);
    let pq = url.split_once(&s.addr.to_string()).unwrap().1.to_owned();
    let mut c = s.connect().await;
    write(
        &mut c,
        format!("PUT {pq} HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n").as_bytes(),
    )
    .await;
    write(&mut c, &[3u8; 10]).await;
    // Wait until the upload is in flight.
    for _ in 0..200 {
        if s.metric("sluice_uploads_in_flight").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addr = s.addr;
    s.begin_shutdown();
    // New connections are refused once the listener is gone (polled, bounded).
    let mut refused = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting after shutdown began");
    write(&mut c, &[3u8; 10]).await;
    let resp = read_until(&mut c, "\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    drop(c);
    s.shutdown().await;
    assert_eq!(
        std::fs::read(s.files_dir().join("g/inflight.bin")).unwrap(),
        vec![3u8; 20]
    );
}

#[tokio::test]
async fn shutdown_grace_bounds_a_stuck_client() {
    let mut s =
        TestServer::start_with(|c| c.server.shutdown_grace = Duration::from_millis(300)).await;
    let url = s.put_v1("g/stuck.bin", 20);
    let pq = url.split_once(&s.addr.to_string()).unwrap().1.to_owned();
    let mut c = s.connect().await;
    write(
        &mut c,
        format!("PUT {pq} HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n").as_bytes(),
    )
    .await;
    write(&mut c, &[3u8; 10]).await;
    for _ in 0..200 {
        if s.metric("sluice_uploads_in_flight").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    s.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(c);
}

#[tokio::test]
async fn metrics_pass_promtool_when_available() {
    let s = TestServer::start().await;
    assert_eq!(s.put("a/p.bin", vec![1u8; 10]).await, StatusCode::CREATED);
    s.get_bytes("a/p.bin").await;
    let r = s
        .client
        .get(format!("{}/metrics", s.base()))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    for name in [
        "sluice_http_requests_total",
        "sluice_upload_bytes_total",
        "sluice_auth_failures_total",
        "sluice_uploads_in_flight",
        "sluice_http_request_duration_seconds_bucket",
        "sluice_pool_leases_total",
        "sluice_engine_buffer_size_bytes_bucket",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    // promtool is installed by .ci/run (Debian package `prometheus`); CI requires it.
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    if promtool.is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "promtool must be installed in CI"
        );
        eprintln!("promtool not installed; skipping the lint half of this test");
        return;
    }
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_cut_off_and_buffers_return() {
    let s = TestServer::start_with(|c| c.server.send_timeout = Duration::from_millis(500)).await;
    assert_eq!(
        s.put("s/big.bin", data(32 * 1024 * 1024, 3)).await,
        StatusCode::CREATED
    );
    let mut c = s.connect().await;
    write(&mut c, b"GET /upload/s/big.bin HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // Read nothing: the server's socket buffer fills and its writes block.
    let mut cut = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.metric("sluice_downloads_in_flight").await == 0.0 {
            cut = true;
            break;
        }
    }
    assert!(cut, "stalled download still in flight");
    assert_eq!(s.metric("sluice_pool_in_use_bytes").await, 0.0);
    drop(c);
}

#[tokio::test]
async fn unix_socket_listener_serves_a_local_proxy() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncWriteExt;
    let sock_dir = tempfile::tempdir().unwrap();
    let path = sock_dir.path().join("sluice.sock");
    // A stale socket file from an earlier run (nobody answers on it) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let p2 = path.clone();
    let s = TestServer::start_with(move |c| c.server.unix_listen = vec![p2]).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let body = data(50_000, 11);
    let url = s.put_v1("ux/a.bin", body.len() as u64);
    let pq = url.split_once(&s.addr.to_string()).unwrap().1.to_owned();
    let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
    c.write_all(
        format!(
            "PUT {pq} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    c.write_all(&body).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    // The same file is served on TCP; a second instance cannot take the live socket.
    assert_eq!(s.get_bytes("ux/a.bin").await.1, body);
    assert!(sluice::server::unix::bind(&path, 0o660, None).is_err());
}
