//! Internal signals to what the sinks take: spans grouped by resource (left
//! as the agent made them, see `agent_spans`), histogram points grouped by
//! resource and instrument into `ResourceMetrics`, log records grouped by
//! resource into `ResourceLogs`, under one instrumentation scope.

use std::{borrow::Cow, collections::HashMap, sync::Arc};

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        profiles::v1development::ExportProfilesServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1 as pl,
    metrics::v1 as pm,
    resource::v1 as pr,
    trace::v1 as pt,
};

use super::agent_spans::AgentSpans;
use crate::signal::{
    AttrValue, HistogramPoint, LogRecord, Resource, Severity, Signal, Span, SpanKind, SpanStatus,
};

/// The instrumentation scope every signal is reported under.
pub const SCOPE_NAME: &str = "selfops";
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// One batch, converted. Shared (behind an `Arc`) by every sink.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtlpBatch {
    /// Spans as OTLP messages (received, or converted for a processor);
    /// `None` when there are none.
    pub traces: Option<ExportTraceServiceRequest>,
    /// The agent's own spans, not converted (see `agent_spans`); `None`
    /// when there are none.
    pub agent_spans: Option<AgentSpans>,
    /// Spans in `traces` and `agent_spans` together.
    pub span_count: u64,
    /// `None` when the batch has no histogram point.
    pub metrics: Option<ExportMetricsServiceRequest>,
    pub point_count: u64,
    /// Histogram points that could not be represented (dropped, counted by
    /// the caller as `encode_failed`).
    pub malformed_points: u64,
    /// `None` when the batch has no log record.
    pub logs: Option<ExportLogsServiceRequest>,
    pub log_count: u64,
    /// `None` when the batch has no profile: one interval of the CPU
    /// profiler, each process's profile one `Profile` (the unit counted).
    pub profiles: Option<ExportProfilesServiceRequest>,
    pub profile_count: u64,
}

impl OtlpBatch {
    /// Nothing to export (malformed points are already counted).
    pub fn is_empty(&self) -> bool {
        self.span_count == 0
            && self.point_count == 0
            && self.log_count == 0
            && self.profile_count == 0
    }

    /// Every span of the batch as one OTLP request: borrowed when they are
    /// messages already, else converted (copied: sinks share the batch).
    pub fn traces_request(&self) -> Option<Cow<'_, ExportTraceServiceRequest>> {
        match (&self.traces, &self.agent_spans) {
            (None, None) => None,
            (Some(request), None) => Some(Cow::Borrowed(request)),
            (None, Some(spans)) => Some(Cow::Owned(spans.to_request())),
            (Some(request), Some(spans)) => {
                let mut request = request.clone();
                request
                    .resource_spans
                    .extend(spans.to_request().resource_spans);
                Some(Cow::Owned(request))
            }
        }
    }

    /// A batch of one profiles request, its `Profile` messages counted.
    pub fn profiles(request: ExportProfilesServiceRequest) -> Self {
        let profile_count = request
            .resource_profiles
            .iter()
            .flat_map(|rp| &rp.scope_profiles)
            .map(|sp| sp.profiles.len() as u64)
            .sum();
        Self {
            profiles: Some(request),
            profile_count,
            ..Self::default()
        }
    }
}

/// Converts a batch. Signals are grouped by resource: first by `Arc` pointer,
/// then by value, so two `Arc`s of equal resources share one span group
/// (one `ResourceSpans`), `ResourceMetrics` or `ResourceLogs`.
pub fn convert(signals: Vec<Signal>) -> OtlpBatch {
    let mut span_groups = ResourceGroups::default();
    let mut metric_groups = ResourceGroups::default();
    let mut log_groups = ResourceGroups::default();
    // Indices are computed while every signal (and so every resource
    // pointer) is alive, so a freed address can never be mistaken for a
    // known resource.
    let indices: Vec<usize> = signals
        .iter()
        .map(|signal| match signal {
            Signal::Span(span) => span_groups.index(&span.resource),
            Signal::Histogram(point) => metric_groups.index(&point.resource),
            Signal::Log(record) => log_groups.index(&record.resource),
        })
        .collect();

    let mut spans: Vec<Vec<Span>> = vec![Vec::new(); span_groups.len()];
    let mut metrics: Vec<Vec<pm::Metric>> = vec![Vec::new(); metric_groups.len()];
    let mut logs: Vec<Vec<pl::LogRecord>> = vec![Vec::new(); log_groups.len()];
    let mut batch = OtlpBatch::default();
    for (signal, index) in signals.into_iter().zip(indices) {
        match signal {
            Signal::Span(span) => {
                spans[index].push(span);
                batch.span_count += 1;
            }
            Signal::Histogram(point) => match histogram_point_to_proto(&point) {
                Some(data_point) => {
                    add_histogram_point(&mut metrics[index], &point, data_point);
                    batch.point_count += 1;
                }
                None => batch.malformed_points += 1,
            },
            Signal::Log(record) => {
                logs[index].push(log_record_to_proto(record));
                batch.log_count += 1;
            }
        }
    }

    if batch.span_count > 0 {
        let groups = span_groups
            .resources
            .into_iter()
            .zip(spans)
            .filter(|(_, spans)| !spans.is_empty())
            .collect();
        batch.agent_spans = Some(AgentSpans { groups });
    }
    if batch.point_count > 0 {
        let resource_metrics = metric_groups
            .resources
            .iter()
            .zip(metrics)
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|(resource, metrics)| pm::ResourceMetrics {
                resource: Some(resource_to_proto(resource)),
                scope_metrics: vec![pm::ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect();
        batch.metrics = Some(ExportMetricsServiceRequest { resource_metrics });
    }
    if batch.log_count > 0 {
        let resource_logs = log_groups
            .resources
            .iter()
            .zip(logs)
            .filter(|(_, logs)| !logs.is_empty())
            .map(|(resource, log_records)| pl::ResourceLogs {
                resource: Some(resource_to_proto(resource)),
                scope_logs: vec![pl::ScopeLogs {
                    scope: Some(scope()),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect();
        batch.logs = Some(ExportLogsServiceRequest { resource_logs });
    }
    batch
}

/// Distinct resources in first-seen order.
#[derive(Default)]
struct ResourceGroups {
    resources: Vec<Arc<Resource>>,
    by_pointer: HashMap<*const Resource, usize>,
}

impl ResourceGroups {
    fn len(&self) -> usize {
        self.resources.len()
    }

    fn index(&mut self, resource: &Arc<Resource>) -> usize {
        let pointer = Arc::as_ptr(resource);
        if let Some(&index) = self.by_pointer.get(&pointer) {
            return index;
        }
        // A new pointer: most often a new process, but the same resource
        // can live in two `Arc`s (e.g. after a rescan), so compare values.
        let index = match self.resources.iter().position(|r| **r == **resource) {
            Some(index) => index,
            None => {
                self.resources.push(Arc::clone(resource));
                self.resources.len() - 1
            }
        };
        self.by_pointer.insert(pointer, index);
        index
    }
}

pub(super) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: SCOPE_VERSION.to_owned(),
        ..Default::default()
    }
}

pub fn resource_to_proto(resource: &Resource) -> pr::Resource {
    pr::Resource {
        attributes: attributes_to_proto(&resource.attributes),
        ..Default::default()
    }
}

pub fn attributes_to_proto(attributes: &[(&'static str, AttrValue)]) -> Vec<KeyValue> {
    attributes
        .iter()
        .map(|(key, value)| KeyValue {
            key: (*key).to_owned(),
            value: Some(any_value(value)),
            ..Default::default()
        })
        .collect()
}

/// Like [`attributes_to_proto`], moving the string values instead of
/// copying them: a span's attributes are not needed afterwards, and a copy
/// and a free per value add up at tens of thousands of spans a second.
fn attributes_into_proto(attributes: Vec<(&'static str, AttrValue)>) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .map(|(key, value)| KeyValue {
            key: key.to_owned(),
            value: Some(into_any_value(value)),
            ..Default::default()
        })
        .collect()
}

fn any_value(value: &AttrValue) -> AnyValue {
    into_any_value(value.clone())
}

fn into_any_value(value: AttrValue) -> AnyValue {
    let value = match value {
        AttrValue::Int(v) => any_value::Value::IntValue(v),
        AttrValue::Double(v) => any_value::Value::DoubleValue(v),
        AttrValue::Bool(v) => any_value::Value::BoolValue(v),
        AttrValue::Str(v) => any_value::Value::StringValue(v.into_owned()),
    };
    AnyValue { value: Some(value) }
}

pub fn span_to_proto(span: Span) -> pt::Span {
    let kind = match span.kind {
        SpanKind::Server => pt::span::SpanKind::Server,
        SpanKind::Client => pt::span::SpanKind::Client,
    };
    let status = match span.status {
        SpanStatus::Unset => pt::Status {
            message: String::new(),
            code: pt::status::StatusCode::Unset as i32,
        },
        SpanStatus::Error { message } => pt::Status {
            message,
            code: pt::status::StatusCode::Error as i32,
        },
    };
    pt::Span {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        // A root span's parent id is empty bytes (an empty string in JSON).
        parent_span_id: span
            .parent_span_id
            .map(|id| id.to_vec())
            .unwrap_or_default(),
        name: span.name.into_owned(),
        kind: kind as i32,
        start_time_unix_nano: span.start_unix_nano,
        end_time_unix_nano: span.end_unix_nano,
        attributes: attributes_into_proto(span.attributes),
        status: Some(status),
        ..Default::default()
    }
}

/// [`span_to_proto`] of a span that stays where it is.
pub fn span_ref_to_proto(span: &Span) -> pt::Span {
    span_to_proto(span.clone())
}

pub fn log_record_to_proto(record: LogRecord) -> pl::LogRecord {
    let (number, text) = match record.severity {
        Severity::Info => (pl::SeverityNumber::Info, "INFO"),
        Severity::Warn => (pl::SeverityNumber::Warn, "WARN"),
        Severity::Error => (pl::SeverityNumber::Error, "ERROR"),
    };
    pl::LogRecord {
        time_unix_nano: record.time_unix_nano,
        // The agent records its own decisions as it makes them: the event
        // and its observation are the same instant.
        observed_time_unix_nano: record.time_unix_nano,
        severity_number: number as i32,
        severity_text: text.to_owned(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(record.body)),
        }),
        attributes: attributes_into_proto(record.attributes),
        event_name: record.event_name.to_owned(),
        ..Default::default()
    }
}

/// `None` when the point cannot be valid OTLP: `bucket_counts` must have one
/// entry more than `bounds`, and bounds must be finite.
pub fn histogram_point_to_proto(point: &HistogramPoint) -> Option<pm::HistogramDataPoint> {
    if point.bucket_counts.len() != point.bounds.len() + 1
        || point.bounds.iter().any(|b| !b.is_finite())
    {
        return None;
    }
    // min and max are meaningless without observations; JSON cannot carry
    // non-finite numbers, so those are left out rather than sent as null.
    let finite = |v: f64| v.is_finite().then_some(v);
    let observed = point.count > 0;
    Some(pm::HistogramDataPoint {
        attributes: attributes_to_proto(&point.attributes),
        start_time_unix_nano: point.start_unix_nano,
        time_unix_nano: point.time_unix_nano,
        count: point.count,
        sum: finite(point.sum),
        bucket_counts: point.bucket_counts.clone(),
        explicit_bounds: point.bounds.to_vec(),
        min: finite(point.min).filter(|_| observed),
        max: finite(point.max).filter(|_| observed),
        ..Default::default()
    })
}

/// Adds a point to its instrument's `Metric`, creating it on first use.
fn add_histogram_point(
    metrics: &mut Vec<pm::Metric>,
    point: &HistogramPoint,
    data_point: pm::HistogramDataPoint,
) {
    let existing = metrics.iter_mut().find(|m| {
        m.name == point.name && m.description == point.description && m.unit == point.unit
    });
    let metric = match existing {
        Some(metric) => metric,
        None => {
            metrics.push(pm::Metric {
                name: point.name.to_owned(),
                description: point.description.to_owned(),
                unit: point.unit.to_owned(),
                data: Some(pm::metric::Data::Histogram(pm::Histogram {
                    data_points: Vec::new(),
                    aggregation_temporality: pm::AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            });
            let last = metrics.len() - 1;
            &mut metrics[last]
        }
    };
    if let Some(pm::metric::Data::Histogram(histogram)) = &mut metric.data {
        histogram.data_points.push(data_point);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::{histogram, log_record, resource, span};

    #[test]
    fn span_fields() {
        let res = resource("nginx", 42);
        let mut s = span(&res, 1, None);
        s.status = SpanStatus::Error {
            message: "HTTP 500".to_owned(),
        };
        let p = span_to_proto(s.clone());
        assert_eq!(p.trace_id, s.trace_id.to_vec());
        assert_eq!(p.trace_id.len(), 16);
        assert_eq!(p.span_id.len(), 8);
        assert!(p.parent_span_id.is_empty(), "root span has an empty parent");
        assert_eq!(p.kind, 2, "SPAN_KIND_SERVER");
        let status = p.status.unwrap();
        assert_eq!(status.code, 2, "STATUS_CODE_ERROR");
        assert_eq!(status.message, "HTTP 500");
        assert_eq!(p.start_time_unix_nano, s.start_unix_nano);
        assert_eq!(p.end_time_unix_nano, s.end_unix_nano);

        let mut child = span(&res, 2, Some([9; 8]));
        child.kind = SpanKind::Client;
        let p = span_to_proto(child);
        assert_eq!(p.parent_span_id, vec![9; 8]);
        assert_eq!(p.kind, 3, "SPAN_KIND_CLIENT");
        assert_eq!(p.status.unwrap().code, 0, "STATUS_CODE_UNSET");
        let attr = &p.attributes[0];
        assert_eq!(attr.key, "http.request.method");
        assert_eq!(
            attr.value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("GET".to_owned()))
        );
        assert_eq!(
            p.attributes[1].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(200))
        );
    }

    #[test]
    fn histogram_fields() {
        let res = resource("nginx", 42);
        let point = histogram(&res, "http.server.request.duration");
        let p = histogram_point_to_proto(&point).unwrap();
        assert_eq!(p.count, 3);
        assert_eq!(p.sum, Some(0.35));
        assert_eq!(p.min, Some(0.05));
        assert_eq!(p.max, Some(0.2));
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.bucket_counts, vec![1, 2, 0]);
        assert_eq!(p.start_time_unix_nano, point.start_unix_nano);
        assert_eq!(p.time_unix_nano, point.time_unix_nano);

        let mut empty = point.clone();
        empty.count = 0;
        empty.bucket_counts = vec![0, 0, 0];
        let p = histogram_point_to_proto(&empty).unwrap();
        assert_eq!((p.min, p.max), (None, None));

        let mut bad = point;
        bad.bucket_counts.pop();
        assert!(histogram_point_to_proto(&bad).is_none());
    }

    #[test]
    fn groups_by_resource_and_instrument() {
        let a = resource("a", 1);
        // Equal by value, different Arc: one group.
        let a_again = Arc::new((*a).clone());
        let b = resource("b", 2);
        let mut bad = histogram(&b, "x");
        bad.bucket_counts.clear();
        let batch = convert(vec![
            Signal::Span(span(&a, 1, None)),
            Signal::Span(span(&b, 2, None)),
            Signal::Span(span(&a_again, 3, None)),
            Signal::Histogram(histogram(&a, "d1")),
            Signal::Histogram(histogram(&a, "d1")),
            Signal::Histogram(histogram(&a, "d2")),
            Signal::Histogram(bad),
        ]);
        assert_eq!(batch.span_count, 3);
        assert_eq!(batch.point_count, 3);
        assert_eq!(batch.malformed_points, 1);

        assert!(
            batch.traces.is_none(),
            "the agent's spans are kept as they are"
        );
        let traces = batch.traces_request().unwrap().into_owned();
        assert_eq!(traces.resource_spans.len(), 2);
        let first = &traces.resource_spans[0];
        assert_eq!(first.resource, Some(resource_to_proto(&a)));
        assert_eq!(first.scope_spans.len(), 1);
        let scope = first.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(scope.name, "selfops");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(first.scope_spans[0].spans.len(), 2);

        let metrics = batch.metrics.unwrap();
        // Resource b only had a malformed point: no empty envelope.
        assert_eq!(metrics.resource_metrics.len(), 1);
        let instruments = &metrics.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(instruments.len(), 2);
        match &instruments[0].data {
            Some(pm::metric::Data::Histogram(h)) => {
                assert_eq!(h.data_points.len(), 2);
                assert_eq!(h.aggregation_temporality, 2, "CUMULATIVE");
            }
            other => panic!("not a histogram: {other:?}"),
        }
    }

    #[test]
    fn log_record_fields() {
        let res = resource("selfops", 7);
        let record = log_record(&res, 3);
        let p = log_record_to_proto(record.clone());
        assert_eq!(p.time_unix_nano, record.time_unix_nano);
        assert_eq!(p.observed_time_unix_nano, record.time_unix_nano);
        assert_eq!(p.severity_number, 13, "SEVERITY_NUMBER_WARN");
        assert_eq!(p.severity_text, "WARN");
        assert_eq!(p.event_name, "selfops.action.applied");
        assert_eq!(
            p.body.unwrap().value,
            Some(any_value::Value::StringValue(
                "rate limit applied to nginx (3)".to_owned()
            ))
        );
        assert_eq!(p.attributes.len(), 3);
        assert_eq!(p.attributes[1].key, "selfops.action.seq");
        assert_eq!(
            p.attributes[2].value.as_ref().unwrap().value,
            Some(any_value::Value::BoolValue(false))
        );
        assert!(p.trace_id.is_empty() && p.span_id.is_empty());

        for (severity, number, text) in
            [(Severity::Info, 9, "INFO"), (Severity::Error, 17, "ERROR")]
        {
            let mut record = log_record(&res, 1);
            record.severity = severity;
            let p = log_record_to_proto(record);
            assert_eq!(
                (p.severity_number, p.severity_text.as_str()),
                (number, text)
            );
            // The agent's Severity carries the OTel number as discriminant.
            assert_eq!(severity as i32, number);
        }
    }

    #[test]
    fn logs_group_by_resource() {
        let a = resource("a", 1);
        let b = resource("b", 2);
        let batch = convert(vec![
            Signal::Log(log_record(&a, 1)),
            Signal::Span(span(&a, 1, None)),
            Signal::Log(log_record(&b, 2)),
            Signal::Log(log_record(&Arc::new((*a).clone()), 3)),
        ]);
        assert_eq!((batch.span_count, batch.log_count), (1, 3));
        assert!(batch.metrics.is_none());
        let logs = batch.logs.unwrap();
        assert_eq!(logs.resource_logs.len(), 2);
        let first = &logs.resource_logs[0];
        assert_eq!(first.resource, Some(resource_to_proto(&a)));
        assert_eq!(first.scope_logs[0].scope.as_ref().unwrap().name, "selfops");
        let times: Vec<_> = first.scope_logs[0]
            .log_records
            .iter()
            .map(|r| r.time_unix_nano)
            .collect();
        assert_eq!(
            times,
            vec![1_700_000_002_000_000_001, 1_700_000_002_000_000_003]
        );
        assert_eq!(logs.resource_logs[1].scope_logs[0].log_records.len(), 1);
    }

    #[test]
    fn empty_batch_has_no_requests() {
        let batch = convert(Vec::new());
        assert!(batch.is_empty());
        assert!(batch.traces.is_none() && batch.metrics.is_none() && batch.logs.is_none());
        assert!(batch.agent_spans.is_none());
    }
}
