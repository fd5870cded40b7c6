//! Built-in TLS: a CA made in the test, HTTP/1.1 and HTTP/2 on one port by ALPN (real curl
//! with `--cacert`, and a rustls client), certificate reload without dropping connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: tempfile::TempDir,
}

impl TestCa {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Sluice test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        Self { issuer, dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issue a leaf for localhost and 127.0.0.1 into `cert.pem`/`key.pem` (replacing them);
    /// returns the leaf's DER.
    fn issue(&self, cn: &str) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // Written next to each other and renamed into place, as certbot does.
        let d = self.dir.path();
        std::fs::write(d.join("cert.tmp"), cert.pem()).unwrap();
        std::fs::write(d.join("key.tmp"), key.serialize_pem()).unwrap();
        std::fs::rename(d.join("key.tmp"), d.join("key.pem")).unwrap();
        std::fs::rename(d.join("cert.tmp"), d.join("cert.pem")).unwrap();
        cert.der().to_vec()
    }

    fn tls_config(&self) -> sluice::config::TlsListenerConfig {
        sluice::config::TlsListenerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: self.dir.path().join("cert.pem"),
            key: self.dir.path().join("key.pem"),
        }
    }
}

fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(addr: std::net::SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Tls {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(T, tokio_rustls::TlsConnector::from(cfg).connect(name, tcp))
        .await
        .unwrap()
        .unwrap()
}

fn peer_cert(c: &Tls) -> Vec<u8> {
    c.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 GET on an open connection; returns the response head and body text.
async fn get_on(c: &mut Tls, path: &str) -> String {
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn curl(args: &[&str]) -> Option<std::process::Output> {
    std::process::Command::new("curl").args(args).output().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_h2_by_alpn() {
    let ca = TestCa::new();
    ca.issue("first");
    let tls = ca.tls_config();
    let s = TestServer::start_with(|c| c.tls = vec![tls]).await;
    let addr = s.tls_addrs[0];
    // ALPN picks the protocol the client offers.
    let h2 = connect(addr, client_config(&ca.ca_file(), &[b"h2", b"http/1.1"])).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h1 = connect(addr, client_config(&ca.ca_file(), &[b"http/1.1"])).await;
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(get_on(&mut h1, "/health").await.starts_with("HTTP/1.1 200"));

    // A real client: curl verifies the certificate against the test CA.
    let Some(v) = curl(&["--version"]) else {
        eprintln!("curl not installed; skipping the curl part");
        return;
    };
    assert!(v.status.success());
    let body = data(100_000, 4);
    let src = s.dir.path().join("src.bin");
    std::fs::write(&src, &body).unwrap();
    let base = format!("https://localhost:{}", addr.port());
    let put = s.put_v1("tls/a.bin", body.len() as u64);
    let put = put.replacen(&s.base(), &base, 1);
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let ca_file = ca.ca_file();
    let ca_arg = ca_file.to_str().unwrap();
    let out = curl(&[
        "-sS",
        "--resolve",
        &resolve,
        "--cacert",
        ca_arg,
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        "-T",
        src.to_str().unwrap(),
        &put,
    ])
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201 1.1", "{out:?}");
    let got = s.dir.path().join("got.bin");
    let url = s.url("tls/a.bin").replacen(&s.base(), &base, 1);
    let out = curl(&[
        "-sS",
        "--resolve",
        &resolve,
        "--cacert",
        ca_arg,
        "--http2",
        "-o",
        got.to_str().unwrap(),
        "-w",
        "%{http_code} %{http_version}",
        &url,
    ])
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2", "{out:?}");
    assert_eq!(std::fs::read(&got).unwrap(), body);
    // Without the CA, curl refuses the certificate.
    let out = curl(&["-sS", "--resolve", &resolve, "-o", "/dev/null", &url]).unwrap();
    assert!(!out.status.success());
    drop(h2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_is_served_without_dropping_connections() {
    let ca = TestCa::new();
    let first = ca.issue("first");
    let tls = ca.tls_config();
    let s = TestServer::start_with(|c| {
        c.tls = vec![tls];
        c.server.tls_check_interval = Duration::from_millis(50);
    })
    .await;
    let addr = s.tls_addrs[0];
    let cfg = client_config(&ca.ca_file(), &[b"http/1.1"]);
    let mut old = connect(addr, cfg.clone()).await;
    assert_eq!(peer_cert(&old), first);
    assert!(get_on(&mut old, "/health")
        .await
        .starts_with("HTTP/1.1 200"));

    // A certbot renewal replaces the files: new handshakes get the new certificate (polled,
    // bounded), the open connection goes on.
    let second = ca.issue("second");
    let mut renewed = false;
    for _ in 0..200 {
        if peer_cert(&connect(addr, cfg.clone()).await) == second {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(renewed, "new certificate never served");
    assert!(get_on(&mut old, "/health")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(
        s.metric("sluice_tls_certificate_reloads_total{result=\"ok\"}")
            .await
            >= 1.0
    );

    // A broken renewal is refused; the running certificate stays.
    std::fs::write(ca.dir.path().join("cert.pem"), "not a certificate").unwrap();
    let mut refused = false;
    for _ in 0..200 {
        if s.metric("sluice_tls_certificate_reloads_total{result=\"error\"}")
            .await
            >= 1.0
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused, "broken certificate not noticed");
    assert_eq!(peer_cert(&connect(addr, cfg).await), second);
}

#[tokio::test]
async fn silent_client_on_the_tls_port_is_closed() {
    let ca = TestCa::new();
    ca.issue("first");
    let tls = ca.tls_config();
    let s = TestServer::start_with(|c| {
        c.tls = vec![tls];
        c.server.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = tokio::net::TcpStream::connect(s.tls_addrs[0])
        .await
        .unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = tokio::time::timeout(T, c.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(buf.is_empty());
    assert_eq!(
        s.client
            .get(format!("{}/health", s.base()))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn silent_client_after_the_handshake_is_closed() {
    let ca = TestCa::new();
    ca.issue("first");
    let tls = ca.tls_config();
    let s = TestServer::start_with(|c| {
        c.tls = vec![tls];
        c.server.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    for alpn in [
        &[b"h2".as_slice()][..],
        &[b"http/1.1".as_slice()][..],
        &[][..],
    ] {
        let mut c = connect(s.tls_addrs[0], client_config(&ca.ca_file(), alpn)).await;
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(T, c.read_to_end(&mut buf))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?} open for {:?}",
            alpn,
            started.elapsed()
        );
    }
}
