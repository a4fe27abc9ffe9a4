//! OTLP/JSON trace lines written straight from the agent's spans: the same
//! bytes as converting them to OTLP messages and writing those (the tests
//! compare), without building, and then freeing, a message tree per batch.

use super::{
    agent_spans::AgentSpans,
    convert::{SCOPE_NAME, SCOPE_VERSION},
    trace_json::{hex, number, quoted_number, string},
};
use crate::signal::{AttrValue, Resource, Span, SpanKind, SpanStatus};

/// Appends `spans` as one OTLP/JSON line (with its `\n`) to `out`, or
/// returns false, leaving `out` as it was, when an attribute is a
/// non-finite double (OTLP/JSON has no such number: the serde path, which
/// drops it, writes that batch).
pub fn write_agent_spans_line(spans: &AgentSpans, out: &mut Vec<u8>) -> bool {
    let covered = spans.groups.iter().all(|(resource, spans)| {
        finite(&resource.attributes) && spans.iter().all(|span| finite(&span.attributes))
    });
    if !covered {
        return false;
    }
    out.extend_from_slice(b"{\"resourceSpans\":[");
    for (i, (resource, spans)) in spans.groups.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        resource_spans(out, resource, spans);
    }
    out.extend_from_slice(b"]}\n");
    true
}

fn finite(attributes: &[(&'static str, AttrValue)]) -> bool {
    attributes
        .iter()
        .all(|(_, value)| !matches!(value, AttrValue::Double(d) if !d.is_finite()))
}

/// One resource's spans under the agent's scope, as `convert` groups them.
fn resource_spans(out: &mut Vec<u8>, resource: &Resource, spans: &[Span]) {
    out.extend_from_slice(b"{\"resource\":{\"attributes\":");
    attributes(out, &resource.attributes);
    out.extend_from_slice(
        b",\"droppedAttributesCount\":0,\"entityRefs\":[]},\"scopeSpans\":[{\"scope\":{\"name\":",
    );
    string(out, SCOPE_NAME);
    out.extend_from_slice(b",\"version\":");
    string(out, SCOPE_VERSION);
    out.extend_from_slice(b",\"attributes\":[],\"droppedAttributesCount\":0},\"spans\":[");
    for (i, span) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        span_json(out, span);
    }
    out.extend_from_slice(b"],\"schemaUrl\":\"\"}],\"schemaUrl\":\"\"}");
}

fn span_json(out: &mut Vec<u8>, span: &Span) {
    out.extend_from_slice(b"{\"traceId\":");
    hex(out, &span.trace_id);
    out.extend_from_slice(b",\"spanId\":");
    hex(out, &span.span_id);
    out.extend_from_slice(b",\"traceState\":\"\",\"parentSpanId\":");
    // A root span's parent is empty bytes: an empty string.
    hex(
        out,
        span.parent_span_id.as_ref().map_or(&[][..], |p| &p[..]),
    );
    out.extend_from_slice(b",\"flags\":0,\"name\":");
    string(out, &span.name);
    // The OTLP enum values: SPAN_KIND_SERVER, SPAN_KIND_CLIENT.
    out.extend_from_slice(match span.kind {
        SpanKind::Server => b",\"kind\":2,\"startTimeUnixNano\":",
        SpanKind::Client => b",\"kind\":3,\"startTimeUnixNano\":",
    });
    quoted_number(out, span.start_unix_nano);
    out.extend_from_slice(b",\"endTimeUnixNano\":");
    quoted_number(out, span.end_unix_nano);
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, &span.attributes);
    out.extend_from_slice(
        b",\"droppedAttributesCount\":0,\"events\":[],\"droppedEventsCount\":0,\
          \"links\":[],\"droppedLinksCount\":0,\"status\":{\"message\":",
    );
    // STATUS_CODE_UNSET, STATUS_CODE_ERROR.
    match &span.status {
        SpanStatus::Unset => out.extend_from_slice(b"\"\",\"code\":0}}"),
        SpanStatus::Error { message } => {
            string(out, message);
            out.extend_from_slice(b",\"code\":2}}");
        }
    }
}

fn attributes(out: &mut Vec<u8>, attributes: &[(&'static str, AttrValue)]) {
    out.push(b'[');
    for (i, (key, value)) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":");
        string(out, key);
        out.extend_from_slice(b",\"value\":");
        match value {
            AttrValue::Str(s) => {
                out.extend_from_slice(b"{\"stringValue\":");
                string(out, s);
            }
            AttrValue::Int(n) => {
                out.extend_from_slice(b"{\"intValue\":");
                quoted_number(out, *n);
            }
            AttrValue::Bool(true) => out.extend_from_slice(b"{\"boolValue\":true"),
            AttrValue::Bool(false) => out.extend_from_slice(b"{\"boolValue\":false"),
            AttrValue::Double(d) => {
                out.extend_from_slice(b"{\"doubleValue\":");
                number(out, *d);
            }
        }
        out.extend_from_slice(b"}}");
    }
    out.push(b']');
}
