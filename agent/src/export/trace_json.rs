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
/// every attribute key and value of every span passes here. So is the
/// tail: as the last 16 bytes (overlapping the chunks tested), or in a
/// shorter string as overlapping words. Most keys and values are that
/// short, and testing them byte by byte took most of the writer's time.
fn has_escapes(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk_has_escapes(chunk) {
            return true;
        }
    }
    if chunks.remainder().is_empty() {
        return false;
    }
    let n = bytes.len();
    let tail = |len: usize| bytes.get(n.saturating_sub(len)..).unwrap_or_default();
    if n >= 16 {
        return chunk_has_escapes(tail(16));
    }
    if n >= 8 {
        return word_has_escapes(le_u64(bytes)) || word_has_escapes(le_u64(tail(8)));
    }
    if n >= 4 {
        return word_has_escapes(le_u32_padded(bytes)) || word_has_escapes(le_u32_padded(tail(4)));
    }
    bytes.iter().any(|&b| needs_escape(b))
}

fn chunk_has_escapes(chunk: &[u8]) -> bool {
    chunk.iter().fold(false, |any, &b| any | needs_escape(b))
}

/// The first 8 bytes of `bytes` (which holds at least 8) as a word.
fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    if let Some(first) = bytes.get(..8) {
        word.copy_from_slice(first);
    }
    u64::from_le_bytes(word)
}

/// The first 4 bytes of `bytes` (which holds at least 4) as a word whose
/// other 4 bytes are spaces, which need no escape.
fn le_u32_padded(bytes: &[u8]) -> u64 {
    let mut word = [b' '; 8];
    if let (Some(to), Some(first)) = (word.get_mut(..4), bytes.get(..4)) {
        to.copy_from_slice(first);
    }
    u64::from_le_bytes(word)
}

/// [`needs_escape`] for 8 bytes at once. `x - n` borrows into a byte's top
/// bit, where `!x` keeps it, exactly when some byte is below `n` (`n` at
/// most 0x80); equal bytes are zero bytes after an XOR.
fn word_has_escapes(word: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const TOP: u64 = ONES * 0x80;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & TOP;
    (below(word, 0x20)
        | below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1))
        != 0
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
