//! The agent-span writer against converting to OTLP messages and writing
//! those: the same bytes, and a decline where OTLP/JSON has no number.

use std::sync::Arc;

use super::{
    agent_spans::AgentSpans,
    convert::convert,
    encode_json_line, encode_trace_line,
    span_json::write_agent_spans_line,
    test_support::{resource, span},
};
use crate::signal::{AttrValue, Resource, Signal, SpanKind, SpanStatus};

fn spans_of(signals: Vec<Signal>) -> AgentSpans {
    convert(signals).agent_spans.expect("spans")
}

fn direct(spans: &AgentSpans) -> Option<String> {
    let mut out = Vec::new();
    write_agent_spans_line(spans, &mut out).then(|| String::from_utf8(out).unwrap())
}

fn via_messages(spans: &AgentSpans) -> String {
    String::from_utf8(encode_trace_line(&spans.to_request()).unwrap()).unwrap()
}

#[test]
fn the_same_bytes_as_through_otlp_messages() {
    let res = resource("nginx \"edge\"\n", 42);
    let mut error = span(&res, 7, Some([0xab; 8]));
    error.kind = SpanKind::Client;
    error.status = SpanStatus::Error {
        message: "HTTP 503 \"x\"".to_owned(),
    };
    error.name = "GET\u{1}/é✓".into();
    for (key, value) in [
        ("user_agent.original", AttrValue::from("curl/8 \"x\"\\\t")),
        ("empty", AttrValue::from("")),
        ("t", AttrValue::Bool(true)),
        ("f", AttrValue::Bool(false)),
        ("ratio", AttrValue::Double(0.25)),
        ("whole", AttrValue::Double(3.0)),
        ("negative zero", AttrValue::Double(-0.0)),
        ("big", AttrValue::Double(1e300)),
        ("imin", AttrValue::Int(i64::MIN)),
        ("imax", AttrValue::Int(i64::MAX)),
    ] {
        error.attributes.push((key, value));
    }
    let mut extremes = span(&res, 9, None);
    extremes.start_unix_nano = u64::MAX;
    extremes.end_unix_nano = 0;
    extremes.attributes.clear();
    let other = resource("other", 43);
    let bare = Arc::new(Resource {
        attributes: Vec::new(),
    });
    let spans = spans_of(vec![
        Signal::Span(span(&res, 1, None)),
        Signal::Span(error),
        Signal::Span(span(&other, 2, None)),
        Signal::Span(extremes),
        Signal::Span(span(&bare, 3, Some([1; 8]))),
        // Equal to `res` by value: its group.
        Signal::Span(span(&Arc::new((*res).clone()), 4, None)),
    ]);
    assert_eq!(spans.groups.len(), 3);
    let line = direct(&spans).expect("finite numbers only");
    assert_eq!(line, via_messages(&spans));
    // The messages' line is serde's own for them.
    assert_eq!(
        line,
        String::from_utf8(encode_json_line(&spans.to_request()).unwrap()).unwrap()
    );
    assert_eq!(spans.clone().into_request(), spans.to_request());
}

#[test]
fn non_finite_doubles_are_left_to_the_messages() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let res = resource("nginx", 1);
        let mut odd = span(&res, 1, None);
        odd.attributes.push(("d", AttrValue::Double(bad)));
        let spans = spans_of(vec![Signal::Span(odd)]);
        let mut out = b"kept".to_vec();
        assert!(!write_agent_spans_line(&spans, &mut out));
        assert_eq!(out, b"kept", "nothing written");

        let odd_resource = Arc::new(Resource {
            attributes: vec![("d", AttrValue::Double(bad))],
        });
        let spans = spans_of(vec![Signal::Span(span(&odd_resource, 1, None))]);
        assert!(direct(&spans).is_none());
        // The messages' path still writes a line.
        assert!(via_messages(&spans).ends_with('\n'));
    }
}
