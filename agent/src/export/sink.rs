//! The sinks' loops. Each sink has its own small queue of converted batches,
//! so a collector that is down (and being retried) never stalls the file.

use std::{path::PathBuf, sync::Arc, time::Duration};

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    trace::v1::ExportTraceServiceResponse,
};

use super::{
    json_file::{FileSink, LineOutcome},
    metrics::{DropReason, ExportMetrics, LOGS, METRICS, SINK_FILE, SINK_OTLP, TRACES},
    otlp_grpc::{GrpcExporter, GrpcSettings},
    otlp_http::HttpExporter,
    queue::SinkInput,
    retry::{Deadline, Delivery, RetryPolicy, WarnLimiter, with_retries},
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

/// Writes each batch to the `.jsonl` files on the blocking pool.
pub async fn run_file_sink(
    dir: PathBuf,
    rotate_bytes: u64,
    mut batches: SinkInput,
    metrics: ExportMetrics,
) {
    let mut warn = WarnLimiter::new(WARN_EVERY);
    let mut sink = Some(FileSink::new(&dir, rotate_bytes));
    while let Some(batch) = batches.recv().await {
        // After a panic in a write the old state is gone; start afresh.
        let mut state = sink
            .take()
            .unwrap_or_else(|| FileSink::new(&dir, rotate_bytes));
        let shared = Arc::clone(&batch);
        let written = tokio::task::spawn_blocking(move || {
            let outcome = state.write_batch(&shared);
            (state, outcome)
        })
        .await;
        match written {
            Ok((state, outcome)) => {
                sink = Some(state);
                record_file(
                    &metrics,
                    &mut warn,
                    &dir,
                    TRACES,
                    batch.span_count,
                    outcome.traces,
                );
                record_file(
                    &metrics,
                    &mut warn,
                    &dir,
                    METRICS,
                    batch.point_count,
                    outcome.metrics,
                );
                record_file(
                    &metrics,
                    &mut warn,
                    &dir,
                    LOGS,
                    batch.log_count,
                    outcome.logs,
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "export file write task failed");
                for (signal, n) in [
                    (TRACES, batch.span_count),
                    (METRICS, batch.point_count),
                    (LOGS, batch.log_count),
                ] {
                    if n > 0 {
                        metrics.failure(SINK_FILE);
                        metrics.drop_signals(signal, DropReason::ExportFailed, n);
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

enum OtlpClient {
    Grpc(Box<GrpcExporter>),
    Http(Box<HttpExporter>),
}

/// Sends each batch to the collector, retrying as the policy allows.
pub async fn run_otlp_sink(
    settings: OtlpSettings,
    policy: RetryPolicy,
    deadline: Deadline,
    mut batches: SinkInput,
    metrics: ExportMetrics,
) {
    let client = match settings {
        OtlpSettings::Grpc(settings) => OtlpClient::Grpc(Box::new(settings.connect())),
        OtlpSettings::Http(exporter) => OtlpClient::Http(exporter),
    };
    let mut warn = WarnLimiter::new(WARN_EVERY);
    while let Some(batch) = batches.recv().await {
        if let Some(request) = &batch.traces {
            let delivery = match &client {
                OtlpClient::Grpc(grpc) => {
                    with_retries(&policy, &deadline, &metrics, SINK_OTLP, |timeout| {
                        grpc.export_traces(request, timeout)
                    })
                    .await
                }
                OtlpClient::Http(http) => match http.encode(request) {
                    Ok(body) => {
                        with_retries(&policy, &deadline, &metrics, SINK_OTLP, |timeout| {
                            http.post::<ExportTraceServiceResponse>(
                                http.traces_uri(),
                                body.clone(),
                                timeout,
                            )
                        })
                        .await
                    }
                    Err(err) => encode_failed(err),
                },
            };
            record_otlp(&metrics, &mut warn, TRACES, batch.span_count, delivery);
        }
        if let Some(request) = &batch.metrics {
            let delivery = match &client {
                OtlpClient::Grpc(grpc) => {
                    with_retries(&policy, &deadline, &metrics, SINK_OTLP, |timeout| {
                        grpc.export_metrics(request, timeout)
                    })
                    .await
                }
                OtlpClient::Http(http) => match http.encode(request) {
                    Ok(body) => {
                        with_retries(&policy, &deadline, &metrics, SINK_OTLP, |timeout| {
                            http.post::<ExportMetricsServiceResponse>(
                                http.metrics_uri(),
                                body.clone(),
                                timeout,
                            )
                        })
                        .await
                    }
                    Err(err) => encode_failed(err),
                },
            };
            record_otlp(&metrics, &mut warn, METRICS, batch.point_count, delivery);
        }
        if let Some(request) = &batch.logs {
            let delivery = match &client {
                OtlpClient::Grpc(grpc) => {
                    with_retries(&policy, &deadline, &metrics, SINK_OTLP, |timeout| {
                        grpc.export_logs(request, timeout)
                    })
                    .await
                }
                OtlpClient::Http(http) => match http.encode(request) {
                    Ok(body) => {
                        with_retries(&policy, &deadline, &metrics, SINK_OTLP, |timeout| {
                            http.post::<ExportLogsServiceResponse>(
                                http.logs_uri(),
                                body.clone(),
                                timeout,
                            )
                        })
                        .await
                    }
                    Err(err) => encode_failed(err),
                },
            };
            record_otlp(&metrics, &mut warn, LOGS, batch.log_count, delivery);
        }
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
    warn: &mut WarnLimiter,
    signal: &'static str,
    n: u64,
    delivery: Delivery,
) {
    match delivery {
        Delivery::Delivered { rejected, message } => {
            let rejected = rejected.min(n);
            metrics.exported(signal, SINK_OTLP, n - rejected);
            if rejected > 0 {
                metrics.drop_signals(signal, DropReason::ExportFailed, rejected);
                if warn.should_warn("partial success") {
                    tracing::warn!(signal, rejected, %message, "collector rejected part of a batch");
                }
            }
        }
        Delivery::Failed { kind, detail } => {
            metrics.failure(SINK_OTLP);
            let reason = if kind == ENCODE_KIND {
                DropReason::EncodeFailed
            } else {
                DropReason::ExportFailed
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
            metrics.failure(SINK_OTLP);
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
            metrics.failure(SINK_OTLP);
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
