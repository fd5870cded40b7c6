//! The admin API over real HTTP on its own listener: listing with filters and pages, stats,
//! takedown (410 at once, hot copies included, the path never reused), erasure of one
//! uploader, sweep now, the bearer token, no admin routes on the public listener, the audit
//! log, and the `sluice admin` client binary.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sluice::clock::Clock;

use crate::common::*;

/// A Prosody mod_http_file_share slot token naming `sub` (valid on the server's clock).
fn slot_jwt(now: u64, sub: &str, slot: &str, filename: &str, size: u64) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let exp = now + 300;
    let claims = serde_json::json!({"sub": sub, "slot": slot, "filename": filename,
        "filesize": size, "filetype": "text/plain", "exp": exp, "iat": exp - 300});
    let input = format!("{header}.{}", b64.encode(claims.to_string()));
    let mut m =
        <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(input.as_bytes());
    format!("{input}.{}", b64.encode(m.finalize().into_bytes()))
}

/// PUT `body` to `slot/name` as `sub` (JWT grant).
async fn put_as(s: &TestServer, sub: &str, slot: &str, name: &str, body: &[u8]) -> StatusCode {
    let tok = slot_jwt(s.clock.now_secs(), sub, slot, name, body.len() as u64);
    s.client
        .put(s.url(&format!("{slot}/{name}")))
        .bearer_auth(tok)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

fn admin_url(s: &TestServer, path_and_query: &str) -> String {
    format!("http://{}{path_and_query}", s.admin.unwrap())
}

/// An admin request with the right token; returns status and JSON body.
async fn admin(s: &TestServer, method: reqwest::Method, pq: &str) -> (StatusCode, Value) {
    let r = s
        .client
        .request(method, admin_url(s, pq))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn get_json(s: &TestServer, pq: &str) -> Value {
    let (st, v) = admin(s, reqwest::Method::GET, pq).await;
    assert_eq!(st, StatusCode::OK, "{pq}: {v}");
    v
}

fn paths(v: &Value) -> Vec<String> {
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect()
}

async fn status_of(s: &TestServer, path: &str) -> StatusCode {
    s.client.get(s.url(path)).send().await.unwrap().status()
}

#[tokio::test]
async fn list_filters_by_prefix_uploader_and_time_and_pages_by_path() {
    let s = TestServer::start_with(with_admin).await;
    let t0 = s.clock.now_secs();
    assert_eq!(s.put("a/1.txt", b"one".to_vec()).await, StatusCode::CREATED);
    assert_eq!(s.put("a/2.txt", b"two".to_vec()).await, StatusCode::CREATED);
    s.clock.advance(Duration::from_secs(100));
    assert_eq!(
        put_as(&s, "alice@example.org", "a", "3.txt", b"three").await,
        StatusCode::CREATED
    );
    assert_eq!(
        put_as(&s, "bob@example.org", "b", "1.txt", b"four").await,
        StatusCode::CREATED
    );

    let all = get_json(&s, "/files").await;
    assert_eq!(paths(&all), ["a/1.txt", "a/2.txt", "a/3.txt", "b/1.txt"]);
    assert_eq!(all["next"], Value::Null);
    let f = &all["files"][2];
    assert_eq!(f["size"], 5);
    assert_eq!(f["sha256"], sha256_hex(b"three"));
    assert_eq!(f["uploader"], "alice@example.org");
    assert_eq!(f["content_type"], "text/plain");
    assert_eq!(f["uploaded_at"], t0 + 100);
    assert_eq!(f["expires_at"], Value::Null);
    assert_eq!(all["files"][0]["uploader"], Value::Null);

    assert_eq!(
        paths(&get_json(&s, "/files?prefix=a%2F").await),
        ["a/1.txt", "a/2.txt", "a/3.txt"]
    );
    assert_eq!(
        paths(&get_json(&s, "/files?uploader=alice%40example.org").await),
        ["a/3.txt"]
    );
    let since = format!("/files?since={}", t0 + 50);
    assert_eq!(paths(&get_json(&s, &since).await), ["a/3.txt", "b/1.txt"]);
    let until = format!("/admin/files?until={}", t0 + 50);
    assert_eq!(paths(&get_json(&s, &until).await), ["a/1.txt", "a/2.txt"]);

    // Pages: `next` is the last path of the page; the last page says null.
    let p1 = get_json(&s, "/files?limit=2").await;
    assert_eq!(paths(&p1), ["a/1.txt", "a/2.txt"]);
    assert_eq!(p1["next"], "a/2.txt");
    let p2 = get_json(&s, "/files?limit=2&after=a%2F2.txt").await;
    assert_eq!(paths(&p2), ["a/3.txt", "b/1.txt"]);
    assert_eq!(p2["next"], Value::Null);

    let (st, v) = admin(&s, reqwest::Method::GET, "/files?limit=1001").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("limit"));
}

#[tokio::test]
async fn stats_count_files_bytes_free_space_and_top_uploaders() {
    let s = TestServer::start_with(with_admin).await;
    assert_eq!(s.put("x/plain.txt", vec![0; 10]).await, StatusCode::CREATED);
    for (i, len) in [100usize, 200].iter().enumerate() {
        let name = format!("{i}.txt");
        let st = put_as(&s, "alice@example.org", "al", &name, &vec![1; *len]).await;
        assert_eq!(st, StatusCode::CREATED);
    }
    assert_eq!(
        put_as(&s, "bob@example.org", "bo", "b.txt", &[2; 50]).await,
        StatusCode::CREATED
    );
    let v = get_json(&s, "/stats").await;
    assert_eq!(v["files"], 4);
    assert_eq!(v["bytes"], 360);
    assert!(v["free_bytes"].as_u64().unwrap() > 0);
    let top = v["top_uploaders"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[0]["uploader"], "alice@example.org");
    assert_eq!(
        (top[0]["files"].as_u64(), top[0]["bytes"].as_u64()),
        (Some(2), Some(300))
    );
    assert_eq!(top[1]["uploader"], "bob@example.org");
}

#[tokio::test]
async fn takedown_is_410_at_once_even_from_the_hot_cache_and_the_path_is_never_reused() {
    let s = TestServer::start_with(with_admin).await;
    assert_eq!(
        s.put("t/doc one.txt", b"secret".to_vec()).await,
        StatusCode::CREATED
    );
    // Twice, so the second answer comes from the hot cache.
    assert_eq!(s.get_bytes("t/doc one.txt").await.1, b"secret");
    assert_eq!(s.get_bytes("t/doc one.txt").await.1, b"secret");

    let (st, v) = admin(
        &s,
        reqwest::Method::DELETE,
        "/files/t/doc%20one.txt?reason=dmca",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["files"].as_u64(), v["bytes"].as_u64()),
        (Some(1), Some(6))
    );
    assert_eq!(status_of(&s, "t/doc one.txt").await, StatusCode::GONE);
    let r = s.client.head(s.url("t/doc one.txt")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(
        s.put("t/doc one.txt", b"again".to_vec()).await,
        StatusCode::GONE
    );
    assert!(!s.files_dir().join("t/doc one.txt").exists());
    assert!(paths(&get_json(&s, "/files").await).is_empty());

    // Nothing stored: 404, and the path is blocked all the same.
    let (st, v) = admin(&s, reqwest::Method::DELETE, "/files/t/future.txt").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("blocked"), "{v}");
    assert_eq!(s.put("t/future.txt", b"x".to_vec()).await, StatusCode::GONE);
    // Twice: the second takedown finds nothing either.
    let (st, _) = admin(&s, reqwest::Method::DELETE, "/files/t/doc%20one.txt").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = admin(&s, reqwest::Method::DELETE, "/files/..%2Fetc").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.metric("sluice_deletions_total{reason=\"admin\"}").await,
        1.0
    );
}

#[tokio::test]
async fn plain_removal_frees_the_space_and_the_path() {
    let s = TestServer::start_with(with_admin).await;
    assert_eq!(s.put("k/big.bin", vec![7; 4096]).await, StatusCode::CREATED);
    assert_eq!(s.get_bytes("k/big.bin").await.1, vec![7; 4096]);
    let (st, v) = admin(
        &s,
        reqwest::Method::DELETE,
        "/files/k/big.bin?keep_path=1&reason=space",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // Gone, but not taken down: 404, and the path takes a new upload.
    assert_eq!(status_of(&s, "k/big.bin").await, StatusCode::NOT_FOUND);
    assert!(!s.files_dir().join("k/big.bin").exists());
    assert_eq!(s.put("k/big.bin", vec![8; 10]).await, StatusCode::CREATED);
    assert_eq!(
        s.metric("sluice_deletions_total{reason=\"removed\"}").await,
        1.0
    );
}

#[tokio::test]
async fn erase_removes_every_file_of_one_uploader_only() {
    let s = TestServer::start_with(with_admin).await;
    for i in 0..5 {
        let st = put_as(&s, "alice@example.org", &format!("s{i}"), "f.txt", b"alice").await;
        assert_eq!(st, StatusCode::CREATED);
    }
    assert_eq!(
        put_as(&s, "bob@example.org", "sb", "f.txt", b"bob").await,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put("anon/f.txt", b"anon".to_vec()).await,
        StatusCode::CREATED
    );

    // With a limit: part of the files, and `more` says so.
    let (st, v) = admin(
        &s,
        reqwest::Method::POST,
        "/erase?uploader=alice%40example.org&limit=2",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["files"].as_u64(), v["more"].as_bool()),
        (Some(2), Some(true))
    );
    let (st, v) = admin(
        &s,
        reqwest::Method::POST,
        "/erase?uploader=alice%40example.org",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["files"].as_u64(), v["bytes"].as_u64()),
        (Some(3), Some(15))
    );
    assert_eq!(v["more"], false);

    assert_eq!(
        paths(&get_json(&s, "/files").await),
        ["anon/f.txt", "sb/f.txt"]
    );
    assert_eq!(status_of(&s, "s0/f.txt").await, StatusCode::GONE);
    assert_eq!(status_of(&s, "s4/f.txt").await, StatusCode::GONE);
    assert_eq!(status_of(&s, "sb/f.txt").await, StatusCode::OK);
    let stats = get_json(&s, "/stats").await;
    assert_eq!(
        (stats["files"].as_u64(), stats["bytes"].as_u64()),
        (Some(2), Some(7))
    );

    let (st, _) = admin(&s, reqwest::Method::POST, "/erase").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, v) = admin(&s, reqwest::Method::POST, "/erase?uploader=nobody").await;
    assert_eq!((st, v["files"].as_u64()), (StatusCode::OK, Some(0)));
}

#[tokio::test]
async fn sweep_endpoint_deletes_expired_files_now() {
    let s = TestServer::start_with(|c| {
        with_admin(c);
        c.retention.max_age = Duration::from_secs(3600);
    })
    .await;
    assert_eq!(
        s.put("old/a.txt", b"old".to_vec()).await,
        StatusCode::CREATED
    );
    s.clock.advance(Duration::from_secs(7200));
    assert_eq!(
        s.put("new/b.txt", b"new!".to_vec()).await,
        StatusCode::CREATED
    );
    assert!(s.files_dir().join("old/a.txt").exists());
    let (st, v) = admin(&s, reqwest::Method::POST, "/sweep").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["files"].as_u64(), v["bytes"].as_u64()),
        (Some(1), Some(3))
    );
    assert!(!s.files_dir().join("old/a.txt").exists());
    assert_eq!(status_of(&s, "old/a.txt").await, StatusCode::NOT_FOUND);
    assert_eq!(status_of(&s, "new/b.txt").await, StatusCode::OK);
    // An expired path is free again (unlike a takedown).
    assert_eq!(
        s.put("old/a.txt", b"again".to_vec()).await,
        StatusCode::CREATED
    );
    let (_, v) = admin(&s, reqwest::Method::POST, "/sweep").await;
    assert_eq!(v["files"], 0);
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401_with_a_bearer_challenge() {
    let s = TestServer::start_with(with_admin).await;
    assert_eq!(
        s.put("k/keep.txt", b"keep".to_vec()).await,
        StatusCode::CREATED
    );
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some("Basic YWRtaW46eA=="),
    ] {
        for (m, pq) in [
            (reqwest::Method::GET, "/stats"),
            (reqwest::Method::DELETE, "/files/k/keep.txt"),
            (reqwest::Method::GET, "/no/such/route"),
        ] {
            let mut req = s.client.request(m, admin_url(&s, pq));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?} {pq}");
            assert!(r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
            let v: Value = r.json().await.unwrap();
            assert!(v["error"].is_string());
        }
    }
    assert_eq!(status_of(&s, "k/keep.txt").await, StatusCode::OK);
    let (st, _) = admin(&s, reqwest::Method::GET, "/no/such/route").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let r = s
        .client
        .get(admin_url(&s, "/sweep"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "POST");
}

#[tokio::test]
async fn the_public_listener_has_no_admin_routes() {
    let s = TestServer::start_with(with_admin).await;
    assert_eq!(
        s.put("p/keep.txt", b"keep".to_vec()).await,
        StatusCode::CREATED
    );
    let public = s.base();
    for base in [public.clone(), format!("{public}{PREFIX}")] {
        for path in ["/admin/stats", "/admin/files", "/stats", "/files"] {
            let r = s
                .client
                .get(format!("{base}{path}"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{base}{path}");
        }
        for (m, path) in [
            (reqwest::Method::DELETE, "/admin/files/p/keep.txt"),
            (reqwest::Method::DELETE, "/files/p/keep.txt"),
            (reqwest::Method::POST, "/admin/sweep"),
            (reqwest::Method::POST, "/erase?uploader=x"),
        ] {
            let r = s
                .client
                .request(m, format!("{base}{path}"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            assert!(!r.status().is_success(), "{base}{path}: {}", r.status());
        }
    }
    assert_eq!(status_of(&s, "p/keep.txt").await, StatusCode::OK);
    // And the admin listener serves nothing public.
    let r = s
        .client
        .get(admin_url(&s, &format!("{PREFIX}/p/keep.txt")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn audit_log_records_uploads_removals_and_admin_actions_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let log2 = log.clone();
    let s = TestServer::start_with(move |c| {
        with_admin(c);
        c.audit.path = Some(log2);
        c.retention.max_age = Duration::from_secs(3600);
    })
    .await;
    let url = s.put_v1("au/one.txt", 3);
    let mac = url.split("?v=").nth(1).unwrap().to_owned();
    let r = s.client.put(&url).body("one").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let jwt = slot_jwt(s.clock.now_secs(), "alice@example.org", "al", "two.txt", 3);
    let r = s
        .client
        .put(s.url("al/two.txt"))
        .bearer_auth(&jwt)
        .body("two")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        s.put("au/three.txt", b"333".to_vec()).await,
        StatusCode::CREATED
    );
    // A tus upload: recorded when its session completes.
    let tus = crate::resumable::tus_create(&s, "au/tus.bin", 4).await;
    let r = crate::resumable::patch(&s, &tus, 0, b"tus!".to_vec(), &[]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // A browser form.
    let form_mac = sluice::auth::mac::sign_hex(
        SECRET.as_bytes(),
        &sluice::auth::mac::message_v1("au/form.txt", 4),
    );
    let form = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"form.txt\"\r\n\r\nform\r\n--B--\r\n";
    let r = s
        .client
        .post(format!(
            "{}{PREFIX}/au/form.txt?v={form_mac}&size=4",
            s.base()
        ))
        .header("content-type", "multipart/form-data; boundary=B")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (st, _) = admin(
        &s,
        reqwest::Method::DELETE,
        "/files/au/one.txt?reason=abuse%20report",
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = admin(
        &s,
        reqwest::Method::POST,
        "/erase?uploader=alice%40example.org",
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    s.clock.advance(Duration::from_secs(7200));
    let (st, _) = admin(&s, reqwest::Method::POST, "/sweep").await;
    assert_eq!(st, StatusCode::OK);
    s.state.audit.flush().await;

    let text = std::fs::read_to_string(&log).unwrap();
    let session = tus.rsplit('/').next().unwrap();
    for secret in [
        mac.as_str(),
        form_mac.as_str(),
        jwt.as_str(),
        session,
        ADMIN_TOKEN,
        SECRET,
        "?v=",
        "v=",
    ] {
        assert!(
            !text.contains(secret),
            "audit log holds {secret:?}:\n{text}"
        );
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of =
        |event: &str| -> Vec<&Value> { lines.iter().filter(|l| l["event"] == event).collect() };

    let uploads = of("upload");
    let routes: Vec<&str> = uploads
        .iter()
        .map(|u| u["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["put", "put", "put", "tus", "form"], "{text}");
    let u = uploads[0];
    assert_eq!(u["path"], "au/one.txt");
    assert_eq!(u["size"], 3);
    assert_eq!(u["sha256"], sha256_hex(b"one"));
    assert_eq!(u["route"], "put");
    assert_eq!(u["client"], "127.0.0.0/24");
    assert_eq!(u["uploader"], Value::Null);
    assert!(u["at"].as_u64().is_some());
    assert_eq!(uploads[1]["uploader"], "alice@example.org");
    assert_eq!(uploads[3]["path"], "au/tus.bin");
    assert_eq!(uploads[3]["sha256"], sha256_hex(b"tus!"));
    assert_eq!(uploads[4]["path"], "au/form.txt");
    assert_eq!(uploads[4]["client"], "127.0.0.0/24");

    let deletes = of("delete");
    let summary: Vec<(&str, &str, &str)> = deletes
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap(),
                d["reason"].as_str().unwrap(),
                d["by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary[..2],
        [
            ("au/one.txt", "admin", "admin"),
            ("al/two.txt", "erasure", "admin"),
        ]
    );
    let mut swept: Vec<_> = summary[2..].to_vec();
    swept.sort();
    assert_eq!(
        swept,
        [
            ("au/form.txt", "expired", "sweeper"),
            ("au/three.txt", "expired", "sweeper"),
            ("au/tus.bin", "expired", "sweeper"),
        ]
    );

    let actions = of("admin");
    let names: Vec<&str> = actions
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["delete", "erase", "sweep"]);
    assert_eq!(actions[0]["params"]["path"], "au/one.txt");
    assert_eq!(actions[0]["params"]["reason"], "abuse report");
    assert_eq!(actions[0]["result"]["files"], 1);
    assert_eq!(actions[1]["params"]["uploader"], "alice@example.org");
    assert_eq!(actions[1]["result"]["files"], 1);
    assert_eq!(actions[2]["result"]["files"], 3);
}

/// Run the real binary; returns (success, stdout, stderr).
async fn sluice_cli(args: Vec<String>, token: &str) -> (bool, String, String) {
    let token = token.to_owned();
    let out = tokio::time::timeout(
        T,
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(&args)
                .env("SLUICE_ADMIN_TOKEN", token)
                .env_remove("SLUICE_LOG")
                .output()
                .unwrap()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_admin_commands_talk_to_the_admin_listener() {
    let s = TestServer::start_with(with_admin).await;
    assert_eq!(s.put("c/one.txt", vec![7; 1000]).await, StatusCode::CREATED);
    assert_eq!(
        put_as(&s, "alice@example.org", "c", "two words.txt", b"two").await,
        StatusCode::CREATED
    );
    let addr = s.admin.unwrap().to_string();
    let cmd = |rest: &[&str]| {
        let mut v = vec!["admin".to_owned(), "--addr".to_owned(), addr.clone()];
        v.extend(rest.iter().map(|s| (*s).to_owned()));
        v
    };

    let (ok, out, err) = sluice_cli(cmd(&["stats", "--json"]), ADMIN_TOKEN).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["files"].as_u64(), v["bytes"].as_u64()),
        (Some(2), Some(1003))
    );
    assert_eq!(v["top_uploaders"][0]["uploader"], "alice@example.org");

    let (ok, out, err) = sluice_cli(cmd(&["list", "--all"]), ADMIN_TOKEN).await;
    assert!(ok, "{err}");
    assert!(out.lines().next().unwrap().contains("PATH"), "{out}");
    assert!(
        out.contains("c/one.txt") && out.contains("c/two words.txt"),
        "{out}"
    );
    assert!(out.contains("alice@example.org"), "{out}");

    let (ok, out, err) = sluice_cli(
        cmd(&["delete", "c/two words.txt", "--reason", "test"]),
        ADMIN_TOKEN,
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("taken down"), "{out}");
    assert_eq!(status_of(&s, "c/two words.txt").await, StatusCode::GONE);

    let (ok, out, err) = sluice_cli(cmd(&["list", "--json", "--limit", "1"]), ADMIN_TOKEN).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(paths(&v), ["c/one.txt"]);

    let (ok, _, err) = sluice_cli(cmd(&["stats"]), "wrong-token-0123456789").await;
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
}
