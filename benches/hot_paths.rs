//! criterion micro-benchmarks of the hot pure paths and the engine's copy loop:
//! MAC verification, range resolution, pool lease/return per tier, and receiving N MiB
//! through the engine (memory → pool buffers → SHA-256 + write to /dev/null).
//!
//! `cargo bench --bench hot_paths` (results in BENCHMARKS.md).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;

use sluice::auth::{mac, Authorizer, GrantRequest};
use sluice::config::{AuthMode, EngineConfig, EngineMode, Key};
use sluice::download::range;

fn bench_mac(c: &mut Criterion) {
    let key = b"bench-secret-0123456789".to_vec();
    let path = "4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/très cool.jpg";
    let auth = Authorizer::new(
        vec![Key {
            id: "k".into(),
            secret: key.clone(),
        }],
        vec![AuthMode::V, AuthMode::V2],
        Duration::from_secs(60),
    );
    let v1 = format!("v={}", mac::sign_hex(&key, &mac::message_v1(path, 23456)));
    let v2 = format!(
        "v2={}",
        mac::sign_hex(&key, &mac::message_v2(path, 23456, "image/jpeg"))
    );
    let mut g = c.benchmark_group("mac_verify");
    for (name, q) in [("v1", v1), ("v2", v2)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = auth.authorize(&GrantRequest {
                    method: "PUT",
                    path: black_box(path),
                    query: Some(&q),
                    content_length: 23456,
                    content_type: Some("image/jpeg"),
                    authorization: None,
                    now: SystemTime::now(),
                });
                assert!(r.is_ok());
            })
        });
    }
    g.finish();
}

fn bench_range(c: &mut Criterion) {
    let mut g = c.benchmark_group("range_resolve");
    for (name, h) in [
        ("single", "bytes=1048576-1114111".to_owned()),
        ("suffix", "bytes=-500".to_owned()),
        (
            "multi16",
            format!(
                "bytes={}",
                (0..16)
                    .map(|i| format!("{}-{}", i * 10_000, i * 10_000 + 99))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(range::resolve(Some(black_box(&h)), 1 << 30, 16)))
        });
    }
    g.finish();
}

fn engine(mode: EngineMode) -> sluice::engine::Engine {
    let cfg = EngineConfig {
        mode,
        ..EngineConfig::default()
    };
    let registry = prometheus::Registry::new();
    sluice::engine::Engine::new(&cfg, Duration::from_secs(30), &registry).expect("engine")
}

fn bench_pool(c: &mut Criterion) {
    let e = engine(EngineMode::Adaptive);
    let mut g = c.benchmark_group("pool_lease_return");
    for tier in 0..e.pool().tier_count() {
        g.bench_with_input(
            BenchmarkId::from_parameter(e.pool().tier_size(tier)),
            &tier,
            |b, &t| b.iter(|| drop(black_box(e.pool().try_lease(t).expect("lease")))),
        );
    }
    g.finish();
}

fn bench_engine_copy(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let mut g = c.benchmark_group("engine_receive");
    g.sample_size(20);
    for (mode_name, mode) in [
        ("adaptive", EngineMode::Adaptive),
        ("fixed256k", EngineMode::Fixed),
    ] {
        let e = engine(mode);
        let client = e.client(None, Some("curl/8"));
        for mib in [1usize, 64] {
            let chunk = Bytes::from(vec![7u8; 64 * 1024]);
            g.throughput(Throughput::Bytes((mib * 1024 * 1024) as u64));
            g.bench_function(BenchmarkId::new(mode_name, format!("{mib}MiB")), |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let frames = (0..mib * 16).map(|_| {
                            Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))
                        });
                        let body =
                            http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                        let staged = sluice::storage::Staged::new(Arc::new(NullObject), false);
                        let sink = e
                            .receive(
                                body,
                                sluice::engine::Sink::new(staged),
                                sluice::engine::Expect {
                                    exact: Some((mib * 1024 * 1024) as u64),
                                    max: u64::MAX,
                                },
                                &client,
                            )
                            .await
                            .expect("receive");
                        black_box(sink.written)
                    })
                })
            });
        }
    }
    g.finish();
}

/// A staged object that drops what it is given (the engine alone is measured, as with
/// /dev/null).
struct NullObject;

impl sluice::storage::RangeRead for NullObject {
    fn read_at(
        &self,
        _offset: u64,
        _len: usize,
        buf: sluice::storage::Buf,
    ) -> sluice::storage::store::IoFuture<'_, sluice::storage::Buf> {
        Box::pin(async move { Ok(buf) })
    }
}

impl sluice::storage::StagedObject for NullObject {
    fn id(&self) -> &str {
        "null"
    }
    fn write_at(&self, _offset: u64, _data: Bytes) -> sluice::storage::store::IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn set_len(&self, _len: u64) -> sluice::storage::store::IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn size(&self) -> sluice::storage::store::IoFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }
    fn flush(&self) -> sluice::storage::store::IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn discard(&self) {}
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

criterion_group!(
    benches,
    bench_mac,
    bench_range,
    bench_pool,
    bench_engine_copy
);
criterion_main!(benches);
