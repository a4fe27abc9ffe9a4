//! Reading the agent's `traces.jsonl` (one OTLP/JSON export request per
//! line) back into flat spans.

use std::{collections::BTreeMap, path::Path};

use serde_json::Value;

/// OTLP SpanKind values.
pub const KIND_SERVER: i64 = 2;
pub const KIND_CLIENT: i64 = 3;

#[derive(Debug, Clone)]
pub struct FlatSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: i64,
    pub start: u128,
    pub end: u128,
    pub status_code: i64,
    pub attributes: BTreeMap<String, Value>,
    pub resource: BTreeMap<String, Value>,
}

impl FlatSpan {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Value::as_str)
    }

    /// Integer attributes arrive as JSON strings or numbers.
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        as_int(self.attr(key)?)
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(Value::as_str)
    }
}

fn as_int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// `[{key, value: {stringValue|intValue|…}}]` as a map of plain values.
fn attributes(list: Option<&Value>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for kv in list.and_then(Value::as_array).into_iter().flatten() {
        let Some(key) = kv["key"].as_str() else {
            continue;
        };
        let value = &kv["value"];
        let plain = ["stringValue", "intValue", "doubleValue", "boolValue"]
            .iter()
            .find_map(|k| value.get(*k).cloned())
            .unwrap_or(Value::Null);
        out.insert(key.to_owned(), plain);
    }
    out
}

/// Every span in the file (missing file: none).
pub fn read_spans(path: &Path) -> Vec<FlatSpan> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut spans = Vec::new();
    // Complete lines only: the agent may be writing the last one.
    for line in text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && !l.trim().is_empty())
    {
        let request: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("traces.jsonl line is not JSON ({e}): {line}"));
        for rs in request["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attributes(rs["resource"].get("attributes"));
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let time = |k: &str| {
                        s[k].as_str()
                            .and_then(|v| v.parse().ok())
                            .or_else(|| s[k].as_u64().map(u128::from))
                            .unwrap_or(0)
                    };
                    spans.push(FlatSpan {
                        trace_id: s["traceId"].as_str().unwrap_or_default().to_owned(),
                        span_id: s["spanId"].as_str().unwrap_or_default().to_owned(),
                        parent_span_id: s["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                        name: s["name"].as_str().unwrap_or_default().to_owned(),
                        kind: as_int(&s["kind"]).unwrap_or(0),
                        start: time("startTimeUnixNano"),
                        end: time("endTimeUnixNano"),
                        status_code: s
                            .get("status")
                            .and_then(|st| st.get("code"))
                            .and_then(as_int)
                            .unwrap_or(0),
                        attributes: attributes(s.get("attributes")),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
    spans
}
