//! TLS with rustls (ring provider; no OpenSSL): a certificate chain and key per listener, ALPN
//! for h2 and http/1.1 (both served on the TLS port), rustls's safe defaults (TLS 1.2 and 1.3,
//! forward-secret AEAD suites only).
//!
//! Certificates are reloaded without dropping connections: the resolver hands each new
//! handshake the current key, and [`CertStore::reload`] swaps it in. Reloads happen on SIGHUP
//! and when the files change (a certbot renewal), found by polling their modification times.
//! A file that does not parse, or a key that does not match its certificate, is refused with a
//! log line and the running certificate stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

/// One listener's certificate and key, reloadable.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The file versions last tried (loaded, or refused: a broken renewal is reported once,
    /// not at every check).
    tried: Mutex<(Stamp, Stamp)>,
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// What identifies a version of a file: device, inode, size and modification time (a
/// renewal replaced with the old timestamp, `cp -p` or `touch -r`, is still a new inode).
type Stamp = Option<(u64, u64, u64, SystemTime)>;

// Certificate files are configuration: watched for renewal here, not stored data.
#[allow(clippy::disallowed_methods)]
fn stamp(p: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = p.metadata().ok()?;
    Some((m.dev(), m.ino(), m.size(), m.modified().ok()?))
}

fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| file_err(cert_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert_path, e))?;
    if certs.is_empty() {
        return Err(file_err(cert_path, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| file_err(key_path, e))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| file_err(key_path, e))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match()
        .map_err(|e| file_err(key_path, format!("does not match the certificate: {e}")))?;
    Ok(ck)
}

impl CertStore {
    /// Load the chain and key (refused if they do not parse or do not match).
    pub fn open(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let stamps = (stamp(cert_path), stamp(key_path));
        let ck = load(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from_pointee(ck),
            tried: Mutex::new(stamps),
        }))
    }

    /// Load the files again and use them for new handshakes. On error the running
    /// certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = (stamp(&self.cert_path), stamp(&self.key_path));
        if let Ok(mut t) = self.tried.lock() {
            *t = stamps;
        }
        let ck = load(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(ck));
        Ok(())
    }

    /// Reload if either file changed since the last attempt. `Ok(true)` when reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        let changed = self.tried.lock().map(|t| *t != now).unwrap_or(true);
        if !changed {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// The certificate path (for logs).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server configuration of a listener: safe defaults, ALPN h2 then http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
