//! Resumable uploads: tus 1.0 (with its extensions), the chunked protocol and POST forms,
//! over the session core; restarts and a kill -9 of the real binary.

use std::time::Duration;

use base64::Engine as _;
use reqwest::{header::HeaderMap, StatusCode};

use crate::common::*;

const TUS: (&str, &str) = ("tus-resumable", "1.0.0");

fn tus_create_url(s: &TestServer, path: &str, len: u64) -> String {
    let m =
        sluice::auth::mac::sign_hex(SECRET.as_bytes(), &sluice::auth::mac::message_v1(path, len));
    format!("{}/upload/tus/{}?v={m}", s.base(), encode_path(path))
}

pub(crate) async fn tus_create(s: &TestServer, path: &str, len: u64) -> String {
    let r = s
        .client
        .post(tus_create_url(s, path, len))
        .header(TUS.0, TUS.1)
        .header("upload-length", len.to_string())
        .header(
            "upload-metadata",
            format!(
                "filename {}",
                base64::engine::general_purpose::STANDARD.encode(path)
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    assert_eq!(r.headers()["tus-resumable"], "1.0.0");
    assert!(r.headers().contains_key("upload-expires"));
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with("/upload/tus/"), "{loc}");
    format!("{}{loc}", s.base())
}

pub(crate) async fn patch(
    s: &TestServer,
    url: &str,
    offset: u64,
    body: Vec<u8>,
    extra: &[(&str, String)],
) -> reqwest::Response {
    let mut rb = s
        .client
        .patch(url)
        .header(TUS.0, TUS.1)
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream");
    for (k, v) in extra {
        rb = rb.header(*k, v);
    }
    rb.body(body).send().await.unwrap()
}

pub(crate) async fn head(s: &TestServer, url: &str) -> (StatusCode, HeaderMap) {
    let r = s
        .client
        .head(url)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap();
    (r.status(), r.headers().clone())
}

pub(crate) fn offset(h: &HeaderMap) -> u64 {
    h["upload-offset"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn tus_options_advertise_capabilities() {
    let s = TestServer::start().await;
    let r = s
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/upload/tus/", s.base()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let h = r.headers();
    assert_eq!(h["tus-version"], "1.0.0");
    let ext = h["tus-extension"].to_str().unwrap();
    for e in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{ext}");
    }
    assert_eq!(
        h["tus-max-size"],
        (100u64 * 1024 * 1024).to_string().as_str()
    );
    assert_eq!(h["tus-checksum-algorithm"], "sha1,sha256,md5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_upload_in_chunks_publishes_atomically() {
    let s = TestServer::start().await;
    let body = data(3_000_000, 31);
    let url = tus_create(&s, "t/video file.mp4", body.len() as u64).await;
    let (st, h) = head(&s, &url).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(offset(&h), 0);
    assert_eq!(h["upload-length"], "3000000");
    assert_eq!(h["cache-control"], "no-store");
    assert!(h["upload-metadata"]
        .to_str()
        .unwrap()
        .starts_with("filename "));
    let r = patch(&s, &url, 0, body[..1_000_000].to_vec(), &[]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset(r.headers()), 1_000_000);
    // Not visible at its final name until complete.
    assert_eq!(
        s.get_bytes("t/video file.mp4").await.0,
        StatusCode::NOT_FOUND
    );
    let r = patch(&s, &url, 1_000_000, body[1_000_000..].to_vec(), &[]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset(r.headers()), 3_000_000);
    let r = s
        .client
        .get(s.url("t/video file.mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["etag"],
        format!("\"{}\"", sha256_hex(&body)).as_str()
    );
    assert_eq!(r.headers()["content-type"], "video/mp4");
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    // HEAD after completion still answers with the full offset.
    let (st, h) = head(&s, &url).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(offset(&h), 3_000_000);
    assert_eq!(
        s.metric("sluice_sessions_total{event=\"completed\",protocol=\"tus\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn tus_protocol_errors() {
    let s = TestServer::start().await;
    let url = tus_create(&s, "t/e.bin", 100).await;
    // Wrong version → 412 with Tus-Version.
    let r = s
        .client
        .head(&url)
        .header("tus-resumable", "0.2.2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    // Wrong content type → 415.
    let r = s
        .client
        .patch(&url)
        .header(TUS.0, TUS.1)
        .header("upload-offset", "0")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Wrong offset → 409, nothing written.
    let r = patch(&s, &url, 5, vec![1; 10], &[]).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(offset(&head(&s, &url).await.1), 0);
    // More than the remaining length → 413.
    let r = patch(&s, &url, 0, vec![1; 101], &[]).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(offset(&head(&s, &url).await.1), 0);
    // Bad grant → 403; too large → 413; unknown id → 404.
    let r = s
        .client
        .post(format!("{}/upload/tus/t/x.bin?v=00", s.base()))
        .header(TUS.0, TUS.1)
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()["tus-resumable"], "1.0.0");
    let big = 200 * 1024 * 1024;
    let r = s
        .client
        .post(tus_create_url(&s, "t/big.bin", big))
        .header(TUS.0, TUS.1)
        .header("upload-length", big.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (st, _) = head(
        &s,
        &format!("{}/upload/tus/AAAAAAAAAAAAAAAAAAAAAA", s.base()),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Target already exists → 409 at creation.
    assert_eq!(
        s.put("t/taken.bin", b"abc".to_vec()).await,
        StatusCode::CREATED
    );
    let r = s
        .client
        .post(tus_create_url(&s, "t/taken.bin", 3))
        .header(TUS.0, TUS.1)
        .header("upload-length", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // Length that differs from the signed one → 403.
    let r = s
        .client
        .post(tus_create_url(&s, "t/len.bin", 3))
        .header(TUS.0, TUS.1)
        .header("upload-length", "4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tus_checksum_mismatch_is_460_and_discarded() {
    let s = TestServer::start().await;
    let body = data(20_000, 3);
    let url = tus_create(&s, "t/sum.bin", 20_000).await;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    use sha1::Digest as _;
    let good_sha1 = b64(&sha1::Sha1::digest(&body[..10_000]));
    let r = patch(
        &s,
        &url,
        0,
        body[..10_000].to_vec(),
        &[("upload-checksum", format!("sha1 {good_sha1}"))],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let bad = b64(&sha2::Sha256::digest(b"something else"));
    let r = patch(
        &s,
        &url,
        10_000,
        body[10_000..].to_vec(),
        &[("upload-checksum", format!("sha256 {bad}"))],
    )
    .await;
    assert_eq!(r.status().as_u16(), 460);
    assert_eq!(offset(&head(&s, &url).await.1), 10_000);
    let r = patch(
        &s,
        &url,
        10_000,
        body[10_000..].to_vec(),
        &[("upload-checksum", "crc32 AAAA".into())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let md5 = b64(&md5::Md5::digest(&body[10_000..]));
    let r = patch(
        &s,
        &url,
        10_000,
        body[10_000..].to_vec(),
        &[("upload-checksum", format!("md5 {md5}"))],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.get_bytes("t/sum.bin").await.1, body);
}

#[tokio::test]
async fn tus_deferred_length_creation_with_upload_and_override() {
    let s = TestServer::start().await;
    let body = data(50_000, 4);
    // Deferred length: the size-bound grant signs the final size, given as `size`.
    let url = format!("{}&size=50000", tus_create_url(&s, "t/defer.bin", 50_000));
    let r = s
        .client
        .post(&url)
        .header(TUS.0, TUS.1)
        .header("upload-defer-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let loc = format!("{}{}", s.base(), r.headers()["location"].to_str().unwrap());
    let (_, h) = head(&s, &loc).await;
    assert_eq!(h["upload-defer-length"], "1");
    let r = patch(&s, &loc, 0, body[..20_000].to_vec(), &[]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // A length other than the signed one is refused; the right one completes it.
    let r = patch(
        &s,
        &loc,
        20_000,
        body[20_000..].to_vec(),
        &[("upload-length", "60000".into())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // X-HTTP-Method-Override: PATCH through a POST.
    let r = s
        .client
        .post(&loc)
        .header(TUS.0, TUS.1)
        .header("x-http-method-override", "PATCH")
        .header("upload-offset", "20000")
        .header("upload-length", "50000")
        .header("content-type", "application/offset+octet-stream")
        .body(body[20_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.get_bytes("t/defer.bin").await.1, body);

    // creation-with-upload: the whole file in the POST.
    let small = data(3000, 5);
    let r = s
        .client
        .post(tus_create_url(&s, "t/cwu.bin", 3000))
        .header(TUS.0, TUS.1)
        .header("upload-length", "3000")
        .header("content-type", "application/offset+octet-stream")
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["upload-offset"], "3000");
    assert_eq!(s.get_bytes("t/cwu.bin").await.1, small);
}

#[tokio::test]
async fn tus_termination_and_expiry_remove_files() {
    let s = TestServer::start_with(|c| {
        c.resumable.session_ttl = Duration::from_secs(1);
        // The sweeper's own timer never fires in this test: sweeps are called directly.
        c.resumable.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let url = tus_create(&s, "t/del.bin", 10).await;
    assert_eq!(
        patch(&s, &url, 0, vec![1; 4], &[]).await.status(),
        StatusCode::NO_CONTENT
    );
    let r = s
        .client
        .delete(&url)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(head(&s, &url).await.0, StatusCode::GONE);
    assert_eq!(
        patch(&s, &url, 4, vec![1; 6], &[]).await.status(),
        StatusCode::GONE
    );
    // Expiry: idle for longer than the ttl → swept, files gone, 404/410.
    let url = tus_create(&s, "t/exp.bin", 10).await;
    assert_eq!(
        patch(&s, &url, 0, vec![1; 4], &[]).await.status(),
        StatusCode::NO_CONTENT
    );
    let sessions = s.dir.path().join("staging/sessions");
    assert_eq!(std::fs::read_dir(&sessions).unwrap().count(), 2);
    let store = s.state.sessions.clone().unwrap();
    // At the ttl's edge nothing expires; one second past it, the sweep removes the session.
    s.clock.advance(Duration::from_secs(1));
    assert_eq!(store.sweep().await, 0);
    assert_eq!(std::fs::read_dir(&sessions).unwrap().count(), 2);
    s.clock.advance(Duration::from_secs(1));
    assert_eq!(store.sweep().await, 1);
    assert_eq!(
        std::fs::read_dir(&sessions).unwrap().count(),
        0,
        "expired session files not swept"
    );
    let st = head(&s, &url).await.0;
    assert!(
        st == StatusCode::GONE || st == StatusCode::NOT_FOUND,
        "{st}"
    );
    assert!(
        s.metric("sluice_sessions_total{event=\"expired\",protocol=\"tus\"}")
            .await
            >= 1.0
    );
    assert_eq!(s.metric("sluice_sessions_open").await, 0.0);
}

#[tokio::test]
async fn tus_concatenation_of_partials() {
    let s = TestServer::start().await;
    let (a, b) = (data(7000, 6), data(5000, 7));
    let mut parts = Vec::new();
    for (name, d) in [("t/p1", &a), ("t/p2", &b)] {
        let r = s
            .client
            .post(tus_create_url(&s, name, d.len() as u64))
            .header(TUS.0, TUS.1)
            .header("upload-length", d.len().to_string())
            .header("upload-concat", "partial")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let url = format!("{}{loc}", s.base());
        assert_eq!(
            patch(&s, &url, 0, d.clone(), &[]).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(head(&s, &url).await.1["upload-concat"], "partial");
        parts.push(loc);
    }
    // One grant opens a bounded number of partial uploads.
    for i in 1..sluice::upload::tus::MAX_PARTS_PER_TARGET {
        let r = s
            .client
            .post(tus_create_url(&s, "t/p1", 7000))
            .header(TUS.0, TUS.1)
            .header("upload-length", "7000")
            .header("upload-concat", "partial")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "part {i}");
    }
    let r = s
        .client
        .post(tus_create_url(&s, "t/p1", 7000))
        .header(TUS.0, TUS.1)
        .header("upload-length", "7000")
        .header("upload-concat", "partial")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // Partials are never published.
    assert_eq!(s.get_bytes("t/p1").await.0, StatusCode::NOT_FOUND);
    let r = s
        .client
        .post(tus_create_url(&s, "t/whole.bin", 12_000))
        .header(TUS.0, TUS.1)
        .header("upload-concat", format!("final;{} {}", parts[0], parts[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let final_url = format!("{}{}", s.base(), r.headers()["location"].to_str().unwrap());
    let mut want = a.clone();
    want.extend_from_slice(&b);
    assert_eq!(s.get_bytes("t/whole.bin").await.1, want);
    // tus 1.0.0 Concatenation: the final upload's HEAD carries `final;` and the part URLs.
    let (st, h) = head(&s, &final_url).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        h["upload-concat"],
        format!("final;{} {}", parts[0], parts[1]).as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_disconnect_keeps_received_bytes_and_head_takes_over() {
    let s = TestServer::start().await;
    let url = tus_create(&s, "t/flaky.bin", 200_000).await;
    let pq = url.split_once(&s.addr.to_string()).unwrap().1.to_owned();
    let body = data(200_000, 8);
    // A phone sends half, then its connection hangs (kept open, nothing more arrives).
    let mut c = s.connect().await;
    write(&mut c, format!("PATCH {pq} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 200000\r\n\r\n").as_bytes()).await;
    write(&mut c, &body[..120_000]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The reconnecting phone's HEAD ends the dead request at once and reports what is stored.
    let started = std::time::Instant::now();
    let (st, h) = head(&s, &url).await;
    assert_eq!(st, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(offset(&h), 120_000);
    let r = patch(&s, &url, 120_000, body[120_000..].to_vec(), &[]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.get_bytes("t/flaky.bin").await.1, body);
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_at_one_offset_one_wins_no_corruption() {
    let s = TestServer::start().await;
    let n = 2_000_000usize;
    let url = tus_create(&s, "t/race.bin", n as u64).await;
    let a = vec![b'a'; n];
    let b = vec![b'b'; n];
    let (ra, rb) = tokio::join!(
        patch(&s, &url, 0, a.clone(), &[]),
        patch(&s, &url, 0, b.clone(), &[])
    );
    let statuses = [ra.status(), rb.status()];
    let complete = [ra, rb]
        .iter()
        .filter(|r| r.status() == StatusCode::NO_CONTENT && offset(r.headers()) == n as u64)
        .count();
    assert!(complete <= 1, "{statuses:?}");
    // Whatever was stored is one client's bytes only, never interleaved.
    let (_, h) = head(&s, &url).await;
    let stored = offset(&h) as usize;
    if stored == n {
        let got = s.get_bytes("t/race.bin").await.1;
        assert!(got == a || got == b, "interleaved data");
    } else {
        // Finish it with one client's data from the stored offset; the prefix must be uniform.
        let staged = std::fs::read_dir(s.dir.path().join("staging/sessions"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "bin"))
            .unwrap();
        let prefix = std::fs::read(staged).unwrap();
        assert_eq!(prefix.len(), stored);
        assert!(
            prefix.iter().all(|c| *c == b'a') || prefix.iter().all(|c| *c == b'b'),
            "interleaved prefix"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_graceful_restart() {
    let mut s = TestServer::start().await;
    let body = data(1_500_000, 9);
    let url = tus_create(&s, "t/restart.bin", body.len() as u64).await;
    assert_eq!(
        patch(&s, &url, 0, body[..700_000].to_vec(), &[])
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let path = url.split_once(&s.addr.to_string()).unwrap().1.to_owned();
    s.shutdown().await;
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let s = TestServer::start_in(dir, |_| {}).await;
    let url = format!("{}{path}", s.base());
    let (st, h) = head(&s, &url).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(offset(&h), 700_000);
    assert_eq!(
        patch(&s, &url, 700_000, body[700_000..].to_vec(), &[])
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let r = s.client.get(s.url("t/restart.bin")).send().await.unwrap();
    assert_eq!(
        r.headers()["etag"],
        format!("\"{}\"", sha256_hex(&body)).as_str()
    );
}

#[tokio::test]
async fn session_cap_answers_503() {
    let s = TestServer::start_with(|c| c.resumable.max_sessions = 2).await;
    tus_create(&s, "t/c1", 1).await;
    tus_create(&s, "t/c2", 1).await;
    let r = s
        .client
        .post(tus_create_url(&s, "t/c3", 1))
        .header(TUS.0, TUS.1)
        .header("upload-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn chunked_protocol_out_of_order_with_status() {
    let s = TestServer::start_with(|c| {
        c.engine.clients.chunk_min = bytesize::ByteSize::kib(64);
        c.engine.clients.desktop_chunk = bytesize::ByteSize::kib(64);
    })
    .await;
    let body = data(200_000, 10);
    let m = sluice::auth::mac::sign_hex(
        SECRET.as_bytes(),
        &sluice::auth::mac::message_v1("c/chunky file.bin", 200_000),
    );
    let r = s
        .client
        .post(format!("{}/chunked-upload?v={m}", s.base()))
        .header("x-filename", "c/chunky%20file.bin")
        .header("x-total-size", "200000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let j: serde_json::Value = r.json().await.unwrap();
    let id = j["session_id"].as_str().unwrap().to_owned();
    let cs = j["chunk_size"].as_u64().unwrap() as usize;
    assert_eq!(cs, 65536);
    assert_eq!(j["total_chunks"], 4);
    // A static MAC over the constant path (hmac-file-server style) is refused.
    let stat = sluice::auth::mac::sign_hex(SECRET.as_bytes(), b"/chunked-upload");
    let r = s
        .client
        .post(format!("{}/chunked-upload?v={stat}", s.base()))
        .header("x-filename", "c/other.bin")
        .header("x-total-size", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for i in [3usize, 0, 2] {
        let chunk = body[i * cs..((i + 1) * cs).min(body.len())].to_vec();
        let r = s
            .client
            .put(format!("{}/chunked-upload", s.base()))
            .header("x-upload-session-id", &id)
            .header("x-chunk-number", i.to_string())
            .body(chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let st: serde_json::Value = s
        .client
        .get(format!("{}/upload-status?session_id={id}", s.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["missing_chunks"], serde_json::json!([1]));
    assert_eq!(st["completed"], false);
    assert_eq!(st["total_size"], 200_000);
    assert_eq!(st["uploaded_bytes"], (200_000 - cs) as u64);
    // Wrong size for a chunk → 400/413, nothing recorded.
    let r = s
        .client
        .put(format!("{}/chunked-upload", s.base()))
        .header("x-upload-session-id", &id)
        .header("x-chunk-number", "1")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s
        .client
        .put(format!("{}/chunked-upload", s.base()))
        .header("x-upload-session-id", &id)
        .header("x-chunk-number", "1")
        .body(body[cs..2 * cs].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["completed"], true);
    assert_eq!(j["sha256"], sha256_hex(&body));
    assert_eq!(s.get_bytes("c/chunky file.bin").await.1, body);
}

#[tokio::test]
async fn post_form_upload() {
    let s = TestServer::start().await;
    let body = data(30_000, 11);
    let m = sluice::auth::mac::sign_hex(
        SECRET.as_bytes(),
        &sluice::auth::mac::message_v1("f/photo.jpg", 30_000),
    );
    let boundary = "XyZboundary123";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n")
            .as_bytes(),
    );
    form.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes());
    form.extend_from_slice(&body);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = s
        .client
        .post(format!("{}/upload/f/photo.jpg?v={m}&size=30000", s.base()))
        .header("content-type", &ct)
        .body(form.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["sha256"], sha256_hex(&body));
    assert_eq!(j["size"], 30_000);
    let r = s.client.get(s.url("f/photo.jpg")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    // Signed size differs from the file part → refused, nothing published.
    let m2 = sluice::auth::mac::sign_hex(
        SECRET.as_bytes(),
        &sluice::auth::mac::message_v1("f/other.jpg", 29_999),
    );
    let r = s
        .client
        .post(format!("{}/upload/f/other.jpg?v={m2}&size=29999", s.base()))
        .header("content-type", &ct)
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s.get_bytes("f/other.jpg").await.0, StatusCode::NOT_FOUND);
    // Not multipart → 415.
    let r = s
        .client
        .post(format!("{}/upload/f/x.jpg?v={m}&size=30000", s.base()))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

fn ietf_url(s: &TestServer, path: &str, len: u64) -> String {
    let m =
        sluice::auth::mac::sign_hex(SECRET.as_bytes(), &sluice::auth::mac::message_v1(path, len));
    format!("{}/upload/resumable/{}?v={m}", s.base(), encode_path(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_draft_create_offset_append_complete_each_interop_version() {
    let s = TestServer::start().await;
    for version in 3u32..=8 {
        let body = data(300_000, u64::from(version));
        let path = format!("i/v{version}.bin");
        let (cflag, incomplete_hdr) = if version == 3 {
            ("upload-incomplete", "?1")
        } else {
            ("upload-complete", "?0")
        };
        let r = s
            .client
            .post(ietf_url(&s, &path, 300_000))
            .header("upload-draft-interop-version", version.to_string())
            .header(cflag, incomplete_hdr)
            .header("upload-length", "300000")
            .body(body[..100_000].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "v{version}: {:?}",
            r.text().await
        );
        assert_eq!(r.headers()["upload-offset"], "100000");
        let loc = format!("{}{}", s.base(), r.headers()["location"].to_str().unwrap());
        // Offset retrieval.
        let r = s
            .client
            .head(&loc)
            .header("upload-draft-interop-version", version.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["upload-offset"], "100000");
        assert_eq!(r.headers()["cache-control"], "no-store");
        // Upload-Limit exists from interop 6 (-04); its lifetime key is `expires` in 6 and
        // `max-age` from 7; no `max-append-size` (it would have to stay constant).
        let limit = r.headers().get("upload-limit").map(|v| v.to_str().unwrap());
        match version {
            3..=5 => assert_eq!(limit, None, "v{version}"),
            6 => assert!(limit.unwrap().starts_with("max-size=104857600, expires=")),
            _ => assert!(limit.unwrap().starts_with("max-size=104857600, max-age=")),
        }
        assert!(!limit.unwrap_or("").contains("max-append-size"));
        if version == 3 {
            assert_eq!(r.headers()["upload-incomplete"], "?1");
        } else {
            assert_eq!(r.headers()["upload-complete"], "?0");
        }
        // Wrong offset → 409 with the right one.
        let mut rb = s
            .client
            .patch(&loc)
            .header("upload-draft-interop-version", version.to_string())
            .header("upload-offset", "5")
            .header(cflag, incomplete_hdr);
        if version >= 6 {
            rb = rb.header("content-type", "application/partial-upload");
        }
        let r = rb.body(vec![0u8; 10]).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(r.headers()["upload-offset"], "100000");
        // From 6 on, an append without application/partial-upload is refused.
        if version >= 6 {
            let r = s
                .client
                .patch(&loc)
                .header("upload-draft-interop-version", version.to_string())
                .header("upload-offset", "100000")
                .header(cflag, incomplete_hdr)
                .body(vec![0u8; 10])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        // Final append.
        let done = if version == 3 { "?0" } else { "?1" };
        let mut rb = s
            .client
            .patch(&loc)
            .header("upload-draft-interop-version", version.to_string())
            .header("upload-offset", "100000")
            .header(cflag, done);
        if version >= 6 {
            rb = rb.header("content-type", "application/partial-upload");
        }
        let r = rb.body(body[100_000..].to_vec()).send().await.unwrap();
        assert!(r.status().is_success(), "v{version}: {}", r.status());
        assert_eq!(r.headers()["upload-offset"], "300000");
        assert_eq!(s.get_bytes(&path).await.1, body, "v{version}");
    }
    // Complete in one request (the whole file, Upload-Complete: ?1): signed over its length.
    let body = data(5000, 99);
    let r = s
        .client
        .put(ietf_url(&s, "i/one.bin", 5000))
        .header("upload-complete", "?1")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["upload-complete"], "?1");
    assert_eq!(s.get_bytes("i/one.bin").await.1, body);
    // Cancel.
    let r = s
        .client
        .post(ietf_url(&s, "i/cancel.bin", 10))
        .header("upload-complete", "?0")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    let loc = format!("{}{}", s.base(), r.headers()["location"].to_str().unwrap());
    assert_eq!(
        s.client.delete(&loc).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.client.head(&loc).send().await.unwrap().status(),
        StatusCode::GONE
    );
}

/// Kill -9 the real binary during several resumable uploads, restart it, resume them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_uploads_then_resume_all() {
    let dir = tempfile::tempdir().unwrap();
    // The test holds the listening socket (bound to :0) for both lives of the server and
    // hands it over as fd 3 (LISTEN_FDS): no port is ever released and re-bound.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nurl_prefix = \"/upload\"\n[storage]\ndir = {:?}\ndurability = \"fsync\"\n[[auth.keys]]\nsecret = \"{SECRET}\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let spawn = || {
        use command_fds::{CommandFdExt, FdMapping};
        let fd = std::os::fd::OwnedFd::from(listener.try_clone().unwrap());
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--config")
            .arg(&cfg)
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_PID")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.fd_mappings(vec![FdMapping {
            parent_fd: fd,
            child_fd: 3,
        }])
        .unwrap();
        cmd.spawn().unwrap()
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(T).build().unwrap();
    let wait_ready = || async {
        for _ in 0..200 {
            if client.get(format!("{base}/health")).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not start");
    };
    let mut child = spawn();
    wait_ready().await;
    let bodies: Vec<Vec<u8>> = (0..4)
        .map(|i| data(2_000_000 + i * 1000, 500 + i as u64))
        .collect();
    let mut urls = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let path = format!("crash/f{i}.bin");
        let m = sluice::auth::mac::sign_hex(
            SECRET.as_bytes(),
            &sluice::auth::mac::message_v1(&path, b.len() as u64),
        );
        let r = client
            .post(format!("{base}/upload/tus/{path}?v={m}"))
            .header(TUS.0, TUS.1)
            .header("upload-length", b.len().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let url = format!("{base}{}", r.headers()["location"].to_str().unwrap());
        // A first, acknowledged part...
        let r = client
            .patch(&url)
            .header(TUS.0, TUS.1)
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(b[..500_000].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        urls.push(url);
    }
    // ...then appends in flight on raw connections when the server dies.
    let mut conns = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let pq = url
            .split_once(&format!("127.0.0.1:{port}"))
            .unwrap()
            .1
            .to_owned();
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let total = bodies[i].len() - 500_000;
        write(&mut c, format!("PATCH {pq} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 500000\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {total}\r\n\r\n").as_bytes()).await;
        write(&mut c, &bodies[i][500_000..900_000]).await;
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(conns);
    // No half file is ever visible at a final name.
    let files = dir.path().join("data/files/crash");
    assert!(!files.exists() || std::fs::read_dir(&files).unwrap().count() == 0);
    let mut child = spawn();
    wait_ready().await;
    for (i, url) in urls.iter().enumerate() {
        let r = client.head(url).header(TUS.0, TUS.1).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let off: usize = r.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((500_000..=900_000).contains(&off), "offset {off}");
        let r = client
            .patch(url)
            .header(TUS.0, TUS.1)
            .header("upload-offset", off.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(bodies[i][off..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = client
            .get(format!("{base}/upload/crash/f{i}.bin"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()["etag"],
            format!("\"{}\"", sha256_hex(&bodies[i])).as_str()
        );
        assert_eq!(
            sha256_hex(&r.bytes().await.unwrap()),
            sha256_hex(&bodies[i])
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn sessions_are_bound_to_their_protocol_and_target() {
    let s = TestServer::start().await;
    // A chunked session is not reachable through tus.
    let m = sluice::auth::mac::sign_hex(
        SECRET.as_bytes(),
        &sluice::auth::mac::message_v1("x/c.bin", 100),
    );
    let r = s
        .client
        .post(format!("{}/chunked-upload?v={m}", s.base()))
        .header("x-filename", "x/c.bin")
        .header("x-total-size", "100")
        .send()
        .await
        .unwrap();
    let j: serde_json::Value = r.json().await.unwrap();
    let id = j["session_id"].as_str().unwrap().to_owned();
    let tus_url = format!("{}/upload/tus/{id}", s.base());
    assert_eq!(head(&s, &tus_url).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        patch(&s, &tus_url, 0, vec![1; 10], &[]).await.status(),
        StatusCode::NOT_FOUND
    );
    // Repeating a creation with the same grant returns the same upload, never a second one.
    let a = tus_create(&s, "x/once.bin", 10).await;
    let b = tus_create(&s, "x/once.bin", 10).await;
    assert_eq!(a, b);
    assert_eq!(
        s.metric("sluice_sessions_total{event=\"created\",protocol=\"tus\"}")
            .await,
        1.0
    );
    // A tus filetype with control characters is not stored as the Content-Type.
    let meta = format!(
        "filetype {}",
        base64::engine::general_purpose::STANDARD.encode(b"text/html\x0bx/y")
    );
    let r = s
        .client
        .post(tus_create_url(&s, "x/ctl.bin", 3))
        .header(TUS.0, TUS.1)
        .header("upload-length", "3")
        .header("upload-metadata", meta)
        .header("content-type", "application/offset+octet-stream")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s.client.get(s.url("x/ctl.bin")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
}
