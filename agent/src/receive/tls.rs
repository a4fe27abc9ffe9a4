//! Server TLS for both listeners (rustls with ring), mutual TLS when a
//! client CA is configured.

use std::{path::Path, sync::Arc};

use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::config::ServerTlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("receivers.otlp.tls.{key} {path}: {message}")]
    File {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("receivers.otlp.tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("receivers.otlp.tls.client_ca_file: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn file_error(key: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    crate::tls::pem_certificates(path).map_err(|e| file_error(key, path, e))
}

/// The rustls configuration for one listener; `alpn` is what it offers
/// (`h2` for gRPC, `http/1.1` for OTLP/HTTP).
pub fn server_config(tls: &ServerTlsConfig, alpn: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("cert_file", &tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| file_error("key_file", &tls.key_file, e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("client_ca_file", path)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error("client_ca_file", path, e))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}
