//! Operations: expiry (max age, per-prefix rules, the JWT `expires` claim) on the injected
//! clock, the storage cap and free-space reserve, per-uploader daily and stored quotas.

use std::time::Duration;

use reqwest::StatusCode;
use sluice::clock::Clock;

use crate::common::*;

const DAY: u64 = 24 * 3600;

/// A Prosody mod_http_file_share slot token for `sub` (valid at `now` on the server's clock),
/// optionally with a file expiry.
fn slot_jwt(
    now: u64,
    sub: &str,
    slot: &str,
    filename: &str,
    size: u64,
    expires: Option<u64>,
) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let exp = now + 300;
    let mut claims = serde_json::json!({"sub": sub, "slot": slot, "filename": filename,
        "filesize": size, "filetype": "application/octet-stream", "exp": exp, "iat": exp - 300});
    if let Some(e) = expires {
        claims["expires"] = e.into();
    }
    let input = format!("{header}.{}", b64.encode(claims.to_string()));
    let mut m =
        <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(input.as_bytes());
    format!("{input}.{}", b64.encode(m.finalize().into_bytes()))
}

/// PUT `len` bytes to `slot/name` with a JWT naming `sub`.
async fn put_as(
    s: &TestServer,
    sub: &str,
    slot: &str,
    name: &str,
    len: usize,
    expires: Option<u64>,
) -> reqwest::Response {
    s.client
        .put(s.url(&format!("{slot}/{name}")))
        .bearer_auth(slot_jwt(
            s.clock.now_secs(),
            sub,
            slot,
            name,
            len as u64,
            expires,
        ))
        .body(data(len, len as u64))
        .send()
        .await
        .unwrap()
}

async fn status_of(s: &TestServer, path: &str) -> StatusCode {
    s.client.get(s.url(path)).send().await.unwrap().status()
}

#[tokio::test]
async fn files_expire_at_max_age_then_the_sweeper_deletes_them() {
    let s = TestServer::start_with(|c| {
        c.retention.max_age = Duration::from_secs(3600);
        c.retention.rules = vec![sluice::config::RetentionRule {
            prefix: "keep/".into(),
            max_age: Duration::ZERO,
        }];
    })
    .await;
    assert_eq!(
        s.put("e/a.txt", b"hello".to_vec()).await,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put("keep/b.txt", b"hello".to_vec()).await,
        StatusCode::CREATED
    );
    // Read twice, so the second answer comes from the hot cache.
    assert_eq!(status_of(&s, "e/a.txt").await, StatusCode::OK);
    assert_eq!(status_of(&s, "e/a.txt").await, StatusCode::OK);
    s.clock.advance(Duration::from_secs(3599));
    assert_eq!(status_of(&s, "e/a.txt").await, StatusCode::OK);
    s.clock.advance(Duration::from_secs(1));
    // Expired: 404 at once, before any sweep, for GET and HEAD.
    assert_eq!(status_of(&s, "e/a.txt").await, StatusCode::NOT_FOUND);
    let r = s.client.head(s.url("e/a.txt")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(s.files_dir().join("e/a.txt").exists(), "not swept yet");
    let report = sluice::ops::sweep(&s.state).await.unwrap();
    assert_eq!((report.files, report.bytes), (1, 5));
    assert!(!s.files_dir().join("e/a.txt").exists());
    assert_eq!(
        s.metric("sluice_deletions_total{reason=\"expired\"}").await,
        1.0
    );
    // The prefix rule keeps its files; the expired path can be used again.
    assert_eq!(status_of(&s, "keep/b.txt").await, StatusCode::OK);
    assert_eq!(
        s.put("e/a.txt", b"again".to_vec()).await,
        StatusCode::CREATED
    );
    assert_eq!(s.get_bytes("e/a.txt").await.1, b"again");
    assert_eq!(sluice::ops::sweep(&s.state).await.unwrap().files, 0);
}

#[tokio::test]
async fn jwt_expires_claim_wins_when_earlier_than_max_age() {
    let s = TestServer::start_with(|c| c.retention.max_age = Duration::from_secs(DAY)).await;
    let t0 = s.clock.now_secs();
    let r = put_as(&s, "alice@x", "s1", "early.bin", 10, Some(t0 + 60)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = put_as(&s, "alice@x", "s2", "late.bin", 10, Some(t0 + 2 * DAY)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    s.clock.advance(Duration::from_secs(60));
    assert_eq!(status_of(&s, "s1/early.bin").await, StatusCode::NOT_FOUND);
    assert_eq!(status_of(&s, "s2/late.bin").await, StatusCode::OK);
    // The later claim is capped by max_age.
    s.clock.advance(Duration::from_secs(DAY - 60));
    assert_eq!(status_of(&s, "s2/late.bin").await, StatusCode::NOT_FOUND);
    assert_eq!(sluice::ops::sweep(&s.state).await.unwrap().files, 2);
}

#[tokio::test]
async fn storage_cap_refuses_before_the_body_and_frees_with_deletion() {
    let s = TestServer::start_with(|c| {
        c.storage.max_total_size = bytesize::ByteSize::kib(10);
        c.retention.max_age = Duration::from_secs(60);
    })
    .await;
    assert_eq!(
        s.put("cap/a.bin", data(6_000, 1)).await,
        StatusCode::CREATED
    );
    let r = s
        .client
        .put(s.put_v1("cap/b.bin", 6_000))
        .body(data(6_000, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(r.text().await.unwrap().contains("storage cap"));
    assert_eq!(s.staging_entries(), 0);
    // Decided from Content-Length: a client waiting for 100-continue is refused at once.
    let url = s.put_v1("cap/c.bin", 6_000);
    let pq = url.split_once(&s.addr.to_string()).unwrap().1.to_owned();
    let res = raw_request(
        &s,
        &format!(
            "PUT {pq} HTTP/1.1\r\nHost: x\r\nContent-Length: 6000\r\nExpect: 100-continue\r\n\r\n"
        ),
        b"",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 507"), "{res}");
    // A resumable creation naming a length over the cap is refused too.
    let m = sluice::auth::mac::sign_hex(
        SECRET.as_bytes(),
        &sluice::auth::mac::message_v1("cap/t.bin", 6_000),
    );
    let r = s
        .client
        .post(format!("{}/upload/tus/cap/t.bin?v={m}", s.base()))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "6000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        s.metric("sluice_upload_refusals_total{kind=\"cap\"}").await,
        3.0
    );
    // Once the first file expires and is swept, there is room again.
    s.clock.advance(Duration::from_secs(60));
    sluice::ops::sweep(&s.state).await.unwrap();
    assert_eq!(
        s.put("cap/b.bin", data(6_000, 2)).await,
        StatusCode::CREATED
    );
    assert_eq!(s.metric("sluice_stored_bytes").await, 6_000.0);
    assert_eq!(s.metric("sluice_stored_files").await, 1.0);
}

#[tokio::test]
async fn free_space_reserve_refuses_with_507() {
    let s = TestServer::start_with(|c| {
        // More free space than any test machine has.
        c.storage.min_free_space = bytesize::ByteSize::pib(64);
    })
    .await;
    let r = s
        .client
        .put(s.put_v1("r/a.bin", 10))
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(r.text().await.unwrap().contains("nearly full"));
    assert!(s.metric("sluice_storage_free_bytes").await > 0.0);
}

#[tokio::test]
async fn daily_quota_is_a_rolling_window_with_retry_after() {
    let s = TestServer::start_with(|c| c.quota.daily = bytesize::ByteSize::kib(10)).await;
    let r = put_as(&s, "bob@x", "d1", "a.bin", 6_000, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    s.clock.advance(Duration::from_secs(3600));
    let r = put_as(&s, "bob@x", "d2", "b.bin", 6_000, None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Room comes back when the first upload leaves the 24-hour window.
    assert_eq!(
        r.headers()["retry-after"],
        (DAY - 3600).to_string().as_str()
    );
    // Another uploader is not affected; deleting does not give daily quota back.
    let r = put_as(&s, "carol@x", "d3", "c.bin", 6_000, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    s.clock.advance(Duration::from_secs(DAY - 3600));
    let r = put_as(&s, "bob@x", "d2", "b.bin", 6_000, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        s.metric("sluice_upload_refusals_total{kind=\"daily_quota\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn stored_quota_refuses_or_evicts_the_oldest() {
    let s = TestServer::start_with(|c| c.quota.stored = bytesize::ByteSize::kib(10)).await;
    assert_eq!(
        put_as(&s, "dan@x", "q1", "a.bin", 4_000, None)
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        put_as(&s, "dan@x", "q2", "b.bin", 4_000, None)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = put_as(&s, "dan@x", "q3", "c.bin", 4_000, None).await;
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(r.text().await.unwrap().contains("quota"));
    drop(s);

    let s = TestServer::start_with(|c| {
        c.quota.stored = bytesize::ByteSize::kib(10);
        c.quota.on_stored_exceeded = sluice::config::QuotaAction::EvictOldest;
    })
    .await;
    for (i, slot) in ["q1", "q2", "q3", "q4"].iter().enumerate() {
        let r = put_as(&s, "dan@x", slot, "f.bin", 4_000, None).await;
        assert_eq!(r.status(), StatusCode::CREATED, "upload {i}");
        s.clock.advance(Duration::from_secs(1));
    }
    // 10 KiB holds two 4000-byte files: the two oldest were evicted, in order.
    assert_eq!(status_of(&s, "q1/f.bin").await, StatusCode::NOT_FOUND);
    assert_eq!(status_of(&s, "q2/f.bin").await, StatusCode::NOT_FOUND);
    assert_eq!(status_of(&s, "q3/f.bin").await, StatusCode::OK);
    assert_eq!(status_of(&s, "q4/f.bin").await, StatusCode::OK);
    assert_eq!(
        s.metric("sluice_deletions_total{reason=\"quota\"}").await,
        2.0
    );
    // A single upload larger than the quota is refused, evicting nothing.
    let r = put_as(&s, "dan@x", "q5", "big.bin", 11_000, None).await;
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(status_of(&s, "q3/f.bin").await, StatusCode::OK);
}

#[tokio::test]
async fn ejabberd_slots_name_the_uploader_by_their_first_segment_when_configured() {
    let s = TestServer::start_with(|c| {
        c.quota.daily = bytesize::ByteSize::kib(5);
        c.quota.uploader_from_first_segment = vec![sluice::config::AuthMode::V];
    })
    .await;
    let user = "0123456789abcdef0123456789abcdef01234567";
    assert_eq!(
        s.put(&format!("{user}/r1/a.bin"), data(4_000, 1)).await,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put(&format!("{user}/r2/b.bin"), data(4_000, 2)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let row = s
        .state
        .storage
        .catalog()
        .get(&format!("{user}/r1/a.bin"))
        .unwrap()
        .unwrap();
    assert_eq!(row.row.meta.uploader.as_deref(), Some(user));
    // Another hash is another uploader.
    assert_eq!(
        s.put(
            "fedcba9876543210fedcba9876543210fedcba98/r3/c.bin",
            data(4_000, 3)
        )
        .await,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn restart_keeps_catalog_totals_and_expiry() {
    let mut s = TestServer::start_with(|c| c.retention.max_age = Duration::from_secs(100)).await;
    assert_eq!(s.put("rs/a.bin", data(1_000, 1)).await, StatusCode::CREATED);
    s.shutdown().await;
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let s = TestServer::start_in(dir, |c| c.retention.max_age = Duration::from_secs(100)).await;
    assert_eq!(s.metric("sluice_stored_bytes").await, 1_000.0);
    let row = s.state.storage.catalog().get("rs/a.bin").unwrap().unwrap();
    assert!(row.row.meta.expires_at.is_some());
    assert_eq!(s.get_bytes("rs/a.bin").await.1, data(1_000, 1));
}

#[tokio::test]
async fn uploads_in_flight_count_against_the_quota() {
    let s = TestServer::start_with(|c| c.quota.daily = bytesize::ByteSize::kib(10)).await;
    let body = data(6_000, 7);
    let tok = slot_jwt(s.clock.now_secs(), "erin@x", "f1", "a.bin", 6_000, None);
    // The first upload is admitted and still sending its body...
    let mut c = s.connect().await;
    write(
        &mut c,
        format!(
            "PUT /upload/f1/a.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nContent-Length: 6000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    write(&mut c, &body[..1_000]).await;
    for _ in 0..200 {
        if s.metric("sluice_uploads_in_flight").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...so a second one of the same uploader does not fit the window.
    let r = put_as(&s, "erin@x", "f2", "b.bin", 6_000, None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    write(&mut c, &body[1_000..]).await;
    let res = read_until(&mut c, "\r\n\r\n").await;
    assert!(res.starts_with("HTTP/1.1 201"), "{res}");
}
