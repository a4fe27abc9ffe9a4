//! `/metrics` series of the pod watch: what it holds, every failed or
//! refused request, object and pod, each re-list and each backoff.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `list` or `watch`.
    pub request: &'static str,
    /// `ok`, `gone`, `unauthorized`, `http_error`, `connect_error`,
    /// `stream_error`, `too_large`, `invalid`, `timeout`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`, `unknown`.
    pub event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Default)]
pub struct KubeMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub events: Family<EventLabels, Counter>,
    /// Full re-lists after the first: `gone` (410), `error`.
    pub relists: Family<ReasonLabels, Counter>,
    pub backoffs: Counter,
    /// Pods or watch lines not taken: `max_pods`, `too_large`, `invalid`.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Labels, containers or values left out of a pod for their size.
    pub fields_dropped: Counter,
    pub pods: Gauge,
    /// Of those, pods deleted and held for their grace period.
    pub deleted_pods: Gauge,
    pub containers: Gauge,
    /// Estimated heap bytes of the pod metadata held.
    pub bytes: Gauge,
}

impl KubeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("k8s");
        r.register(
            "requests",
            "Requests to the Kubernetes API server by kind and outcome",
            m.requests.clone(),
        );
        r.register(
            "watch_events",
            "Pod watch events received by type",
            m.events.clone(),
        );
        r.register(
            "relists",
            "Pod lists started again after the first (watch expired or failed)",
            m.relists.clone(),
        );
        r.register(
            "backoffs",
            "Waits before retrying the API server",
            m.backoffs.clone(),
        );
        r.register(
            "pods_rejected",
            "Pod objects not kept, by reason",
            m.rejected.clone(),
        );
        r.register(
            "fields_dropped",
            "Pod labels, containers or values left out for exceeding their caps",
            m.fields_dropped.clone(),
        );
        r.register("pods", "Pods of this node held", m.pods.clone());
        r.register(
            "deleted_pods",
            "Pods deleted from the API server whose metadata is still held for the grace period",
            m.deleted_pods.clone(),
        );
        r.register(
            "containers",
            "Container ids mapped to pods",
            m.containers.clone(),
        );
        r.register(
            "metadata_bytes",
            "Estimated heap bytes of the pod metadata held",
            m.bytes.clone(),
        );
        m
    }

    pub fn request(&self, request: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { request, outcome })
            .inc();
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }
}
