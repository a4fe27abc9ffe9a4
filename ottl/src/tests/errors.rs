//! Run-time errors under each error mode.

use crate::tests::helpers::*;
use crate::{Context, ErrorMode};

const STATEMENTS: &[&str] = &[
    r#"set(attributes["a"], attributes["n"] + 1)"#,
    r#"set(attributes["b"], "after")"#,
];

fn run(
    mode: ErrorMode,
    n: opentelemetry_proto::tonic::common::v1::AnyValue,
) -> (
    Result<crate::Outcome, crate::RunError>,
    Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) {
    let mut req = traces(vec![span("x", vec![kv("n", n)])]);
    let out = transform_mode(Context::Span, STATEMENTS, mode).traces(&mut req);
    (out, spans(&req)[0].attributes.clone())
}

#[test]
fn propagate_stops_at_the_first_error() {
    let (out, attrs) = run(ErrorMode::Propagate, s("x"));
    let e = out.unwrap_err();
    assert_eq!(e.index, 1);
    assert!(
        e.to_string()
            .starts_with("statement 1 (`set(attributes[\"a\"]"),
        "{e}"
    );
    assert!(e.message.contains("arithmetic on string and int"), "{e}");
    assert!(get(&attrs, "b").is_none());
}

#[test]
fn ignore_and_silent_count_and_go_on() {
    for mode in [ErrorMode::Ignore, ErrorMode::Silent] {
        let (out, attrs) = run(mode, s("x"));
        assert_eq!(out.unwrap().errors, 1);
        assert_eq!(get_str(&attrs, "b"), Some("after"));
        assert!(get(&attrs, "a").is_none());
    }
    let (out, attrs) = run(ErrorMode::Ignore, i(1));
    assert_eq!(out.unwrap().errors, 0);
    assert!(get(&attrs, "a").is_some());
}

#[test]
fn run_time_failures() {
    let cases = [
        (
            r#"set(attributes["x"], attributes["big"] + 1)"#,
            "integer overflow",
        ),
        (
            r#"set(attributes["x"], attributes["big"] * 2)"#,
            "integer overflow",
        ),
        (
            r#"set(attributes["x"], -attributes["min"])"#,
            "integer overflow",
        ),
        (
            r#"set(attributes["x"], 1 / attributes["zero"])"#,
            "division by zero",
        ),
        (
            r#"set(attributes["x"], 1.0 / attributes["zero"])"#,
            "division by zero",
        ),
        (
            r#"set(attributes["s"]["k"], 1)"#,
            "a string cannot be indexed by key",
        ),
        (r#"set(attributes["l"][5], 1)"#, "index 5 out of range"),
        (r#"set(name, 1)"#, "takes a string, not int"),
        (r#"set(kind, "server")"#, "takes an int"),
        (r#"set(start_time_unix_nano, -1)"#, "out of range"),
        (r#"set(trace_id, 0x01)"#, "16 bytes"),
        (r#"set(attributes, "x")"#, "takes a map"),
        (
            r#"set(attributes["x"], SHA256(attributes["zero"]))"#,
            "takes a string, not int",
        ),
        (
            r#"set(attributes["x"], Substring(attributes["s"], 2, 10))"#,
            "invalid range",
        ),
        (r#"delete_key(attributes["s"], "k")"#, "not a map"),
        (
            r#"set(attributes["x"], 1) where attributes["s"]"#,
            "not a bool",
        ),
        (
            r#"merge_maps(attributes, attributes["s"], "upsert")"#,
            "takes a map as source",
        ),
    ];
    for (statement, message) in cases {
        let mut req = traces(vec![span(
            "x",
            vec![
                kv("big", i(i64::MAX)),
                kv("min", i(i64::MIN)),
                kv("zero", i(0)),
                kv("s", s("str")),
                kv("l", list(vec![])),
            ],
        )]);
        let e = transform(Context::Span, &[statement])
            .traces(&mut req)
            .unwrap_err();
        assert!(e.message.contains(message), "{statement}: {e}");
        let out = transform_mode(Context::Span, &[statement], ErrorMode::Silent)
            .traces(&mut req)
            .unwrap();
        assert_eq!(out.errors, 1, "{statement}");
    }
}
