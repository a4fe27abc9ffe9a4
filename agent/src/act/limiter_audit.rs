//! Audit records about the limiter itself rather than a playbook's
//! decision: how each interface was hooked (or why not), and keys found in
//! the kernel at start that no playbook accounts for.

use std::sync::Arc;

use super::{
    audit::{AuditMetrics, DecisionLabels, now_unix_nano},
    limiter::Key,
};
use crate::signal::{AttrValue, LogRecord, Resource, Severity};

/// What became of one configured interface at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Hooked as planned (`how`: the hook's description).
    Attached(String),
    /// Hooked another way than configured, and why (another program's XDP
    /// on it: tc instead).
    Fallback { how: String, why: String },
    /// Not hooked, and why.
    Failed(String),
}

impl HookOutcome {
    fn label(&self) -> &'static str {
        match self {
            HookOutcome::Attached(_) => "attached",
            HookOutcome::Fallback { .. } => "fallback",
            HookOutcome::Failed(_) => "failed",
        }
    }
}

pub fn hook_record(interface: &str, outcome: &HookOutcome, resource: &Arc<Resource>) -> LogRecord {
    let (severity, body, reason) = match outcome {
        HookOutcome::Attached(how) => (
            Severity::Info,
            format!("limiter on {interface}: {how}"),
            None,
        ),
        HookOutcome::Fallback { how, why } => (
            Severity::Warn,
            format!("limiter on {interface}: {how} ({why})"),
            Some(why.as_str()),
        ),
        HookOutcome::Failed(why) => (
            Severity::Error,
            format!("limiter not on {interface}: {why}"),
            Some(why.as_str()),
        ),
    };
    let mut attributes = vec![
        ("selfops.interface", AttrValue::from(interface)),
        ("selfops.outcome", AttrValue::from(outcome.label())),
    ];
    if let HookOutcome::Attached(how) | HookOutcome::Fallback { how, .. } = outcome {
        attributes.push(("selfops.hook", AttrValue::from(how.as_str())));
    }
    if let Some(why) = reason {
        attributes.push(("selfops.reason", AttrValue::from(why)));
    }
    LogRecord {
        time_unix_nano: now_unix_nano(),
        severity,
        event_name: match outcome {
            HookOutcome::Failed(_) => "selfops.limiter.hook_failed",
            _ => "selfops.limiter.hooked",
        },
        body,
        attributes,
        resource: resource.clone(),
    }
}

/// A key left in the kernel by an earlier run and removed at start.
pub fn orphan_record(
    key: Key,
    reason: &str,
    metrics: &AuditMetrics,
    resource: &Arc<Resource>,
) -> LogRecord {
    metrics
        .decisions
        .get_or_create(&DecisionLabels {
            playbook: String::new(),
            outcome: "withdrawn",
            dry_run: false,
        })
        .inc();
    LogRecord {
        time_unix_nano: now_unix_nano(),
        severity: Severity::Info,
        event_name: "selfops.action.withdrawn",
        body: format!("{key} from an earlier run withdrawn: {reason}"),
        attributes: vec![
            ("selfops.target", AttrValue::from(key.to_string())),
            ("selfops.outcome", AttrValue::from("withdrawn")),
            ("selfops.reason", AttrValue::from(reason)),
        ],
        resource: resource.clone(),
    }
}
