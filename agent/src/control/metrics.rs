//! Control-plane counters at /metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::gate::Check;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    pub check: &'static str,
}

#[derive(Clone, Default)]
pub struct ControlMetrics {
    /// Connection attempts: connected, failed, closed (by the server).
    pub connections: Family<OutcomeLabel, Counter>,
    pub connected: Gauge,
    pub messages: Family<DirectionLabel, Counter>,
    /// Server messages thrown away: too_large, header, decode, text.
    pub rejected: Family<ReasonLabel, Counter>,
    /// Waits the server asked for: unavailable, http_503, http_429.
    pub retries: Family<ReasonLabel, Counter>,
    /// Remote configs by outcome: accepted (on trial), failed (refused),
    /// applied (healthy through the window), rolled_back.
    pub applies: Family<OutcomeLabel, Counter>,
    /// 1 while a remote config is within its health window.
    pub on_trial: Gauge,
    /// Trials rolled back, by the check that failed.
    pub gate_failures: Family<CheckLabel, Counter>,
}

impl ControlMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "opamp_connections",
            "OpAMP connection attempts by outcome: connected, failed, closed",
            m.connections.clone(),
        );
        registry.register(
            "opamp_connected",
            "1 while the agent is connected to its OpAMP server",
            m.connected.clone(),
        );
        registry.register(
            "opamp_messages",
            "OpAMP messages by direction: sent, received",
            m.messages.clone(),
        );
        registry.register(
            "opamp_messages_rejected",
            "OpAMP server messages thrown away, by reason: too_large, header, decode, text",
            m.rejected.clone(),
        );
        registry.register(
            "opamp_retries",
            "Waits the OpAMP server asked for, by reason: unavailable, http_503, http_429",
            m.retries.clone(),
        );
        registry.register(
            "remote_config_applies",
            "Remote configs by outcome: accepted (on trial), failed (refused), applied (healthy through the health window), rolled_back",
            m.applies.clone(),
        );
        registry.register(
            "remote_config_on_trial",
            "1 while a remote config is within its health window",
            m.on_trial.clone(),
        );
        registry.register(
            "health_gate_failures",
            "Remote configs rolled back by the health gate, by the check that failed: tasks, ring_losses, export, cpu, rss",
            m.gate_failures.clone(),
        );
        for check in Check::ALL {
            // Zero-valued series from the start, so a scrape shows every check.
            let _ = m.gate_failures.get_or_create(&CheckLabel {
                check: check.name(),
            });
        }
        m
    }

    pub fn gate_failure(&self, check: Check) {
        self.gate_failures
            .get_or_create(&CheckLabel {
                check: check.name(),
            })
            .inc();
    }

    pub fn connection(&self, outcome: &'static str) {
        self.connections
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn message(&self, direction: &'static str) {
        self.messages
            .get_or_create(&DirectionLabel { direction })
            .inc();
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn retry(&self, reason: &'static str) {
        self.retries.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn apply(&self, outcome: &'static str) {
        self.applies.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
