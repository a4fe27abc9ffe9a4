//! Remote-config outcomes as audit log records (the exporters' audit lane,
//! like the playbooks' decisions).

use std::sync::Arc;

use crate::{
    act::audit::now_unix_nano,
    signal::{AttrValue, LogRecord, Resource, Severity},
};

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A remote config that was applied (`reason` None) or not.
pub fn record(
    resource: &Arc<Resource>,
    config_hash: &[u8],
    outcome: Result<&[&str], &str>,
) -> LogRecord {
    let hash = hex(config_hash);
    let mut attributes = vec![
        ("selfops.config.hash", AttrValue::from(hash.as_str())),
        (
            "selfops.outcome",
            AttrValue::from(if outcome.is_ok() { "applied" } else { "failed" }),
        ),
    ];
    let (severity, event_name, body) = match outcome {
        Ok(keys) => {
            attributes.push((
                "selfops.config.keys",
                AttrValue::from(keys.join(",").as_str()),
            ));
            (
                Severity::Info,
                "selfops.config.applied",
                format!("remote config {hash} applied: {}", changed(keys)),
            )
        }
        Err(reason) => {
            attributes.push(("selfops.reason", AttrValue::from(reason)));
            (
                Severity::Warn,
                "selfops.config.failed",
                format!("remote config {hash} refused: {reason}"),
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

fn changed(keys: &[&str]) -> String {
    if keys.is_empty() {
        "no change".to_owned()
    } else {
        keys.join(", ")
    }
}
