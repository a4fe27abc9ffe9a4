//! The receiver's configuration, shaped like the Collector's
//! `receivers: otlp: protocols: grpc/http`, but flatter.
//!
//! ```yaml
//! receivers:
//!   otlp:
//!     grpc: { endpoint: 127.0.0.1:4317 }
//!     http: { endpoint: 127.0.0.1:4318 }
//!     max_request_bytes: 4194304
//!     tls: { cert_file: server.pem, key_file: server.key, client_ca_file: ca.pem }
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use serde::Deserialize;

/// Default gRPC endpoint (the OTLP/gRPC port, loopback only).
pub const DEFAULT_GRPC_ENDPOINT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 4317);
/// Default HTTP endpoint (the OTLP/HTTP port, loopback only).
pub const DEFAULT_HTTP_ENDPOINT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 4318);
/// Default limit of one request body, compressed or not: 4 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;

/// `receivers.otlp`: OTLP received from instrumented applications on the
/// node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Whether the receiver runs at all.
    pub enabled: bool,
    /// OTLP/gRPC (`TraceService`, `MetricsService`, `LogsService`). Absent:
    /// listens on 127.0.0.1:4317; `null`: no gRPC listener.
    pub grpc: Option<ProtocolConfig>,
    /// OTLP/HTTP (`POST /v1/traces`, `/v1/metrics`, `/v1/logs`; protobuf or
    /// JSON). Absent: listens on 127.0.0.1:4318; `null`: no HTTP listener.
    pub http: Option<ProtocolConfig>,
    /// Largest request body accepted, in bytes, both as sent and once
    /// decompressed; beyond it the request is refused (HTTP 413, gRPC
    /// `RESOURCE_EXHAUSTED` from the message size check).
    pub max_request_bytes: usize,
    /// TLS on both listeners; plain TCP when absent.
    pub tls: Option<ServerTlsConfig>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            grpc: Some(ProtocolConfig {
                endpoint: DEFAULT_GRPC_ENDPOINT,
            }),
            http: Some(ProtocolConfig {
                endpoint: DEFAULT_HTTP_ENDPOINT,
            }),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            tls: None,
        }
    }
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolConfig {
    /// Address and port to listen on, e.g. `127.0.0.1:4317` or
    /// `[::]:4318` (every address: remote peers get no process
    /// attribution).
    pub endpoint: SocketAddr,
}

/// Server TLS, and mutual TLS when `client_ca_file` is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain the server presents (leaf first).
    pub cert_file: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, every client must present a
    /// certificate signed by one of them (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_config_defaults_and_overrides() {
        let config: ReceiverConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(config, ReceiverConfig::default());
        let config: ReceiverConfig = serde_yaml_ng::from_str(
            "grpc: null\nhttp: { endpoint: '[::1]:14318' }\nmax_request_bytes: 1024\n\
             tls: { cert_file: a.pem, key_file: a.key }\n",
        )
        .unwrap();
        assert_eq!(config.grpc, None);
        assert_eq!(
            config.http.map(|h| h.endpoint.to_string()).as_deref(),
            Some("[::1]:14318")
        );
        assert_eq!(config.max_request_bytes, 1024);
        assert_eq!(config.tls.and_then(|t| t.client_ca_file), None);
        assert!(serde_yaml_ng::from_str::<ReceiverConfig>("grpcc: {}").is_err());
    }
}
