//! The SDK client, built by hand (no `aws-config`): nothing is read from the environment but
//! the access key when the configuration names none.

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};

use super::invalid;
use crate::config::{KeyConfig, S3Config};
use crate::storage::StorageError;

/// The SDK client, built by hand: endpoint, region, static credentials, path style, the ring
/// TLS provider, checksums only where an operation requires them (many S3-compatible stores
/// reject the SDK's default trailing checksums), a time limit per operation.
pub(super) fn build_client(cfg: &S3Config) -> Result<aws_sdk_s3::Client, StorageError> {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let (id, secret) = credentials(cfg.credentials.as_ref())?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .operation_timeout(cfg.timeout)
        .build();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&cfg.endpoint)
        .region(Region::new(cfg.region.clone()))
        .credentials_provider(Credentials::new(id, secret, None, None, "sluice-config"))
        .force_path_style(cfg.path_style)
        .http_client(http)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .timeout_config(timeouts)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(conf))
}

/// The access key: from the configuration (the secret inline, in a file or an environment
/// variable, like the key ring) or `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
pub(super) fn credentials(k: Option<&KeyConfig>) -> Result<(String, String), StorageError> {
    let env = |var: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid(format!("S3 credentials: {var} is not set")))
    };
    let Some(k) = k else {
        return Ok((env("AWS_ACCESS_KEY_ID")?, env("AWS_SECRET_ACCESS_KEY")?));
    };
    if k.id.is_empty() {
        return Err(invalid("storage.s3.credentials needs an id".to_owned()));
    }
    let secret = if let Some(s) = &k.secret {
        s.clone()
    } else if let Some(path) = &k.secret_file {
        std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("S3 secret: cannot read {}: {e}", path.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_owned()
    } else if let Some(var) = &k.secret_env {
        env(var)?
    } else {
        return Err(invalid(
            "storage.s3.credentials: no secret given".to_owned(),
        ));
    };
    if secret.is_empty() {
        return Err(invalid(
            "storage.s3.credentials: the secret is empty".to_owned(),
        ));
    }
    Ok((k.id.clone(), secret))
}
