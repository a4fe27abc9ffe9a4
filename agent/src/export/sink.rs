//! The sinks' loops. Each sink has its own small queue of converted batches,
//! so a collector that is down (and being retried) never stalls the file.

use std::{path::PathBuf, time::Duration};

use tokio::sync::watch;

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    profiles::v1development::ExportProfilesServiceResponse, trace::v1::ExportTraceServiceResponse,
};

use super::{
    json_file::{FileSink, LineOutcome},
    metrics::{DropReason, ExportMetrics, LOGS, METRICS, PROFILES, SINK_FILE, TRACES},
    otlp_grpc::{GrpcExporter, GrpcSettings},
    otlp_http::HttpExporter,
    queue::SinkInput,
    retry::{Deadline, Delivery, RetryPolicy, TLS_KIND, WarnLimiter, with_retries},
};

/// How often one kind of export error may be logged at warn.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A response's partial success: (items rejected, server message).
pub trait PartialSuccess {
    fn partial_success(self) -> (u64, String);
}

impl PartialSuccess for ExportTraceServiceResponse {
    fn partial_success(self) -> (u64, String) {
        self.partial_success.map_or((0, String::new()), |p| {
            (
                u64::try_from(p.rejected_spans).unwrap_or(0),
                p.error_message,
            )
        })
    }
}

impl PartialSuccess for ExportMetricsServiceResponse {
    fn partial_success(self) -> (u64, String) {
        self.partial_success.map_or((0, String::new()), |p| {
            (
                u64::try_from(p.rejected_data_points).unwrap_or(0),
                p.error_message,
            )
        })
    }
}

impl PartialSuccess for ExportLogsServiceResponse {
    fn partial_success(self) -> (u64, String) {
        self.partial_success.map_or((0, String::new()), |p| {
            (
                u64::try_from(p.rejected_log_records).unwrap_or(0),
                p.error_message,
            )
        })
    }
}

impl PartialSuccess for ExportProfilesServiceResponse {
    fn partial_success(self) -> (u64, String) {
        self.partial_success.map_or((0, String::new()), |p| {
            (
                u64::try_from(p.rejected_profiles).unwrap_or(0),
                p.error_message,
            )
        })
    }
}

/// Batches written in one trip to the blocking pool at most.
const FILE_GROUP_MAX: usize = 16;

/// Writes each batch to the `.jsonl` files on the blocking pool. Profiles
/// never reach it: their pprof and SVG files are written as the profiler
/// hands an interval over (see `profile::outputs`).
///
/// Batches that queued while the last ones were written go together in one
/// trip to the blocking pool. Each trip waits twice for a thread to be
/// scheduled; on a saturated machine those waits, paid once per batch,
/// were what let the sink's queue overflow, not the writing itself.
pub async fn run_file_sink(
    dir: PathBuf,
    rotate_bytes: u64,
    mut batches: SinkInput,
    metrics: ExportMetrics,
) {
    let mut warn = WarnLimiter::new(WARN_EVERY);
    let new_sink = || FileSink::new(&dir, rotate_bytes, metrics.file_delete_failures.clone());
    let mut sink = Some(new_sink());
    while let Some(first) = batches.recv().await {
        let mut group = vec![first];
        while group.len() < FILE_GROUP_MAX {
            match batches.try_recv() {
                Some(batch) => group.push(batch),
                None => break,
            }
        }
        let counts: Vec<[u64; 3]> = group
            .iter()
            .map(|b| [b.span_count, b.point_count, b.log_count])
            .collect();
        // After a panic in a write the old state is gone; start afresh.
        let mut state = sink.take().unwrap_or_else(new_sink);
        let written = tokio::task::spawn_blocking(move || {
            // The batches are released here too, off the runtime's threads.
            let outcomes: Vec<_> = group
                .into_iter()
                .map(|batch| state.write_batch(&batch))
                .collect();
            (state, outcomes)
        })
        .await;
        match written {
            Ok((state, outcomes)) => {
                sink = Some(state);
                for ([spans, points, logs], outcome) in counts.into_iter().zip(outcomes) {
                    record_file(&metrics, &mut warn, &dir, TRACES, spans, outcome.traces);
                    record_file(&metrics, &mut warn, &dir, METRICS, points, outcome.metrics);
                    record_file(&metrics, &mut warn, &dir, LOGS, logs, outcome.logs);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "export file write task failed");
                for [spans, points, logs] in counts {
                    for (signal, n) in [(TRACES, spans), (METRICS, points), (LOGS, logs)] {
                        if n > 0 {
                            metrics.failure(SINK_FILE);
                            metrics.drop_signals(signal, DropReason::ExportFailed, n);
                        }
                    }
                }
            }
        }
    }
}

fn record_file(
    metrics: &ExportMetrics,
    warn: &mut WarnLimiter,
    dir: &std::path::Path,
    signal: &'static str,
    n: u64,
    outcome: LineOutcome,
) {
    match outcome {
        LineOutcome::Empty => {}
        LineOutcome::Written => metrics.exported(signal, SINK_FILE, n),
        LineOutcome::EncodeFailed(err) => {
            metrics.drop_signals(signal, DropReason::EncodeFailed, n);
            if warn.should_warn("file encode") {
                tracing::warn!(signal, error = %err, "cannot encode OTLP/JSON; batch dropped");
            }
        }
        LineOutcome::WriteFailed(err) => {
            metrics.failure(SINK_FILE);
            metrics.drop_signals(signal, DropReason::ExportFailed, n);
            let kind = format!("file {:?}", err.kind());
            if warn.should_warn(&kind) {
                tracing::warn!(
                    signal, dir = %dir.display(), error = %err,
                    "cannot write export file; batch dropped (further errors of this kind logged at debug for a minute)"
                );
            } else {
                tracing::debug!(signal, error = %err, "cannot write export file");
            }
        }
    }
}

/// The OTLP transport, chosen by `export.otlp.protocol`.
#[derive(Debug, Clone)]
pub enum OtlpSettings {
    Grpc(Box<GrpcSettings>),
    Http(Box<HttpExporter>),
}

/// Where and how the OTLP sink sends; a remote config may replace it while
/// the sink runs.
#[derive(Debug, Clone)]
pub struct OtlpTarget {
    pub settings: OtlpSettings,
    pub policy: RetryPolicy,
}

enum OtlpClient {
    Grpc(Box<GrpcExporter>),
    Http(Box<HttpExporter>),
}

impl OtlpClient {
    /// Needs the tokio runtime (the gRPC channel).
    fn connect(settings: OtlpSettings) -> Self {
        match settings {
            OtlpSettings::Grpc(settings) => OtlpClient::Grpc(Box::new(settings.connect())),
            OtlpSettings::Http(exporter) => OtlpClient::Http(exporter),
        }
    }
}

/// The signal kinds a batch may carry, sent one request each.
#[derive(Debug, Clone, Copy)]
enum Part {
    Traces,
    Metrics,
    Logs,
    Profiles,
}

impl Part {
    const ALL: [Part; 4] = [Part::Traces, Part::Metrics, Part::Logs, Part::Profiles];

    /// The signal name and how many of it the batch holds, if any.
    fn in_batch(self, batch: &super::OtlpBatch) -> Option<(&'static str, u64)> {
        match self {
            Part::Traces => (batch.traces.is_some() || batch.agent_spans.is_some())
                .then_some((TRACES, batch.span_count)),
            Part::Metrics => batch.metrics.as_ref().map(|_| (METRICS, batch.point_count)),
            Part::Logs => batch.logs.as_ref().map(|_| (LOGS, batch.log_count)),
            Part::Profiles => batch
                .profiles
                .as_ref()
                .map(|_| (PROFILES, batch.profile_count)),
        }
    }
}

/// Sends each batch to the collector, retrying as the policy allows. When
/// `target` changes the client is rebuilt, and a request still in flight
/// or waiting to be retried goes to the new target from the start: a swap
/// may send it twice, never lose it. Once `target`'s sender is gone (the
/// OTLP exporter was removed) the sink still drains its queue to the last
/// target, one try per request, then ends.
pub async fn run_otlp_sink(
    name: &'static str,
    mut target: watch::Receiver<OtlpTarget>,
    deadline: Deadline,
    mut batches: SinkInput,
    metrics: ExportMetrics,
) {
    let mut current = target.borrow_and_update().clone();
    let mut client = OtlpClient::connect(current.settings.clone());
    let mut warn = WarnLimiter::new(WARN_EVERY);
    let mut removed = false;
    while let Some(batch) = batches.recv().await {
        for part in Part::ALL {
            let Some((signal, n)) = part.in_batch(&batch) else {
                continue;
            };
            if target.has_changed().unwrap_or(false) {
                (current, client) = retarget(&mut target);
            }
            let delivery = loop {
                tokio::select! {
                    delivery = send(name, &client, &current.policy, &deadline, &metrics, &batch, part) => {
                        break delivery;
                    }
                    changed = target.changed(), if !removed => match changed {
                        Ok(()) => {
                            tracing::debug!(signal, n, "OTLP target changed: the request goes to the new one");
                            (current, client) = retarget(&mut target);
                        }
                        // The exporter was removed: what it still holds gets
                        // one try each, so that a dead endpoint rolled back
                        // from is not retried (and counted failing) for long.
                        Err(_) => {
                            removed = true;
                            current.policy.retry_for = Duration::ZERO;
                        }
                    },
                }
            };
            record_otlp(&metrics, name, &mut warn, signal, n, delivery);
        }
    }
}

/// The new target and a client for it.
fn retarget(target: &mut watch::Receiver<OtlpTarget>) -> (OtlpTarget, OtlpClient) {
    let current = target.borrow_and_update().clone();
    let client = OtlpClient::connect(current.settings.clone());
    tracing::info!("OTLP exporter rebuilt from the new config");
    (current, client)
}

/// One part of `batch`, with retries.
async fn send(
    name: &'static str,
    client: &OtlpClient,
    policy: &RetryPolicy,
    deadline: &Deadline,
    metrics: &ExportMetrics,
    batch: &super::OtlpBatch,
    part: Part,
) -> Delivery {
    match (client, part) {
        (OtlpClient::Grpc(grpc), Part::Traces) => match batch.traces_request() {
            Some(request) => {
                with_retries(policy, deadline, metrics, name, |timeout| {
                    grpc.export_traces(&request, timeout)
                })
                .await
            }
            None => nothing_to_send(),
        },
        (OtlpClient::Grpc(grpc), Part::Metrics) => match &batch.metrics {
            Some(request) => {
                with_retries(policy, deadline, metrics, name, |timeout| {
                    grpc.export_metrics(request, timeout)
                })
                .await
            }
            None => nothing_to_send(),
        },
        (OtlpClient::Grpc(grpc), Part::Logs) => match &batch.logs {
            Some(request) => {
                with_retries(policy, deadline, metrics, name, |timeout| {
                    grpc.export_logs(request, timeout)
                })
                .await
            }
            None => nothing_to_send(),
        },
        (OtlpClient::Grpc(grpc), Part::Profiles) => match &batch.profiles {
            Some(request) => {
                with_retries(policy, deadline, metrics, name, |timeout| {
                    grpc.export_profiles(request, timeout)
                })
                .await
            }
            None => nothing_to_send(),
        },
        (OtlpClient::Http(http), Part::Traces) => {
            post::<ExportTraceServiceResponse, _>(
                http,
                http.traces_uri(),
                batch.traces_request().as_deref(),
                policy,
                deadline,
                metrics,
                name,
            )
            .await
        }
        (OtlpClient::Http(http), Part::Metrics) => {
            post::<ExportMetricsServiceResponse, _>(
                http,
                http.metrics_uri(),
                batch.metrics.as_ref(),
                policy,
                deadline,
                metrics,
                name,
            )
            .await
        }
        (OtlpClient::Http(http), Part::Logs) => {
            post::<ExportLogsServiceResponse, _>(
                http,
                http.logs_uri(),
                batch.logs.as_ref(),
                policy,
                deadline,
                metrics,
                name,
            )
            .await
        }
        (OtlpClient::Http(http), Part::Profiles) => {
            post::<ExportProfilesServiceResponse, _>(
                http,
                http.profiles_uri(),
                batch.profiles.as_ref(),
                policy,
                deadline,
                metrics,
                name,
            )
            .await
        }
    }
}

/// One request over OTLP/HTTP: encoded once, posted with retries.
async fn post<R, M>(
    http: &HttpExporter,
    uri: &hyper::Uri,
    request: Option<&M>,
    policy: &RetryPolicy,
    deadline: &Deadline,
    metrics: &ExportMetrics,
    name: &'static str,
) -> Delivery
where
    R: PartialSuccess + prost::Message + Default,
    M: prost::Message,
{
    let Some(request) = request else {
        return nothing_to_send();
    };
    match http.encode(request) {
        Ok(body) => {
            with_retries(policy, deadline, metrics, name, |timeout| {
                http.post::<R>(uri, body.clone(), timeout)
            })
            .await
        }
        Err(err) => encode_failed(err),
    }
}

/// `Part::in_batch` said the part is there; never reached.
fn nothing_to_send() -> Delivery {
    Delivery::Delivered {
        rejected: 0,
        message: String::new(),
    }
}

/// Marks an encoding failure; `record_otlp` counts it as `encode_failed`.
fn encode_failed(err: std::io::Error) -> Delivery {
    Delivery::Failed {
        kind: ENCODE_KIND.to_owned(),
        detail: err.to_string(),
    }
}

const ENCODE_KIND: &str = "encode";

pub fn record_otlp(
    metrics: &ExportMetrics,
    sink: &'static str,
    warn: &mut WarnLimiter,
    signal: &'static str,
    n: u64,
    delivery: Delivery,
) {
    match delivery {
        Delivery::Delivered { rejected, message } => {
            let rejected = rejected.min(n);
            metrics.exported(signal, sink, n - rejected);
            if rejected > 0 {
                metrics.drop_signals(signal, DropReason::ExportFailed, rejected);
                if warn.should_warn("partial success") {
                    tracing::warn!(signal, rejected, %message, "collector rejected part of a batch");
                }
            }
        }
        Delivery::Failed { kind, detail } => {
            metrics.failure(sink);
            let reason = match kind.as_str() {
                ENCODE_KIND => DropReason::EncodeFailed,
                TLS_KIND => DropReason::Tls,
                _ => DropReason::ExportFailed,
            };
            metrics.drop_signals(signal, reason, n);
            log_failure(
                warn,
                signal,
                n,
                &kind,
                &detail,
                "not retryable; batch dropped",
            );
        }
        Delivery::RetriesExhausted { kind, detail } => {
            metrics.failure(sink);
            metrics.drop_signals(signal, DropReason::RetriesExhausted, n);
            log_failure(
                warn,
                signal,
                n,
                &kind,
                &detail,
                "retries exhausted; batch dropped",
            );
        }
        Delivery::Shutdown => {
            metrics.failure(sink);
            metrics.drop_signals(signal, DropReason::Shutdown, n);
            tracing::debug!(signal, n, "shutdown deadline passed; batch dropped");
        }
    }
}

fn log_failure(
    warn: &mut WarnLimiter,
    signal: &'static str,
    n: u64,
    kind: &str,
    detail: &str,
    what: &str,
) {
    if warn.should_warn(kind) {
        tracing::warn!(
            signal, n, error = %kind, %detail,
            "OTLP export failed, {what} (this error is logged at debug for the next minute)"
        );
    } else {
        tracing::debug!(signal, n, error = %kind, %detail, "OTLP export failed, {what}");
    }
}
