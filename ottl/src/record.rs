//! The record a statement runs on (one span, log record, data point… and
//! the records enclosing it), and reading and writing its fields.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogramDataPoint, HistogramDataPoint, Metric, NumberDataPoint, SummaryDataPoint,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span};

use crate::ast::Key;
use crate::context::Field;
use crate::error::{EvalError, EvalResult};
use crate::value::{Value, hex, key_value};

/// METRIC_DATA_TYPE_* values.
pub(crate) const METRIC_NONE: i64 = 0;
pub(crate) const METRIC_GAUGE: i64 = 1;
pub(crate) const METRIC_SUM: i64 = 2;
pub(crate) const METRIC_HISTOGRAM: i64 = 3;
pub(crate) const METRIC_EXP_HISTOGRAM: i64 = 4;
pub(crate) const METRIC_SUMMARY: i64 = 5;

pub(crate) fn metric_type(data: Option<&metric::Data>) -> i64 {
    match data {
        None => METRIC_NONE,
        Some(metric::Data::Gauge(_)) => METRIC_GAUGE,
        Some(metric::Data::Sum(_)) => METRIC_SUM,
        Some(metric::Data::Histogram(_)) => METRIC_HISTOGRAM,
        Some(metric::Data::ExponentialHistogram(_)) => METRIC_EXP_HISTOGRAM,
        Some(metric::Data::Summary(_)) => METRIC_SUMMARY,
    }
}

/// A data point of any metric type.
pub(crate) enum PointMut<'a> {
    Number(&'a mut NumberDataPoint),
    Histogram(&'a mut HistogramDataPoint),
    ExpHistogram(&'a mut ExponentialHistogramDataPoint),
    Summary(&'a mut SummaryDataPoint),
}

#[derive(Clone, Copy)]
pub(crate) enum PointRef<'a> {
    Number(&'a NumberDataPoint),
    Histogram(&'a HistogramDataPoint),
    ExpHistogram(&'a ExponentialHistogramDataPoint),
    Summary(&'a SummaryDataPoint),
}

/// The record being processed, writable. Levels outside the context are
/// `None`. In the span-event and data-point contexts the events or data
/// are moved out of the span or metric while they are processed, so that
/// both can be borrowed at once; `metric_type` keeps the metric's type
/// meanwhile.
#[derive(Default)]
pub(crate) struct Rec<'a> {
    pub resource: Option<&'a mut Option<Resource>>,
    pub scope: Option<&'a mut Option<InstrumentationScope>>,
    pub span: Option<&'a mut Span>,
    pub event: Option<&'a mut span::Event>,
    pub metric: Option<&'a mut Metric>,
    pub metric_type: i64,
    pub point: Option<PointMut<'a>>,
    pub log: Option<&'a mut LogRecord>,
}

/// The record being processed, read-only.
#[derive(Default, Clone, Copy)]
pub(crate) struct View<'a> {
    pub resource: Option<&'a Resource>,
    pub scope: Option<&'a InstrumentationScope>,
    pub span: Option<&'a Span>,
    pub event: Option<&'a span::Event>,
    pub metric: Option<&'a Metric>,
    pub metric_type: i64,
    pub point: Option<PointRef<'a>>,
    pub log: Option<&'a LogRecord>,
}

impl Rec<'_> {
    pub(crate) fn view(&self) -> View<'_> {
        View {
            resource: self.resource.as_deref().and_then(Option::as_ref),
            scope: self.scope.as_deref().and_then(Option::as_ref),
            span: self.span.as_deref(),
            event: self.event.as_deref(),
            metric: self.metric.as_deref(),
            metric_type: self.metric_type,
            point: self.point.as_ref().map(|p| match p {
                PointMut::Number(p) => PointRef::Number(p),
                PointMut::Histogram(p) => PointRef::Histogram(p),
                PointMut::ExpHistogram(p) => PointRef::ExpHistogram(p),
                PointMut::Summary(p) => PointRef::Summary(p),
            }),
            log: self.log.as_deref(),
        }
    }
}

fn unsigned<'a, T: Into<u64>>(v: T) -> Value<'a> {
    Value::Int(i64::try_from(v.into()).unwrap_or(i64::MAX))
}

fn point_attributes<'a>(p: PointRef<'a>) -> &'a [KeyValue] {
    match p {
        PointRef::Number(p) => &p.attributes,
        PointRef::Histogram(p) => &p.attributes,
        PointRef::ExpHistogram(p) => &p.attributes,
        PointRef::Summary(p) => &p.attributes,
    }
}

/// Reads a field. Fields of absent levels (a missing resource or scope)
/// read as nil.
pub(crate) fn get<'a>(field: Field, v: &View<'a>) -> Value<'a> {
    use Field as F;
    let opt = match field {
        F::ResourceAttributes => v.resource.map(|r| Value::Map(Cow::Borrowed(&r.attributes))),
        F::ResourceDropped => v.resource.map(|r| unsigned(r.dropped_attributes_count)),
        F::ScopeName => v.scope.map(|s| Value::str(&s.name)),
        F::ScopeVersion => v.scope.map(|s| Value::str(&s.version)),
        F::ScopeAttributes => v.scope.map(|s| Value::Map(Cow::Borrowed(&s.attributes))),
        F::ScopeDropped => v.scope.map(|s| unsigned(s.dropped_attributes_count)),
        F::SpanTraceId => v.span.map(|s| Value::Bytes(Cow::Borrowed(&s.trace_id))),
        F::SpanTraceIdString => v.span.map(|s| Value::Str(Cow::Owned(hex(&s.trace_id)))),
        F::SpanSpanId => v.span.map(|s| Value::Bytes(Cow::Borrowed(&s.span_id))),
        F::SpanSpanIdString => v.span.map(|s| Value::Str(Cow::Owned(hex(&s.span_id)))),
        F::SpanParentId => v
            .span
            .map(|s| Value::Bytes(Cow::Borrowed(&s.parent_span_id))),
        F::SpanParentIdString => v
            .span
            .map(|s| Value::Str(Cow::Owned(hex(&s.parent_span_id)))),
        F::SpanTraceState => v.span.map(|s| Value::str(&s.trace_state)),
        F::SpanName => v.span.map(|s| Value::str(&s.name)),
        F::SpanKind => v.span.map(|s| Value::Int(i64::from(s.kind))),
        F::SpanStart => v.span.map(|s| unsigned(s.start_time_unix_nano)),
        F::SpanEnd => v.span.map(|s| unsigned(s.end_time_unix_nano)),
        F::SpanAttributes => v.span.map(|s| Value::Map(Cow::Borrowed(&s.attributes))),
        F::SpanDropped => v.span.map(|s| unsigned(s.dropped_attributes_count)),
        F::SpanDroppedEvents => v.span.map(|s| unsigned(s.dropped_events_count)),
        F::SpanDroppedLinks => v.span.map(|s| unsigned(s.dropped_links_count)),
        F::SpanStatusCode => v
            .span
            .map(|s| Value::Int(s.status.as_ref().map_or(0, |st| i64::from(st.code)))),
        F::SpanStatusMessage => v
            .span
            .map(|s| Value::str(s.status.as_ref().map_or("", |st| st.message.as_str()))),
        F::SpanFlags => v.span.map(|s| unsigned(s.flags)),
        F::EventName => v.event.map(|e| Value::str(&e.name)),
        F::EventTime => v.event.map(|e| unsigned(e.time_unix_nano)),
        F::EventAttributes => v.event.map(|e| Value::Map(Cow::Borrowed(&e.attributes))),
        F::EventDropped => v.event.map(|e| unsigned(e.dropped_attributes_count)),
        F::MetricName => v.metric.map(|m| Value::str(&m.name)),
        F::MetricDescription => v.metric.map(|m| Value::str(&m.description)),
        F::MetricUnit => v.metric.map(|m| Value::str(&m.unit)),
        F::MetricType => v.metric.map(|_| Value::Int(v.metric_type)),
        F::MetricTemporality => v.metric.map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => Value::Int(i64::from(s.aggregation_temporality)),
            Some(metric::Data::Histogram(h)) => Value::Int(i64::from(h.aggregation_temporality)),
            Some(metric::Data::ExponentialHistogram(h)) => {
                Value::Int(i64::from(h.aggregation_temporality))
            }
            _ => Value::Nil,
        }),
        F::MetricMonotonic => v.metric.map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => Value::Bool(s.is_monotonic),
            _ => Value::Nil,
        }),
        F::PointAttributes => v
            .point
            .map(|p| Value::Map(Cow::Borrowed(point_attributes(p)))),
        F::PointStart => v.point.map(|p| {
            unsigned(match p {
                PointRef::Number(p) => p.start_time_unix_nano,
                PointRef::Histogram(p) => p.start_time_unix_nano,
                PointRef::ExpHistogram(p) => p.start_time_unix_nano,
                PointRef::Summary(p) => p.start_time_unix_nano,
            })
        }),
        F::PointTime => v.point.map(|p| {
            unsigned(match p {
                PointRef::Number(p) => p.time_unix_nano,
                PointRef::Histogram(p) => p.time_unix_nano,
                PointRef::ExpHistogram(p) => p.time_unix_nano,
                PointRef::Summary(p) => p.time_unix_nano,
            })
        }),
        F::PointFlags => v.point.map(|p| {
            unsigned(match p {
                PointRef::Number(p) => p.flags,
                PointRef::Histogram(p) => p.flags,
                PointRef::ExpHistogram(p) => p.flags,
                PointRef::Summary(p) => p.flags,
            })
        }),
        // Like the Collector, the other representation reads as zero.
        F::PointValueDouble => v.point.map(|p| match p {
            PointRef::Number(n) => Value::Float(match n.value {
                Some(number_data_point::Value::AsDouble(d)) => d,
                _ => 0.0,
            }),
            _ => Value::Nil,
        }),
        F::PointValueInt => v.point.map(|p| match p {
            PointRef::Number(n) => Value::Int(match n.value {
                Some(number_data_point::Value::AsInt(i)) => i,
                _ => 0,
            }),
            _ => Value::Nil,
        }),
        F::PointCount => v.point.map(|p| match p {
            PointRef::Number(_) => Value::Nil,
            PointRef::Histogram(p) => unsigned(p.count),
            PointRef::ExpHistogram(p) => unsigned(p.count),
            PointRef::Summary(p) => unsigned(p.count),
        }),
        F::PointSum => v.point.map(|p| match p {
            PointRef::Number(_) => Value::Nil,
            PointRef::Histogram(p) => p.sum.map_or(Value::Nil, Value::Float),
            PointRef::ExpHistogram(p) => p.sum.map_or(Value::Nil, Value::Float),
            PointRef::Summary(p) => Value::Float(p.sum),
        }),
        F::LogTime => v.log.map(|l| unsigned(l.time_unix_nano)),
        F::LogObserved => v.log.map(|l| unsigned(l.observed_time_unix_nano)),
        F::LogSeverityNumber => v.log.map(|l| Value::Int(i64::from(l.severity_number))),
        F::LogSeverityText => v.log.map(|l| Value::str(&l.severity_text)),
        F::LogBody => v.log.map(|l| Value::from_opt_any(l.body.as_ref())),
        F::LogAttributes => v.log.map(|l| Value::Map(Cow::Borrowed(&l.attributes))),
        F::LogDropped => v.log.map(|l| unsigned(l.dropped_attributes_count)),
        F::LogFlags => v.log.map(|l| unsigned(l.flags)),
        F::LogTraceId => v.log.map(|l| Value::Bytes(Cow::Borrowed(&l.trace_id))),
        F::LogTraceIdString => v.log.map(|l| Value::Str(Cow::Owned(hex(&l.trace_id)))),
        F::LogSpanId => v.log.map(|l| Value::Bytes(Cow::Borrowed(&l.span_id))),
        F::LogSpanIdString => v.log.map(|l| Value::Str(Cow::Owned(hex(&l.span_id)))),
        F::LogEventName => v.log.map(|l| Value::str(&l.event_name)),
    };
    opt.unwrap_or(Value::Nil)
}

/// The attribute map of an attributes field, read-only.
fn attributes_ref<'a>(field: Field, v: &View<'a>) -> Option<&'a [KeyValue]> {
    use Field as F;
    match field {
        F::ResourceAttributes => v.resource.map(|r| &r.attributes[..]),
        F::ScopeAttributes => v.scope.map(|s| &s.attributes[..]),
        F::SpanAttributes => v.span.map(|s| &s.attributes[..]),
        F::EventAttributes => v.event.map(|e| &e.attributes[..]),
        F::PointAttributes => v.point.map(point_attributes),
        F::LogAttributes => v.log.map(|l| &l.attributes[..]),
        _ => None,
    }
}

/// Reads a path: the field, then each key in turn. `attributes["k"]`, the
/// most common path, goes straight to the entry.
pub(crate) fn get_path<'a>(field: Field, keys: &[Key], v: &View<'a>) -> EvalResult<Value<'a>> {
    if let [Key::Str(k)] = keys
        && field != Field::LogBody
    {
        let entry = attributes_ref(field, v)
            .and_then(|m| crate::value::find(m, k))
            .and_then(|kv| kv.value.as_ref());
        return Ok(Value::from_opt_any(entry));
    }
    let (mut value, rest) = match keys {
        [Key::Str(k), rest @ ..] if field != Field::LogBody => {
            let entry = attributes_ref(field, v)
                .and_then(|m| crate::value::find(m, k))
                .and_then(|kv| kv.value.as_ref());
            (Value::from_opt_any(entry), rest)
        }
        _ => (get(field, v), keys),
    };
    for key in rest {
        value = value.index(key).map_err(EvalError)?;
    }
    Ok(value)
}

fn absent(level: &str) -> EvalError {
    EvalError::new(format!("no {level} in this context"))
}

fn type_error(field: Field, want: &str, got: &Value<'_>) -> EvalError {
    EvalError::new(format!("{field:?} takes {want}, not {}", got.type_name()))
}

fn set_string(field: Field, slot: &mut String, value: Value<'static>) -> EvalResult<()> {
    match value {
        Value::Str(s) => {
            *slot = s.into_owned();
            Ok(())
        }
        other => Err(type_error(field, "a string", &other)),
    }
}

fn set_bytes(
    field: Field,
    slot: &mut Vec<u8>,
    len: usize,
    value: Value<'static>,
) -> EvalResult<()> {
    match value {
        Value::Bytes(b) if b.len() == len => {
            *slot = b.into_owned();
            Ok(())
        }
        other => Err(type_error(field, &format!("{len} bytes"), &other)),
    }
}

fn as_i64(field: Field, value: &Value<'_>) -> EvalResult<i64> {
    match value {
        Value::Int(i) => Ok(*i),
        other => Err(type_error(field, "an int", other)),
    }
}

fn set_uint<T: TryFrom<i64>>(field: Field, slot: &mut T, value: Value<'static>) -> EvalResult<()> {
    let i = as_i64(field, &value)?;
    *slot =
        T::try_from(i).map_err(|_| EvalError::new(format!("{field:?}: {i} is out of range")))?;
    Ok(())
}

fn set_i32(field: Field, slot: &mut i32, value: Value<'static>) -> EvalResult<()> {
    let i = as_i64(field, &value)?;
    *slot =
        i32::try_from(i).map_err(|_| EvalError::new(format!("{field:?}: {i} is out of range")))?;
    Ok(())
}

fn set_map(field: Field, slot: &mut Vec<KeyValue>, value: Value<'static>) -> EvalResult<()> {
    match value {
        Value::Map(m) => {
            *slot = m.into_owned();
            Ok(())
        }
        other => Err(type_error(field, "a map", &other)),
    }
}

fn status(span: &mut Span) -> &mut Status {
    span.status.get_or_insert_with(Status::default)
}

/// Writes a whole field (a path without keys).
fn set_field(field: Field, rec: &mut Rec<'_>, value: Value<'static>) -> EvalResult<()> {
    use Field as F;
    match field {
        F::ResourceAttributes | F::ResourceDropped => {
            let res = rec
                .resource
                .as_deref_mut()
                .ok_or_else(|| absent("resource"))?
                .get_or_insert_with(Resource::default);
            match field {
                F::ResourceAttributes => set_map(field, &mut res.attributes, value),
                _ => set_uint(field, &mut res.dropped_attributes_count, value),
            }
        }
        F::ScopeName | F::ScopeVersion | F::ScopeAttributes | F::ScopeDropped => {
            let scope = rec
                .scope
                .as_deref_mut()
                .ok_or_else(|| absent("scope"))?
                .get_or_insert_with(InstrumentationScope::default);
            match field {
                F::ScopeName => set_string(field, &mut scope.name, value),
                F::ScopeVersion => set_string(field, &mut scope.version, value),
                F::ScopeAttributes => set_map(field, &mut scope.attributes, value),
                _ => set_uint(field, &mut scope.dropped_attributes_count, value),
            }
        }
        F::SpanTraceId
        | F::SpanTraceIdString
        | F::SpanSpanId
        | F::SpanSpanIdString
        | F::SpanParentId
        | F::SpanParentIdString
        | F::SpanTraceState
        | F::SpanName
        | F::SpanKind
        | F::SpanStart
        | F::SpanEnd
        | F::SpanAttributes
        | F::SpanDropped
        | F::SpanDroppedEvents
        | F::SpanDroppedLinks
        | F::SpanStatusCode
        | F::SpanStatusMessage
        | F::SpanFlags => {
            let s = rec.span.as_deref_mut().ok_or_else(|| absent("span"))?;
            match field {
                F::SpanTraceId => set_bytes(field, &mut s.trace_id, 16, value),
                F::SpanSpanId => set_bytes(field, &mut s.span_id, 8, value),
                F::SpanParentId => set_bytes(field, &mut s.parent_span_id, 8, value),
                F::SpanTraceIdString => set_hex(field, &mut s.trace_id, 16, value),
                F::SpanSpanIdString => set_hex(field, &mut s.span_id, 8, value),
                F::SpanParentIdString => set_hex(field, &mut s.parent_span_id, 8, value),
                F::SpanTraceState => set_string(field, &mut s.trace_state, value),
                F::SpanName => set_string(field, &mut s.name, value),
                F::SpanKind => set_i32(field, &mut s.kind, value),
                F::SpanStart => set_uint(field, &mut s.start_time_unix_nano, value),
                F::SpanEnd => set_uint(field, &mut s.end_time_unix_nano, value),
                F::SpanAttributes => set_map(field, &mut s.attributes, value),
                F::SpanDropped => set_uint(field, &mut s.dropped_attributes_count, value),
                F::SpanDroppedEvents => set_uint(field, &mut s.dropped_events_count, value),
                F::SpanDroppedLinks => set_uint(field, &mut s.dropped_links_count, value),
                F::SpanStatusCode => set_i32(field, &mut status(s).code, value),
                F::SpanStatusMessage => set_string(field, &mut status(s).message, value),
                _ => set_uint(field, &mut s.flags, value),
            }
        }
        F::EventName | F::EventTime | F::EventAttributes | F::EventDropped => {
            let e = rec
                .event
                .as_deref_mut()
                .ok_or_else(|| absent("span event"))?;
            match field {
                F::EventName => set_string(field, &mut e.name, value),
                F::EventTime => set_uint(field, &mut e.time_unix_nano, value),
                F::EventAttributes => set_map(field, &mut e.attributes, value),
                _ => set_uint(field, &mut e.dropped_attributes_count, value),
            }
        }
        F::MetricName
        | F::MetricDescription
        | F::MetricUnit
        | F::MetricType
        | F::MetricTemporality
        | F::MetricMonotonic => {
            let m = rec.metric.as_deref_mut().ok_or_else(|| absent("metric"))?;
            match field {
                F::MetricName => set_string(field, &mut m.name, value),
                F::MetricDescription => set_string(field, &mut m.description, value),
                F::MetricUnit => set_string(field, &mut m.unit, value),
                F::MetricTemporality => {
                    let slot = match &mut m.data {
                        Some(metric::Data::Sum(s)) => &mut s.aggregation_temporality,
                        Some(metric::Data::Histogram(h)) => &mut h.aggregation_temporality,
                        Some(metric::Data::ExponentialHistogram(h)) => {
                            &mut h.aggregation_temporality
                        }
                        _ => return Ok(()),
                    };
                    set_i32(field, slot, value)
                }
                F::MetricMonotonic => match (&mut m.data, value) {
                    (Some(metric::Data::Sum(s)), Value::Bool(b)) => {
                        s.is_monotonic = b;
                        Ok(())
                    }
                    (Some(metric::Data::Sum(_)), other) => Err(type_error(field, "a bool", &other)),
                    _ => Ok(()),
                },
                _ => Err(EvalError::new("metric.type cannot be set")),
            }
        }
        F::PointAttributes
        | F::PointStart
        | F::PointTime
        | F::PointValueDouble
        | F::PointValueInt
        | F::PointFlags
        | F::PointCount
        | F::PointSum => set_point(field, rec, value),
        F::LogTime
        | F::LogObserved
        | F::LogSeverityNumber
        | F::LogSeverityText
        | F::LogBody
        | F::LogAttributes
        | F::LogDropped
        | F::LogFlags
        | F::LogTraceId
        | F::LogTraceIdString
        | F::LogSpanId
        | F::LogSpanIdString
        | F::LogEventName => {
            let l = rec.log.as_deref_mut().ok_or_else(|| absent("log record"))?;
            match field {
                F::LogTime => set_uint(field, &mut l.time_unix_nano, value),
                F::LogObserved => set_uint(field, &mut l.observed_time_unix_nano, value),
                F::LogSeverityNumber => set_i32(field, &mut l.severity_number, value),
                F::LogSeverityText => set_string(field, &mut l.severity_text, value),
                F::LogBody => {
                    l.body = Some(value.into_any());
                    Ok(())
                }
                F::LogAttributes => set_map(field, &mut l.attributes, value),
                F::LogDropped => set_uint(field, &mut l.dropped_attributes_count, value),
                F::LogFlags => set_uint(field, &mut l.flags, value),
                F::LogTraceId => set_bytes(field, &mut l.trace_id, 16, value),
                F::LogTraceIdString => set_hex(field, &mut l.trace_id, 16, value),
                F::LogSpanId => set_bytes(field, &mut l.span_id, 8, value),
                F::LogSpanIdString => set_hex(field, &mut l.span_id, 8, value),
                _ => set_string(field, &mut l.event_name, value),
            }
        }
    }
}

fn set_hex(field: Field, slot: &mut Vec<u8>, len: usize, value: Value<'static>) -> EvalResult<()> {
    let text = match &value {
        Value::Str(s) => s,
        other => return Err(type_error(field, "a hex string", other)),
    };
    let bytes = parse_hex(text)
        .filter(|b| b.len() == len)
        .ok_or_else(|| EvalError::new(format!("{field:?} takes {} hex digits", len * 2)))?;
    *slot = bytes;
    Ok(())
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn set_point(field: Field, rec: &mut Rec<'_>, value: Value<'static>) -> EvalResult<()> {
    use Field as F;
    let point = rec.point.as_mut().ok_or_else(|| absent("data point"))?;
    match (field, point) {
        (F::PointAttributes, p) => set_map(field, point_attributes_mut(p), value),
        (F::PointStart, PointMut::Number(p)) => set_uint(field, &mut p.start_time_unix_nano, value),
        (F::PointStart, PointMut::Histogram(p)) => {
            set_uint(field, &mut p.start_time_unix_nano, value)
        }
        (F::PointStart, PointMut::ExpHistogram(p)) => {
            set_uint(field, &mut p.start_time_unix_nano, value)
        }
        (F::PointStart, PointMut::Summary(p)) => {
            set_uint(field, &mut p.start_time_unix_nano, value)
        }
        (F::PointTime, PointMut::Number(p)) => set_uint(field, &mut p.time_unix_nano, value),
        (F::PointTime, PointMut::Histogram(p)) => set_uint(field, &mut p.time_unix_nano, value),
        (F::PointTime, PointMut::ExpHistogram(p)) => set_uint(field, &mut p.time_unix_nano, value),
        (F::PointTime, PointMut::Summary(p)) => set_uint(field, &mut p.time_unix_nano, value),
        (F::PointFlags, PointMut::Number(p)) => set_uint(field, &mut p.flags, value),
        (F::PointFlags, PointMut::Histogram(p)) => set_uint(field, &mut p.flags, value),
        (F::PointFlags, PointMut::ExpHistogram(p)) => set_uint(field, &mut p.flags, value),
        (F::PointFlags, PointMut::Summary(p)) => set_uint(field, &mut p.flags, value),
        (F::PointValueDouble, PointMut::Number(p)) => match value {
            Value::Float(f) => {
                p.value = Some(number_data_point::Value::AsDouble(f));
                Ok(())
            }
            other => Err(type_error(field, "a float", &other)),
        },
        (F::PointValueInt, PointMut::Number(p)) => {
            let i = as_i64(field, &value)?;
            p.value = Some(number_data_point::Value::AsInt(i));
            Ok(())
        }
        (F::PointCount, PointMut::Histogram(p)) => set_uint(field, &mut p.count, value),
        (F::PointCount, PointMut::ExpHistogram(p)) => set_uint(field, &mut p.count, value),
        (F::PointCount, PointMut::Summary(p)) => set_uint(field, &mut p.count, value),
        (F::PointSum, p) => {
            let f = match value {
                Value::Float(f) => f,
                other => return Err(type_error(field, "a float", &other)),
            };
            match p {
                PointMut::Histogram(p) => p.sum = Some(f),
                PointMut::ExpHistogram(p) => p.sum = Some(f),
                PointMut::Summary(p) => p.sum = f,
                PointMut::Number(_) => {}
            }
            Ok(())
        }
        // A field the point's type does not have: nothing to set, as the
        // Collector skips it.
        _ => Ok(()),
    }
}

fn point_attributes_mut<'p>(p: &'p mut PointMut<'_>) -> &'p mut Vec<KeyValue> {
    match p {
        PointMut::Number(p) => &mut p.attributes,
        PointMut::Histogram(p) => &mut p.attributes,
        PointMut::ExpHistogram(p) => &mut p.attributes,
        PointMut::Summary(p) => &mut p.attributes,
    }
}

/// The attribute map of a field, for writing.
fn attributes_mut<'r>(field: Field, rec: &'r mut Rec<'_>) -> EvalResult<&'r mut Vec<KeyValue>> {
    use Field as F;
    Ok(match field {
        F::ResourceAttributes => {
            &mut rec
                .resource
                .as_deref_mut()
                .ok_or_else(|| absent("resource"))?
                .get_or_insert_with(Resource::default)
                .attributes
        }
        F::ScopeAttributes => {
            &mut rec
                .scope
                .as_deref_mut()
                .ok_or_else(|| absent("scope"))?
                .get_or_insert_with(InstrumentationScope::default)
                .attributes
        }
        F::SpanAttributes => {
            &mut rec
                .span
                .as_deref_mut()
                .ok_or_else(|| absent("span"))?
                .attributes
        }
        F::EventAttributes => {
            &mut rec
                .event
                .as_deref_mut()
                .ok_or_else(|| absent("span event"))?
                .attributes
        }
        F::PointAttributes => {
            point_attributes_mut(rec.point.as_mut().ok_or_else(|| absent("data point"))?)
        }
        F::LogAttributes => {
            &mut rec
                .log
                .as_deref_mut()
                .ok_or_else(|| absent("log record"))?
                .attributes
        }
        _ => return Err(EvalError::new(format!("{field:?} is not a map"))),
    })
}

/// The value slot a path with keys designates, created if missing: a
/// missing map entry is added (empty), a missing intermediate map too.
fn slot_mut<'r>(field: Field, keys: &[Key], rec: &'r mut Rec<'_>) -> EvalResult<&'r mut AnyValue> {
    let (first, rest) = keys
        .split_first()
        .ok_or_else(|| EvalError::new("a path with keys was expected"))?;
    let mut slot: &mut AnyValue = if field == Field::LogBody {
        let log = rec.log.as_deref_mut().ok_or_else(|| absent("log record"))?;
        let body = log.body.get_or_insert_with(AnyValue::default);
        index_mut(body, first)?
    } else {
        let map = attributes_mut(field, rec)?;
        match first {
            Key::Str(k) => entry(map, k),
            Key::Int(_) => return Err(EvalError::new("a map cannot be indexed by position")),
        }
    };
    for key in rest {
        slot = index_mut(slot, key)?;
    }
    Ok(slot)
}

/// The entry for `key`, added empty if missing.
pub(crate) fn entry<'m>(map: &'m mut Vec<KeyValue>, key: &str) -> &'m mut AnyValue {
    let i = match map.iter().position(|kv| kv.key == key) {
        Some(i) => i,
        None => {
            grow_for_one(map);
            map.push(key_value(key, AnyValue::default()));
            map.len() - 1
        }
    };
    map[i].value.get_or_insert_with(AnyValue::default)
}

/// Makes room for one more entry in a full map by a quarter of its length
/// (at least two) rather than by doubling it: statements add a key or two
/// to maps of a dozen, and doubling every record's map (decoded or copied
/// at its exact size) costs a large allocation per record, which measured
/// as the largest single cost of such statements. Growth stays geometric,
/// so many additions remain amortised constant time.
fn grow_for_one(map: &mut Vec<KeyValue>) {
    if map.len() == map.capacity() {
        map.reserve_exact((map.len() / 4).max(2));
    }
}

fn index_mut<'v>(value: &'v mut AnyValue, key: &Key) -> EvalResult<&'v mut AnyValue> {
    if value.value.is_none() && matches!(key, Key::Str(_)) {
        value.value = Some(any_value::Value::KvlistValue(Default::default()));
    }
    match (&mut value.value, key) {
        (Some(any_value::Value::KvlistValue(m)), Key::Str(k)) => Ok(entry(&mut m.values, k)),
        (Some(any_value::Value::ArrayValue(a)), Key::Int(i)) => {
            let len = a.values.len();
            usize::try_from(*i)
                .ok()
                .and_then(|i| a.values.get_mut(i))
                .ok_or_else(|| EvalError::new(format!("index {i} out of range of a list of {len}")))
        }
        (other, _) => Err(EvalError::new(format!(
            "a {} cannot be indexed by {}",
            any_type(other),
            match key {
                Key::Str(_) => "key",
                Key::Int(_) => "position",
            }
        ))),
    }
}

fn any_type(v: &Option<any_value::Value>) -> &'static str {
    match v {
        None => "nil",
        Some(any_value::Value::StringValue(_)) => "string",
        Some(any_value::Value::BoolValue(_)) => "bool",
        Some(any_value::Value::IntValue(_)) => "int",
        Some(any_value::Value::DoubleValue(_)) => "float",
        Some(any_value::Value::ArrayValue(_)) => "list",
        Some(any_value::Value::KvlistValue(_)) => "map",
        Some(any_value::Value::BytesValue(_)) => "bytes",
        Some(any_value::Value::StringValueStrindex(_)) => "string index",
    }
}

/// Writes a path.
pub(crate) fn set_path(
    field: Field,
    keys: &[Key],
    rec: &mut Rec<'_>,
    value: Value<'static>,
) -> EvalResult<()> {
    if keys.is_empty() {
        return set_field(field, rec, value);
    }
    *slot_mut(field, keys, rec)? = value.into_any();
    Ok(())
}

/// The map a path designates, for the map editors; `None` when the path
/// reads nil (nothing to edit).
pub(crate) fn map_mut<'r>(
    field: Field,
    keys: &[Key],
    rec: &'r mut Rec<'_>,
) -> EvalResult<Option<&'r mut Vec<KeyValue>>> {
    if keys.is_empty() && field != Field::LogBody {
        return attributes_mut(field, rec).map(Some);
    }
    // Reading first keeps a missing entry from being created.
    if matches!(get_path(field, keys, &rec.view())?, Value::Nil) {
        return Ok(None);
    }
    let slot = if keys.is_empty() {
        match rec.log.as_deref_mut().and_then(|l| l.body.as_mut()) {
            Some(body) => body,
            None => return Ok(None),
        }
    } else {
        slot_mut(field, keys, rec)?
    };
    match &mut slot.value {
        Some(any_value::Value::KvlistValue(m)) => Ok(Some(&mut m.values)),
        _ => Err(EvalError::new("the target is not a map")),
    }
}

#[cfg(test)]
mod tests {
    use super::entry;
    use crate::value::key_value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

    #[test]
    fn a_full_map_grows_by_a_quarter_and_keeps_its_entries() {
        let mut map: Vec<KeyValue> = (0..12)
            .map(|i| key_value(format!("k{i}"), AnyValue::default()))
            .collect();
        map.shrink_to_fit();
        entry(&mut map, "new");
        assert_eq!(map.len(), 13);
        assert!((13..=15).contains(&map.capacity()), "{}", map.capacity());
        // An existing key is found, not added.
        entry(&mut map, "k3");
        assert_eq!(map.len(), 13);
        // Small and empty maps still grow; many additions keep every key.
        let mut small = Vec::new();
        for i in 0..1000 {
            entry(&mut small, &format!("n{i}"));
        }
        assert_eq!(small.len(), 1000);
        assert!(
            small
                .iter()
                .enumerate()
                .all(|(i, kv)| kv.key == format!("n{i}"))
        );
    }
}
