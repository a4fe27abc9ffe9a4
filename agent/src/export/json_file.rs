//! The file sink: `traces.jsonl`, `metrics.jsonl` and `logs.jsonl` in the data directory,
//! one OTLP/JSON `Export*ServiceRequest` per line.
//!
//! OTLP/JSON is the proto3 JSON mapping with the OTLP deviations: lowerCamelCase
//! keys, trace and span ids as hex (not base64), enums as integers, 64-bit
//! integers as decimal strings. opentelemetry-proto's serde derive produces
//! exactly that; the one thing removed here is `null` (an unset optional such
//! as a histogram's `min`), which proto3 JSON allows but some readers don't.
//!
//! Growth is bounded: when a line would take a file past its cap the file is
//! renamed to `<name>.1` (replacing the previous one) and a new file started,
//! so each signal uses at most twice the cap on disk, plus, for a moment,
//! the replaced `.1` while a thread of its own deletes it.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use super::{convert::OtlpBatch, span_json, trace_json};

/// Default size at which a `.jsonl` file is rotated.
pub const DEFAULT_ROTATE_BYTES: u64 = 256 * 1024 * 1024;

pub const TRACES_FILE: &str = "traces.jsonl";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const LOGS_FILE: &str = "logs.jsonl";

/// Serializes one message as an OTLP/JSON line (with its `\n`).
pub fn encode_json_line<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(message)?;
    // Spans the agent makes set every optional field; what SDKs send often
    // leaves some unset, which serializes as `null`.
    if memchr::memmem::find(&line, b":null").is_some() {
        line = strip_null_members(&line);
    }
    line.push(b'\n');
    Ok(line)
}

/// `json` (compact, as serde_json writes it) without its `"key":null`
/// object members: a field absent in OTLP/JSON means unset. Done on the
/// bytes, not through a JSON tree, which cost more than the encoding
/// itself; `null`s in arrays and inside strings are kept.
fn strip_null_members(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'"' {
            out.push(json[i]);
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < json.len() && json[i] != b'"' {
            i += if json[i] == b'\\' { 2 } else { 1 };
        }
        i = (i + 1).min(json.len());
        let is_key = json.get(i) == Some(&b':') && matches!(out.last(), Some(b'{' | b','));
        let rest = json.get(i + 1..).unwrap_or_default();
        if is_key && rest.starts_with(b"null") && matches!(rest.get(4), Some(b',' | b'}')) {
            i += 5;
            if json.get(i) == Some(&b',') {
                // The member's own comma goes with it.
                i += 1;
            } else if out.last() == Some(&b',') {
                // The last member: the comma before it goes.
                out.pop();
            }
            continue;
        }
        out.extend_from_slice(&json[start..i]);
    }
    out
}

/// What writing one signal's line did.
#[derive(Debug)]
pub enum LineOutcome {
    /// Nothing of this signal in the batch.
    Empty,
    Written,
    EncodeFailed(serde_json::Error),
    WriteFailed(io::Error),
}

#[derive(Debug)]
pub struct BatchOutcome {
    pub traces: LineOutcome,
    pub metrics: LineOutcome,
    pub logs: LineOutcome,
}

/// One file per signal; blocking I/O, so the pipeline calls it on the blocking pool.
#[derive(Debug)]
pub struct FileSink {
    traces: JsonlFile,
    /// The trace line being written, kept between batches.
    trace_line: Vec<u8>,
    metrics: JsonlFile,
    logs: JsonlFile,
}

impl FileSink {
    /// `delete_failures` counts rotated-out files that could not be
    /// deleted (each stays on disk until the next rotation replaces it).
    pub fn new(dir: &Path, rotate_bytes: u64, delete_failures: Counter) -> Self {
        let file = |name| JsonlFile::new(dir.join(name), rotate_bytes, delete_failures.clone());
        Self {
            traces: file(TRACES_FILE),
            trace_line: Vec::new(),
            metrics: file(METRICS_FILE),
            logs: file(LOGS_FILE),
        }
    }

    pub fn write_batch(&mut self, batch: &OtlpBatch) -> BatchOutcome {
        BatchOutcome {
            traces: write_trace_line(&mut self.traces, batch, &mut self.trace_line),
            metrics: write_line(&mut self.metrics, batch.metrics.as_ref()),
            logs: write_line(&mut self.logs, batch.logs.as_ref()),
        }
    }
}

/// Serializes a trace request as an OTLP/JSON line (with its `\n`):
/// written directly where [`trace_json`] covers it, else through serde.
pub fn encode_trace_line(
    request: &ExportTraceServiceRequest,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = Vec::new();
    encode_trace_line_into(request, &mut line)?;
    Ok(line)
}

/// [`encode_trace_line`] into `line` (cleared first), so one buffer serves
/// every batch.
fn encode_trace_line_into(
    request: &ExportTraceServiceRequest,
    line: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    line.clear();
    if !trace_json::write_trace_line(request, line) {
        *line = encode_json_line(request)?;
    }
    Ok(())
}

/// A reused line buffer grown past this is released after its batch.
const KEEP_LINE_BUFFER: usize = 8 * 1024 * 1024;

fn write_trace_line(file: &mut JsonlFile, batch: &OtlpBatch, line: &mut Vec<u8>) -> LineOutcome {
    line.clear();
    // The agent's own spans alone (the usual batch) are written from the
    // spans themselves; anything else from its OTLP messages.
    let encoded = match (&batch.traces, &batch.agent_spans) {
        (None, None) => return LineOutcome::Empty,
        (None, Some(spans)) if span_json::write_agent_spans_line(spans, line) => Ok(()),
        _ => match batch.traces_request() {
            Some(request) => encode_trace_line_into(&request, line),
            None => return LineOutcome::Empty,
        },
    };
    let outcome = match encoded {
        Err(err) => LineOutcome::EncodeFailed(err),
        Ok(()) => match file.append(line) {
            Ok(()) => LineOutcome::Written,
            Err(err) => LineOutcome::WriteFailed(err),
        },
    };
    if line.capacity() > KEEP_LINE_BUFFER {
        *line = Vec::new();
    }
    outcome
}

fn write_line<T: Serialize>(file: &mut JsonlFile, message: Option<&T>) -> LineOutcome {
    let Some(message) = message else {
        return LineOutcome::Empty;
    };
    match encode_json_line(message) {
        Err(err) => LineOutcome::EncodeFailed(err),
        Ok(line) => match file.append(&line) {
            Ok(()) => LineOutcome::Written,
            Err(err) => LineOutcome::WriteFailed(err),
        },
    }
}

#[derive(Debug)]
struct JsonlFile {
    path: PathBuf,
    rotate_bytes: u64,
    /// Opened on first write and reopened after an error, so a directory
    /// created (or a disk freed) later is picked up.
    file: Option<File>,
    /// Bytes in the file, all whole lines.
    size: u64,
    /// Deletes the `.1` the last rotation replaced. Freeing a file of the
    /// cap's size takes the file system tens of milliseconds (60–120 ms for
    /// 256 MiB here), long enough for the sink's queue to overflow at full
    /// load; one deletion at a time keeps the disk bound.
    deleter: Option<std::thread::JoinHandle<()>>,
    delete_failures: Counter,
}

impl Drop for JsonlFile {
    fn drop(&mut self) {
        self.finish_deleting();
    }
}

impl JsonlFile {
    fn new(path: PathBuf, rotate_bytes: u64, delete_failures: Counter) -> Self {
        Self {
            path,
            rotate_bytes,
            file: None,
            size: 0,
            deleter: None,
            delete_failures,
        }
    }

    fn open(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let rotated = suffixed(&self.path, ".1");
        let replaced = suffixed(&self.path, ".1.old");
        self.finish_deleting();
        // Renames are cheap; only the deletion frees the old `.1`'s blocks.
        let set_aside = match std::fs::rename(&rotated, &replaced) {
            Ok(()) => true,
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => return Err(err),
        };
        std::fs::rename(&self.path, &rotated)?;
        if set_aside {
            self.delete_later(replaced);
        }
        self.open()
    }

    fn delete_later(&mut self, path: PathBuf) {
        let spawned = std::thread::Builder::new()
            .name("selfops-rotate".into())
            .spawn({
                let path = path.clone();
                let failures = self.delete_failures.clone();
                move || remove_replaced(&path, &failures)
            });
        match spawned {
            Ok(deleter) => self.deleter = Some(deleter),
            // No thread to be had: deleted here, at the old cost.
            Err(_) => remove_replaced(&path, &self.delete_failures),
        }
    }

    fn finish_deleting(&mut self) {
        if let Some(deleter) = self.deleter.take() {
            let _ = deleter.join();
        }
    }

    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.open()?;
        }
        let len = line.len() as u64;
        if self.size > 0
            && self.size.saturating_add(len) > self.rotate_bytes
            && let Err(err) = self.rotate()
        {
            self.file = None;
            return Err(err);
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("file not open"));
        };
        match file.write_all(line) {
            Ok(()) => {
                self.size += len;
                Ok(())
            }
            Err(err) => {
                // Cut a partly written line so the file stays one JSON
                // document per line; reopen on the next batch.
                let _ = file.set_len(self.size);
                self.file = None;
                Err(err)
            }
        }
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_replaced(path: &Path, failures: &Counter) {
    if let Err(err) = std::fs::remove_file(path) {
        failures.inc();
        tracing::warn!(path = %path.display(), error = %err, "cannot delete a rotated-out export file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{
        convert::convert,
        test_support::{histogram, log_record, resource, span, temp_dir},
    };
    use crate::signal::Signal;

    /// The same, through a JSON tree.
    fn strip_by_tree(json: &str) -> String {
        fn strip(value: &mut serde_json::Value) {
            match value {
                serde_json::Value::Object(map) => {
                    map.retain(|_, v| !v.is_null());
                    map.values_mut().for_each(strip);
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let mut value: serde_json::Value = serde_json::from_str(json).unwrap();
        strip(&mut value);
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn null_members_are_stripped_from_the_bytes_as_from_a_tree() {
        for json in [
            r#"{"a":null}"#,
            r#"{"a":1,"b":null}"#,
            r#"{"a":null,"b":1}"#,
            r#"{"a":null,"b":null,"c":{"d":null,"e":[null,{"f":null,"g":"x"}]}}"#,
            r#"{"k\":null":null,"s":"a\"b:null,","t":":null}"}"#,
            r#"{"resource":null,"scopeSpans":[{"scope":null,"spans":[{"name":"x","status":null}]}]}"#,
            r#"[null,{"a":null},"null"]"#,
            r#"{"a":nullx}"#,
        ] {
            let bytes = String::from_utf8(strip_null_members(json.as_bytes())).unwrap();
            match serde_json::from_str::<serde_json::Value>(json) {
                Ok(_) => assert_eq!(bytes, strip_by_tree(json), "{json}"),
                // Not JSON (serde_json never writes it): left as it was.
                Err(_) => assert_eq!(bytes, json),
            }
        }
    }

    fn sample_batch() -> OtlpBatch {
        let res = resource("nginx", 42);
        let mut child = span(&res, 7, Some([0xab; 8]));
        child.status = crate::signal::SpanStatus::Error {
            message: "boom".to_owned(),
        };
        convert(vec![
            Signal::Span(span(&res, 1, None)),
            Signal::Span(child),
            Signal::Histogram(histogram(&res, "http.server.request.duration")),
            Signal::Log(log_record(&res, 5)),
        ])
    }

    #[test]
    fn trace_line_is_otlp_json() {
        let batch = sample_batch();
        let line = encode_json_line(&*batch.traces_request().unwrap()).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let rs = &json["resourceSpans"][0];
        let attrs = rs["resource"]["attributes"].as_array().unwrap();
        assert_eq!(attrs[0]["key"], "service.name");
        assert_eq!(attrs[0]["value"]["stringValue"], "nginx");
        assert_eq!(attrs[1]["key"], "process.pid");
        // int64 is a decimal string in proto3 JSON.
        assert_eq!(attrs[1]["value"]["intValue"], "42");
        assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "selfops");

        let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
        let root = &spans[0];
        let trace_id = root["traceId"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32);
        assert_eq!(trace_id, "0102030405060708090a0b0c0d0e0f01");
        let span_id = root["spanId"].as_str().unwrap();
        assert_eq!(span_id.len(), 16);
        assert!(
            span_id
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert_eq!(root["parentSpanId"], "");
        assert_eq!(root["kind"], 2);
        assert_eq!(root["startTimeUnixNano"], "1700000000000000001");
        assert_eq!(root["endTimeUnixNano"], "1700000000500000001");
        assert_eq!(root["status"]["code"], 0);
        assert_eq!(root["attributes"][1]["value"]["intValue"], "200");

        let child = &spans[1];
        assert_eq!(child["parentSpanId"], "abababababababab");
        assert_eq!(child["status"]["code"], 2);
        assert_eq!(child["status"]["message"], "boom");

        let text = std::str::from_utf8(&line).unwrap();
        assert!(!text.contains("null"), "{text}");
        assert!(!text.contains("trace_id"), "{text}");
    }

    #[test]
    fn metric_line_is_otlp_json() {
        let batch = sample_batch();
        let line = encode_json_line(batch.metrics.as_ref().unwrap()).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let metric = &json["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0];
        assert_eq!(metric["name"], "http.server.request.duration");
        assert_eq!(metric["unit"], "s");
        let h = &metric["histogram"];
        assert_eq!(h["aggregationTemporality"], 2);
        let dp = &h["dataPoints"][0];
        assert_eq!(dp["count"], "3");
        assert_eq!(dp["sum"], 0.35);
        assert_eq!(dp["min"], 0.05);
        assert_eq!(dp["max"], 0.2);
        assert_eq!(dp["bucketCounts"], serde_json::json!(["1", "2", "0"]));
        assert_eq!(dp["explicitBounds"], serde_json::json!([0.1, 1.0]));
        assert_eq!(dp["timeUnixNano"], "1700000001000000000");
        assert_eq!(dp["attributes"][0]["key"], "http.route");
    }

    #[test]
    fn log_line_is_otlp_json() {
        let batch = sample_batch();
        let line = encode_json_line(batch.logs.as_ref().unwrap()).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let rl = &json["resourceLogs"][0];
        let attrs = rl["resource"]["attributes"].as_array().unwrap();
        assert_eq!(attrs[0]["key"], "service.name");
        assert_eq!(attrs[0]["value"]["stringValue"], "nginx");
        assert_eq!(attrs[1]["value"]["intValue"], "42");
        assert_eq!(rl["scopeLogs"][0]["scope"]["name"], "selfops");
        let record = &rl["scopeLogs"][0]["logRecords"][0];
        assert_eq!(record["timeUnixNano"], "1700000002000000005");
        assert_eq!(record["observedTimeUnixNano"], "1700000002000000005");
        assert_eq!(record["severityNumber"], 13);
        assert_eq!(record["severityText"], "WARN");
        assert_eq!(record["eventName"], "selfops.action.applied");
        assert_eq!(
            record["body"]["stringValue"],
            "rate limit applied to nginx (5)"
        );
        let attrs = record["attributes"].as_array().unwrap();
        assert_eq!(attrs[0]["key"], "selfops.action");
        assert_eq!(attrs[0]["value"]["stringValue"], "rate_limit");
        assert_eq!(attrs[1]["value"]["intValue"], "5");
        assert_eq!(attrs[2]["value"]["boolValue"], false);
        let text = std::str::from_utf8(&line).unwrap();
        assert!(!text.contains("null"), "{text}");
        assert!(!text.contains("event_name"), "{text}");

        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        let back: ExportLogsServiceRequest = serde_json::from_slice(&line).unwrap();
        assert_eq!(Some(back), batch.logs);
    }

    #[test]
    fn json_round_trips_through_the_proto_types() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        let batch = sample_batch();
        let request = batch.traces_request().unwrap();
        let line = encode_json_line(&*request).unwrap();
        let back: ExportTraceServiceRequest = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, *request);
    }

    /// The length of `batch`'s trace line.
    fn trace_line_len(batch: &OtlpBatch) -> u64 {
        encode_json_line(&*batch.traces_request().unwrap())
            .unwrap()
            .len() as u64
    }

    #[test]
    fn writes_lines_and_rotates_once() {
        let dir = temp_dir("rotate");
        let batch = sample_batch();
        let line_len = trace_line_len(&batch);
        // Room for two lines per file.
        let failures = Counter::default();
        let mut sink = FileSink::new(&dir, line_len * 2 + 1, failures.clone());
        for _ in 0..5 {
            let outcome = sink.write_batch(&batch);
            assert!(
                matches!(outcome.traces, LineOutcome::Written),
                "{outcome:?}"
            );
            assert!(matches!(outcome.metrics, LineOutcome::Written));
            assert!(matches!(outcome.logs, LineOutcome::Written));
        }
        let lines = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap()
                .lines()
                .count()
        };
        // 5 lines: 2 + 2 rotated twice (the first .1 replaced), 1 current.
        assert_eq!(lines("traces.jsonl"), 1);
        assert_eq!(lines("traces.jsonl.1"), 2);
        assert!(!dir.join("traces.jsonl.2").exists());
        drop(sink);
        assert!(
            !dir.join("traces.jsonl.1.old").exists(),
            "the replaced .1 is deleted"
        );
        assert_eq!(failures.get(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_delete_of_a_replaced_file_is_counted() {
        let dir = temp_dir("undeletable");
        let batch = sample_batch();
        let line_len = trace_line_len(&batch);
        // The `.1` a rotation replaces is a directory, which the deletion
        // (an unlink) cannot remove.
        std::fs::create_dir_all(dir.join("traces.jsonl.1")).unwrap();
        let failures = Counter::default();
        let mut sink = FileSink::new(&dir, line_len + 1, failures.clone());
        for _ in 0..2 {
            let outcome = sink.write_batch(&batch);
            assert!(
                matches!(outcome.traces, LineOutcome::Written),
                "{outcome:?}"
            );
        }
        drop(sink);
        assert!(dir.join("traces.jsonl.1.old").is_dir(), "left in place");
        assert_eq!(failures.get(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_error_is_reported_not_panicked() {
        let dir = temp_dir("unwritable");
        // A file where the directory should be: every open fails.
        std::fs::write(dir.join("blocked"), b"x").unwrap();
        let mut sink = FileSink::new(
            &dir.join("blocked"),
            DEFAULT_ROTATE_BYTES,
            Counter::default(),
        );
        let outcome = sink.write_batch(&sample_batch());
        assert!(matches!(outcome.traces, LineOutcome::WriteFailed(_)));
        assert!(matches!(outcome.metrics, LineOutcome::WriteFailed(_)));
        assert!(matches!(outcome.logs, LineOutcome::WriteFailed(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
