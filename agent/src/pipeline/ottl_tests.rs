//! The OTTL processors and routing inside the pipelines, over the spans and
//! log records the agent makes (converted to OTLP as the batcher does).

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};

use super::{tests::pipelines_of, *};
use crate::{
    export::{
        convert,
        test_support::{log_record, resource, span},
    },
    signal::Signal,
};

const CONFIG: &str = r#"
exporters:
  otlp/tenant: { endpoint: 'http://127.0.0.1:1' }
processors:
  transform/redact:
    error_mode: ignore
    trace_statements:
      - context: span
        statements:
          - set(attributes["team"], "edge")
          - delete_key(attributes, "http.request.method")
  filter/ok:
    traces:
      span: ['attributes["http.response.status_code"] == 200 and name == "drop me"']
  routing/tenant:
    table:
      - condition: 'resource.attributes["service.name"] == "acme"'
        exporters: [otlp/tenant]
    default_exporters: [file]
pipelines:
  traces:
    processors: [transform/redact, filter/ok, routing/tenant]
  logs:
    processors: [routing/tenant]
"#;

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

#[test]
fn statements_filters_and_routes_apply_to_kernel_made_signals() {
    let pipelines = pipelines_of(CONFIG);
    let (acme, other) = (resource("acme", 1), resource("shop", 2));
    let mut dropped = span(&other, 9, None);
    dropped.name = "drop me".into();
    let batch = convert(vec![
        Signal::Span(span(&acme, 1, None)),
        Signal::Span(span(&other, 2, None)),
        Signal::Span(dropped),
        Signal::Log(log_record(&acme, 1)),
        Signal::Log(log_record(&other, 2)),
    ]);
    let routed = pipelines.process(batch, false);
    assert_eq!(routed.parts.len(), 2, "{:?}", routed.parts);
    for (set, part) in &routed.parts {
        let to: Vec<_> = pipelines.exporter_names(*set).collect();
        let traces = part.traces.as_ref().unwrap();
        let logs = part.logs.as_ref().unwrap();
        let service = |r: &Option<opentelemetry_proto::tonic::resource::v1::Resource>| {
            attribute(&r.as_ref().unwrap().attributes, "service.name").cloned()
        };
        let expected = match to.as_slice() {
            ["otlp/tenant"] => "acme",
            ["file"] => "shop",
            other => panic!("routed to {other:?}"),
        };
        assert_eq!((part.span_count, part.log_count), (1, 1), "to {to:?}");
        assert_eq!(
            service(&traces.resource_spans[0].resource),
            Some(Value::StringValue(expected.into()))
        );
        assert_eq!(
            service(&logs.resource_logs[0].resource),
            Some(Value::StringValue(expected.into()))
        );
        let span = &traces.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            attribute(&span.attributes, "team"),
            Some(&Value::StringValue("edge".into()))
        );
        assert_eq!(attribute(&span.attributes, "http.request.method"), None);
    }
    assert!(
        pipelines.includes(routed.parts[0].0, "otlp/tenant")
            != pipelines.includes(routed.parts[1].0, "otlp/tenant")
    );
}

#[test]
fn a_propagated_error_drops_the_signals_batch_and_counts_it() {
    let config = r#"
processors:
  transform/bad:
    trace_statements:
      - context: span
        statements: ['set(attributes["n"], attributes["http.response.status_code"] / 0)']
pipelines:
  traces: { processors: [transform/bad] }
"#;
    let config = crate::config::Config::parse(config, std::path::Path::new("t.yaml")).unwrap();
    let export = ExportMetrics::default();
    let counters = PipelineMetrics::default();
    let pipelines = Pipelines::new(
        &config.processors,
        &config.exporters,
        &config.pipelines,
        counters.clone(),
        export.clone(),
    )
    .unwrap();
    let res = resource("svc", 1);
    let batch = convert(vec![
        Signal::Span(span(&res, 1, None)),
        Signal::Span(span(&res, 2, None)),
        Signal::Log(log_record(&res, 1)),
    ]);
    let routed = pipelines.process(batch, false);
    assert_eq!(routed.parts.len(), 1);
    assert_eq!(
        (routed.parts[0].1.span_count, routed.parts[0].1.log_count),
        (0, 1)
    );
    assert_eq!(
        export.dropped_count(crate::export::metrics::TRACES, DropReason::ProcessorError),
        2
    );
}

#[test]
fn routing_must_come_last_and_bad_statements_name_the_processor() {
    let err = crate::config::Config::parse(
        "processors:\n  routing: { table: [] }\n  filter: {}\npipelines:\n  traces: { processors: [routing, filter] }\n",
        std::path::Path::new("t.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pipelines.traces.processors[1]: the routing processor must come last"),
        "{err}"
    );
    let err = crate::config::Config::parse(
        "processors:\n  transform/x: { trace_statements: [{ context: span, statements: ['set(attributes[\"a\"], '] }] }\npipelines:\n  traces: { processors: [transform/x] }\n",
        std::path::Path::new("t.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("processors.transform/x:") && err.contains("column"),
        "{err}"
    );
}
