//! The `control` section: where the OpAMP server is, how to reach it, and
//! which keys may sign a remote configuration. Local only.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::signed::TrustedKey;

/// Largest message accepted from a server unless configured otherwise.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The OpAMP connection; no remote configuration without it.
    pub opamp: Option<OpampConfig>,
    /// Ed25519 public keys (base64 of the 32 raw bytes) whose signature a
    /// remote configuration must carry.
    pub trusted_keys: Vec<TrustedKey>,
    /// Reported to the server as non-identifying attributes (what fleet
    /// rollouts select on).
    pub labels: BTreeMap<String, String>,
    /// How long a remote config must run healthy before it is reported
    /// APPLIED and kept as the last-known-good config; unhealthy within it,
    /// it is rolled back.
    #[serde(with = "humantime_serde")]
    pub health_window: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpampConfig {
    /// `ws://` or `wss://` (WebSocket), `http://` or `https://` (polling).
    pub endpoint: String,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Extra request headers (e.g. authorization).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Heartbeat (WebSocket) or polling (HTTP) interval when the server
    /// offers none.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Largest message accepted from the server.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

/// TLS for `wss://` and `https://`: the system roots unless `ca_file`;
/// mTLS with `cert_file` and `key_file`.
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

/// Health window when none is configured.
pub const DEFAULT_HEALTH_WINDOW: Duration = Duration::from_secs(30);

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            opamp: None,
            trusted_keys: Vec::new(),
            labels: BTreeMap::new(),
            health_window: DEFAULT_HEALTH_WINDOW,
        }
    }
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(30)
}

fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}

/// How the endpoint is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    WebSocket { tls: bool },
    Http { tls: bool },
}

impl OpampConfig {
    pub fn scheme(&self) -> Option<Scheme> {
        let (scheme, _) = self.endpoint.split_once("://")?;
        match scheme {
            "ws" => Some(Scheme::WebSocket { tls: false }),
            "wss" => Some(Scheme::WebSocket { tls: true }),
            "http" => Some(Scheme::Http { tls: false }),
            "https" => Some(Scheme::Http { tls: true }),
            _ => None,
        }
    }
}

impl ControlConfig {
    /// The key (below `control.`) and why, for the first problem found.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.health_window > Duration::from_secs(24 * 3600) {
            return Err(("health_window".into(), "use 0s to 24h".into()));
        }
        let Some(opamp) = &self.opamp else {
            return Ok(());
        };
        if opamp.scheme().is_none() {
            return Err((
                "opamp.endpoint".into(),
                format!(
                    "{:?} is not allowed: use a ws://, wss://, http:// or https:// URL",
                    opamp.endpoint
                ),
            ));
        }
        if opamp.heartbeat_interval < Duration::from_secs(1)
            || opamp.heartbeat_interval > Duration::from_secs(24 * 3600)
        {
            return Err(("opamp.heartbeat_interval".into(), "use 1s to 24h".into()));
        }
        if !(4096..=1 << 30).contains(&opamp.max_message_bytes) {
            return Err((
                "opamp.max_message_bytes".into(),
                format!(
                    "{} is not allowed: use 4096 to 1073741824",
                    opamp.max_message_bytes
                ),
            ));
        }
        let tls = &opamp.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err((
                "opamp.tls".into(),
                "give both `cert_file` and `key_file`, or neither".into(),
            ));
        }
        if self.trusted_keys.is_empty() {
            return Err((
                "trusted_keys".into(),
                "give at least one key: remote configs are accepted only when signed".into(),
            ));
        }
        Ok(())
    }
}
