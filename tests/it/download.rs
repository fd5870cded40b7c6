//! Range and conditional GETs (protocols.md §2) through the real server.

use reqwest::StatusCode;

use crate::common::*;

async fn server_with(path: &str, body: &[u8]) -> TestServer {
    let s = TestServer::start().await;
    let url = s.put_v1(path, body.len() as u64);
    let r = s
        .client
        .put(url)
        .header("content-type", "video/mp4")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    s
}

async fn get_range(s: &TestServer, path: &str, range: &str) -> reqwest::Response {
    s.client
        .get(s.url(path))
        .header("range", range)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn single_ranges_206_with_content_range() {
    let body = data(10_000, 9);
    let s = server_with("v/movie.mp4", &body).await;
    for (hdr, start, end) in [
        ("bytes=0-1", 0usize, 1usize), // Safari probe
        ("bytes=100-199", 100, 199),
        ("bytes=9000-", 9000, 9999), // Chrome seek / Conversations resume
        ("bytes=-500", 9500, 9999),  // suffix
        ("bytes=9990-20000", 9990, 9999), // end clamped
        ("bytes=-20000", 0, 9999),   // suffix longer than file → whole file, 206
    ] {
        let r = get_range(&s, "v/movie.mp4", hdr).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{hdr}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/10000").as_str(),
            "{hdr}"
        );
        assert_eq!(
            r.headers()["content-length"],
            (end - start + 1).to_string().as_str()
        );
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &body[start..=end],
            "{hdr}"
        );
    }
}

#[tokio::test]
async fn unsatisfiable_416_and_invalid_ignored() {
    let body = data(1000, 3);
    let s = server_with("v/a.mp4", &body).await;
    for hdr in ["bytes=1000-", "bytes=-0", "bytes=5000-6000"] {
        let r = get_range(&s, "v/a.mp4", hdr).await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{hdr}");
        assert_eq!(r.headers()["content-range"], "bytes */1000");
    }
    for hdr in ["bytes=5-2", "items=0-1", "bytes=abc", "bytes"] {
        let r = get_range(&s, "v/a.mp4", hdr).await;
        assert_eq!(r.status(), StatusCode::OK, "{hdr}");
        assert_eq!(r.bytes().await.unwrap().len(), 1000);
    }
}

#[tokio::test]
async fn zero_byte_file_any_range_is_416() {
    let s = server_with("v/empty.mp4", b"").await;
    let r = s.client.get(s.url("v/empty.mp4")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "0");
    for hdr in ["bytes=0-", "bytes=0-0", "bytes=-1"] {
        let r = get_range(&s, "v/empty.mp4", hdr).await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{hdr}");
        assert_eq!(r.headers()["content-range"], "bytes */0");
    }
}

#[tokio::test]
async fn multi_range_is_multipart_with_exact_length() {
    let body = data(5000, 4);
    let s = server_with("v/m.mp4", &body).await;
    // Overlapping 10-30 and 20-40 coalesce; 100-199 and 4000- stay separate.
    let r = get_range(&s, "v/m.mp4", "bytes=10-30,20-40, 100-199,4000-").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("multipart/byteranges; boundary="), "{ct}");
    let declared: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let boundary = ct.split("boundary=").nth(1).unwrap().to_owned();
    let raw = r.bytes().await.unwrap();
    assert_eq!(raw.len(), declared);
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(raw)]);
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = mp.next_field().await.unwrap() {
        let cr = field.headers()["content-range"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(field.headers()["content-type"], "video/mp4");
        parts.push((cr, field.bytes().await.unwrap()));
    }
    let want = [(10usize, 40usize), (100, 199), (4000, 4999)];
    assert_eq!(parts.len(), want.len());
    for ((cr, bytes), (a, b)) in parts.iter().zip(want) {
        assert_eq!(cr, &format!("bytes {a}-{b}/5000"));
        assert_eq!(bytes.as_ref(), &body[a..=b]);
    }
    // Adjacent ranges coalesce into a single (non-multipart) 206.
    let r = get_range(&s, "v/m.mp4", "bytes=0-9,10-19").await;
    assert_eq!(r.headers()["content-range"], "bytes 0-19/5000");
}

#[tokio::test]
async fn too_many_ranges_serve_the_whole_file() {
    let body = data(5000, 4);
    let s = server_with("v/many.mp4", &body).await;
    let hdr = format!(
        "bytes={}",
        (0..40)
            .map(|i| format!("{}-{}", i * 100, i * 100 + 1))
            .collect::<Vec<_>>()
            .join(",")
    );
    let r = get_range(&s, "v/many.mp4", &hdr).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), 5000);
}

#[tokio::test]
async fn head_with_range_is_ignored_per_rfc() {
    let s = server_with("v/h.mp4", &data(3000, 1)).await;
    let r = s
        .client
        .head(s.url("v/h.mp4"))
        .header("range", "bytes=0-1")
        .send()
        .await
        .unwrap();
    // RFC 9110 §14.2: Range is defined for GET only; HEAD answers as a plain HEAD.
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "3000");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
}

#[tokio::test]
async fn preconditions_in_rfc_order() {
    let body = data(2000, 8);
    let s = server_with("v/c.mp4", &body).await;
    let r = s.client.get(s.url("v/c.mp4")).send().await.unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let lm = r.headers()["last-modified"].to_str().unwrap().to_owned();
    let get = |h: &'static str, v: String| {
        let c = s.client.get(s.url("v/c.mp4")).header(h, v);
        async move { c.send().await.unwrap() }
    };
    // If-None-Match match → 304 with validators, no body.
    let r = get("if-none-match", etag.clone()).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(r.headers()["last-modified"], lm.as_str());
    assert!(r.headers().contains_key("cache-control"));
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(
        get("if-none-match", "W/".to_owned() + &etag).await.status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get("if-none-match", "\"other\"".into()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get("if-modified-since", lm.clone()).await.status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT".into())
            .await
            .status(),
        StatusCode::OK
    );
    // If-Match / If-Unmodified-Since → 412.
    assert_eq!(
        get("if-match", "\"other\"".into()).await.status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(get("if-match", etag.clone()).await.status(), StatusCode::OK);
    assert_eq!(
        get(
            "if-unmodified-since",
            "Mon, 01 Jan 2001 00:00:00 GMT".into()
        )
        .await
        .status(),
        StatusCode::PRECONDITION_FAILED
    );
    // If-Range: strong ETag or exact date honours Range; weak or stale → full 200.
    let ranged = |ir: String| {
        let c = s
            .client
            .get(s.url("v/c.mp4"))
            .header("range", "bytes=10-19")
            .header("if-range", ir);
        async move { c.send().await.unwrap() }
    };
    assert_eq!(
        ranged(etag.clone()).await.status(),
        StatusCode::PARTIAL_CONTENT
    );
    assert_eq!(
        ranged(lm.clone()).await.status(),
        StatusCode::PARTIAL_CONTENT
    );
    assert_eq!(
        ranged("W/".to_owned() + &etag).await.status(),
        StatusCode::OK
    );
    assert_eq!(ranged("\"stale\"".into()).await.status(), StatusCode::OK);
    let r = ranged("Mon, 01 Jan 2001 00:00:00 GMT".into()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_random_ranges_on_64_mib_file() {
    let body = std::sync::Arc::new(data(64 * 1024 * 1024, 77));
    let s = server_with("v/big.bin", &body).await;
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let c = s.client.clone();
        let url = s.url("v/big.bin");
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let len = body.len() as u64;
            let r = data(16, 1000 + i);
            let start = u64::from_le_bytes(r[0..8].try_into().unwrap()) % len;
            let span = 1 + u64::from_le_bytes(r[8..16].try_into().unwrap()) % (4 * 1024 * 1024);
            let end = (start + span - 1).min(len - 1);
            let resp = c
                .get(url)
                .header("range", format!("bytes={start}-{end}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
            let got = resp.bytes().await.unwrap();
            assert_eq!(got.as_ref(), &body[start as usize..=end as usize]);
        }));
    }
    for t in tasks {
        tokio::time::timeout(T, t).await.unwrap().unwrap();
    }
    assert!(
        s.metric("sluice_download_range_requests_total{outcome=\"single\"}")
            .await
            >= 32.0
    );
}

#[tokio::test]
async fn unicode_name_gets_rfc5987_disposition() {
    let s = TestServer::start().await;
    assert_eq!(
        s.put("u/résumé final.pdf", b"%PDF".to_vec()).await,
        StatusCode::CREATED
    );
    let r = s
        .client
        .get(s.url("u/résumé final.pdf"))
        .send()
        .await
        .unwrap();
    let cd = r.headers()["content-disposition"].to_str().unwrap();
    assert_eq!(
        cd,
        "attachment; filename=\"r_sum_ final.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf"
    );
}

#[tokio::test]
async fn hot_small_files_come_from_memory_and_expire() {
    let s = TestServer::start_with(|c| {
        c.download.hot_cache_ttl = std::time::Duration::from_millis(300)
    })
    .await;
    let body = data(4096, 5);
    assert_eq!(s.put("h/hot.txt", body.clone()).await, StatusCode::CREATED);
    assert_eq!(s.get_bytes("h/hot.txt").await.1, body);
    let leases = s.metric("sluice_pool_leases_total{tier=\"16384\"}").await;
    for _ in 0..3 {
        assert_eq!(s.get_bytes("h/hot.txt").await.1, body);
    }
    // Served from the cached buffer: no new reads.
    assert_eq!(
        s.metric("sluice_pool_leases_total{tier=\"16384\"}").await,
        leases
    );
    // Ranges are served from it too.
    let r = s
        .client
        .get(s.url("h/hot.txt"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[10..20]);
    // A file removed by hand stops being served once the entry is older than the ttl.
    std::fs::remove_file(s.files_dir().join("h/hot.txt")).unwrap();
    s.clock.advance(std::time::Duration::from_millis(299));
    assert_eq!(
        s.get_bytes("h/hot.txt").await.1,
        body,
        "still within the ttl"
    );
    s.clock.advance(std::time::Duration::from_millis(1));
    assert_eq!(s.get_bytes("h/hot.txt").await.0, StatusCode::NOT_FOUND);
}
