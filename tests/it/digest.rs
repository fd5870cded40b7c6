//! RFC 9530 integrity fields end to end: a client's Content-Digest / Repr-Digest is checked
//! before anything is published; Repr-Digest is sent on 201, GET, HEAD and 206.

use base64::Engine as _;
use reqwest::StatusCode;

use crate::common::*;
use crate::resumable::{head, offset, patch, tus_create};

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn sha256_field(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha-256=:{}:", b64(&sha2::Sha256::digest(data)))
}

fn sha512_field(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha-512=:{}:", b64(&sha2::Sha512::digest(data)))
}

async fn put_with(
    s: &TestServer,
    path: &str,
    body: &[u8],
    field: &str,
    value: &str,
) -> reqwest::Response {
    s.client
        .put(s.put_v1(path, body.len() as u64))
        .header(field, value)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn matching_digests_are_accepted_and_repr_digest_is_served() {
    let s = TestServer::start().await;
    let body = data(100_000, 1);
    let want = sha256_field(&body);
    let r = put_with(&s, "d/ok.bin", &body, "content-digest", &want).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["repr-digest"], want.as_str());
    let r = put_with(
        &s,
        "d/ok512.bin",
        &body,
        "repr-digest",
        &sha512_field(&body),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Unknown algorithms alone are ignored (RFC 9530 §2).
    let r = put_with(
        &s,
        "d/md5.bin",
        &body,
        "content-digest",
        "md5=:AAAAAAAAAAAAAAAAAAAAAA==:",
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = s.client.get(s.url("d/ok.bin")).send().await.unwrap();
    assert_eq!(r.headers()["repr-digest"], want.as_str());
    let r = s.client.head(s.url("d/ok.bin")).send().await.unwrap();
    assert_eq!(r.headers()["repr-digest"], want.as_str());
    // A range response carries the digest of the whole representation.
    let r = s
        .client
        .get(s.url("d/ok.bin"))
        .header("range", "bytes=10-20")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["repr-digest"], want.as_str());
}

#[tokio::test]
async fn mismatching_digest_is_400_and_nothing_is_published() {
    let s = TestServer::start().await;
    let body = data(200_000, 2);
    let mut other = body.clone();
    other[7] ^= 1;
    for (field, value) in [
        ("content-digest", sha256_field(&other)),
        ("repr-digest", sha256_field(&other)),
        ("content-digest", sha512_field(&other)),
        // Every claim must hold: a right sha-256 does not excuse a wrong sha-512.
        (
            "content-digest",
            format!("{}, {}", sha256_field(&body), sha512_field(&other)),
        ),
    ] {
        let r = put_with(&s, "d/bad.bin", &body, field, &value).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{field}: {value}");
        assert!(r.headers().contains_key("want-repr-digest"));
        assert!(r.text().await.unwrap().contains("nothing was stored"));
        assert_eq!(s.get_bytes("d/bad.bin").await.0, StatusCode::NOT_FOUND);
    }
    assert_eq!(s.staging_entries(), 0);
    // Malformed: refused before the body, with a reason.
    let r = put_with(&s, "d/bad.bin", &body, "content-digest", "sha-256=nope").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("content-digest is not a valid digest field"));
    // The same name can then be uploaded with the right digest.
    let r = put_with(
        &s,
        "d/bad.bin",
        &body,
        "content-digest",
        &sha256_field(&body),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.get_bytes("d/bad.bin").await.1, body);
}

#[tokio::test]
async fn tus_append_with_wrong_content_digest_is_discarded() {
    let s = TestServer::start().await;
    let body = data(50_000, 3);
    let url = tus_create(&s, "d/tus.bin", body.len() as u64).await;
    let r = patch(
        &s,
        &url,
        0,
        body[..20_000].to_vec(),
        &[("content-digest", sha256_field(&body[..19_999]))],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(offset(&head(&s, &url).await.1), 0);
    let r = patch(
        &s,
        &url,
        0,
        body[..20_000].to_vec(),
        &[("content-digest", sha256_field(&body[..20_000]))],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = patch(
        &s,
        &url,
        20_000,
        body[20_000..].to_vec(),
        &[("content-digest", sha512_field(&body[20_000..]))],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.get_bytes("d/tus.bin").await.1, body);
}

#[tokio::test]
async fn preflight_advertises_wanted_digests() {
    let s = TestServer::start().await;
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("d/x.bin"))
        .header("origin", "https://chat.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["want-repr-digest"], "sha-256=10, sha-512=3");
    assert!(r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Content-Digest"));
}
