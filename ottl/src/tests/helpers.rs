use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};

use crate::{Context, ContextStatements, ErrorMode, LoadError, Transform, TransformConfig};

pub fn s(v: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(v.to_owned())),
    }
}

pub fn i(v: i64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(v)),
    }
}

pub fn map(items: Vec<KeyValue>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::KvlistValue(KeyValueList {
            values: items,
        })),
    }
}

pub fn list(items: Vec<AnyValue>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::ArrayValue(ArrayValue { values: items })),
    }
}

pub fn kv(k: &str, v: AnyValue) -> KeyValue {
    KeyValue {
        key: k.to_owned(),
        value: Some(v),
        ..Default::default()
    }
}

/// The value of attribute `k`, if any.
pub fn get<'a>(attrs: &'a [KeyValue], k: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == k)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn get_str<'a>(attrs: &'a [KeyValue], k: &str) -> Option<&'a str> {
    match get(attrs, k) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

pub fn keys(attrs: &[KeyValue]) -> Vec<&str> {
    attrs.iter().map(|kv| kv.key.as_str()).collect()
}

pub fn resource(tenant: &str) -> Resource {
    Resource {
        attributes: vec![kv("tenant", s(tenant)), kv("service.name", s("checkout"))],
        ..Default::default()
    }
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "selfops".into(),
        version: "1.0".into(),
        ..Default::default()
    }
}

pub fn span(name: &str, attrs: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: name.into(),
        kind: 2,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        attributes: attrs,
        events: vec![
            span::Event {
                name: "retry".into(),
                time_unix_nano: 1_500,
                attributes: vec![kv("attempt", i(1))],
                ..Default::default()
            },
            span::Event {
                name: "exception".into(),
                time_unix_nano: 1_600,
                attributes: vec![kv("exception.type", s("IOError"))],
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

pub fn traces(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource("acme")),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn spans(req: &ExportTraceServiceRequest) -> Vec<&Span> {
    req.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect()
}

pub fn number_point(attrs: Vec<KeyValue>, v: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        time_unix_nano: 5_000,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

pub fn metrics(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource("acme")),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: "s".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

pub fn sum(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: 2,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

pub fn points(m: &Metric) -> &[NumberDataPoint] {
    match &m.data {
        Some(metric::Data::Gauge(g)) => &g.data_points,
        Some(metric::Data::Sum(s)) => &s.data_points,
        _ => &[],
    }
}

pub fn log(body: &str, attrs: Vec<KeyValue>) -> LogRecord {
    LogRecord {
        time_unix_nano: 7_000,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(s(body)),
        attributes: attrs,
        ..Default::default()
    }
}

pub fn logs(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource("acme")),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn transform(context: Context, statements: &[&str]) -> Transform {
    transform_mode(context, statements, ErrorMode::Propagate)
}

pub fn transform_mode(context: Context, statements: &[&str], mode: ErrorMode) -> Transform {
    let group = vec![ContextStatements {
        context,
        conditions: vec![],
        statements: statements.iter().map(|s| s.to_string()).collect(),
    }];
    let config = match context {
        Context::Metric | Context::DataPoint => TransformConfig {
            error_mode: mode,
            metric_statements: group,
            ..Default::default()
        },
        Context::Log => TransformConfig {
            error_mode: mode,
            log_statements: group,
            ..Default::default()
        },
        _ => TransformConfig {
            error_mode: mode,
            trace_statements: group,
            ..Default::default()
        },
    };
    match Transform::new(&config) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

/// Runs span statements on one span and returns it.
pub fn on_span(statements: &[&str], attrs: Vec<KeyValue>) -> Span {
    let mut req = traces(vec![span("GET /", attrs)]);
    let t = transform(Context::Span, statements);
    if let Err(e) = t.traces(&mut req) {
        panic!("{e}");
    }
    spans(&req)[0].clone()
}

pub fn load_error(statement: &str, context: Context) -> LoadError {
    let config = TransformConfig {
        trace_statements: vec![ContextStatements {
            context,
            conditions: vec![],
            statements: vec![statement.to_owned()],
        }],
        ..Default::default()
    };
    match Transform::new(&config) {
        Ok(_) => panic!("`{statement}` loaded"),
        Err(e) => e,
    }
}
