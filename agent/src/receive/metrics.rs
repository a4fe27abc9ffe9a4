//! The receiver's self-metrics: every request and every item (span, metric
//! point, log record) counted by outcome.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::decode::Signal;

/// The `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// What became of a request (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to the pipeline (possibly with some items rejected).
    Accepted,
    /// The pipeline's queue was full: the client was told to retry.
    RefusedBackpressure,
    /// Malformed protobuf or JSON, or a bad compression stream.
    Invalid,
    /// Over `max_request_bytes`, as sent or decompressed.
    TooLarge,
    /// Unknown path, method, content type or encoding.
    Unsupported,
    /// The pipeline is closed (the agent is stopping).
    Shutdown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::RefusedBackpressure => "refused_backpressure",
            Outcome::Invalid => "invalid",
            Outcome::TooLarge => "too_large",
            Outcome::Unsupported => "unsupported",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// How a connection was attributed to a process (the `outcome` label of
/// `selfops_receiver_attributions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// The peer's process was found (its resource may still be unknown).
    Attributed,
    /// The peer socket is not on this host (or not in this network
    /// namespace).
    Remote,
    /// The lookup failed or took too long.
    Failed,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Attributed => "attributed",
            Attribution::Remote => "remote",
            Attribution::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub transport: &'static str,
    pub signal: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ItemLabels {
    pub signal: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: &'static str,
}

/// Cheap to clone: every field is a shared handle on the registered metric.
#[derive(Debug, Clone, Default)]
pub struct ReceiverMetrics {
    /// Export requests by transport, signal and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Spans, metric points and log records by outcome: `accepted`, or
    /// refused with their request (`refused_backpressure`, `shutdown`), or
    /// `rejected` one by one (reported back as partial success).
    pub items: Family<ItemLabels, Counter>,
    /// Connections by how they were attributed to a process.
    pub attributions: Family<OutcomeLabels, Counter>,
    /// Connections open now.
    pub connections: Family<TransportLabels, Gauge>,
    /// Connections closed at once because the connection limit was reached.
    pub connections_refused: Family<TransportLabels, Counter>,
}

impl ReceiverMetrics {
    /// Creates the metrics and registers them (the registry adds its
    /// `selfops` prefix and the `_total` suffix of counters).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "receiver_requests",
            "OTLP export requests received, by transport, signal and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "receiver_items",
            "Spans, metric points and log records received, by signal and outcome",
            metrics.items.clone(),
        );
        registry.register(
            "receiver_attributions",
            "Receiver connections by the outcome of attributing them to a process",
            metrics.attributions.clone(),
        );
        registry.register(
            "receiver_connections",
            "Receiver connections open",
            metrics.connections.clone(),
        );
        registry.register(
            "receiver_connections_refused",
            "Receiver connections closed at once because too many were open",
            metrics.connections_refused.clone(),
        );
        metrics
    }

    pub(crate) fn request(&self, transport: Transport, signal: Signal, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                transport: transport.as_str(),
                signal: signal.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A request for no known signal (an unknown path).
    pub(crate) fn unknown_request(&self, transport: Transport, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                transport: transport.as_str(),
                signal: "unknown",
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub(crate) fn items(&self, signal: Signal, outcome: &'static str, count: u64) {
        if count > 0 {
            self.items
                .get_or_create(&ItemLabels {
                    signal: signal.as_str(),
                    outcome,
                })
                .inc_by(count);
        }
    }

    pub(crate) fn attribution(&self, outcome: Attribution) {
        self.attributions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }
}
