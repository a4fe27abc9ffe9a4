//! Request bodies to OTLP: content type and encoding checked, gzip
//! inflated within the size limit, protobuf or OTLP/JSON decoded, items
//! counted. Pure functions over bytes, shared by both transports (gRPC
//! decodes its own protobuf and only uses the counting and checks).

use std::io::Read as _;

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message as _;

use crate::export::OtlpBatch;

/// An OTLP signal, as a request carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }
}

/// The body's encoding, which the response takes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From a `Content-Type` value (parameters such as `charset` ignored).
    pub fn from_content_type(content_type: &str) -> Option<Encoding> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Encoding::Protobuf)
        } else if essence.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported content type {0:?} (application/x-protobuf or application/json)")]
    UnsupportedContentType(String),
    #[error("unsupported content encoding {0:?} (gzip or identity)")]
    UnsupportedEncoding(String),
    #[error("request body over the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("gzip: {0}")]
    Gzip(std::io::Error),
    #[error("protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Decodes one OTLP/HTTP request body of `signal`. `content_encoding` is
/// `None` or `identity` for a plain body, `gzip` for a compressed one; the
/// body, and its inflated form, may not exceed `limit` bytes.
pub fn decode_http(
    signal: Signal,
    content_type: &str,
    content_encoding: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<OtlpBatch, DecodeError> {
    let encoding = Encoding::from_content_type(content_type)
        .ok_or_else(|| DecodeError::UnsupportedContentType(content_type.to_owned()))?;
    if body.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    let inflated;
    let body = match content_encoding.map(str::trim) {
        None | Some("") => body,
        Some(e) if e.eq_ignore_ascii_case("identity") => body,
        Some(e) if e.eq_ignore_ascii_case("gzip") => {
            inflated = gunzip(body, limit)?;
            &inflated[..]
        }
        Some(other) => return Err(DecodeError::UnsupportedEncoding(other.to_owned())),
    };
    decode_body(signal, encoding, body)
}

/// Inflates `body`, refusing output beyond `limit` bytes without producing
/// more than one byte past it.
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(body)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(DecodeError::Gzip)?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

fn decode_body(signal: Signal, encoding: Encoding, body: &[u8]) -> Result<OtlpBatch, DecodeError> {
    Ok(match (signal, encoding) {
        (Signal::Traces, Encoding::Protobuf) => traces(ExportTraceServiceRequest::decode(body)?),
        (Signal::Traces, Encoding::Json) => traces(serde_json::from_slice(body)?),
        (Signal::Metrics, Encoding::Protobuf) => {
            metrics(ExportMetricsServiceRequest::decode(body)?)
        }
        (Signal::Metrics, Encoding::Json) => metrics(serde_json::from_slice(body)?),
        (Signal::Logs, Encoding::Protobuf) => logs(ExportLogsServiceRequest::decode(body)?),
        (Signal::Logs, Encoding::Json) => logs(serde_json::from_slice(body)?),
    })
}

/// A batch of one trace request, spans counted.
pub fn traces(request: ExportTraceServiceRequest) -> OtlpBatch {
    let span_count = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum();
    OtlpBatch {
        traces: Some(request),
        span_count,
        ..OtlpBatch::default()
    }
}

/// A batch of one metrics request, data points counted.
pub fn metrics(request: ExportMetricsServiceRequest) -> OtlpBatch {
    let point_count = request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| points(m.data.as_ref()))
        .sum();
    OtlpBatch {
        metrics: Some(request),
        point_count,
        ..OtlpBatch::default()
    }
}

/// A batch of one logs request, log records counted.
pub fn logs(request: ExportLogsServiceRequest) -> OtlpBatch {
    let log_count = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum();
    OtlpBatch {
        logs: Some(request),
        log_count,
        ..OtlpBatch::default()
    }
}

fn points(data: Option<&Data>) -> u64 {
    let n = match data {
        None => 0,
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
    };
    n as u64
}

/// The items of `signal` in `batch`.
pub fn item_count(batch: &OtlpBatch, signal: Signal) -> u64 {
    match signal {
        Signal::Traces => batch.span_count,
        Signal::Metrics => batch.point_count,
        Signal::Logs => batch.log_count,
    }
}

/// Items a batch carried that cannot be used, removed from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejected {
    pub count: u64,
    pub message: String,
}

/// Removes what no backend could use: spans whose trace id is not 16
/// bytes or whose span id is not 8, log records with ids of the wrong
/// length (empty ones are allowed there). Metric points are kept as they
/// are. The batch's counts are updated.
pub fn reject_invalid(batch: &mut OtlpBatch) -> Rejected {
    let mut rejected = Rejected::default();
    if let Some(request) = batch.traces.as_mut() {
        let mut removed = 0u64;
        for scope in request
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
        {
            let before = scope.spans.len();
            scope
                .spans
                .retain(|s| s.trace_id.len() == 16 && s.span_id.len() == 8);
            removed += (before - scope.spans.len()) as u64;
        }
        if removed > 0 {
            batch.span_count = batch.span_count.saturating_sub(removed);
            rejected.count += removed;
            rejected.message =
                format!("{removed} span(s) without a 16-byte trace id and an 8-byte span id");
        }
    }
    if let Some(request) = batch.logs.as_mut() {
        let mut removed = 0u64;
        for scope in request
            .resource_logs
            .iter_mut()
            .flat_map(|r| &mut r.scope_logs)
        {
            let before = scope.log_records.len();
            scope
                .log_records
                .retain(|l| matches!(l.trace_id.len(), 0 | 16) && matches!(l.span_id.len(), 0 | 8));
            removed += (before - scope.log_records.len()) as u64;
        }
        if removed > 0 {
            batch.log_count = batch.log_count.saturating_sub(removed);
            rejected.count += removed;
            rejected.message = format!(
                "{removed} log record(s) with a trace id other than 16 bytes or a span id \
                 other than 8"
            );
        }
    }
    rejected
}
