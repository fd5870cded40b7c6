//! Tests against a real S3 server: `SLUICE_TEST_S3_ENDPOINT` (and `SLUICE_TEST_S3_BUCKET`,
//! default `sluice-test`; credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`),
//! e.g. the SeaweedFS of `tests/services/seaweedfs.sh`. Unset: each test says it is skipped.
//! Each test works under its own random key prefix, with its own SQLite catalog.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::sweep::Swept;
use super::*;
use crate::catalog::sqlite::SqliteCatalog;
use crate::storage::contract::{self, meta, sp, VecBuf};
use crate::storage::{RangeRead, Staged, Store};

const MIB: u64 = 1024 * 1024;

/// The test's S3 configuration, `None` (test skipped) without an endpoint.
fn config(part_size: u64) -> Option<S3Config> {
    let Ok(endpoint) = std::env::var("SLUICE_TEST_S3_ENDPOINT") else {
        println!("skipped: SLUICE_TEST_S3_ENDPOINT unset");
        return None;
    };
    Some(S3Config {
        endpoint,
        bucket: std::env::var("SLUICE_TEST_S3_BUCKET").unwrap_or_else(|_| "sluice-test".into()),
        prefix: format!("test-{}", random_hex(8).unwrap()),
        part_size: bytesize::ByteSize::b(part_size),
        timeout: Duration::from_secs(30),
        ..S3Config::default()
    })
}

/// One catalog shared by the test's nodes.
fn catalog(dir: &Path) -> Arc<dyn Catalog> {
    Arc::new(SqliteCatalog::open(&dir.join("catalog.sqlite3"), false).unwrap())
}

/// A node: its own store over the shared catalog, its own spool directory.
async fn node(cfg: &S3Config, c: &Arc<dyn Catalog>, dir: &Path, name: &str) -> S3Storage {
    S3Storage::open(cfg, c.clone(), dir.join(name), name.to_owned())
        .await
        .unwrap()
}

/// Every await of a test is bounded.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(300), f)
        .await
        .expect("test timed out");
}

/// Two nodes ("a", "b") on one catalog (SQLite under `dir`) and one bucket.
async fn two_nodes(cfg: &S3Config, dir: &Path) -> (S3Storage, S3Storage) {
    let c = catalog(dir);
    (node(cfg, &c, dir, "a").await, node(cfg, &c, dir, "b").await)
}

/// Deterministic bytes that differ at every offset that matters (xorshift).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn read(r: &dyn RangeRead, offset: u64, len: usize) -> Vec<u8> {
    r.read_at(offset, len, VecBuf::boxed(len.max(1)))
        .await
        .unwrap()
        .filled()
        .to_vec()
}

/// Write `data` from `offset` in 256 KiB writes.
async fn write_all(staged: &Staged, mut offset: u64, data: &[u8]) {
    for chunk in data.chunks(256 * 1024) {
        staged
            .write_at(offset, Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
        offset += chunk.len() as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_passes_the_contract() {
    let Some(cfg) = config(5 * MIB) else { return };
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let s = node(&cfg, &catalog(dir.path()), dir.path(), "a").await;
        contract::run(Arc::new(s.clone())).await;
        s.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_mib_in_five_mib_parts_reads_back_identical() {
    let Some(cfg) = config(5 * MIB) else { return };
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let s = node(&cfg, &catalog(dir.path()), dir.path(), "a").await;
        let data = pattern(20 * MIB as usize + 12345, 7);
        let staged = s.stage().await.unwrap();
        write_all(&staged, 0, &data).await;
        staged.flush().await.unwrap();
        assert_eq!(staged.size().await.unwrap(), data.len() as u64);
        // Staged bytes read back across a part boundary and into the spool.
        let at = 5 * MIB - 10;
        assert_eq!(
            read(&*staged, at, 20).await,
            data[at as usize..at as usize + 20]
        );
        let tail_at = data.len() as u64 - 100;
        assert_eq!(read(&*staged, tail_at, 100).await, data[tail_at as usize..]);
        s.commit(staged, &sp("big/twenty.bin"), &meta(data.len() as u64))
            .await
            .unwrap();
        let o = s.open(&sp("big/twenty.bin"), None).await.unwrap();
        assert_eq!(o.meta.size, data.len() as u64);
        let r = o.reader.as_ref();
        let gets = || {
            s.shared
                .reader_gets
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = gets();
        // In order, a little over 1 MiB at a time, two reads in flight (like the engine).
        let step = MIB as usize + 333;
        let mut got = Vec::with_capacity(data.len());
        let mut off = 0usize;
        while off < data.len() {
            let n1 = step.min(data.len() - off);
            let n2 = step.min(data.len() - off - n1);
            let (a, b) = tokio::join!(read(r, off as u64, n1), read(r, (off + n1) as u64, n2));
            got.extend_from_slice(&a);
            got.extend_from_slice(&b);
            off += n1 + n2;
        }
        assert!(
            got == data,
            "the published file differs from what was written"
        );
        // Windows of 1, 2, 4, 8, 16 MiB: a handful of requests, not one per read.
        let used = gets() - before;
        assert!(used <= 8, "{used} GetObject requests for 20 reads");
        for edge in [5 * MIB - 1, 10 * MIB, 15 * MIB + 1] {
            assert_eq!(
                read(r, edge - 3, 7).await,
                data[edge as usize - 3..edge as usize + 4]
            );
        }
        // The staging objects are gone.
        let left = s
            .shared
            .client
            .list_objects_v2()
            .bucket(&cfg.bucket)
            .prefix(format!("{}staging/", s.shared.prefix))
            .send()
            .await
            .unwrap();
        assert_eq!(left.key_count(), Some(0));
        s.close().await;
    })
    .await;
}

/// A cut inside a part: the parts after it go, its head comes back into the spool (read
/// back from S3), and the writes go on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_inside_a_part_keeps_its_head() {
    let Some(cfg) = config(5 * MIB) else { return };
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_nodes(&cfg, dir.path()).await;
        let id = "sessCUTSCUTSCUTSCUTS";
        let data = pattern(12 * MIB as usize, 11);
        let staged = a.stage_named(id).await.unwrap();
        write_all(&staged, 0, &data).await;
        staged.flush().await.unwrap();
        drop(staged);
        let keep = 7 * MIB as usize + 99;
        let staged = b.reopen(id, Some(keep as u64)).await.unwrap();
        assert_eq!(staged.size().await.unwrap(), keep as u64);
        assert_eq!(b.stat_staged(id).await.unwrap().len, keep as u64);
        let more = pattern(4 * MIB as usize, 12);
        write_all(&staged, keep as u64, &more).await;
        let mut want = data[..keep].to_vec();
        want.extend_from_slice(&more);
        assert_eq!(
            read(&*staged, keep as u64 - 8, 16).await,
            want[keep - 8..keep + 8]
        );
        b.commit(staged, &sp("cut/file.bin"), &meta(want.len() as u64))
            .await
            .unwrap();
        let o = a.open(&sp("cut/file.bin"), None).await.unwrap();
        let got = read(o.reader.as_ref(), 0, want.len()).await;
        assert!(
            got == want,
            "the published file differs from what was written"
        );
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_object_is_finished_on_another_node() {
    let Some(cfg) = config(5 * MIB) else { return };
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_nodes(&cfg, dir.path()).await;
        let id = "sessMOVESMOVESMOVES";
        let data = pattern(13 * MIB as usize + 777, 3);
        let first = 7 * MIB as usize + 5;
        let staged = a.stage_named(id).await.unwrap();
        write_all(&staged, 0, &data[..first]).await;
        staged.flush().await.unwrap();
        drop(staged);
        assert_eq!(b.stat_staged(id).await.unwrap().len, first as u64);
        let staged = b.reopen(id, None).await.unwrap();
        assert_eq!(staged.size().await.unwrap(), first as u64);
        // Bytes in the part and in the tail, read back on the other node.
        assert_eq!(read(&*staged, 0, 16).await, data[..16]);
        assert_eq!(
            read(&*staged, first as u64 - 16, 16).await,
            data[first - 16..first]
        );
        write_all(&staged, first as u64, &data[first..]).await;
        staged.flush().await.unwrap();
        b.commit(staged, &sp("moved/file.bin"), &meta(data.len() as u64))
            .await
            .unwrap();
        let o = a.open(&sp("moved/file.bin"), None).await.unwrap();
        let got = read(o.reader.as_ref(), 0, data.len()).await;
        assert!(
            got == data,
            "the published file differs from what was written"
        );
        assert!(matches!(
            a.reopen(id, None).await,
            Err(StorageError::NotFound)
        ));
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_to_one_path_make_one_file() {
    let Some(cfg) = config(5 * MIB) else { return };
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_nodes(&cfg, dir.path()).await;
        for round in 0..3 {
            let path = sp(&format!("race/{round}.bin"));
            // Round 1 races multipart commits (two parts and a tail each).
            let len = if round == 1 { 11 * MIB as usize } else { 1000 };
            let publish = |s: S3Storage, byte: u8| {
                let path = path.clone();
                async move {
                    let staged = s.stage().await.unwrap();
                    write_all(&staged, 0, &vec![byte; len]).await;
                    s.commit(staged, &path, &meta(len as u64)).await
                }
            };
            let (ra, rb) = tokio::join!(publish(a.clone(), b'a'), publish(b.clone(), b'b'));
            let winner = match (&ra, &rb) {
                (Ok(()), Err(StorageError::Exists)) => b'a',
                (Err(StorageError::Exists), Ok(())) => b'b',
                other => panic!("round {round}: expected one Ok and one Exists, got {other:?}"),
            };
            let o = b.open(&path, None).await.unwrap();
            assert_eq!(read(o.reader.as_ref(), 0, len).await, vec![winner; len]);
        }
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_create_only_probe_passes() {
    let Some(cfg) = config(5 * MIB) else { return };
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let s = node(&cfg, &catalog(dir.path()), dir.path(), "a").await;
        s.probe_create_only().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_taken_over_is_superseded() {
    let Some(cfg) = config(5 * MIB) else { return };
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_nodes(&cfg, dir.path()).await;
        let id = "sessSTALESTALESTALE";
        let staged = a.stage_named(id).await.unwrap();
        staged
            .write_at(0, Bytes::from_static(b"shared start;"))
            .await
            .unwrap();
        staged.flush().await.unwrap();
        drop(staged);
        let stale = a.reopen(id, None).await.unwrap();
        let fresh = b.reopen(id, Some(13)).await.unwrap();
        fresh
            .write_at(13, Bytes::from_static(b" fresh"))
            .await
            .unwrap();
        fresh.flush().await.unwrap();
        // The stale writer may still write locally, but cannot make it count.
        stale
            .write_at(13, Bytes::from_static(b" stale"))
            .await
            .unwrap();
        let e = stale.flush().await.unwrap_err();
        assert!(S3Storage::is_superseded(&e), "expected Superseded, got {e}");
        assert!(matches!(
            a.commit(stale, &sp("stale/x.txt"), &meta(19)).await,
            Err(StorageError::Superseded)
        ));
        // A stale writer stops at its next part.
        let stale = a.reopen(id, None).await.unwrap();
        let fresh = b.reopen(id, None).await.unwrap();
        let e = stale
            .write_at(19, Bytes::from(vec![1; 5 * MIB as usize]))
            .await
            .unwrap_err();
        assert!(S3Storage::is_superseded(&e), "expected Superseded, got {e}");
        drop((stale, fresh));
        // A stale commit without a flush first is fenced the same way.
        let stale = a.reopen(id, None).await.unwrap();
        let fresh = b.reopen(id, None).await.unwrap();
        let r = a.commit(stale, &sp("stale/x.txt"), &meta(19)).await;
        assert!(matches!(r, Err(StorageError::Superseded)), "{r:?}");
        assert!(matches!(
            a.stat(&sp("stale/x.txt")).await,
            Err(StorageError::NotFound)
        ));
        b.commit(fresh, &sp("stale/x.txt"), &meta(19))
            .await
            .unwrap();
        let o = a.open(&sp("stale/x.txt"), None).await.unwrap();
        assert_eq!(read(o.reader.as_ref(), 0, 19).await, b"shared start; fresh");
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_what_crashes_left_and_nothing_else() {
    let Some(cfg) = config(5 * MIB) else { return };
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let s = node(&cfg, &catalog(dir.path()), dir.path(), "a").await;
        let sh = &s.shared;
        let put = |key: String| async move {
            sh.client
                .put_object()
                .bucket(&sh.bucket)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from_static(b"left"))
                .send()
                .await
                .unwrap();
        };
        // A crashed PUT's part, a deleted session's tail, a crashed commit's upload.
        put(sh.part_key("put-0123456789abcdef", 1)).await;
        put(sh.tail_key("sessGONEGONEGONEGONE", 3)).await;
        sh.client
            .create_multipart_upload()
            .bucket(&sh.bucket)
            .key(sh.file_key("crashed/commit.bin"))
            .send()
            .await
            .unwrap();
        // A live session keeps its tail.
        let live = s.stage_named("sessLIVELIVELIVELIVE").await.unwrap();
        live.write_at(0, Bytes::from_static(b"keep me"))
            .await
            .unwrap();
        live.flush().await.unwrap();
        drop(live);
        // Nothing is old enough yet.
        let none = s.sweep_orphans(Duration::from_secs(3600)).await.unwrap();
        assert_eq!(none, Swept::default());
        let swept = s.sweep_orphans(Duration::ZERO).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                staged: 2,
                uploads: 1
            }
        );
        let left = sh
            .client
            .list_objects_v2()
            .bucket(&sh.bucket)
            .prefix(format!("{}staging/", sh.prefix))
            .send()
            .await
            .unwrap();
        let keys: Vec<&str> = left.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].contains("sessLIVELIVELIVELIVE"));
        let staged = s.reopen("sessLIVELIVELIVELIVE", None).await.unwrap();
        assert_eq!(read(&*staged, 0, 7).await, b"keep me");
    })
    .await;
}

/// A store that takes every request with 200 (so overwrites too): the probe must refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_refuses_a_store_that_overwrites() {
    bounded(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let ok = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Empty::<Bytes>::new(),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), ok)
                        .await;
                });
            }
        });
        let cfg = S3Config {
            endpoint,
            bucket: "any".into(),
            credentials: Some(crate::config::KeyConfig {
                id: "id".into(),
                secret: Some("not-a-real-secret".into()),
                secret_file: None,
                secret_env: None,
            }),
            timeout: Duration::from_secs(10),
            ..S3Config::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let s = node(&cfg, &catalog(dir.path()), dir.path(), "a").await;
        let e = s.probe_create_only().await.unwrap_err();
        assert!(
            e.to_string().contains("does not honour create-only writes"),
            "{e}"
        );
    })
    .await;
}

#[test]
fn credentials_come_inline_or_from_a_file() {
    let key = |secret: Option<&str>, file: Option<std::path::PathBuf>| crate::config::KeyConfig {
        id: "AKIDEXAMPLE".into(),
        secret: secret.map(str::to_owned),
        secret_file: file,
        secret_env: None,
    };
    let (id, secret) = client::credentials(Some(&key(Some("inline-secret"), None))).unwrap();
    assert_eq!(
        (id.as_str(), secret.as_str()),
        ("AKIDEXAMPLE", "inline-secret")
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let (_, secret) = client::credentials(Some(&key(None, Some(file)))).unwrap();
    assert_eq!(secret, "from-a-file");
    let e = client::credentials(Some(&key(None, None))).unwrap_err();
    assert!(e.to_string().contains("no secret given"), "{e}");
    let mut no_id = key(Some("s"), None);
    no_id.id.clear();
    assert!(client::credentials(Some(&no_id)).is_err());
}
