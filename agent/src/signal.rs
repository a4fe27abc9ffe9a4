//! The internal signal model every sensor produces and every exporter
//! consumes. Each signal carries its resource (the process's, or the
//! service's for aggregated metrics) so exporters never look anything up.

use std::{borrow::Cow, sync::Arc};

use serde::Serialize;

/// An attribute value (the subset of OTel AnyValue the agent emits).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AttrValue {
    Int(i64),
    Double(f64),
    Bool(bool),
    /// Borrowed when the value is a constant (a method, a scheme, a
    /// protocol version): most of a span's strings then cost no allocation.
    Str(Cow<'static, str>),
}

impl AttrValue {
    /// A constant string, not copied.
    pub const fn from_static(value: &'static str) -> Self {
        AttrValue::Str(Cow::Borrowed(value))
    }
}

impl From<&str> for AttrValue {
    fn from(value: &str) -> Self {
        AttrValue::Str(Cow::Owned(value.to_owned()))
    }
}

impl From<String> for AttrValue {
    fn from(value: String) -> Self {
        AttrValue::Str(Cow::Owned(value))
    }
}

impl From<f64> for AttrValue {
    fn from(value: f64) -> Self {
        AttrValue::Double(value)
    }
}

impl From<bool> for AttrValue {
    fn from(value: bool) -> Self {
        AttrValue::Bool(value)
    }
}

impl From<i64> for AttrValue {
    fn from(value: i64) -> Self {
        AttrValue::Int(value)
    }
}

pub type Attributes = Vec<(&'static str, AttrValue)>;

/// Resource attributes (OTel semantic-convention keys), shared by every
/// signal of one process or service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    pub attributes: Attributes,
}

impl Resource {
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// `service.name`, or "unknown_service" as the SDKs default.
    pub fn service_name(&self) -> &str {
        match self.get("service.name") {
            Some(AttrValue::Str(name)) => name,
            _ => "unknown_service",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SpanStatus {
    Unset,
    Error { message: String },
}

/// A finished span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The method for HTTP spans: a constant, not copied.
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Attributes,
    pub status: SpanStatus,
    pub resource: Arc<Resource>,
}

/// One explicit-bucket histogram data point (cumulative temporality).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramPoint {
    /// Instrument name, e.g. `http.server.request.duration`.
    pub name: &'static str,
    pub description: &'static str,
    pub unit: &'static str,
    pub attributes: Attributes,
    pub start_unix_nano: u64,
    pub time_unix_nano: u64,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// Upper bounds; `bucket_counts` has one more entry (the +Inf bucket).
    pub bounds: &'static [f64],
    pub bucket_counts: Vec<u64>,
    pub resource: Arc<Resource>,
}

/// OTel log severity (the subset the agent emits), with its SeverityNumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Severity {
    Info = 9,
    Warn = 13,
    Error = 17,
}

/// One log record: an audited decision or action of the agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogRecord {
    pub time_unix_nano: u64,
    pub severity: Severity,
    /// OTel `event_name`, e.g. `selfops.action.applied`.
    pub event_name: &'static str,
    pub body: String,
    pub attributes: Attributes,
    pub resource: Arc<Resource>,
}

/// What flows from the pipeline to the exporters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Signal {
    Span(Span),
    Histogram(HistogramPoint),
    Log(LogRecord),
}
