//! At the edge: rate limits on the injected clock, and client addresses from trusted proxies
//! (spoofed forwarding headers from anyone else are ignored).

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::*;

async fn get_as(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = s.client.get(s.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn uploads_and_downloads_are_rate_limited_per_address_with_retry_after() {
    let s = TestServer::start_with(|c| {
        // The test client is on loopback, exempt by default.
        c.server.connection_cap_exempt.clear();
        c.rate_limit.uploads_per_minute = 60;
        c.rate_limit.uploads_burst = 2;
        c.rate_limit.downloads_per_minute = 30;
        c.rate_limit.downloads_burst = 2;
    })
    .await;
    assert_eq!(s.put("rl/a.txt", b"a".to_vec()).await, StatusCode::CREATED);
    assert_eq!(s.put("rl/b.txt", b"b".to_vec()).await, StatusCode::CREATED);
    let r = s
        .client
        .put(s.put_v1("rl/c.txt", 1))
        .body("c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    // The bucket refills on the clock: one more token a second.
    s.clock.advance(Duration::from_secs(1));
    assert_eq!(s.put("rl/c.txt", b"c".to_vec()).await, StatusCode::CREATED);
    for _ in 0..2 {
        assert_eq!(get_as(&s, "rl/a.txt", &[]).await.status(), StatusCode::OK);
    }
    let r = get_as(&s, "rl/a.txt", &[]).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(
        s.metric("sluice_rate_limited_total{by=\"address\",kind=\"download\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let limits = |c: &mut sluice::config::Config| {
        c.server.connection_cap_exempt.clear();
        c.rate_limit.downloads_per_minute = 1;
        c.rate_limit.downloads_burst = 1;
    };
    // Behind a trusted proxy on loopback, each forwarded client has its own bucket.
    let s = TestServer::start_with(|c| {
        limits(c);
        c.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    assert_eq!(s.put("px/a.txt", b"a".to_vec()).await, StatusCode::CREATED);
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(
        get_as(&s, "px/a.txt", &xff("198.51.100.1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_as(&s, "px/a.txt", &xff("198.51.100.1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A client cannot pick its address: the proxy appends the real one, which wins.
    assert_eq!(
        get_as(&s, "px/a.txt", &xff("203.0.113.50, 198.51.100.1"))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        get_as(&s, "px/a.txt", &xff("198.51.100.2")).await.status(),
        StatusCode::OK
    );
    let fwd = [("forwarded", r#"for="[2001:db8::7]:4711";proto=https"#)];
    assert_eq!(get_as(&s, "px/a.txt", &fwd).await.status(), StatusCode::OK);
    drop(s);

    // From an untrusted peer the same headers are ignored: everyone is 127.0.0.1.
    let s = TestServer::start_with(limits).await;
    assert_eq!(s.put("px/a.txt", b"a".to_vec()).await, StatusCode::CREATED);
    assert_eq!(
        get_as(&s, "px/a.txt", &xff("198.51.100.1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_as(&s, "px/a.txt", &xff("198.51.100.2")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}
