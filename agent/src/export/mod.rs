//! Exporters: OTLP (gRPC, HTTP/protobuf) and the JSON-lines file sink.
//!
//! Wiring (in the agent):
//!
//! ```ignore
//! let (export, pipeline) = ExportPipeline::start(&config.export, &config.data_dir,
//!                                                metrics.registry_mut())?;
//! let pipeline = tokio::spawn(pipeline);
//! export.send(signal);                               // from any task; never waits
//! export.send_audit(record);                         // audit records: their own lane
//! export.shutdown(Duration::from_millis(900)).await; // on SIGTERM: flush, bounded
//! let _ = pipeline.await;
//! ```
//!
//! Flow: `ExportHandle::send` try-sends into a bounded queue
//! (`export.queue_capacity`; full means dropped and counted). The batcher
//! cuts a batch at `export.batch_size` signals or `export.batch_timeout`
//! after its first signal, converts it (spans grouped by resource, kept as
//! they are until a sink needs OTLP messages; histogram points into
//! `ResourceMetrics`, log records into `ResourceLogs`, scope `selfops`),
//! and hands it to each
//! sink's own small queue: the file sink (`traces.jsonl`, `metrics.jsonl`,
//! `logs.jsonl`, OTLP/JSON, rotated to `.1` at 256 MiB)
//! and the OTLP sink (gRPC or HTTP/protobuf, over TLS for `https://`, gzip,
//! headers, timeout, retries with backoff for at most `retry_for`). Every signal lost on the
//! way is counted in `selfops_export_dropped_total{signal,reason}`. Audit
//! records (`ExportHandle::send_audit`) take a lane of their own through the
//! batcher and each sink (see `queue`), counted apart when it overflows. With
//! `file: false` and no `otlp` there is no sink and batches are discarded.
//! A new `export` section from a remote config rebuilds the sinks behind
//! the same queue, handing what the OTLP sink holds to its new target (see
//! `sinks`).

mod agent_spans;
#[cfg(test)]
mod audit_lane_tests;
mod connect;
mod convert;
mod json_file;
#[cfg(test)]
mod logs_otlp_tests;
pub(crate) mod metrics;
pub(crate) mod otlp_grpc;
mod otlp_http;
mod queue;
#[cfg(test)]
mod received_tests;
pub(crate) mod retry;
pub(crate) mod sink;
mod sinks;
mod span_json;
#[cfg(test)]
mod span_json_tests;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
mod trace_json;
#[cfg(test)]
mod trace_json_tests;

use std::{future::Future, path::Path, time::Duration};

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

pub use agent_spans::AgentSpans;
pub use convert::{OtlpBatch, SCOPE_NAME, SCOPE_VERSION, convert, resource_to_proto};
pub use json_file::{
    DEFAULT_ROTATE_BYTES, LOGS_FILE, METRICS_FILE, TRACES_FILE, encode_json_line, encode_trace_line,
};
pub use metrics::{DropReason, ExportMetrics, sink_name};
pub use queue::ExportHandle;

use crate::{
    config::ExportConfig,
    pipeline::{ExportersConfig, PipelineMetrics, Pipelines, PipelinesConfig, ProcessorsConfig},
};

/// Sent as (the start of) the User-Agent of OTLP requests.
pub const USER_AGENT: &str = concat!("selfops/", env!("CARGO_PKG_VERSION"));

/// Why the pipeline could not start. Each message names the config key.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export.otlp.endpoint: {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// A TLS setting that cannot be used; `key` is the full key
    /// (`export.otlp.tls.ca_file`, …).
    #[error("{key}: {message}")]
    Tls { key: String, message: String },
    #[error(
        "export.otlp.tls: set, but the endpoint {endpoint:?} is plain http://; \
         use https:// for TLS, or remove `tls`"
    )]
    TlsWithPlainEndpoint { endpoint: String },
    #[error("export.otlp.headers.{name}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
}

/// The parts of the pipeline around the export queue: named exporters,
/// processors, one pipeline per signal, and batches the OTLP receiver
/// accepted.
#[derive(Debug, Default)]
pub struct Graph {
    pub exporters: ExportersConfig,
    pub processors: ProcessorsConfig,
    pub pipelines: PipelinesConfig,
    /// Read only while every sink has room, so a full pipeline pushes back
    /// on the senders instead of dropping what they sent.
    pub received: Option<mpsc::Receiver<OtlpBatch>>,
}

/// Internal knobs with sensible defaults (tests shorten them).
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Size at which the `.jsonl` files are rotated to `.1`.
    pub rotate_bytes: u64,
    /// First retry wait (doubled per retry, with jitter) and its cap.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Converted batches each sink may have waiting; beyond that a batch is
    /// dropped for that sink (`reason="queue_full"`).
    pub sink_queue_batches: usize,
    /// Audit records waiting to be batched, and audit batches each sink may
    /// have waiting: their own lane, so a span burst cannot crowd them out
    /// (`reason="audit_queue_full"` beyond it).
    pub audit_queue_capacity: usize,
    pub sink_audit_batches: usize,
    /// Profile requests (one per profiler interval) waiting for the
    /// batcher; beyond it an interval is not exported.
    pub profile_queue_requests: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            rotate_bytes: DEFAULT_ROTATE_BYTES,
            initial_backoff: retry::Backoff::INITIAL,
            max_backoff: retry::Backoff::MAX,
            sink_queue_batches: 8,
            audit_queue_capacity: 1024,
            sink_audit_batches: 64,
            profile_queue_requests: 2,
        }
    }
}

/// Whether `config` can run: what starting the exporters would refuse.
pub fn check(config: &ExportConfig) -> Result<(), ExportError> {
    match &config.otlp {
        Some(otlp) => sinks::otlp_target(otlp, &ExportOptions::default()).map(|_| ()),
        None => Ok(()),
    }
}

/// Whether one OTLP exporter's settings can run.
pub fn check_otlp(config: &crate::config::OtlpConfig) -> Result<(), ExportError> {
    sinks::otlp_target(config, &ExportOptions::default()).map(|_| ())
}

/// Starts the export pipeline.
pub struct ExportPipeline;

impl ExportPipeline {
    /// Validates the configuration, registers the export metrics in
    /// `registry`, and returns the handle and the pipeline's future, which
    /// the caller spawns on the tokio runtime. The future ends after
    /// `ExportHandle::shutdown` (or once every handle is dropped) when the
    /// queue is drained.
    pub fn start(
        config: &ExportConfig,
        data_dir: &Path,
        registry: &mut Registry,
    ) -> Result<(ExportHandle, impl Future<Output = ()> + Send + 'static), ExportError> {
        Self::start_with(config, data_dir, registry, ExportOptions::default())
    }

    pub fn start_with(
        config: &ExportConfig,
        data_dir: &Path,
        registry: &mut Registry,
        options: ExportOptions,
    ) -> Result<(ExportHandle, impl Future<Output = ()> + Send + 'static), ExportError> {
        Self::start_live(config, data_dir, registry, options, None)
    }

    /// As `start_with`, and the sinks follow each new `export` section
    /// `updates` brings (see `sinks`): the queue, and what waits in it,
    /// stay.
    pub fn start_live(
        config: &ExportConfig,
        data_dir: &Path,
        registry: &mut Registry,
        options: ExportOptions,
        updates: Option<watch::Receiver<ExportConfig>>,
    ) -> Result<(ExportHandle, impl Future<Output = ()> + Send + 'static), ExportError> {
        Self::start_graph(
            config,
            data_dir,
            registry,
            options,
            updates,
            Graph::default(),
        )
    }

    /// As `start_live`, with the processors, named exporters and received
    /// batches of `graph`.
    pub fn start_graph(
        config: &ExportConfig,
        data_dir: &Path,
        registry: &mut Registry,
        options: ExportOptions,
        updates: Option<watch::Receiver<ExportConfig>>,
        graph: Graph,
    ) -> Result<(ExportHandle, impl Future<Output = ()> + Send + 'static), ExportError> {
        let metrics = ExportMetrics::register(registry);
        let pipelines = Pipelines::new(
            &graph.processors,
            &graph.exporters,
            &graph.pipelines,
            PipelineMetrics::register(registry),
            metrics.clone(),
        )?;
        let channels = queue::channels(
            [
                config.queue_capacity,
                options.audit_queue_capacity,
                options.profile_queue_requests,
            ],
            metrics.clone(),
        );
        let sinks = sinks::SinkSet::new(
            config,
            &graph.exporters,
            data_dir.to_owned(),
            options,
            metrics.clone(),
            channels.deadline.clone(),
        )?;
        let mut handle = channels.handle;
        handle.otlp_exporters = sinks.otlp_running();
        let batcher = queue::Batcher {
            signals: channels.signals,
            audit: channels.audit,
            profiles: channels.profiles,
            batch_size: config.batch_size.max(1),
            batch_timeout: config.batch_timeout,
            deadline: channels.deadline,
            sinks,
            metrics,
            updates,
            pipelines,
            received: graph.received,
        };
        let done = channels.done;
        let pipeline = async move {
            // Ends when the batcher has closed the sinks' queues and they
            // have emptied them.
            batcher.run().await;
            let _ = done.send(true);
        };
        Ok((handle, pipeline))
    }
}
