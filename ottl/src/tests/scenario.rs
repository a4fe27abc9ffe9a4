//! The end-to-end scenario: redaction across traces, metrics and logs, a
//! health-check filter and tenant routing; and hostile input.

use opentelemetry_proto::tonic::common::v1::any_value::Value as V;

use crate::tests::helpers::*;
use crate::{Condition, Context, Filter, FilterConfig, Transform, TransformConfig};

const CONFIG: &str = r#"
error_mode: ignore
trace_statements:
  - context: span
    statements:
      - set(attributes["card"], SHA256(attributes["card"])) where attributes["card"] != nil
      - delete_key(attributes, "password")
metric_statements:
  - context: datapoint
    statements:
      - keep_keys(attributes, ["http.method"])
log_statements:
  - context: log
    statements:
      - set(body, Substring(body, 0, 16)) where IsString(body) and Len(body) > 16
      - truncate_all(attributes, 8)
"#;

#[test]
fn redaction_filter_and_routing() {
    let config: TransformConfig = serde_yaml_ng::from_str(CONFIG).unwrap();
    let t = Transform::new(&config).unwrap();

    let mut req = traces(vec![
        span(
            "pay",
            vec![
                kv("card", s("4111111111111111")),
                kv("password", s("hunter2")),
                kv("url.path", s("/pay")),
            ],
        ),
        span("plain", vec![kv("url.path", s("/healthz"))]),
    ]);
    assert_eq!(t.traces(&mut req).unwrap().errors, 0);
    let pay = &spans(&req)[0].attributes;
    assert_eq!(
        get_str(pay, "card"),
        Some("9bbef19476623ca56c17da75fd57734dbf82530686043a6e491c6d71befe8f6e")
    );
    assert!(get(pay, "password").is_none());
    assert!(get(&spans(&req)[1].attributes, "card").is_none());

    let mut mreq = metrics(vec![sum(
        "http.server.requests",
        vec![number_point(
            vec![
                kv("http.method", s("GET")),
                kv("user.id", s("42")),
                kv("url.full", s("https://x/y?token=1")),
            ],
            1.0,
        )],
    )]);
    t.metrics(&mut mreq).unwrap();
    let p = &points(&mreq.resource_metrics[0].scope_metrics[0].metrics[0])[0];
    assert_eq!(keys(&p.attributes), ["http.method"]);

    let mut lreq = logs(vec![
        log(
            "user 42 logged in from 10.0.0.1 with a token",
            vec![kv("session", s("0123456789abcdef"))],
        ),
        log("short", vec![]),
    ]);
    t.logs(&mut lreq).unwrap();
    let records = &lreq.resource_logs[0].scope_logs[0].log_records;
    assert_eq!(records[0].body, Some(s("user 42 logged i")));
    assert_eq!(get_str(&records[0].attributes, "session"), Some("01234567"));
    assert_eq!(records[1].body, Some(s("short")));

    let filter: FilterConfig = serde_yaml_ng::from_str(
        r#"
traces:
  span:
    - attributes["url.path"] == "/healthz"
    - attributes["http.target"] == "/healthz"
"#,
    )
    .unwrap();
    let out = Filter::new(&filter).unwrap().traces(&mut req).unwrap();
    assert_eq!(out.dropped, 1);
    assert_eq!(spans(&req).len(), 1);

    let route = Condition::new(
        r#"resource.attributes["tenant"] == "acme""#,
        Context::Resource,
    )
    .unwrap();
    let resource = req.resource_spans[0].resource.as_ref().unwrap();
    assert!(route.matches_resource(resource).unwrap());
}

#[test]
fn huge_values() {
    let huge = "x".repeat(8 << 20);
    let config: TransformConfig = serde_yaml_ng::from_str(CONFIG).unwrap();
    let t = Transform::new(&config).unwrap();
    let mut req = traces(vec![span(
        "big",
        vec![kv("card", s(&huge)), kv("password", s(&huge))],
    )]);
    t.traces(&mut req).unwrap();
    assert_eq!(
        get_str(&spans(&req)[0].attributes, "card").map(str::len),
        Some(64)
    );
    let mut lreq = logs(vec![log(&huge, vec![kv("a", s(&huge))])]);
    t.logs(&mut lreq).unwrap();
    let l = &lreq.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(l.body, Some(s(&huge[..16])));
    assert_eq!(get_str(&l.attributes, "a").map(str::len), Some(8));
    // A huge statement loads or fails cleanly.
    let long = format!(r#"set(attributes["k"], "{huge}")"#);
    let on = on_span(&[&long], vec![]);
    assert!(matches!(get(&on.attributes, "k"), Some(V::StringValue(v)) if v.len() == huge.len()));
    // Long operator chains count as nesting: refused past the bound, so
    // that compiling and running (both recursive) stay within the stack.
    let many = vec!["1"; 50_000].join(" + ");
    let e = load_error(&format!(r#"set(attributes["sum"], {many})"#), Context::Span);
    assert!(e.message.contains("nested deeper"), "{e}");
    let many = vec!["1"; 50].join(" + ");
    let mut req = traces(vec![span("x", vec![])]);
    transform(
        Context::Span,
        &[&format!(r#"set(attributes["sum"], {many})"#)],
    )
    .traces(&mut req)
    .unwrap();
    assert_eq!(
        get(&spans(&req)[0].attributes, "sum"),
        Some(&V::IntValue(50))
    );
}
