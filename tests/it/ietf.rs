//! IETF resumable uploads: what differs between the interop versions 3..=8 of
//! draft-ietf-httpbis-resumable-upload (protocols.md §4.3 and §4.5, G1–G11). One test per rule,
//! run against every version the rule concerns; each asserts exact statuses and fields.

use reqwest::{header::HeaderMap, Method, RequestBuilder, Response, StatusCode};
use sluice::auth::mac;

use crate::common::*;

const V: &str = "upload-draft-interop-version";
const PARTIAL: &str = "application/partial-upload";
const TTL: u64 = 3600;
const MAX: u64 = 65_536;

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.resumable.session_ttl = std::time::Duration::from_secs(TTL);
        c.storage.max_file_size = bytesize::ByteSize::b(MAX);
    })
    .await
}

/// A creation URL whose grant binds `len` bytes (v1).
fn sized_url(s: &TestServer, path: &str, len: u64) -> String {
    let m = mac::sign_hex(SECRET.as_bytes(), &mac::message_v1(path, len));
    format!("{}{PREFIX}/resumable/{}?v={m}", s.base(), encode_path(path))
}

/// A creation URL whose grant binds no size (v3).
fn unsized_url(s: &TestServer, path: &str) -> String {
    let exp = now() + 600;
    let m = mac::sign_hex(SECRET.as_bytes(), &mac::message_v3("PUT", exp, path));
    format!(
        "{}{PREFIX}/resumable/{}?v3={m}&expires={exp}",
        s.base(),
        encode_path(path)
    )
}

/// The completeness field of `version` saying `complete` (interop 3: `Upload-Incomplete`).
fn completeness(version: u32, complete: bool) -> (&'static str, &'static str) {
    if version == 3 {
        ("upload-incomplete", if complete { "?0" } else { "?1" })
    } else {
        ("upload-complete", if complete { "?1" } else { "?0" })
    }
}

fn req(s: &TestServer, method: Method, url: &str, version: u32) -> RequestBuilder {
    s.client.request(method, url).header(V, version.to_string())
}

/// Create an incomplete upload of `len` bytes holding `first`; returns its URL.
async fn start(s: &TestServer, version: u32, path: &str, len: u64, first: &[u8]) -> String {
    let (k, v) = completeness(version, false);
    let r = req(s, Method::POST, &sized_url(s, path, len), version)
        .header(k, v)
        .header("upload-length", len.to_string())
        .body(first.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "v{version}");
    format!("{}{}", s.base(), r.headers()["location"].to_str().unwrap())
}

/// Create an upload and complete it in one request; returns its URL.
async fn start_complete(s: &TestServer, version: u32, path: &str, body: &[u8]) -> String {
    let (k, v) = completeness(version, true);
    let r = req(
        s,
        Method::POST,
        &sized_url(s, path, body.len() as u64),
        version,
    )
    .header(k, v)
    .body(body.to_vec())
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "v{version}");
    format!("{}{}", s.base(), r.headers()["location"].to_str().unwrap())
}

/// An append (`Upload-Offset`, and from 6 the partial-upload type), no completeness field.
fn patch(s: &TestServer, version: u32, url: &str, offset: u64) -> RequestBuilder {
    let b = req(s, Method::PATCH, url, version).header("upload-offset", offset.to_string());
    if version >= 6 {
        b.header("content-type", PARTIAL)
    } else {
        b
    }
}

async fn head(s: &TestServer, version: u32, url: &str) -> Response {
    req(s, Method::HEAD, url, version).send().await.unwrap()
}

fn field<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

/// Assert the completeness field of `version` reports `complete`, and the other is absent.
fn assert_complete(h: &HeaderMap, version: u32, complete: bool) {
    let (k, v) = completeness(version, complete);
    assert_eq!(field(h, k), Some(v), "v{version}: {k}");
    let other = if version == 3 {
        "upload-complete"
    } else {
        "upload-incomplete"
    };
    assert_eq!(field(h, other), None, "v{version}: {other}");
}

fn path_of(url: &str) -> &str {
    &url[url.find(PREFIX).unwrap()..]
}

/// Status code and lower-cased head of a raw response.
fn parse_raw(resp: &str) -> (u16, String) {
    let code = resp.split(' ').nth(1).unwrap().parse().unwrap();
    (code, resp.to_ascii_lowercase())
}

fn raw_field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == name).then(|| v.trim())
    })
}

/// Send only the head of a request that announces a body, and read the answer: it must come
/// before the body.
async fn head_only(s: &TestServer, method: &str, path: &str, fields: &[(&str, String)]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
    for (k, v) in fields {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    raw_request(s, &head, b"").await
}

async fn problem_type(r: Response) -> String {
    assert_eq!(
        field(r.headers(), "content-type"),
        Some("application/problem+json")
    );
    let v: serde_json::Value = r.json().await.unwrap();
    v["type"].as_str().unwrap().to_owned()
}

// G1 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn head_of_unknown_upload_is_404_in_every_version() {
    let s = server().await;
    for version in 3..=8 {
        // Not an upload id at all, and an id-shaped one nobody created.
        for path in ["not/an/upload.bin", "AAAAAAAAAAAAAAAAAAAAAA"] {
            let url = format!("{}{PREFIX}/resumable/{path}", s.base());
            for m in [Method::HEAD, Method::GET, Method::DELETE] {
                let r = req(&s, m.clone(), &url, version).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "v{version} {m} {path}");
            }
        }
    }
}

#[tokio::test]
async fn append_to_a_path_that_is_no_upload_is_404_and_creates_nothing_in_every_version() {
    let s = server().await;
    for version in 3..=8 {
        let path = format!("g1/v{version}.bin");
        let (k, v) = completeness(version, true);
        let r = patch(&s, version, &sized_url(&s, &path, 3), 0)
            .header(k, v)
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "v{version}");
        assert_eq!(s.get_bytes(&path).await.0, StatusCode::NOT_FOUND);
    }
    assert_eq!(
        s.metric("sluice_sessions_total{event=\"created\",protocol=\"ietf\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn other_methods_on_a_creation_path_are_405_with_allow() {
    let s = server().await;
    let url = format!("{}{PREFIX}/resumable/g1/x.bin", s.base());
    let m = Method::from_bytes(b"PROPFIND").unwrap();
    let r = req(&s, m, &url, 8).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        field(r.headers(), "allow"),
        Some("OPTIONS, POST, PUT, PATCH")
    );
}

// G2 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn head_after_delete_is_404_before_interop_7() {
    let s = server().await;
    for version in 3..=6 {
        let url = start(&s, version, &format!("g2/v{version}.bin"), 10, b"abc").await;
        let r = req(&s, Method::DELETE, &url, version).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "v{version}");
        assert_eq!(
            head(&s, version, &url).await.status(),
            StatusCode::NOT_FOUND
        );
        let (k, v) = completeness(version, false);
        let r = patch(&s, version, &url, 3)
            .header(k, v)
            .body("d")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "v{version} PATCH");
        let r = req(&s, Method::DELETE, &url, version).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "v{version} DELETE");
    }
}

#[tokio::test]
async fn head_after_delete_is_410_from_interop_7() {
    let s = server().await;
    for version in 7..=8 {
        let url = start(&s, version, &format!("g2/v{version}.bin"), 10, b"abc").await;
        let r = req(&s, Method::DELETE, &url, version).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "v{version}");
        assert_eq!(head(&s, version, &url).await.status(), StatusCode::GONE);
        let r = patch(&s, version, &url, 3)
            .header("upload-complete", "?0")
            .body("d")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::GONE, "v{version} PATCH");
    }
}

// G3 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn head_and_delete_carrying_upload_fields_are_400_before_interop_7() {
    let s = server().await;
    for version in 3..=6 {
        let url = start(&s, version, &format!("g3/v{version}.bin"), 10, b"abc").await;
        let (k, v) = completeness(version, false);
        if version == 6 {
            // -05 §5: HEAD only.
            let r = req(&s, Method::HEAD, &url, version)
                .header("upload-length", "10")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "v6 Upload-Length");
        }
        for (name, value) in [("upload-offset", "3"), (k, v)] {
            for m in [Method::HEAD, Method::DELETE] {
                let r = req(&s, m.clone(), &url, version)
                    .header(name, value)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::BAD_REQUEST, "v{version} {m} {name}");
            }
        }
        // The refused DELETEs cancelled nothing.
        let r = head(&s, version, &url).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "v{version}");
        assert_eq!(field(r.headers(), "upload-offset"), Some("3"));
    }
}

#[tokio::test]
async fn head_and_delete_carrying_upload_fields_are_served_from_interop_7() {
    let s = server().await;
    for version in 7..=8 {
        let url = start(&s, version, &format!("g3/v{version}.bin"), 10, b"abc").await;
        let r = req(&s, Method::HEAD, &url, version)
            .header("upload-offset", "3")
            .header("upload-complete", "?0")
            .header("upload-length", "10")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "v{version}");
        let r = req(&s, Method::DELETE, &url, version)
            .header("upload-offset", "3")
            .header("upload-complete", "?0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "v{version}");
    }
}

#[tokio::test]
async fn head_carrying_upload_length_is_served_before_interop_6() {
    let s = server().await;
    for version in 3..=5 {
        let url = start(&s, version, &format!("g3/len{version}.bin"), 10, b"abc").await;
        let r = req(&s, Method::HEAD, &url, version)
            .header("upload-length", "10")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "v{version}");
    }
}

// G4 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn incomplete_append_is_201_before_interop_7() {
    let s = server().await;
    for version in 3..=6 {
        let url = start(&s, version, &format!("g4/v{version}.bin"), 10, b"abc").await;
        let (k, v) = completeness(version, false);
        let r = patch(&s, version, &url, 3)
            .header(k, v)
            .body("def")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "v{version}");
        assert_eq!(field(r.headers(), "upload-offset"), Some("6"));
        assert_complete(r.headers(), version, false);
        assert_eq!(field(r.headers(), "location"), None);
    }
}

#[tokio::test]
async fn incomplete_append_is_204_from_interop_7() {
    let s = server().await;
    for version in 7..=8 {
        let url = start(&s, version, &format!("g4/v{version}.bin"), 10, b"abc").await;
        let r = patch(&s, version, &url, 3)
            .header("upload-complete", "?0")
            .body("def")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "v{version}");
        assert_eq!(field(r.headers(), "upload-offset"), Some("6"));
        assert_complete(r.headers(), version, false);
    }
}

// G5 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_upload_incomplete_means_complete_in_interop_3() {
    let s = server().await;
    let url = start(&s, 3, "g5/v3.bin", 6, b"abc").await;
    let r = patch(&s, 3, &url, 3).body("def").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(field(r.headers(), "upload-offset"), Some("6"));
    assert_complete(r.headers(), 3, true);
    assert_eq!(
        s.get_bytes("g5/v3.bin").await,
        (StatusCode::OK, b"abcdef".to_vec())
    );
}

#[tokio::test]
async fn missing_upload_complete_means_incomplete_in_interop_4_to_6() {
    let s = server().await;
    for version in 4..=6 {
        let path = format!("g5/v{version}.bin");
        let url = start(&s, version, &path, 6, b"abc").await;
        let r = patch(&s, version, &url, 3)
            .body("def")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "v{version}");
        assert_complete(r.headers(), version, false);
        let r = head(&s, version, &url).await;
        assert_eq!(field(r.headers(), "upload-offset"), Some("6"));
        assert_complete(r.headers(), version, false);
        assert_eq!(s.get_bytes(&path).await.0, StatusCode::NOT_FOUND);
        // An empty `?1` append completes it (-03 and later allow empty appends).
        let r = patch(&s, version, &url, 6)
            .header("upload-complete", "?1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "v{version}");
        assert_complete(r.headers(), version, true);
        assert_eq!(
            s.get_bytes(&path).await,
            (StatusCode::OK, b"abcdef".to_vec())
        );
    }
}

#[tokio::test]
async fn missing_upload_complete_on_append_is_400_from_interop_7() {
    let s = server().await;
    for version in 7..=8 {
        let url = start(&s, version, &format!("g5/v{version}.bin"), 6, b"abc").await;
        let r = patch(&s, version, &url, 3)
            .body("def")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "v{version}");
        assert_eq!(
            field(head(&s, version, &url).await.headers(), "upload-offset"),
            Some("3")
        );
    }
}

#[tokio::test]
async fn creation_without_completeness_field_is_400_in_every_version() {
    let s = server().await;
    for version in 3..=8 {
        let r = req(&s, Method::POST, &sized_url(&s, "g5/c.bin", 3), version)
            .header("upload-length", "3")
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "v{version}");
    }
}

// G6 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn append_to_completed_is_400_with_the_true_state_before_interop_7() {
    let s = server().await;
    for version in 3..=6 {
        let path = format!("g6/v{version}.bin");
        let url = start_complete(&s, version, &path, b"abc").await;
        let (k, v) = completeness(version, false);
        let r = patch(&s, version, &url, 3)
            .header(k, v)
            .body("def")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "v{version}");
        assert_eq!(field(r.headers(), "upload-offset"), Some("3"));
        assert_complete(r.headers(), version, true);
        if version == 6 {
            assert_eq!(
                problem_type(r).await,
                "https://iana.org/assignments/http-problem-types#completed-upload"
            );
        }
        assert_eq!(s.get_bytes(&path).await, (StatusCode::OK, b"abc".to_vec()));
    }
}

#[tokio::test]
async fn append_to_completed_is_400_in_interop_7() {
    let s = server().await;
    let url = start_complete(&s, 7, "g6/v7.bin", b"abc").await;
    for body in [&b""[..], b"def"] {
        let r = patch(&s, 7, &url, 3)
            .header("upload-complete", "?1")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(field(r.headers(), "upload-offset"), Some("3"));
        // -06..-08 §4.4.2: a response that did not complete the upload says `?0`.
        assert_complete(r.headers(), 7, false);
        assert_eq!(
            problem_type(r).await,
            "https://iana.org/assignments/http-problem-types#completed-upload"
        );
    }
    assert_eq!(s.get_bytes("g6/v7.bin").await.1, b"abc");
}

#[tokio::test]
async fn empty_append_to_completed_is_410_with_location_in_interop_8() {
    let s = server().await;
    let url = start_complete(&s, 8, "g6/v 8.bin", b"abc").await;
    let r = patch(&s, 8, &url, 3)
        .header("upload-complete", "?1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    // The stored file's URL (every non-alphanumeric character encoded).
    let location = field(r.headers(), "location").unwrap().to_owned();
    assert_eq!(location, format!("{PREFIX}/g6/v%208%2Ebin"));
    assert_eq!(
        problem_type(r).await,
        "https://iana.org/assignments/http-problem-types#completed-upload"
    );
    let r = s
        .client
        .get(format!("{}{location}", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), &b"abc"[..]);
}

#[tokio::test]
async fn nonempty_append_to_completed_is_400_inconsistent_length_in_interop_8() {
    let s = server().await;
    let url = start_complete(&s, 8, "g6/v8.bin", b"abc").await;
    let r = patch(&s, 8, &url, 3)
        .header("upload-complete", "?1")
        .body("def")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(field(r.headers(), "location"), None);
    assert_eq!(
        problem_type(r).await,
        "https://iana.org/assignments/http-problem-types#inconsistent-upload-length"
    );
    assert_eq!(s.get_bytes("g6/v8.bin").await.1, b"abc");
}

// G7 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn complete_creation_with_mismatching_upload_length_is_400_before_the_body() {
    let s = server().await;
    for version in 4..=8 {
        let path = format!("g7/c{version}.bin");
        let url = sized_url(&s, &path, 10);
        let resp = head_only(
            &s,
            "POST",
            path_of(&url),
            &[
                (V, version.to_string()),
                ("Upload-Complete", "?1".into()),
                ("Upload-Length", "10".into()),
                ("Content-Length", "5".into()),
            ],
        )
        .await;
        assert_eq!(parse_raw(&resp).0, 400, "v{version}: {resp}");
        assert_eq!(s.get_bytes(&path).await.0, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn complete_append_with_a_different_total_is_400_before_the_body() {
    let s = server().await;
    for version in 4..=8 {
        let url = start(
            &s,
            version,
            &format!("g7/a{version}.bin"),
            100,
            b"0123456789",
        )
        .await;
        let mut fields = vec![
            (V, version.to_string()),
            ("Upload-Offset", "10".into()),
            ("Upload-Complete", "?1".into()),
            ("Content-Length", "50".into()),
        ];
        if version >= 6 {
            fields.push(("Content-Type", PARTIAL.into()));
        }
        let resp = head_only(&s, "PATCH", path_of(&url), &fields).await;
        let (code, h) = parse_raw(&resp);
        assert_eq!(code, 400, "v{version}: {resp}");
        assert_eq!(raw_field(&h, "upload-offset"), Some("10"), "v{version}");
        assert_eq!(raw_field(&h, "upload-complete"), Some("?0"), "v{version}");
        let r = head(&s, version, &url).await;
        assert_eq!(field(r.headers(), "upload-offset"), Some("10"));
        assert_eq!(field(r.headers(), "upload-length"), Some("100"));
    }
}

#[tokio::test]
async fn complete_append_ending_short_of_the_length_is_400_not_409() {
    let s = server().await;
    for version in 4..=8 {
        let url = start(
            &s,
            version,
            &format!("g7/s{version}.bin"),
            100,
            b"0123456789",
        )
        .await;
        let ct = if version >= 6 {
            format!("Content-Type: {PARTIAL}\r\n")
        } else {
            String::new()
        };
        let headers = format!(
            "PATCH {} HTTP/1.1\r\nHost: x\r\n{V}: {version}\r\nUpload-Offset: 10\r\nUpload-Complete: ?1\r\n{ct}Transfer-Encoding: chunked\r\n\r\n",
            path_of(&url)
        );
        let resp = raw_request(&s, &headers, b"5\r\nhello\r\n0\r\n\r\n").await;
        let (code, h) = parse_raw(&resp);
        assert_eq!(code, 400, "v{version}: {resp}");
        assert_eq!(raw_field(&h, "upload-offset"), Some("15"), "v{version}");
        assert_eq!(raw_field(&h, "upload-complete"), Some("?0"), "v{version}");
    }
}

#[tokio::test]
async fn complete_append_records_its_length_when_none_is_known() {
    let s = server().await;
    for version in 4..=8 {
        let path = format!("g7/r{version}.bin");
        let r = req(&s, Method::POST, &unsized_url(&s, &path), version)
            .header("upload-complete", "?0")
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "v{version}");
        assert_eq!(field(r.headers(), "upload-length"), None);
        let url = format!("{}{}", s.base(), r.headers()["location"].to_str().unwrap());
        // `?1` with Content-Length 7 at offset 3: the length is 10. Once the server reads the
        // body (its 100 Continue), the client sends 2 bytes and goes away; the length stays
        // recorded.
        let ct = if version >= 6 {
            format!("Content-Type: {PARTIAL}\r\n")
        } else {
            String::new()
        };
        let headers = format!(
            "PATCH {} HTTP/1.1\r\nHost: x\r\n{V}: {version}\r\nUpload-Offset: 3\r\nUpload-Complete: ?1\r\n{ct}Content-Length: 7\r\nExpect: 100-continue\r\n\r\n",
            path_of(&url)
        );
        let mut c = s.connect().await;
        write(&mut c, headers.as_bytes()).await;
        let interim = read_until(&mut c, "\r\n\r\n").await;
        assert!(interim.starts_with("HTTP/1.1 100"), "v{version}: {interim}");
        write(&mut c, b"de").await;
        drop(c);
        let r = head(&s, version, &url).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "v{version}");
        assert_eq!(
            field(r.headers(), "upload-length"),
            Some("10"),
            "v{version}"
        );
        assert_complete(r.headers(), version, false);
        // A later indicator of another length is refused.
        let offset: u64 = field(r.headers(), "upload-offset")
            .unwrap()
            .parse()
            .unwrap();
        let r = patch(&s, version, &url, offset)
            .header("upload-complete", "?0")
            .header("upload-length", "11")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "v{version}");
    }
}

// G8 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn append_past_the_length_is_413_before_interop_6() {
    let s = server().await;
    for version in 3..=5 {
        let url = start(&s, version, &format!("g8/a{version}.bin"), 20, &[1; 10]).await;
        let (k, v) = completeness(version, false);
        let r = patch(&s, version, &url, 10)
            .header(k, v)
            .body(vec![2; 50])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "v{version}");
        assert_eq!(field(r.headers(), "upload-offset"), Some("10"));
    }
}

#[tokio::test]
async fn append_past_the_length_is_400_from_interop_6() {
    let s = server().await;
    for version in 6..=8 {
        let url = start(&s, version, &format!("g8/b{version}.bin"), 20, &[1; 10]).await;
        let r = patch(&s, version, &url, 10)
            .header("upload-complete", "?0")
            .body(vec![2; 50])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "v{version}");
        assert_eq!(field(r.headers(), "upload-offset"), Some("10"));
        // Refused from its Content-Length, before a byte was appended: the upload goes on.
        let r = head(&s, version, &url).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "v{version}");
        assert_eq!(field(r.headers(), "upload-offset"), Some("10"));
    }
}

#[tokio::test]
async fn streamed_append_past_the_length_is_400_and_invalidates_from_interop_7() {
    let s = server().await;
    for version in 6..=8 {
        let url = start(&s, version, &format!("g8/c{version}.bin"), 20, &[1; 10]).await;
        let headers = format!(
            "PATCH {} HTTP/1.1\r\nHost: x\r\n{V}: {version}\r\nUpload-Offset: 10\r\nUpload-Complete: ?0\r\nContent-Type: {PARTIAL}\r\nTransfer-Encoding: chunked\r\n\r\n",
            path_of(&url)
        );
        let body = format!("32\r\n{}\r\n0\r\n\r\n", "x".repeat(50));
        let resp = raw_request(&s, &headers, body.as_bytes()).await;
        assert_eq!(parse_raw(&resp).0, 400, "v{version}: {resp}");
        let r = head(&s, version, &url).await;
        if version == 6 {
            // -05 §6 rejects the request only.
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
            assert_eq!(field(r.headers(), "upload-offset"), Some("10"));
        } else {
            // -08..-11 §4.4.2: "marking the upload resource invalid".
            assert_eq!(r.status(), StatusCode::GONE, "v{version}");
        }
    }
}

#[tokio::test]
async fn append_past_max_size_without_a_length_is_413() {
    let s = server().await;
    for version in [3, 6, 8] {
        let path = format!("g8/m{version}.bin");
        let (k, v) = completeness(version, false);
        let r = req(&s, Method::POST, &unsized_url(&s, &path), version)
            .header(k, v)
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "v{version}");
        let url = format!("{}{}", s.base(), r.headers()["location"].to_str().unwrap());
        let r = patch(&s, version, &url, 3)
            .header(k, v)
            .body(vec![0; MAX as usize])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "v{version}");
        assert_eq!(
            head(&s, version, &url).await.status(),
            StatusCode::NO_CONTENT
        );
    }
}

// G9 ---------------------------------------------------------------------------------------

async fn options(s: &TestServer, version: Option<u32>) -> Response {
    let url = format!("{}{PREFIX}/resumable/g9/x.bin", s.base());
    let mut b = s.client.request(Method::OPTIONS, url);
    if let Some(v) = version {
        b = b.header(V, v.to_string());
    }
    let r = b.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    r
}

#[tokio::test]
async fn options_carry_upload_limit_from_interop_6() {
    let s = server().await;
    for version in 3..=5 {
        let r = options(&s, Some(version)).await;
        assert_eq!(field(r.headers(), "upload-limit"), None, "v{version}");
    }
    let r = options(&s, Some(6)).await;
    assert_eq!(
        field(r.headers(), "upload-limit"),
        Some(format!("max-size={MAX}, expires={TTL}").as_str())
    );
    for version in [Some(7), Some(8), None] {
        let r = options(&s, version).await;
        assert_eq!(
            field(r.headers(), "upload-limit"),
            Some(format!("max-size={MAX}, max-age={TTL}").as_str()),
            "{version:?}"
        );
    }
}

#[tokio::test]
async fn options_carry_accept_patch_in_interop_8() {
    let s = server().await;
    for version in [Some(8), None, Some(6), Some(7)] {
        let r = options(&s, version).await;
        assert_eq!(
            field(r.headers(), "accept-patch"),
            Some(PARTIAL),
            "{version:?}"
        );
    }
    for version in 3..=5 {
        let r = options(&s, Some(version)).await;
        assert_eq!(field(r.headers(), "accept-patch"), None, "v{version}");
    }
    // Other paths are not creation targets of the draft.
    let r = s
        .client
        .request(Method::OPTIONS, s.url("g9/x.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(field(r.headers(), "upload-limit"), None);
    assert_eq!(field(r.headers(), "accept-patch"), None);
}

// G10 --------------------------------------------------------------------------------------

#[tokio::test]
async fn upload_limit_per_version_without_append_size() {
    let s = server().await;
    for version in 3..=8 {
        let url = start(&s, version, &format!("g10/v{version}.bin"), 10, b"abc").await;
        let r = head(&s, version, &url).await;
        let limit = field(r.headers(), "upload-limit");
        let Some(limit) = limit else {
            assert!(version <= 5, "v{version}: no Upload-Limit");
            continue;
        };
        assert!(version >= 6, "v{version}: {limit}");
        let key = if version == 6 { "expires" } else { "max-age" };
        let prefix = format!("max-size={MAX}, {key}=");
        let rest = limit
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{limit}"));
        let left: u64 = rest.parse().unwrap();
        assert!((TTL - 5..=TTL).contains(&left), "v{version}: {limit}");
    }
}

// G11 --------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_append_content_type_is_415_with_accept_patch_from_interop_6() {
    let s = server().await;
    for version in 6..=8 {
        let url = start(&s, version, &format!("g11/v{version}.bin"), 10, b"abc").await;
        let r = req(&s, Method::PATCH, &url, version)
            .header("upload-offset", "3")
            .header("upload-complete", "?0")
            .header("content-type", "application/offset+octet-stream")
            .body("def")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "v{version}");
        assert_eq!(field(r.headers(), "accept-patch"), Some(PARTIAL));
    }
    // Before 6 the drafts name no media type: any is accepted.
    for version in 3..=5 {
        let url = start(&s, version, &format!("g11/v{version}.bin"), 10, b"abc").await;
        let (k, v) = completeness(version, false);
        let r = req(&s, Method::PATCH, &url, version)
            .header("upload-offset", "3")
            .header(k, v)
            .header("content-type", "application/offset+octet-stream")
            .body("def")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "v{version}");
    }
}

// Offsets (unchanged rule, problem body from 6) ---------------------------------------------

#[tokio::test]
async fn offset_mismatch_is_409_with_the_right_offset_in_every_version() {
    let s = server().await;
    for version in 3..=8 {
        let url = start(&s, version, &format!("off/v{version}.bin"), 10, b"abc").await;
        let (k, v) = completeness(version, false);
        let r = patch(&s, version, &url, 1)
            .header(k, v)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT, "v{version}");
        assert_eq!(field(r.headers(), "upload-offset"), Some("3"));
        assert_complete(r.headers(), version, false);
        if version >= 6 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                v["type"],
                "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
            );
            assert_eq!(v["expected-offset"], 3);
            assert_eq!(v["provided-offset"], 1);
        }
    }
}

// RFC 9530 ----------------------------------------------------------------------------------

#[tokio::test]
async fn append_with_a_wrong_content_digest_is_400_and_discarded() {
    use base64::Engine as _;
    use sha2::Digest;
    let s = server().await;
    let body = data(3_000, 21);
    let url = start(&s, 8, "dig/a.bin", body.len() as u64, &body[..1_000]).await;
    let field = |b: &[u8]| {
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b))
        )
    };
    let (k, v) = completeness(8, true);
    let append = |digest: String| {
        req(&s, Method::PATCH, &url, 8)
            .header(k, v)
            .header("upload-offset", "1000")
            .header("content-type", PARTIAL)
            .header("content-digest", digest)
            .body(body[1_000..].to_vec())
    };
    let r = append(field(&body[..10])).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = req(&s, Method::HEAD, &url, 8).send().await.unwrap();
    assert_eq!(r.headers()["upload-offset"], "1000");
    let r = append(field(&body[1_000..])).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(s.get_bytes("dig/a.bin").await.1, body);
}
