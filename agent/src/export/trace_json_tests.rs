//! The direct trace writer against the serde path: the same bytes for every
//! field kind it covers, and a decline (so serde writes) for the rest.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span},
};

use super::{
    convert::convert,
    encode_json_line, encode_trace_line,
    test_support::{resource, span},
    trace_json::write_trace_line,
};
use crate::signal::{AttrValue, Signal, SpanKind, SpanStatus};

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Strings that need escaping, numbers at their limits, every scalar kind.
fn every_scalar() -> Vec<KeyValue> {
    vec![
        kv("s", Value::StringValue("plain".to_owned())),
        kv(
            "esc\"aped\\",
            Value::StringValue("q\"b\\s/\n\r\t\u{1}\u{7f}é✓😀".to_owned()),
        ),
        kv("empty", Value::StringValue(String::new())),
        // Either side of the escaping boundary, each alone.
        kv("below space", Value::StringValue("\u{1f}".to_owned())),
        kv("space and up", Value::StringValue(" ~\u{7f}é".to_owned())),
        kv("quote", Value::StringValue("\"".to_owned())),
        kv("t", Value::BoolValue(true)),
        kv("f", Value::BoolValue(false)),
        kv("i", Value::IntValue(200)),
        kv("imin", Value::IntValue(i64::MIN)),
        kv("imax", Value::IntValue(i64::MAX)),
        kv("d", Value::DoubleValue(0.35)),
        kv("dneg", Value::DoubleValue(-0.0)),
        kv("dbig", Value::DoubleValue(1e300)),
        kv("dint", Value::DoubleValue(3.0)),
    ]
}

fn proto_span(n: u8) -> Span {
    Span {
        trace_id: (0..16).map(|i| i * 17 + n).collect(),
        span_id: vec![0xab, 0, 1, 0xff, 2, 3, 4, n],
        trace_state: "vendor=a,other=\"b\"".to_owned(),
        parent_span_id: if n.is_multiple_of(2) {
            Vec::new()
        } else {
            vec![9; 8]
        },
        flags: 0x301,
        name: format!("GET /x?{n}\u{0}"),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: u64::MAX,
        end_time_unix_nano: 0,
        attributes: every_scalar(),
        dropped_attributes_count: 3,
        events: Vec::new(),
        dropped_events_count: 4,
        links: Vec::new(),
        dropped_links_count: u32::MAX,
        status: Some(Status {
            message: "HTTP 500 \"boom\"".to_owned(),
            code: 2,
        }),
    }
}

fn request() -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(Resource {
                    attributes: every_scalar(),
                    dropped_attributes_count: 7,
                    entity_refs: Vec::new(),
                }),
                scope_spans: vec![
                    ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "scope\"1".to_owned(),
                            version: "1.2.3".to_owned(),
                            attributes: every_scalar(),
                            dropped_attributes_count: 1,
                        }),
                        spans: vec![proto_span(1), proto_span(2)],
                        schema_url: "https://opentelemetry.io/schemas/1.26.0".to_owned(),
                    },
                    // Unset optionals (null in serde's output, then removed).
                    ScopeSpans {
                        scope: None,
                        spans: vec![Span {
                            status: None,
                            ..proto_span(3)
                        }],
                        schema_url: String::new(),
                    },
                    ScopeSpans::default(),
                ],
                schema_url: String::new(),
            },
            ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope::default()),
                    spans: vec![Span::default()],
                    schema_url: String::new(),
                }],
                schema_url: "s".to_owned(),
            },
            ResourceSpans::default(),
        ],
    }
}

fn direct(request: &ExportTraceServiceRequest) -> Option<String> {
    let mut out = Vec::new();
    write_trace_line(request, &mut out).then(|| String::from_utf8(out).unwrap())
}

fn serde_line(request: &ExportTraceServiceRequest) -> String {
    String::from_utf8(encode_json_line(request).unwrap()).unwrap()
}

#[test]
fn direct_writer_matches_serde_for_every_covered_field() {
    let request = request();
    let line = direct(&request).expect("covered");
    assert_eq!(line, serde_line(&request));
    // And it is JSON the proto types read back as the same request.
    let back: ExportTraceServiceRequest = serde_json::from_str(&line).unwrap();
    assert_eq!(back, request);
    assert_eq!(
        direct(&ExportTraceServiceRequest::default()).unwrap(),
        serde_line(&ExportTraceServiceRequest::default())
    );
}

#[test]
fn direct_writer_matches_serde_for_the_agents_spans() {
    let res = resource("nginx", 42);
    let mut error = span(&res, 7, Some([0xab; 8]));
    error.kind = SpanKind::Client;
    error.status = SpanStatus::Error {
        message: "HTTP 503".to_owned(),
    };
    error
        .attributes
        .push(("user_agent.original", AttrValue::from("curl/8 \"x\"")));
    error.attributes.push(("sampled", AttrValue::Bool(true)));
    error.attributes.push(("ratio", AttrValue::Double(0.25)));
    let other = resource("other", 43);
    let batch = convert(vec![
        Signal::Span(span(&res, 1, None)),
        Signal::Span(error),
        Signal::Span(span(&other, 2, None)),
    ]);
    let traces = batch.traces_request().unwrap().into_owned();
    let line = direct(&traces).expect("the agent's spans are covered");
    assert_eq!(line, serde_line(&traces));
    assert_eq!(
        String::from_utf8(encode_trace_line(&traces).unwrap()).unwrap(),
        line
    );
}

#[test]
fn uncovered_fields_fall_back_to_serde() {
    type Change = Box<dyn Fn(&mut ExportTraceServiceRequest)>;
    let uncovered: Vec<Change> = vec![
        Box::new(|r| r.resource_spans[0].scope_spans[0].spans[0].events = vec![Default::default()]),
        Box::new(|r| r.resource_spans[0].scope_spans[0].spans[0].links = vec![Default::default()]),
        Box::new(|r| {
            r.resource_spans[0].scope_spans[0].spans[0]
                .attributes
                .push(kv("a", Value::ArrayValue(ArrayValue::default())))
        }),
        Box::new(|r| {
            r.resource_spans[0].scope_spans[0].spans[0]
                .attributes
                .push(kv("b", Value::BytesValue(vec![1, 2])))
        }),
        Box::new(|r| {
            r.resource_spans[0].scope_spans[0].spans[0]
                .attributes
                .push(kv("nan", Value::DoubleValue(f64::NAN)))
        }),
        Box::new(|r| {
            r.resource_spans[0].scope_spans[0].spans[0]
                .attributes
                .push(KeyValue {
                    key: "none".to_owned(),
                    value: None,
                    ..Default::default()
                })
        }),
        Box::new(|r| {
            r.resource_spans[0].scope_spans[0].spans[0]
                .attributes
                .push(KeyValue {
                    key: "empty".to_owned(),
                    value: Some(AnyValue { value: None }),
                    ..Default::default()
                })
        }),
        Box::new(|r| r.resource_spans[0].scope_spans[0].spans[0].attributes[0].key_strindex = 1),
        Box::new(|r| {
            if let Some(resource) = &mut r.resource_spans[0].resource {
                resource.entity_refs = vec![Default::default()];
            }
        }),
        Box::new(|r| {
            if let Some(scope) = &mut r.resource_spans[0].scope_spans[0].scope {
                scope
                    .attributes
                    .push(kv("inf", Value::DoubleValue(f64::INFINITY)));
            }
        }),
    ];
    for (i, change) in uncovered.iter().enumerate() {
        let mut request = request();
        change(&mut request);
        let mut out = b"kept".to_vec();
        assert!(!write_trace_line(&request, &mut out), "case {i}");
        assert_eq!(out, b"kept", "case {i}: nothing written");
        // The file exporter still writes it, through serde.
        assert_eq!(
            String::from_utf8(encode_trace_line(&request).unwrap()).unwrap(),
            serde_line(&request),
            "case {i}"
        );
    }
}

#[test]
fn escapes_are_found_wherever_they_sit() {
    // Strings scanned in chunks: an escape in the first chunk, a later
    // one, or the tail after the last whole chunk.
    for len in 0..40 {
        for at in 0..=len {
            for escaped in ['"', '\\', '\n', '\u{1f}'] {
                let mut value: String = "a".repeat(len);
                if at < len {
                    value.replace_range(at..=at, &escaped.to_string());
                }
                let mut request = request();
                request.resource_spans[0].scope_spans[0].spans[0].name = value.clone();
                let line = direct(&request).expect("covered");
                assert_eq!(line, serde_line(&request), "{value:?}");
            }
        }
    }
}

#[test]
fn strings_are_escaped_as_serde_escapes_them_at_every_length_and_position() {
    for len in 0..=40 {
        for at in 0..len.max(1) {
            for special in ['\0', '\u{1f}', '"', '\\', ' ', '\u{7f}', 'é', '✓', 'a'] {
                let text: String = (0..len)
                    .map(|i| if i == at { special } else { 'x' })
                    .collect();
                let mut written = Vec::new();
                super::trace_json::string(&mut written, &text);
                let expected = serde_json::to_vec(&text).unwrap();
                assert_eq!(written, expected, "{text:?}");
            }
        }
    }
}
