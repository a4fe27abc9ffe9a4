//! The filter processor's drop semantics.

use crate::tests::helpers::*;
use crate::{ErrorMode, Filter, FilterConfig, TraceConditions};

fn filter(yaml: &str) -> Filter {
    let config: FilterConfig = serde_yaml_ng::from_str(yaml).unwrap();
    Filter::new(&config).unwrap()
}

#[test]
fn drops_health_checks_and_empty_containers() {
    let f = filter(
        r#"
traces:
  span:
    - attributes["url.path"] == "/healthz"
    - attributes["http.target"] == "/healthz"
"#,
    );
    let mut req = traces(vec![
        span("a", vec![kv("url.path", s("/healthz"))]),
        span("b", vec![kv("http.target", s("/healthz"))]),
        span("c", vec![kv("url.path", s("/api"))]),
    ]);
    let out = f.traces(&mut req).unwrap();
    assert_eq!(out.dropped, 2);
    assert_eq!(spans(&req).len(), 1);
    assert_eq!(spans(&req)[0].name, "c");
    // All dropped: the scope and resource go too.
    let mut req = traces(vec![span("a", vec![kv("url.path", s("/healthz"))])]);
    assert_eq!(f.traces(&mut req).unwrap().dropped, 1);
    assert!(req.resource_spans.is_empty());
}

#[test]
fn drops_span_events() {
    let f = filter("traces: {spanevent: ['name == \"retry\"']}");
    let mut req = traces(vec![span("a", vec![])]);
    let out = f.traces(&mut req).unwrap();
    assert_eq!((out.dropped, out.dropped_events), (0, 1));
    assert_eq!(spans(&req)[0].events.len(), 1);
    assert_eq!(spans(&req)[0].events[0].name, "exception");
}

#[test]
fn drops_metrics_and_points() {
    let f = filter(
        r#"
metrics:
  metric: ['name == "noisy"']
  datapoint: ['attributes["host"] == "test"', 'value_double < 0']
"#,
    );
    let mut req = metrics(vec![
        gauge(
            "noisy",
            vec![number_point(vec![], 1.0), number_point(vec![], 2.0)],
        ),
        gauge(
            "cpu",
            vec![
                number_point(vec![kv("host", s("test"))], 1.0),
                number_point(vec![kv("host", s("prod"))], 1.0),
                number_point(vec![], -1.0),
            ],
        ),
        gauge("gone", vec![number_point(vec![kv("host", s("test"))], 1.0)]),
    ]);
    let out = f.metrics(&mut req).unwrap();
    assert_eq!(out.dropped, 2 + 2 + 1);
    let ms = &req.resource_metrics[0].scope_metrics[0].metrics;
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].name, "cpu");
    assert_eq!(points(&ms[0]).len(), 1);
}

#[test]
fn drops_log_records() {
    let f = filter(
        "logs: {log_record: ['severity_number < SEVERITY_NUMBER_WARN', 'IsMatch(body, \"^debug\")']}",
    );
    let mut req = logs(vec![log("hello", vec![])]);
    req.resource_logs[0].scope_logs[0].log_records.push({
        let mut l = log("keep", vec![]);
        l.severity_number = 17;
        l
    });
    let out = f.logs(&mut req).unwrap();
    assert_eq!(out.dropped, 1);
    assert_eq!(
        req.resource_logs[0].scope_logs[0].log_records[0].body,
        Some(s("keep"))
    );
}

#[test]
fn errors_follow_the_mode() {
    let config = |mode| FilterConfig {
        error_mode: mode,
        traces: TraceConditions {
            span: vec![r#"attributes["n"] + 1 > 2"#.into()],
            spanevent: vec![],
        },
        ..Default::default()
    };
    let make = || {
        traces(vec![
            span("bad", vec![kv("n", s("x"))]),
            span("hit", vec![kv("n", i(5))]),
            span("miss", vec![kv("n", i(0))]),
        ])
    };
    let mut req = make();
    let e = Filter::new(&config(ErrorMode::Propagate))
        .unwrap()
        .traces(&mut req)
        .unwrap_err();
    assert!(e.message.contains("arithmetic on string and int"), "{e}");
    assert!(e.to_string().starts_with("condition 1 ("), "{e}");
    for mode in [ErrorMode::Ignore, ErrorMode::Silent] {
        let mut req = make();
        let out = Filter::new(&config(mode))
            .unwrap()
            .traces(&mut req)
            .unwrap();
        // The failing span is kept (its condition counts as false).
        assert_eq!((out.dropped, out.errors), (1, 1));
        let names: Vec<&str> = spans(&req).iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["bad", "miss"]);
    }
}
