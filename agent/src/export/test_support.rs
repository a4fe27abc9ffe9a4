//! Signals and directories for the export tests.

use std::{path::PathBuf, sync::Arc};

use crate::signal::{
    AttrValue, HistogramPoint, LogRecord, Resource, Severity, Span, SpanKind, SpanStatus,
};

pub fn resource(service: &str, pid: i64) -> Arc<Resource> {
    Arc::new(Resource {
        attributes: vec![
            ("service.name", AttrValue::from(service)),
            ("process.pid", AttrValue::Int(pid)),
            ("host.arch", AttrValue::from("amd64")),
        ],
    })
}

/// Span `n` of a trace: ids derived from `n`, a SERVER span with two
/// attributes.
pub fn span(resource: &Arc<Resource>, n: u8, parent: Option<[u8; 8]>) -> Span {
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    trace_id[15] = n;
    let start = 1_700_000_000_000_000_000 + u64::from(n);
    Span {
        trace_id,
        span_id: [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, n],
        parent_span_id: parent,
        name: "GET /".into(),
        kind: SpanKind::Server,
        start_unix_nano: start,
        end_unix_nano: start + 500_000_000,
        attributes: vec![
            ("http.request.method", AttrValue::from("GET")),
            ("http.response.status_code", AttrValue::Int(200)),
        ],
        status: SpanStatus::Unset,
        resource: Arc::clone(resource),
    }
}

pub fn histogram(resource: &Arc<Resource>, name: &'static str) -> HistogramPoint {
    HistogramPoint {
        name,
        description: "Duration of HTTP server requests",
        unit: "s",
        attributes: vec![("http.route", AttrValue::from("/"))],
        start_unix_nano: 1_699_999_000_000_000_000,
        time_unix_nano: 1_700_000_001_000_000_000,
        count: 3,
        sum: 0.35,
        min: 0.05,
        max: 0.2,
        bounds: &[0.1, 1.0],
        bucket_counts: vec![1, 2, 0],
        resource: Arc::clone(resource),
    }
}

/// Log record `n`: an audited action, WARN, with string, int and bool
/// attributes.
pub fn log_record(resource: &Arc<Resource>, n: u8) -> LogRecord {
    LogRecord {
        time_unix_nano: 1_700_000_002_000_000_000 + u64::from(n),
        severity: Severity::Warn,
        event_name: "selfops.action.applied",
        body: format!("rate limit applied to nginx ({n})"),
        attributes: vec![
            ("selfops.action", AttrValue::from("rate_limit")),
            ("selfops.action.seq", AttrValue::Int(i64::from(n))),
            ("selfops.dry_run", AttrValue::Bool(false)),
        ],
        resource: Arc::clone(resource),
    }
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "selfops-export-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
