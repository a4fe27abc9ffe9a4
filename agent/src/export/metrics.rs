//! The export pipeline's self-metrics: every signal it drops is counted here
//! with the reason.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// OTLP signal names, used as the `signal` label.
pub const TRACES: &str = "traces";
pub const METRICS: &str = "metrics";
pub const LOGS: &str = "logs";
pub const PROFILES: &str = "profiles";

/// Sink names, used as the `sink` label.
pub const SINK_FILE: &str = "file";
pub const SINK_OTLP: &str = "otlp";

/// Distinct exporter names the agent keeps over its life (names live as
/// long as the process, as metric labels do).
const MAX_SINK_NAMES: usize = 256;

/// `name` as a sink label that lives as long as the agent; `None` once
/// [`MAX_SINK_NAMES`] distinct names were taken.
pub fn sink_name(name: &str) -> Option<&'static str> {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    match name {
        SINK_FILE => return Some(SINK_FILE),
        SINK_OTLP => return Some(SINK_OTLP),
        _ => {}
    }
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = names.iter().find(|n| **n == name) {
        return Some(known);
    }
    if names.len() >= MAX_SINK_NAMES {
        return None;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(leaked);
    Some(leaked)
}

/// Why signals were dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The bounded queue (or a sink's batch queue) was full.
    QueueFull,
    /// The audit records' own queue (or a sink's audit queue) was full.
    AuditQueueFull,
    /// A non-retryable export error, or a file write error.
    ExportFailed,
    /// Retryable errors lasted longer than `retry_for`.
    RetriesExhausted,
    /// The TLS handshake with the collector failed (unknown issuer, name
    /// mismatch, client certificate missing or refused); not retried.
    Tls,
    /// The signal could not be encoded (malformed histogram, JSON error).
    EncodeFailed,
    /// The agent was shutting down and the flush deadline passed, or the
    /// signal was sent after shutdown began.
    Shutdown,
    /// A processor failed with `error_mode: propagate`: the batch of that
    /// signal is not exported.
    ProcessorError,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::AuditQueueFull => "audit_queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Tls => "tls",
            DropReason::EncodeFailed => "encode_failed",
            DropReason::Shutdown => "shutdown",
            DropReason::ProcessorError => "processor_error",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalSinkLabels {
    pub signal: &'static str,
    pub sink: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalReasonLabels {
    pub signal: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: &'static str,
}

/// Cheap to clone: every field is a shared handle on the registered metric.
#[derive(Debug, Clone, Default)]
pub struct ExportMetrics {
    /// Signals (spans, histogram data points, log records) a sink accepted.
    pub signals: Family<SignalSinkLabels, Counter>,
    /// Signals lost, by reason. After batching, a signal lost by two sinks
    /// counts once per sink.
    pub dropped: Family<SignalReasonLabels, Counter>,
    /// Export attempts repeated after a retryable error.
    pub retries: Family<SinkLabels, Counter>,
    /// Batches a sink finally failed to deliver (one per request or write).
    pub failures: Family<SinkLabels, Counter>,
    /// Signals waiting in the bounded queue.
    pub queue_length: Gauge,
    /// New `export` sections taken live (sinks rebuilt or retargeted).
    pub reconfigured: Counter,
    /// Rotated-out export files the file sink could not delete.
    pub file_delete_failures: Counter,
}

impl ExportMetrics {
    /// Creates the metrics and registers them (the registry adds its
    /// `selfops` prefix and the `_total` suffix of counters).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "export_signals",
            "Signals accepted by an export sink",
            metrics.signals.clone(),
        );
        registry.register(
            "export_dropped",
            "Signals dropped by the export pipeline, by reason",
            metrics.dropped.clone(),
        );
        registry.register(
            "export_retries",
            "Export requests retried after a retryable error",
            metrics.retries.clone(),
        );
        registry.register(
            "export_failures",
            "Export batches a sink failed to deliver",
            metrics.failures.clone(),
        );
        registry.register(
            "export_queue_length",
            "Signals waiting in the export queue",
            metrics.queue_length.clone(),
        );
        registry.register(
            "export_reconfigurations",
            "Export configurations applied live (sinks rebuilt behind the same queue)",
            metrics.reconfigured.clone(),
        );
        registry.register(
            "export_file_delete_failures",
            "Rotated-out export files that could not be deleted (each stays until the next rotation replaces it)",
            metrics.file_delete_failures.clone(),
        );
        metrics
    }

    pub fn exported(&self, signal: &'static str, sink: &'static str, n: u64) {
        if n > 0 {
            self.signals
                .get_or_create(&SignalSinkLabels { signal, sink })
                .inc_by(n);
        }
    }

    pub fn drop_signals(&self, signal: &'static str, reason: DropReason, n: u64) {
        if n > 0 {
            self.dropped
                .get_or_create(&SignalReasonLabels {
                    signal,
                    reason: reason.as_str(),
                })
                .inc_by(n);
        }
    }

    pub fn retry(&self, sink: &'static str) {
        self.retries.get_or_create(&SinkLabels { sink }).inc();
    }

    pub fn failure(&self, sink: &'static str) {
        self.failures.get_or_create(&SinkLabels { sink }).inc();
    }

    /// Reads a counter (tests and diagnostics).
    pub fn dropped_count(&self, signal: &'static str, reason: DropReason) -> u64 {
        self.dropped
            .get_or_create(&SignalReasonLabels {
                signal,
                reason: reason.as_str(),
            })
            .get()
    }

    pub fn exported_count(&self, signal: &'static str, sink: &'static str) -> u64 {
        self.signals
            .get_or_create(&SignalSinkLabels { signal, sink })
            .get()
    }
}
