//! The `control` section: where the OpAMP server is, how to reach it, and
//! which keys may sign a remote configuration. Local only.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::signed::TrustedKey;
/// TLS for `wss://` and `https://` (`opamp.tls`), shared with the exporters.
pub use crate::tls::TlsConfig;

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
    /// What the agent may cost and lose while a remote config is on trial;
    /// beyond it the config is rolled back.
    pub budget: Budget,
    /// Accept remote configs that change keys needing a restart (ring
    /// sizes, the telemetry address): the agent stops in order and
    /// re-executes itself on the new config, which is then on trial.
    pub allow_restart: bool,
    /// How the running config came about (set at start-up, not read from
    /// the file).
    #[serde(skip)]
    pub startup: Option<std::sync::Arc<super::restart::Startup>>,
}

/// The health gate's limits within a health window.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budget {
    /// CPU cores the agent may use, averaged over the window so far.
    pub cpu: f64,
    /// Resident memory the agent may hold: bytes, or a string with a
    /// `KiB`, `MiB` or `GiB` suffix.
    #[serde(deserialize_with = "bytes")]
    pub rss: u64,
    /// Events the kernel may fail to put in a full ring buffer within the
    /// window (all sensors together).
    pub ring_losses: u64,
    /// Share of the signals sent for export within the window that may be
    /// lost to export failures (0: none).
    pub export_failure_ratio: f64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            cpu: 1.0,
            rss: 256 << 20,
            ring_losses: 1000,
            export_failure_ratio: 0.0,
        }
    }
}

/// Largest CPU budget: more cores than any host this runs on.
const MAX_CPU_CORES: f64 = 1024.0;
/// Smallest RSS budget: below this the agent cannot run at all.
const MIN_RSS: u64 = 16 << 20;

impl Budget {
    fn validate(&self) -> Result<(), (String, String)> {
        if !(self.cpu > 0.0 && self.cpu <= MAX_CPU_CORES) {
            return Err((
                "budget.cpu".into(),
                format!(
                    "{} is not allowed: use cores, more than 0 and at most {MAX_CPU_CORES}",
                    self.cpu
                ),
            ));
        }
        if self.rss < MIN_RSS {
            return Err((
                "budget.rss".into(),
                format!("{} bytes is not allowed: use at least 16MiB", self.rss),
            ));
        }
        if !(0.0..=1.0).contains(&self.export_failure_ratio) {
            return Err((
                "budget.export_failure_ratio".into(),
                format!("{} is not allowed: use 0 to 1", self.export_failure_ratio),
            ));
        }
        Ok(())
    }
}

/// `1048576`, `"1048576"`, `"512KiB"`, `"256MiB"` or `"1GiB"`.
fn bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bytes {
        Number(u64),
        Text(String),
    }
    match Bytes::deserialize(deserializer)? {
        Bytes::Number(n) => Ok(n),
        Bytes::Text(text) => parse_bytes(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a size: use bytes, or a number with KiB, MiB or GiB"
            ))
        }),
    }
}

fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(1 << shift)
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

/// Health window when none is configured.
pub const DEFAULT_HEALTH_WINDOW: Duration = Duration::from_secs(30);

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            opamp: None,
            trusted_keys: Vec::new(),
            labels: BTreeMap::new(),
            health_window: DEFAULT_HEALTH_WINDOW,
            budget: Budget::default(),
            allow_restart: false,
            startup: None,
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
        self.budget.validate()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ControlConfig, String> {
        let config: ControlConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        config.validate().map_err(|(k, m)| format!("{k}: {m}"))?;
        Ok(config)
    }

    #[test]
    fn budget_defaults_sizes_and_errors() {
        let config = parse("{}").unwrap();
        assert_eq!(config.budget, Budget::default());
        assert!(!config.allow_restart);
        let config =
            parse("budget: { cpu: 0.5, rss: 512MiB, ring_losses: 0, export_failure_ratio: 0.01 }")
                .unwrap();
        assert_eq!(
            config.budget,
            Budget {
                cpu: 0.5,
                rss: 512 << 20,
                ring_losses: 0,
                export_failure_ratio: 0.01
            }
        );
        assert_eq!(
            parse("budget: { rss: 33554432 }").unwrap().budget.rss,
            32 << 20
        );
        assert_eq!(parse("budget: { rss: 1GiB }").unwrap().budget.rss, 1 << 30);
        for (yaml, wanted) in [
            ("budget: { cpu: 0 }", "budget.cpu: 0 is not allowed"),
            ("budget: { cpu: 2000 }", "budget.cpu: 2000 is not allowed"),
            (
                "budget: { rss: 1MiB }",
                "budget.rss: 1048576 bytes is not allowed",
            ),
            ("budget: { rss: 12 apples }", "is not a size"),
            ("budget: { rss: 99999999999GiB }", "is not a size"),
            (
                "budget: { export_failure_ratio: 1.5 }",
                "budget.export_failure_ratio: 1.5 is not allowed",
            ),
            ("budget: { cpus: 1 }", "unknown field"),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(err.contains(wanted), "{yaml}: {err}");
        }
    }
}
