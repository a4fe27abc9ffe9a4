//! rustls client configuration shared by the control plane (`wss://`,
//! `https://`) and the OTLP exporters (`https://`): the system's roots
//! unless `ca_file`, a client certificate for mTLS, and the name checked in
//! the server's certificate.

use std::{path::Path, path::PathBuf, sync::Arc};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use serde::Deserialize;

/// TLS settings of a client: the system roots unless `ca_file`; mTLS with
/// `cert_file` and `key_file`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the certificate authorities trusted instead of the
    /// system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mTLS).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name checked in the server certificate (default: the endpoint's host).
    pub server_name: Option<String>,
}

/// Why a client configuration could not be built. `key` names the setting
/// (below the `tls` section) at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("not given, and the system store has no usable root certificate")]
    NoRoots,
    #[error("give both `cert_file` and `key_file`, or neither")]
    HalfPair { key: &'static str },
    #[error("{name:?} is not a DNS name or an IP address")]
    ServerName { name: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// The setting at fault, if one is: `ca_file`, `cert_file`, `key_file`
    /// or `server_name`.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            TlsError::File { key, .. } | TlsError::HalfPair { key } => Some(key),
            TlsError::NoRoots => Some("ca_file"),
            TlsError::ServerName { .. } => Some("server_name"),
            TlsError::Rustls(_) => None,
        }
    }

    /// `<section>.<key>: <why>`, e.g. `export.otlp.tls.ca_file: …`.
    pub fn keyed(&self, section: &str) -> (String, String) {
        let key = match self.key() {
            Some(key) => format!("{section}.{key}"),
            None => section.to_owned(),
        };
        (key, self.to_string())
    }

    /// As `keyed`, in one line.
    pub fn describe(&self, section: &str) -> String {
        let (key, message) = self.keyed(section);
        format!("{key}: {message}")
    }
}

fn file_error(key: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The PEM certificates in `path`; at least one.
pub(crate) fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".to_owned());
    }
    Ok(certs)
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_certificates(path).map_err(|e| file_error(key, path, e))
}

/// A client configuration offering `alpn` (e.g. `h2`, `http/1.1`).
pub fn client_config(tls: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in certificates("ca_file", path)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error("ca_file", path, e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for err in &native.errors {
                tracing::warn!(%err, "reading the system's root certificates");
            }
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(TlsError::NoRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("cert_file", cert)?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("key_file", key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| file_error("key_file", key, e))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(TlsError::HalfPair { key: "key_file" }),
        (None, Some(_)) => return Err(TlsError::HalfPair { key: "cert_file" }),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name checked in the server's certificate: `server_name` if given,
/// else `host` (an IPv6 literal without its brackets).
pub fn server_name(tls: &TlsConfig, host: &str) -> Result<ServerName<'static>, TlsError> {
    let name = tls.server_name.clone().unwrap_or_else(|| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    });
    ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName { name })
}
