//! Feeds arbitrary text to the OTTL parser and compiler in every context,
//! as a statement, a group condition and a filter condition; whatever
//! loads runs over a small fixed request of each signal. Nothing may panic
//! or overflow the stack, whatever the error mode.
//!
//! Input: one byte picks the context (low 3 bits) and error mode (next 2
//! bits); the rest is the text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
use selfops_ottl::{
    Condition, Context, ContextStatements, ErrorMode, Filter, FilterConfig, LogConditions,
    MetricConditions, TraceConditions, Transform, TransformConfig,
};

const CONTEXTS: [Context; 7] = [
    Context::Resource,
    Context::Scope,
    Context::Span,
    Context::SpanEvent,
    Context::Metric,
    Context::DataPoint,
    Context::Log,
];

fn value(v: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value(v),
        ..Default::default()
    }
}

fn attributes() -> Vec<KeyValue> {
    use any_value::Value as V;
    vec![
        kv("s", V::StringValue("text".into())),
        kv("card", V::StringValue("4111111111111111".into())),
        kv("i", V::IntValue(i64::MAX)),
        kv("f", V::DoubleValue(1.5)),
        kv("b", V::BoolValue(true)),
        kv("x", V::BytesValue(vec![1, 2, 3])),
        kv(
            "m",
            V::KvlistValue(KeyValueList {
                values: vec![kv("k", V::StringValue("v".into()))],
            }),
        ),
        kv(
            "l",
            V::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(V::IntValue(1)),
                }],
            }),
        ),
    ]
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: attributes(),
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "scope".into(),
        version: "1".into(),
        attributes: attributes(),
        ..Default::default()
    })
}

fn traces() -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "GET /".into(),
        kind: 2,
        attributes: attributes(),
        events: vec![span::Event {
            name: "event".into(),
            attributes: attributes(),
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                scope: scope(),
                spans: vec![span.clone(), Span::default(), span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics() -> ExportMetricsServiceRequest {
    let point = NumberDataPoint {
        attributes: attributes(),
        value: Some(number_data_point::Value::AsInt(7)),
        ..Default::default()
    };
    let gauge = Metric {
        name: "gauge".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![point.clone(), NumberDataPoint::default()],
        })),
        ..Default::default()
    };
    let histogram = Metric {
        name: "histogram".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: attributes(),
                count: 3,
                sum: Some(1.0),
                ..Default::default()
            }],
            aggregation_temporality: 1,
        })),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics: vec![gauge, histogram, Metric::default()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs() -> ExportLogsServiceRequest {
    let log = LogRecord {
        severity_number: 9,
        body: value(any_value::Value::StringValue("a log line".into())),
        attributes: attributes(),
        ..Default::default()
    };
    let structured = LogRecord {
        body: value(any_value::Value::KvlistValue(KeyValueList {
            values: attributes(),
        })),
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records: vec![log, structured, LogRecord::default()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn transform(context: Context, mode: ErrorMode, text: &str, as_condition: bool) {
    let group = vec![ContextStatements {
        context,
        conditions: if as_condition {
            vec![text.to_owned()]
        } else {
            vec![]
        },
        statements: if as_condition {
            vec![r#"set(attributes["hit"], true)"#.to_owned()]
        } else {
            vec![text.to_owned()]
        },
    }];
    let mut config = TransformConfig {
        error_mode: mode,
        ..Default::default()
    };
    match context {
        Context::Span | Context::SpanEvent => config.trace_statements = group,
        Context::Metric | Context::DataPoint => config.metric_statements = group,
        Context::Log => config.log_statements = group,
        Context::Resource | Context::Scope => {
            config.trace_statements = group.clone();
            config.metric_statements = group.clone();
            config.log_statements = group;
        }
    }
    let Ok(t) = Transform::new(&config) else {
        return;
    };
    let outcomes = [
        t.traces(&mut traces()),
        t.metrics(&mut metrics()),
        t.logs(&mut logs()),
    ];
    for out in outcomes {
        match (mode, out) {
            (ErrorMode::Propagate, _) => {}
            (_, out) => assert!(out.is_ok(), "{mode:?} returned an error"),
        }
    }
}

fn filter(context: Context, mode: ErrorMode, text: &str) {
    let conditions = vec![text.to_owned()];
    let mut config = FilterConfig {
        error_mode: mode,
        ..Default::default()
    };
    match context {
        Context::Span => {
            config.traces = TraceConditions {
                span: conditions,
                ..Default::default()
            }
        }
        Context::SpanEvent => {
            config.traces = TraceConditions {
                spanevent: conditions,
                ..Default::default()
            }
        }
        Context::Metric => {
            config.metrics = MetricConditions {
                metric: conditions,
                ..Default::default()
            }
        }
        Context::DataPoint => {
            config.metrics = MetricConditions {
                datapoint: conditions,
                ..Default::default()
            }
        }
        Context::Log => {
            config.logs = LogConditions {
                log_record: conditions,
            }
        }
        Context::Resource | Context::Scope => return,
    }
    let Ok(f) = Filter::new(&config) else {
        return;
    };
    let mut t = traces();
    let spans_before: usize = t
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    if let Ok(out) = f.traces(&mut t) {
        let after: usize = t
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        assert_eq!(spans_before as u64 - out.dropped, after as u64);
    }
    let _ = f.metrics(&mut metrics());
    let _ = f.logs(&mut logs());
}

fn condition(context: Context, text: &str) {
    let Ok(c) = Condition::new(text, context) else {
        return;
    };
    let t = traces();
    let rs = &t.resource_spans[0];
    let _ = c.matches_resource(rs.resource.as_ref().unwrap_or(&Resource::default()));
    let _ = c.matches_span(rs.resource.as_ref(), None, &rs.scope_spans[0].spans[0]);
    let l = logs();
    let _ = c.matches_log(None, None, &l.resource_logs[0].scope_logs[0].log_records[0]);
    let m = metrics();
    let _ = c.matches_metric(
        None,
        None,
        &m.resource_metrics[0].scope_metrics[0].metrics[0],
    );
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let context = CONTEXTS[usize::from(first & 7) % CONTEXTS.len()];
    let mode = match (first >> 3) & 3 {
        0 => ErrorMode::Propagate,
        1 => ErrorMode::Ignore,
        _ => ErrorMode::Silent,
    };
    let text = String::from_utf8_lossy(rest);
    transform(context, mode, &text, false);
    transform(context, mode, &text, true);
    filter(context, mode, &text);
    condition(context, &text);
});
