//! Several nodes in one process on a real PostgreSQL catalog and a real S3 store (SeaweedFS):
//! each test gets its own database and key prefix. They need `SLUICE_TEST_POSTGRES_URL` and
//! `SLUICE_TEST_S3_ENDPOINT` (+ `SLUICE_TEST_S3_BUCKET`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`): `.ci/run` starts both servers (tests/services/) and sets them;
//! without them each test says it is skipped.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sluice::auth::mac;
use sluice::config::{Backend, Config};

use crate::common::*;

struct Env {
    pg: String,
    s3: String,
    bucket: String,
}

fn env() -> Option<Env> {
    let pg = std::env::var("SLUICE_TEST_POSTGRES_URL").ok()?;
    let s3 = std::env::var("SLUICE_TEST_S3_ENDPOINT").ok()?;
    let bucket = std::env::var("SLUICE_TEST_S3_BUCKET").unwrap_or_else(|_| "sluice-test".into());
    Some(Env { pg, s3, bucket })
}

fn random_hex(n: usize) -> String {
    let mut raw = vec![0u8; n];
    getrandom::fill(&mut raw).unwrap();
    hex::encode(raw)
}

/// A fresh database on the test server, and the URL of it.
async fn fresh_database(admin_url: &str) -> String {
    let name = format!("it_{}", random_hex(6));
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// `n` nodes on one fresh database and one fresh key prefix.
async fn nodes(n: usize, tweak: impl Fn(&mut Config) + Copy) -> Option<Vec<TestServer>> {
    let Some(e) = env() else {
        eprintln!("skipped: SLUICE_TEST_POSTGRES_URL / SLUICE_TEST_S3_ENDPOINT unset");
        return None;
    };
    let db = fresh_database(&e.pg).await;
    let prefix = format!("it-{}/", random_hex(6));
    let mut out = Vec::new();
    for i in 0..n {
        let (db, prefix, s3, bucket) = (db.clone(), prefix.clone(), e.s3.clone(), e.bucket.clone());
        out.push(
            TestServer::start_with(move |c| {
                c.storage.backend = Backend::S3;
                c.storage.s3.endpoint = s3;
                c.storage.s3.bucket = bucket;
                c.storage.s3.prefix = prefix;
                c.storage.s3.part_size = bytesize::ByteSize::mib(5);
                c.catalog.url = db;
                c.cluster.node_id = format!("node{i}");
                c.cluster.lease_ttl = Duration::from_secs(5);
                tweak(c);
            })
            .await,
        );
    }
    Some(out)
}

fn tus_create_url(s: &TestServer, path: &str, size: u64) -> String {
    let m = mac::sign_hex(SECRET.as_bytes(), &mac::message_v1(path, size));
    format!("{}/upload/tus/{}?v={m}", s.base(), encode_path(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_racing_to_publish_one_path_get_one_201_and_one_409() {
    let Some(n) = nodes(2, |_| {}).await else {
        return;
    };
    for round in 0..10 {
        let path = format!("race/{round}/{}.bin", random_hex(4));
        let (a, b) = (data(3000, 2 * round), data(3000, 2 * round + 1));
        let (sa, sb) = tokio::join!(n[0].put(&path, a.clone()), n[1].put(&path, b.clone()));
        let mut got = [sa.as_u16(), sb.as_u16()];
        got.sort();
        assert_eq!(got, [201, 409], "round {round}");
        let winner = if sa == StatusCode::CREATED { a } else { b };
        for node in &n {
            let (st, body) = node.get_bytes(&path).await;
            assert_eq!(st, StatusCode::OK);
            assert_eq!(
                body, winner,
                "round {round}: both nodes serve the winner's bytes"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_appends_alternate_between_nodes_to_a_byte_identical_file() {
    let Some(n) = nodes(3, |_| {}).await else {
        return;
    };
    let size = 17 * 1024 * 1024 + 321;
    let body = data(size, 7);
    let path = "alt/movie.mp4";
    let r = n[0]
        .client
        .post(tus_create_url(&n[0], path, size as u64))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", size.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let id = loc.rsplit('/').next().unwrap().to_owned();
    let (mut off, step) = (0usize, 4 * 1024 * 1024 + 99);
    let mut i = 0;
    while off < size {
        // Another node than the last writer reports the offset.
        let head = n[(i + 1) % 3]
            .client
            .head(format!("{}/upload/tus/{id}", n[(i + 1) % 3].base()))
            .header("Tus-Resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.headers()["upload-offset"].to_str().unwrap(),
            off.to_string()
        );
        let end = (off + step).min(size);
        let node = &n[i % 3];
        let r = node
            .client
            .patch(format!("{}/upload/tus/{id}", node.base()))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", off.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(body[off..end].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NO_CONTENT,
            "append {i} on node {}",
            i % 3
        );
        off = end;
        i += 1;
    }
    for node in &n {
        let (st, got) = node.get_bytes(path).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(sha256_hex(&got), sha256_hex(&body));
    }
    let row = n[2].state.storage.catalog().get(path).unwrap().unwrap();
    assert_eq!(
        row.row.meta.sha256,
        sha256_hex(&body),
        "the hash carried across nodes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takedown_on_one_node_is_410_on_the_other_at_once() {
    let Some(n) = nodes(2, with_admin).await else {
        return;
    };
    let path = "td/pic.jpg";
    let body = data(2000, 1);
    assert_eq!(n[0].put(path, body.clone()).await, StatusCode::CREATED);
    for _ in 0..3 {
        assert_eq!(n[1].get_bytes(path).await, (StatusCode::OK, body.clone()));
    }
    let admin = n[0].admin.unwrap();
    let t0 = Instant::now();
    let r = n[0]
        .client
        .delete(format!(
            "http://{admin}/files/{}?reason=admin",
            encode_path(path).replace('/', "%2F")
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    loop {
        let (st, _) = n[1].get_bytes(path).await;
        if st == StatusCode::GONE {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "node 2 still answers {st}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "node 2 answered 410 {} ms after the takedown",
        t0.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_files_are_removed_exactly_once_across_nodes() {
    let Some(n) = nodes(3, |c| {
        c.retention.max_age = Duration::from_secs(60);
    })
    .await
    else {
        return;
    };
    for k in 0..12 {
        assert_eq!(
            n[k % 3]
                .put(&format!("exp/{k}.txt"), vec![b'x'; k + 1])
                .await,
            StatusCode::CREATED
        );
    }
    for node in &n {
        node.clock.advance(Duration::from_secs(120));
    }
    let (a, b, c) = tokio::join!(
        sluice::ops::sweep(&n[0].state),
        sluice::ops::sweep(&n[1].state),
        sluice::ops::sweep(&n[2].state)
    );
    let files: u64 = [a, b, c].into_iter().map(|r| r.unwrap().files).sum();
    assert_eq!(files, 12, "each expired file removed by exactly one node");
    for k in 0..12 {
        assert_eq!(
            n[0].get_bytes(&format!("exp/{k}.txt")).await.0,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stored_quota_holds_across_nodes() {
    let Some(n) = nodes(3, |c| {
        c.quota.stored = bytesize::ByteSize::b(10_000);
        c.quota.uploader_from_first_segment = vec![sluice::config::AuthMode::V];
    })
    .await
    else {
        return;
    };
    let paths: Vec<String> = (0..9).map(|k| format!("quser/f{k}.bin")).collect();
    let puts = paths
        .iter()
        .enumerate()
        .map(|(k, p)| n[k % 3].put(p, data(3000, k as u64)));
    let codes: Vec<u16> = futures_util::future::join_all(puts)
        .await
        .into_iter()
        .map(|s| s.as_u16())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 507).count(), 6, "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_catalog_refuses_a_generated_secret() {
    let mut c = Config::default();
    c.catalog.url = "postgres://sluice@127.0.0.1:1/none".into();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("auth.keys"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_in_any_order_are_refused_with_a_reason_on_s3() {
    let Some(n) = nodes(1, |c| {
        c.engine.clients.chunk_min = bytesize::ByteSize::kib(64);
        c.engine.clients.desktop_chunk = bytesize::ByteSize::kib(64);
    })
    .await
    else {
        return;
    };
    let m = mac::sign_hex(SECRET.as_bytes(), &mac::message_v1("c/big.bin", 200_000));
    let r = n[0]
        .client
        .post(format!("{}/chunked-upload?v={m}", n[0].base()))
        .header("x-filename", "c/big.bin")
        .header("x-total-size", "200000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
    assert!(r.text().await.unwrap().contains("tus"));
}
