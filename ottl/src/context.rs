//! Contexts (which record a statement runs on) and the fields each context
//! reaches: its own, and those of the records enclosing it.

use serde::Deserialize;

use crate::ast;
use crate::error::Located;

/// The record a statement or condition runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Context {
    #[serde(rename = "resource")]
    Resource,
    #[serde(rename = "scope")]
    Scope,
    #[serde(rename = "span")]
    Span,
    #[serde(rename = "spanevent")]
    SpanEvent,
    #[serde(rename = "metric")]
    Metric,
    #[serde(rename = "datapoint")]
    DataPoint,
    #[serde(rename = "log")]
    Log,
}

/// One level of the OTLP hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Resource,
    Scope,
    Span,
    SpanEvent,
    Metric,
    DataPoint,
    Log,
}

impl Context {
    /// The levels a statement in this context reads and writes, outermost
    /// first; the last is the context's own.
    pub(crate) fn levels(self) -> &'static [Level] {
        use Level as L;
        match self {
            Context::Resource => &[L::Resource],
            Context::Scope => &[L::Resource, L::Scope],
            Context::Span => &[L::Resource, L::Scope, L::Span],
            Context::SpanEvent => &[L::Resource, L::Scope, L::Span, L::SpanEvent],
            Context::Metric => &[L::Resource, L::Scope, L::Metric],
            Context::DataPoint => &[L::Resource, L::Scope, L::Metric, L::DataPoint],
            Context::Log => &[L::Resource, L::Scope, L::Log],
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Context::Resource => "resource",
            Context::Scope => "scope",
            Context::Span => "span",
            Context::SpanEvent => "spanevent",
            Context::Metric => "metric",
            Context::DataPoint => "datapoint",
            Context::Log => "log",
        }
    }

    fn own(self) -> Level {
        let levels = self.levels();
        levels[levels.len() - 1]
    }

    /// How deep the context sits: inference picks the deepest one named.
    fn depth(self) -> usize {
        self.levels().len()
    }
}

/// The level a path prefix names, if any.
fn prefix_level(segment: &str) -> Option<Level> {
    Some(match segment {
        "resource" => Level::Resource,
        "scope" | "instrumentation_scope" => Level::Scope,
        "span" => Level::Span,
        "spanevent" => Level::SpanEvent,
        "metric" => Level::Metric,
        "datapoint" => Level::DataPoint,
        "log" => Level::Log,
        _ => return None,
    })
}

fn level_context(level: Level) -> Context {
    match level {
        Level::Resource => Context::Resource,
        Level::Scope => Context::Scope,
        Level::Span => Context::Span,
        Level::SpanEvent => Context::SpanEvent,
        Level::Metric => Context::Metric,
        Level::DataPoint => Context::DataPoint,
        Level::Log => Context::Log,
    }
}

/// The context of a statement given without one, from its paths' prefixes
/// (`span.attributes[…]` → span): the deepest context any path names.
pub(crate) fn infer(paths: &[&ast::Path]) -> Option<Context> {
    paths
        .iter()
        .filter_map(|p| p.segments.first().and_then(|s| prefix_level(s)))
        .map(level_context)
        .max_by_key(|c| c.depth())
}

/// A field of some level, resolved once at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    ResourceAttributes,
    ResourceDropped,
    ScopeName,
    ScopeVersion,
    ScopeAttributes,
    ScopeDropped,
    SpanTraceId,
    SpanTraceIdString,
    SpanSpanId,
    SpanSpanIdString,
    SpanParentId,
    SpanParentIdString,
    SpanTraceState,
    SpanName,
    SpanKind,
    SpanStart,
    SpanEnd,
    SpanAttributes,
    SpanDropped,
    SpanDroppedEvents,
    SpanDroppedLinks,
    SpanStatusCode,
    SpanStatusMessage,
    SpanFlags,
    EventName,
    EventTime,
    EventAttributes,
    EventDropped,
    MetricName,
    MetricDescription,
    MetricUnit,
    MetricType,
    MetricTemporality,
    MetricMonotonic,
    PointAttributes,
    PointStart,
    PointTime,
    PointValueDouble,
    PointValueInt,
    PointFlags,
    PointCount,
    PointSum,
    LogTime,
    LogObserved,
    LogSeverityNumber,
    LogSeverityText,
    LogBody,
    LogAttributes,
    LogDropped,
    LogFlags,
    LogTraceId,
    LogTraceIdString,
    LogSpanId,
    LogSpanIdString,
    LogEventName,
}

impl Field {
    /// Fields whose value can hold a map or list, so `[…]` applies.
    pub(crate) fn indexable(self) -> bool {
        matches!(
            self,
            Field::ResourceAttributes
                | Field::ScopeAttributes
                | Field::SpanAttributes
                | Field::EventAttributes
                | Field::PointAttributes
                | Field::LogAttributes
                | Field::LogBody
        )
    }

    /// Fields that are computed, not stored.
    pub(crate) fn read_only(self) -> bool {
        matches!(self, Field::MetricType)
    }
}

fn field(level: Level, rest: &[&str]) -> Option<Field> {
    use Field as F;
    Some(match (level, rest) {
        (Level::Resource, ["attributes"]) => F::ResourceAttributes,
        (Level::Resource, ["dropped_attributes_count"]) => F::ResourceDropped,
        (Level::Scope, ["name"]) => F::ScopeName,
        (Level::Scope, ["version"]) => F::ScopeVersion,
        (Level::Scope, ["attributes"]) => F::ScopeAttributes,
        (Level::Scope, ["dropped_attributes_count"]) => F::ScopeDropped,
        (Level::Span, ["trace_id"]) => F::SpanTraceId,
        (Level::Span, ["trace_id", "string"]) => F::SpanTraceIdString,
        (Level::Span, ["span_id"]) => F::SpanSpanId,
        (Level::Span, ["span_id", "string"]) => F::SpanSpanIdString,
        (Level::Span, ["parent_span_id"]) => F::SpanParentId,
        (Level::Span, ["parent_span_id", "string"]) => F::SpanParentIdString,
        (Level::Span, ["trace_state"]) => F::SpanTraceState,
        (Level::Span, ["name"]) => F::SpanName,
        (Level::Span, ["kind"]) => F::SpanKind,
        (Level::Span, ["start_time_unix_nano"]) => F::SpanStart,
        (Level::Span, ["end_time_unix_nano"]) => F::SpanEnd,
        (Level::Span, ["attributes"]) => F::SpanAttributes,
        (Level::Span, ["dropped_attributes_count"]) => F::SpanDropped,
        (Level::Span, ["dropped_events_count"]) => F::SpanDroppedEvents,
        (Level::Span, ["dropped_links_count"]) => F::SpanDroppedLinks,
        (Level::Span, ["status", "code"]) => F::SpanStatusCode,
        (Level::Span, ["status", "message"]) => F::SpanStatusMessage,
        (Level::Span, ["flags"]) => F::SpanFlags,
        (Level::SpanEvent, ["name"]) => F::EventName,
        (Level::SpanEvent, ["time_unix_nano"]) => F::EventTime,
        (Level::SpanEvent, ["attributes"]) => F::EventAttributes,
        (Level::SpanEvent, ["dropped_attributes_count"]) => F::EventDropped,
        (Level::Metric, ["name"]) => F::MetricName,
        (Level::Metric, ["description"]) => F::MetricDescription,
        (Level::Metric, ["unit"]) => F::MetricUnit,
        (Level::Metric, ["type"]) => F::MetricType,
        (Level::Metric, ["aggregation_temporality"]) => F::MetricTemporality,
        (Level::Metric, ["is_monotonic"]) => F::MetricMonotonic,
        (Level::DataPoint, ["attributes"]) => F::PointAttributes,
        (Level::DataPoint, ["start_time_unix_nano"]) => F::PointStart,
        (Level::DataPoint, ["time_unix_nano"]) => F::PointTime,
        (Level::DataPoint, ["value_double"]) => F::PointValueDouble,
        (Level::DataPoint, ["value_int"]) => F::PointValueInt,
        (Level::DataPoint, ["flags"]) => F::PointFlags,
        (Level::DataPoint, ["count"]) => F::PointCount,
        (Level::DataPoint, ["sum"]) => F::PointSum,
        (Level::Log, ["time_unix_nano"]) => F::LogTime,
        (Level::Log, ["observed_time_unix_nano"]) => F::LogObserved,
        (Level::Log, ["severity_number"]) => F::LogSeverityNumber,
        (Level::Log, ["severity_text"]) => F::LogSeverityText,
        (Level::Log, ["body"]) => F::LogBody,
        (Level::Log, ["attributes"]) => F::LogAttributes,
        (Level::Log, ["dropped_attributes_count"]) => F::LogDropped,
        (Level::Log, ["flags"]) => F::LogFlags,
        (Level::Log, ["trace_id"]) => F::LogTraceId,
        (Level::Log, ["trace_id", "string"]) => F::LogTraceIdString,
        (Level::Log, ["span_id"]) => F::LogSpanId,
        (Level::Log, ["span_id", "string"]) => F::LogSpanIdString,
        (Level::Log, ["event_name"]) => F::LogEventName,
        _ => return None,
    })
}

/// Resolves a path's segments in `context`: an optional prefix naming the
/// context or an enclosing one, then the field.
pub(crate) fn resolve(context: Context, path: &ast::Path, pos: usize) -> Result<Field, Located> {
    let segments: Vec<&str> = path.segments.iter().map(String::as_str).collect();
    let (level, rest) = match segments.split_first() {
        Some((first, rest)) if !rest.is_empty() => match prefix_level(first) {
            Some(level) if context.levels().contains(&level) => (level, rest),
            Some(_) => {
                return Err(Located::new(
                    pos,
                    format!(
                        "'{first}' is not reachable from the {} context",
                        context.name()
                    ),
                ));
            }
            None => (context.own(), &segments[..]),
        },
        _ => (context.own(), &segments[..]),
    };
    field(level, rest).ok_or_else(|| {
        Located::new(
            pos,
            format!(
                "unknown path '{}' in the {} context",
                path.segments.join("."),
                context.name()
            ),
        )
    })
}
