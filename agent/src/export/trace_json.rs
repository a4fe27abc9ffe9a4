//! OTLP/JSON for trace requests, written straight into the line buffer.
//!
//! The serde path (derive on the generated types) allocates a string for
//! every id (hex), every 64-bit integer (decimal string) and every integer
//! attribute, and then the line is scanned again for `null`s: at tens of
//! thousands of spans a second that was most of the file exporter's cost.
//! This writer produces the same bytes without those allocations. It covers
//! the shapes the agent's own spans and most received spans have (scalar
//! attribute values, no events or links); for anything else it declines and
//! the caller takes the serde path, so the output never depends on which
//! path wrote it (the tests compare both).

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status},
};

/// Appends `request` as one OTLP/JSON line (with its `\n`) to `out`, or
/// returns false, leaving `out` as it was, when the request has a field
/// this writer does not cover.
pub fn write_trace_line(request: &ExportTraceServiceRequest, out: &mut Vec<u8>) -> bool {
    if !covered(request) {
        return false;
    }
    out.extend_from_slice(b"{\"resourceSpans\":[");
    for (i, rs) in request.resource_spans.iter().enumerate() {
        comma(out, i);
        resource_spans(out, rs);
    }
    out.extend_from_slice(b"]}\n");
    true
}

/// Whether every field in `request` is one this writer writes as serde does.
fn covered(request: &ExportTraceServiceRequest) -> bool {
    request.resource_spans.iter().all(|rs| {
        rs.resource
            .as_ref()
            .is_none_or(|r| r.entity_refs.is_empty() && plain_attributes(&r.attributes))
            && rs.scope_spans.iter().all(|ss| {
                ss.scope
                    .as_ref()
                    .is_none_or(|s| plain_attributes(&s.attributes))
                    && ss.spans.iter().all(|span| {
                        span.events.is_empty()
                            && span.links.is_empty()
                            && plain_attributes(&span.attributes)
                    })
            })
    })
}

/// Scalar values only (serde writes a non-finite double as `null`, which
/// the line then loses: left to that path).
fn plain_attributes(attributes: &[KeyValue]) -> bool {
    attributes.iter().all(|kv| {
        kv.key_strindex == 0
            && match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(_) | Value::BoolValue(_) | Value::IntValue(_)) => true,
                Some(Value::DoubleValue(d)) => d.is_finite(),
                _ => false,
            }
    })
}

fn comma(out: &mut Vec<u8>, index: usize) {
    if index > 0 {
        out.push(b',');
    }
}

fn resource_spans(out: &mut Vec<u8>, rs: &ResourceSpans) {
    out.push(b'{');
    if let Some(resource) = &rs.resource {
        out.extend_from_slice(b"\"resource\":");
        resource_json(out, resource);
        out.push(b',');
    }
    out.extend_from_slice(b"\"scopeSpans\":[");
    for (i, ss) in rs.scope_spans.iter().enumerate() {
        comma(out, i);
        scope_spans(out, ss);
    }
    out.extend_from_slice(b"],\"schemaUrl\":");
    string(out, &rs.schema_url);
    out.push(b'}');
}

fn resource_json(out: &mut Vec<u8>, resource: &Resource) {
    out.extend_from_slice(b"{\"attributes\":");
    attributes(out, &resource.attributes);
    out.extend_from_slice(b",\"droppedAttributesCount\":");
    number(out, resource.dropped_attributes_count);
    out.extend_from_slice(b",\"entityRefs\":[]}");
}

fn scope_spans(out: &mut Vec<u8>, ss: &ScopeSpans) {
    out.push(b'{');
    if let Some(scope) = &ss.scope {
        out.extend_from_slice(b"\"scope\":");
        scope_json(out, scope);
        out.push(b',');
    }
    out.extend_from_slice(b"\"spans\":[");
    for (i, span) in ss.spans.iter().enumerate() {
        comma(out, i);
        span_json(out, span);
    }
    out.extend_from_slice(b"],\"schemaUrl\":");
    string(out, &ss.schema_url);
    out.push(b'}');
}

fn scope_json(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    out.extend_from_slice(b"{\"name\":");
    string(out, &scope.name);
    out.extend_from_slice(b",\"version\":");
    string(out, &scope.version);
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, &scope.attributes);
    out.extend_from_slice(b",\"droppedAttributesCount\":");
    number(out, scope.dropped_attributes_count);
    out.push(b'}');
}

fn span_json(out: &mut Vec<u8>, span: &Span) {
    out.extend_from_slice(b"{\"traceId\":");
    hex(out, &span.trace_id);
    out.extend_from_slice(b",\"spanId\":");
    hex(out, &span.span_id);
    out.extend_from_slice(b",\"traceState\":");
    string(out, &span.trace_state);
    out.extend_from_slice(b",\"parentSpanId\":");
    hex(out, &span.parent_span_id);
    out.extend_from_slice(b",\"flags\":");
    number(out, span.flags);
    out.extend_from_slice(b",\"name\":");
    string(out, &span.name);
    out.extend_from_slice(b",\"kind\":");
    number(out, span.kind);
    out.extend_from_slice(b",\"startTimeUnixNano\":");
    quoted_number(out, span.start_time_unix_nano);
    out.extend_from_slice(b",\"endTimeUnixNano\":");
    quoted_number(out, span.end_time_unix_nano);
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, &span.attributes);
    out.extend_from_slice(b",\"droppedAttributesCount\":");
    number(out, span.dropped_attributes_count);
    out.extend_from_slice(b",\"events\":[],\"droppedEventsCount\":");
    number(out, span.dropped_events_count);
    out.extend_from_slice(b",\"links\":[],\"droppedLinksCount\":");
    number(out, span.dropped_links_count);
    if let Some(status) = &span.status {
        out.extend_from_slice(b",\"status\":");
        status_json(out, status);
    }
    out.push(b'}');
}

fn status_json(out: &mut Vec<u8>, status: &Status) {
    out.extend_from_slice(b"{\"message\":");
    string(out, &status.message);
    out.extend_from_slice(b",\"code\":");
    number(out, status.code);
    out.push(b'}');
}

fn attributes(out: &mut Vec<u8>, attributes: &[KeyValue]) {
    out.push(b'[');
    for (i, kv) in attributes.iter().enumerate() {
        comma(out, i);
        out.extend_from_slice(b"{\"key\":");
        string(out, &kv.key);
        out.extend_from_slice(b",\"value\":");
        any_value(out, kv.value.as_ref());
        out.push(b'}');
    }
    out.push(b']');
}

/// Only the scalar values [`plain_attributes`] lets through.
fn any_value(out: &mut Vec<u8>, value: Option<&AnyValue>) {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => {
            out.extend_from_slice(b"{\"stringValue\":");
            string(out, s);
        }
        Some(Value::BoolValue(b)) => {
            out.extend_from_slice(if *b {
                b"{\"boolValue\":true"
            } else {
                b"{\"boolValue\":false"
            });
        }
        Some(Value::IntValue(n)) => {
            out.extend_from_slice(b"{\"intValue\":");
            quoted_number(out, *n);
        }
        Some(Value::DoubleValue(d)) => {
            out.extend_from_slice(b"{\"doubleValue\":");
            number(out, *d);
        }
        // Not reached: `covered` declined the request.
        _ => out.push(b'{'),
    }
    out.push(b'}');
}

/// A JSON string, escaped exactly as serde_json escapes it.
pub(super) fn string(out: &mut Vec<u8>, value: &str) {
    // Most values (names, paths, addresses) hold nothing to escape: copied
    // whole after one scan, instead of serde_json's escaping writer, which
    // cost more than the rest of the line at saturation.
    if !has_escapes(value.as_bytes()) {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Whether `bytes` hold a byte [`needs_escape`]. Chunks are tested without
/// stopping early, which lets the compiler test a chunk's bytes at once:
/// every attribute key and value of every span passes here.
fn has_escapes(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | needs_escape(b)) {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .fold(false, |any, &b| any | needs_escape(b))
}

/// The bytes serde_json escapes in a string: quote, backslash and the
/// control characters below space.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// A number as serde_json writes it (itoa, ryu): never fails into a Vec.
pub(super) fn number(out: &mut Vec<u8>, value: impl serde::Serialize) {
    let _ = serde_json::to_writer(&mut *out, &value);
}

/// 64-bit integers are decimal strings in OTLP/JSON.
pub(super) fn quoted_number(out: &mut Vec<u8>, value: impl serde::Serialize) {
    out.push(b'"');
    number(out, value);
    out.push(b'"');
}

/// Ids as lowercase hex (the OTLP/JSON deviation from proto3's base64).
pub(super) fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2 + 2);
    out.push(b'"');
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
    out.push(b'"');
}
