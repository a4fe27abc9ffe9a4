//! The fleet server's own metrics at `GET /metrics`. Counters are this
//! server's; the rollout gauges are read from the store at each scrape, so
//! every server on one database shows the same rollout.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::store::RolloutRow;

/// Label sets as name/value pairs: `[("direction", "sent")]`.
pub type Labels<const N: usize> = [(&'static str, &'static str); N];

#[derive(Clone, Default)]
pub struct FleetMetrics {
    /// transport websocket: accepted, refused (no upgrade), failed (upgrade
    /// lost); http: polled (each poll); tcp: over_capacity (closed at once).
    pub connections: Family<Labels<2>, Counter>,
    /// WebSocket sessions this server holds.
    pub connected: Gauge,
    /// received (agent messages taken in), sent (answers and pushes).
    pub messages: Family<Labels<1>, Counter>,
    /// Agent messages thrown away: too_large, header, decode, text,
    /// instance_uid, second_instance_uid.
    pub rejected: Family<Labels<1>, Counter>,
    /// Changes of an agent's remote config status, as reported.
    pub reports: Family<Labels<1>, Counter>,
    /// Agents returned to an earlier config: by rollout (a stopped
    /// rollout's step), by agent (its own health gate, as it reported).
    pub rollbacks: Family<Labels<1>, Counter>,
    /// Offers not pushed because an agent's queue was full (it gets them
    /// with its next answer).
    pub pushes_dropped: Counter,
    /// Offers pushed to agents held here because another server on the
    /// database announced them.
    pub peer_pushes: Counter,
    /// Store calls that failed (answered `inventory unavailable`).
    pub store_errors: Counter,
    pub rollout_step: Gauge,
    pub rollout_agents: Family<Labels<1>, Gauge>,
    pub rollout_stopped: Gauge,
}

impl FleetMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("fleet");
        r.register(
            "connections",
            "Agent connections by transport (websocket, http, tcp) and outcome (accepted, refused, failed, polled, over_capacity)",
            m.connections.clone(),
        );
        r.register(
            "connected_agents",
            "Agents holding a WebSocket session with this server",
            m.connected.clone(),
        );
        r.register(
            "messages",
            "OpAMP messages by direction: received, sent",
            m.messages.clone(),
        );
        r.register(
            "messages_rejected",
            "Agent messages thrown away, by reason: too_large, header, decode, text, instance_uid, second_instance_uid",
            m.rejected.clone(),
        );
        r.register(
            "remote_config_reports",
            "Changes of agents' remote config status as they report them: APPLYING, APPLIED, FAILED",
            m.reports.clone(),
        );
        r.register(
            "rollbacks",
            "Agents returned to an earlier config, by rollout (a stopped rollout's step) or by agent (its own health gate)",
            m.rollbacks.clone(),
        );
        r.register(
            "pushes_dropped",
            "Offers not pushed at once because the agent's queue was full (sent with its next answer)",
            m.pushes_dropped.clone(),
        );
        r.register(
            "peer_pushes",
            "Offers pushed to agents held here because another server on the database announced them",
            m.peer_pushes.clone(),
        );
        r.register(
            "store_errors",
            "Inventory calls that failed",
            m.store_errors.clone(),
        );
        r.register(
            "rollout_step",
            "The step the current rollout reached, in percent of its agents",
            m.rollout_step.clone(),
        );
        r.register(
            "rollout_agents",
            "Agents of the current rollout: offered, applied, failed, returned",
            m.rollout_agents.clone(),
        );
        r.register(
            "rollout_stopped",
            "1 when the current rollout stopped on failures",
            m.rollout_stopped.clone(),
        );
        m
    }

    pub fn connection(&self, transport: &'static str, outcome: &'static str) {
        self.connections
            .get_or_create(&[("transport", transport), ("outcome", outcome)])
            .inc();
    }

    pub fn message(&self, direction: &'static str) {
        self.messages
            .get_or_create(&[("direction", direction)])
            .inc();
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn report(&self, status: &'static str) {
        self.reports.get_or_create(&[("status", status)]).inc();
    }

    pub fn rolled_back(&self, by: &'static str, agents: u64) {
        self.rollbacks.get_or_create(&[("by", by)]).inc_by(agents);
    }

    pub fn rollout(&self, rollout: &RolloutRow) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.rollout_step.set(i64::from(rollout.step));
        for (state, agents) in [
            ("offered", rollout.offered),
            ("applied", rollout.applied),
            ("failed", rollout.failed),
            ("returned", rollout.returned),
        ] {
            self.rollout_agents
                .get_or_create(&[("state", state)])
                .set(gauge(agents));
        }
        self.rollout_stopped.set(i64::from(rollout.stopped));
    }
}
