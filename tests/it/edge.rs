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

/// The server's current config turned into settings again, changed by `f`.
fn changed(
    s: &TestServer,
    f: impl FnOnce(&mut sluice::config::Config),
) -> sluice::config::Settings {
    let mut c = (*s.state.config()).clone();
    f(&mut c);
    c.validate().unwrap();
    c.resolve().unwrap()
}

#[tokio::test]
async fn reload_rotates_keys_and_limits_at_once() {
    let s = TestServer::start().await;
    let other = "rotated-secret-0123456789abcdef";
    let sign = |secret: &str, path: &str, len: u64| {
        let m = sluice::auth::mac::sign_hex(
            secret.as_bytes(),
            &sluice::auth::mac::message_v1(path, len),
        );
        format!("{}?v={m}", s.url(path))
    };
    let put = |url: String, body: &'static [u8]| {
        let c = s.client.clone();
        async move { c.put(url).body(body).send().await.unwrap().status() }
    };
    assert_eq!(
        put(sign(other, "rk/a.txt", 3), b"abc").await,
        StatusCode::FORBIDDEN
    );
    // Rotation: the new key joins the ring, a limit changes; nothing needs a restart.
    let restart = s.state.reload(changed(&s, |c| {
        c.auth.keys.push(sluice::config::KeyConfig {
            id: "new".into(),
            secret: Some(other.into()),
            ..Default::default()
        });
        c.storage.max_file_size = bytesize::ByteSize::b(10);
    }));
    assert!(restart.is_empty(), "{restart:?}");
    assert_eq!(
        put(sign(other, "rk/a.txt", 3), b"abc").await,
        StatusCode::CREATED
    );
    assert_eq!(
        put(sign(SECRET, "rk/b.txt", 3), b"abc").await,
        StatusCode::CREATED
    );
    assert_eq!(
        put(sign(other, "rk/c.txt", 11), b"01234567890").await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // The old key leaves the ring.
    s.state.reload(changed(&s, |c| {
        c.auth.keys.retain(|k| k.id == "new");
    }));
    assert_eq!(
        put(sign(SECRET, "rk/d.txt", 3), b"abc").await,
        StatusCode::FORBIDDEN
    );
    // What only a restart applies is named.
    let restart = s.state.reload(changed(&s, |c| {
        c.storage.dir = "/elsewhere".into();
        c.server.send_timeout = Duration::from_secs(5);
    }));
    assert!(restart.contains(&"storage.dir"), "{restart:?}");
    assert!(
        restart.iter().any(|r| r.starts_with("server")),
        "{restart:?}"
    );
}

#[tokio::test]
async fn an_invalid_file_is_refused_and_the_running_config_stays() {
    let s = TestServer::start().await;
    let file = s.dir.path().join("sluice.toml");
    std::fs::write(&file, "[server]\nmax_connectionz = 3\n").unwrap();
    let _ = s.state.config_file.set(file.clone());
    s.state.reload_from_file();
    assert_eq!(
        s.metric("sluice_config_reloads_total{result=\"error\"}")
            .await,
        1.0
    );
    assert_eq!(
        s.put("iv/a.txt", b"abc".to_vec()).await,
        StatusCode::CREATED
    );
    // A valid file is applied (and the key it names is the one that counts from then on).
    std::fs::write(
        &file,
        format!(
            "[server]\nurl_prefix = \"/upload\"\n[storage]\ndir = {:?}\ndurability = \"none\"\nmax_file_size = \"2B\"\n[[auth.keys]]\nid = \"test\"\nsecret = \"{SECRET}\"\n",
            s.dir.path().display().to_string()
        ),
    )
    .unwrap();
    s.state.reload_from_file();
    assert_eq!(
        s.metric("sluice_config_reloads_total{result=\"ok\"}").await,
        1.0
    );
    assert_eq!(
        s.put("iv/b.txt", b"abc".to_vec()).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}
