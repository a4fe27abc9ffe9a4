//! Remote-config decisions as audit log records (the exporters' audit lane,
//! like the playbooks' decisions): every offer accepted or refused, every
//! trial confirmed or rolled back.

use std::sync::Arc;

use crate::{
    act::audit::now_unix_nano,
    signal::{AttrValue, LogRecord, Resource, Severity},
};

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What became of a remote config.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Verified and applied; its health window begins.
    Accepted(&'a [&'a str]),
    /// Not believed or not allowed; nothing changed.
    Refused(&'a str),
    /// Healthy for the whole window: now the last-known-good config.
    Applied(&'a [&'a str]),
    /// Unhealthy within the window: the last-known-good config is back.
    RolledBack(&'a str),
}

impl Outcome<'_> {
    /// Also the `outcome` label of `selfops_remote_config_applies_total`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Accepted(_) => "accepted",
            Outcome::Refused(_) => "failed",
            Outcome::Applied(_) => "applied",
            Outcome::RolledBack(_) => "rolled_back",
        }
    }
}

pub fn record(resource: &Arc<Resource>, config_hash: &[u8], outcome: Outcome<'_>) -> LogRecord {
    let hash = hex(config_hash);
    let mut attributes = vec![
        ("selfops.config.hash", AttrValue::from(hash.as_str())),
        ("selfops.outcome", AttrValue::from(outcome.name())),
    ];
    let (severity, event_name, body) = match outcome {
        Outcome::Accepted(keys) => {
            attributes.push(keys_attribute(keys));
            (
                Severity::Info,
                "selfops.config.accepted",
                format!("remote config {hash} accepted, on trial: {}", changed(keys)),
            )
        }
        Outcome::Applied(keys) => {
            attributes.push(keys_attribute(keys));
            (
                Severity::Info,
                "selfops.config.applied",
                format!("remote config {hash} applied: {}", changed(keys)),
            )
        }
        Outcome::Refused(reason) => {
            attributes.push(("selfops.reason", AttrValue::from(reason)));
            (
                Severity::Warn,
                "selfops.config.failed",
                format!("remote config {hash} refused: {reason}"),
            )
        }
        Outcome::RolledBack(reason) => {
            attributes.push(("selfops.reason", AttrValue::from(reason)));
            (
                Severity::Warn,
                "selfops.config.rolled_back",
                format!("remote config {hash} rolled back: {reason}"),
            )
        }
    };
    LogRecord {
        time_unix_nano: now_unix_nano(),
        severity,
        event_name,
        body,
        attributes,
        resource: resource.clone(),
    }
}

fn keys_attribute(keys: &[&str]) -> (&'static str, AttrValue) {
    (
        "selfops.config.keys",
        AttrValue::from(keys.join(",").as_str()),
    )
}

fn changed(keys: &[&str]) -> String {
    if keys.is_empty() {
        "no change".to_owned()
    } else {
        keys.join(", ")
    }
}
