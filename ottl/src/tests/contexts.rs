//! Every context, the paths up to enclosing records, and configuration.

use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;

use crate::tests::helpers::*;
use crate::{Condition, Context, ContextStatements, Transform, TransformConfig};

#[test]
fn resource_and_scope() {
    let mut req = traces(vec![span("a", vec![])]);
    transform(
        Context::Resource,
        &[r#"set(attributes["env"], "prod") where attributes["tenant"] == "acme""#],
    )
    .traces(&mut req)
    .unwrap();
    transform(
        Context::Scope,
        &[
            r#"set(attributes["lib"], name) where version == "1.0""#,
            r#"set(version, "2.0")"#,
        ],
    )
    .traces(&mut req)
    .unwrap();
    let rs = &req.resource_spans[0];
    assert_eq!(
        get_str(&rs.resource.as_ref().unwrap().attributes, "env"),
        Some("prod")
    );
    let scope = rs.scope_spans[0].scope.as_ref().unwrap();
    assert_eq!(get_str(&scope.attributes, "lib"), Some("selfops"));
    assert_eq!(scope.version, "2.0");
}

#[test]
fn span_reads_enclosing_levels() {
    let span = on_span(
        &[
            r#"set(attributes["tenant"], resource.attributes["tenant"])"#,
            r#"set(attributes["lib"], instrumentation_scope.name)"#,
            r#"set(attributes["lib2"], scope.version)"#,
            r#"set(span.attributes["own"], span.name)"#,
            r#"set(resource.attributes["touched"], true)"#,
        ],
        vec![],
    );
    assert_eq!(get_str(&span.attributes, "tenant"), Some("acme"));
    assert_eq!(get_str(&span.attributes, "lib"), Some("selfops"));
    assert_eq!(get_str(&span.attributes, "lib2"), Some("1.0"));
    assert_eq!(get_str(&span.attributes, "own"), Some("GET /"));
}

#[test]
fn span_events() {
    let mut req = traces(vec![span("op", vec![])]);
    transform(
        Context::SpanEvent,
        &[
            r#"set(attributes["span"], span.name) where name == "exception""#,
            r#"set(name, "retried") where attributes["attempt"] == 1"#,
            r#"set(span.attributes["had_events"], true)"#,
        ],
    )
    .traces(&mut req)
    .unwrap();
    let s = spans(&req)[0];
    assert_eq!(s.events.len(), 2);
    assert_eq!(s.events[0].name, "retried");
    assert_eq!(get_str(&s.events[1].attributes, "span"), Some("op"));
    assert_eq!(get(&s.attributes, "had_events"), Some(&V::BoolValue(true)));
}

#[test]
fn metric_and_datapoint() {
    let mut req = metrics(vec![
        gauge("cpu", vec![number_point(vec![kv("host", s("a"))], 0.5)]),
        sum("requests", vec![number_point(vec![], 1.0)]),
    ]);
    transform(
        Context::Metric,
        &[
            r#"set(description, "gauge!") where type == METRIC_DATA_TYPE_GAUGE"#,
            r#"set(unit, "1") where metric.name == "requests" and is_monotonic"#,
            "set(aggregation_temporality, AGGREGATION_TEMPORALITY_DELTA)",
        ],
    )
    .metrics(&mut req)
    .unwrap();
    transform(
        Context::DataPoint,
        &[
            r#"set(attributes["metric"], metric.name)"#,
            "set(value_double, value_double * 100) where metric.type == METRIC_DATA_TYPE_GAUGE",
            "set(value_int, 5) where metric.name == \"requests\"",
            r#"set(attributes["tenant"], resource.attributes["tenant"])"#,
        ],
    )
    .metrics(&mut req)
    .unwrap();
    let ms = &req.resource_metrics[0].scope_metrics[0].metrics;
    assert_eq!(ms[0].description, "gauge!");
    assert_eq!(ms[1].unit, "1");
    let p = &points(&ms[0])[0];
    assert_eq!(get_str(&p.attributes, "metric"), Some("cpu"));
    assert_eq!(get_str(&p.attributes, "tenant"), Some("acme"));
    assert_eq!(p.value, Some(number_data_point::Value::AsDouble(50.0)));
    assert_eq!(
        points(&ms[1])[0].value,
        Some(number_data_point::Value::AsInt(5))
    );
    let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum)) = &ms[1].data else {
        panic!()
    };
    assert_eq!(sum.aggregation_temporality, 1);
    // metric.type is computed, not stored.
    assert!(Condition::new("type == METRIC_DATA_TYPE_SUM", Context::Metric).is_ok());
    let e = load_error_metric("set(metric.type, 1)");
    assert!(e.message.contains("cannot be written"), "{e}");
}

fn load_error_metric(statement: &str) -> crate::LoadError {
    let config = TransformConfig {
        metric_statements: vec![ContextStatements {
            context: Context::DataPoint,
            conditions: vec![],
            statements: vec![statement.into()],
        }],
        ..Default::default()
    };
    Transform::new(&config).err().unwrap()
}

#[test]
fn log_records() {
    let mut req = logs(vec![log("a very long log line that goes on", vec![])]);
    transform(
        Context::Log,
        &[
            r#"set(attributes["sev"], severity_text) where severity_number >= SEVERITY_NUMBER_INFO"#,
            "set(severity_number, SEVERITY_NUMBER_WARN)",
            r#"set(body, Substring(body, 0, 16)) where IsString(body) and Len(body) > 16"#,
            r#"set(attributes["tid"], trace_id.string)"#,
        ],
    )
    .logs(&mut req)
    .unwrap();
    let l = &req.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(get_str(&l.attributes, "sev"), Some("INFO"));
    assert_eq!(l.severity_number, 13);
    assert_eq!(l.body, Some(s("a very long log ")));
    assert_eq!(get_str(&l.attributes, "tid"), Some(""));
}

#[test]
fn structured_log_body() {
    let mut req = logs(vec![log("x", vec![])]);
    req.resource_logs[0].scope_logs[0].log_records[0].body =
        Some(map(vec![kv("msg", s("0123456789")), kv("secret", s("s"))]));
    transform(
        Context::Log,
        &[
            r#"truncate_all(body, 4)"#,
            r#"delete_key(body, "secret")"#,
            r#"set(body["extra"], body["msg"])"#,
        ],
    )
    .logs(&mut req)
    .unwrap();
    let l = &req.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(
        l.body,
        Some(map(vec![kv("msg", s("0123")), kv("extra", s("0123"))]))
    );
}

#[test]
fn group_conditions_are_ored() {
    let config = TransformConfig {
        trace_statements: vec![ContextStatements {
            context: Context::Span,
            conditions: vec![r#"name == "a""#.into(), r#"name == "b""#.into()],
            statements: vec![r#"set(attributes["hit"], true)"#.into()],
        }],
        ..Default::default()
    };
    let mut req = traces(vec![
        span("a", vec![]),
        span("b", vec![]),
        span("c", vec![]),
    ]);
    Transform::new(&config).unwrap().traces(&mut req).unwrap();
    let hits: Vec<bool> = spans(&req)
        .iter()
        .map(|s| get(&s.attributes, "hit").is_some())
        .collect();
    assert_eq!(hits, [true, true, false]);
}

#[test]
fn contexts_are_checked_per_signal() {
    let config = TransformConfig {
        trace_statements: vec![ContextStatements {
            context: Context::Log,
            conditions: vec![],
            statements: vec![r#"set(attributes["x"], 1)"#.into()],
        }],
        ..Default::default()
    };
    let e = Transform::new(&config).err().unwrap();
    assert!(e.message.contains("does not apply to traces"), "{e}");
}

#[test]
fn yaml_config_with_groups_and_inferred_statements() {
    let yaml = r#"
error_mode: ignore
trace_statements:
  - context: span
    conditions: ['attributes["http.route"] != nil']
    statements:
      - set(attributes["routed"], true)
  - set(span.attributes["inferred"], resource.attributes["tenant"])
  - set(resource.attributes["r"], 1)
log_statements:
  - set(log.body, "x") where log.severity_number < 5
"#;
    let config: TransformConfig = serde_yaml_ng::from_str(yaml).unwrap();
    assert_eq!(config.error_mode, crate::ErrorMode::Ignore);
    assert_eq!(config.trace_statements[1].context, Context::Span);
    assert_eq!(config.trace_statements[2].context, Context::Resource);
    assert_eq!(config.log_statements[0].context, Context::Log);
    let t = Transform::new(&config).unwrap();
    let mut req = traces(vec![span("a", vec![])]);
    t.traces(&mut req).unwrap();
    assert_eq!(
        get_str(&spans(&req)[0].attributes, "inferred"),
        Some("acme")
    );

    // The Collector's default error mode.
    let config: TransformConfig = serde_yaml_ng::from_str("trace_statements: []").unwrap();
    assert_eq!(config.error_mode, crate::ErrorMode::Propagate);
    for bad in [
        "unknown: 1",
        "trace_statements: [{context: span, statements: [], extra: 1}]",
        "trace_statements: [{context: nowhere, statements: []}]",
        "trace_statements: ['set(attributes[\"x\"], 1)']",
        "trace_statements: ['set(']",
    ] {
        assert!(
            serde_yaml_ng::from_str::<TransformConfig>(bad).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn routing_condition_on_resource() {
    let c = Condition::new(
        r#"resource.attributes["tenant"] == "acme""#,
        Context::Resource,
    )
    .unwrap();
    assert!(c.matches_resource(&resource("acme")).unwrap());
    assert!(!c.matches_resource(&resource("other")).unwrap());
    let bare = Condition::new(r#"attributes["tenant"] == "acme""#, Context::Resource).unwrap();
    assert!(bare.matches_resource(&resource("acme")).unwrap());
    let by_span = Condition::new(
        r#"resource.attributes["tenant"] == "acme" and kind == SPAN_KIND_SERVER"#,
        Context::Span,
    )
    .unwrap();
    let r = resource("acme");
    assert!(
        by_span
            .matches_span(Some(&r), None, &span("x", vec![]))
            .unwrap()
    );
    assert!(
        !by_span
            .matches_span(None, None, &span("x", vec![]))
            .unwrap()
    );
    let by_log = Condition::new("severity_number >= SEVERITY_NUMBER_WARN", Context::Log).unwrap();
    assert!(!by_log.matches_log(None, None, &log("x", vec![])).unwrap());
    let err = Condition::new("attributes", Context::Resource).unwrap();
    let e = err.matches_resource(&r).unwrap_err();
    assert!(e.to_string().contains("not a bool"), "{e}");
}

#[test]
fn shared_across_threads() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Transform>();
    is_send_sync::<crate::Filter>();
    is_send_sync::<Condition>();
}
