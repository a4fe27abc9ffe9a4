//! Every decision of the loop as an OTLP log record (logs.jsonl and OTLP)
//! and in counters at /metrics.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::{
    engine::{Decision, Outcome},
    limiter::Key,
    playbook::Effect,
};
use crate::signal::{AttrValue, Attributes, LogRecord, Resource, Severity};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub playbook: String,
    pub outcome: &'static str,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacketLabels {
    pub target: String,
    pub verdict: &'static str,
}

pub struct AuditMetrics {
    /// Packets the kernel limiter passed or dropped, per key in force
    /// (copied from the kernel's counters every tick).
    pub packets: Family<PacketLabels, Gauge>,
    /// Packets the kernel limiter saw that no key metered, by reason
    /// (unmatched, not_ip, truncated, contended, expired, allowlisted).
    pub unmetered: Family<ReasonLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub active: Gauge,
    /// Signal crossing its level → limit live in the kernel.
    pub latency: Histogram,
    /// Sampling ticks of the loop.
    pub samples: Counter,
}

impl AuditMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            packets: Family::default(),
            unmetered: Family::default(),
            decisions: Family::default(),
            active: Gauge::default(),
            latency: Histogram::new([0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0]),
            samples: Counter::default(),
        };
        registry.register(
            "playbook_decisions",
            "Playbook decisions by outcome: applied, expired, lifted, refused, failed, withdrawn, adopted",
            m.decisions.clone(),
        );
        registry.register(
            "playbook_actions_active",
            "Actions in force",
            m.active.clone(),
        );
        registry.register(
            "playbook_latency_seconds",
            "From a signal crossing its level to the limit live in the kernel",
            m.latency.clone(),
        );
        registry.register("signal_samples", "Signal sampling ticks", m.samples.clone());
        registry.register(
            "limiter_packets",
            "Packets the kernel limiter passed or dropped, per key in force",
            m.packets.clone(),
        );
        registry.register(
            "limiter_unmetered_packets",
            "Packets the kernel limiter passed or dropped without a key deciding, by reason: unmatched, not_ip, truncated (passed unparsed), contended (dropped), expired (key past its deadline), allowlisted",
            m.unmetered.clone(),
        );
        m
    }

    /// Drops the per-key series of keys no longer in force.
    pub fn forget_packets(&self, key: Key) {
        for verdict in ["passed", "dropped"] {
            self.packets.remove(&PacketLabels {
                target: key.to_string(),
                verdict,
            });
        }
    }

    pub fn record_packets(&self, key: Key, passed: u64, dropped: u64) {
        for (verdict, count) in [("passed", passed), ("dropped", dropped)] {
            self.packets
                .get_or_create(&PacketLabels {
                    target: key.to_string(),
                    verdict,
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

pub fn now_unix_nano() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The log record and counters for one decision.
pub fn record(decision: &Decision, metrics: &AuditMetrics, resource: &Arc<Resource>) -> LogRecord {
    metrics
        .decisions
        .get_or_create(&DecisionLabels {
            playbook: decision.playbook.clone(),
            outcome: decision.outcome.label(),
            dry_run: decision.dry_run,
        })
        .inc();
    if let Some(latency) = decision.latency
        && !decision.dry_run
    {
        metrics.latency.observe(latency.as_secs_f64());
    }
    let (verb, target) = match decision.effect {
        Effect::Limit { key, rate, .. } if rate.per_second == 0 => ("block", key.to_string()),
        Effect::Limit { key, rate, .. } => ("throttle", format!("{key} to {}/s", rate.per_second)),
        Effect::Lift { key } => ("lift", key.to_string()),
    };
    let mode = if decision.dry_run { " (dry-run)" } else { "" };
    let (severity, body) = match &decision.outcome {
        Outcome::Applied => (Severity::Warn, format!("{verb} {target}{mode}")),
        Outcome::Expired => (Severity::Info, format!("{verb} {target} expired{mode}")),
        Outcome::Lifted => (Severity::Info, format!("lifted {target}{mode}")),
        Outcome::Withdrawn => (
            Severity::Info,
            format!("{verb} {target} withdrawn: agent stopping{mode}"),
        ),
        Outcome::Adopted(left) => (
            Severity::Warn,
            format!(
                "{verb} {target} adopted from an earlier run: {:.1} s left{mode}",
                left.as_secs_f64()
            ),
        ),
        Outcome::Refused(why) => (
            Severity::Warn,
            format!("{verb} {target} refused: {why}{mode}"),
        ),
        Outcome::Failed(err) => (
            Severity::Error,
            format!("{verb} {target} failed: {err}{mode}"),
        ),
    };
    let mut attributes: Attributes = vec![
        (
            "selfops.playbook",
            AttrValue::from(decision.playbook.as_str()),
        ),
        ("selfops.action", AttrValue::from(verb)),
        ("selfops.outcome", AttrValue::from(decision.outcome.label())),
        ("selfops.dry_run", AttrValue::from(decision.dry_run)),
        (
            "selfops.signal",
            AttrValue::from(decision.series.to_string()),
        ),
        (
            "selfops.ttl_seconds",
            AttrValue::from(decision.ttl.as_secs_f64()),
        ),
    ];
    match decision.effect {
        Effect::Limit { key, rate, .. } => {
            attributes.push(("selfops.target", AttrValue::from(key.to_string())));
            attributes.push((
                "selfops.rate_per_second",
                AttrValue::from(rate.per_second as i64),
            ));
        }
        Effect::Lift { key } => {
            attributes.push(("selfops.target", AttrValue::from(key.to_string())))
        }
    }
    if let Some(value) = decision.value {
        attributes.push(("selfops.signal.value", AttrValue::from(value)));
    }
    if let Some(compared) = decision.compared {
        attributes.push(("selfops.signal.compared", AttrValue::from(compared)));
    }
    if let Some(latency) = decision.latency {
        attributes.push((
            "selfops.latency_seconds",
            AttrValue::from(latency.as_secs_f64()),
        ));
    }
    if let Outcome::Adopted(left) = decision.outcome {
        attributes.push((
            "selfops.remaining_ttl_seconds",
            AttrValue::from(left.as_secs_f64()),
        ));
    }
    if let Outcome::Refused(why) | Outcome::Failed(why) = &decision.outcome {
        attributes.push(("selfops.reason", AttrValue::from(why.as_str())));
    }
    LogRecord {
        time_unix_nano: now_unix_nano(),
        severity,
        event_name: match decision.outcome {
            Outcome::Applied => "selfops.action.applied",
            Outcome::Expired => "selfops.action.expired",
            Outcome::Lifted => "selfops.action.lifted",
            Outcome::Withdrawn => "selfops.action.withdrawn",
            Outcome::Refused(_) => "selfops.action.refused",
            Outcome::Failed(_) => "selfops.action.failed",
            Outcome::Adopted(_) => "selfops.action.adopted",
        },
        body,
        attributes,
        resource: resource.clone(),
    }
}
