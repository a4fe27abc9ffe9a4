//! Run-time values. Reads borrow from the record (`Cow::Borrowed`) so that a
//! condition comparing an attribute with a literal allocates nothing.

use std::borrow::Cow;
use std::cmp::Ordering;

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value,
};

use crate::ast::CmpOp;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    Map(Cow<'a, [KeyValue]>),
    List(Cow<'a, [AnyValue]>),
}

impl<'a> Value<'a> {
    pub(crate) fn from_any(any: &'a AnyValue) -> Value<'a> {
        match &any.value {
            None => Value::Nil,
            Some(any_value::Value::StringValue(s)) => Value::Str(Cow::Borrowed(s)),
            Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
            Some(any_value::Value::IntValue(i)) => Value::Int(*i),
            Some(any_value::Value::DoubleValue(f)) => Value::Float(*f),
            Some(any_value::Value::ArrayValue(a)) => Value::List(Cow::Borrowed(&a.values)),
            Some(any_value::Value::KvlistValue(m)) => Value::Map(Cow::Borrowed(&m.values)),
            Some(any_value::Value::BytesValue(b)) => Value::Bytes(Cow::Borrowed(b)),
            // String-table references only occur in profiles, which are not
            // processed here.
            Some(any_value::Value::StringValueStrindex(_)) => Value::Nil,
        }
    }

    pub(crate) fn from_opt_any(any: Option<&'a AnyValue>) -> Value<'a> {
        any.map_or(Value::Nil, Value::from_any)
    }

    pub(crate) fn str(s: &'a str) -> Value<'a> {
        Value::Str(Cow::Borrowed(s))
    }

    /// Detaches the value from the record it was read from, so that the
    /// record can then be written.
    pub(crate) fn into_owned(self) -> Value<'static> {
        match self {
            Value::Nil => Value::Nil,
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::Float(f) => Value::Float(f),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            Value::Bytes(b) => Value::Bytes(Cow::Owned(b.into_owned())),
            Value::Map(m) => Value::Map(Cow::Owned(m.into_owned())),
            Value::List(l) => Value::List(Cow::Owned(l.into_owned())),
        }
    }

    pub(crate) fn into_any(self) -> AnyValue {
        let value = match self {
            Value::Nil => None,
            Value::Bool(b) => Some(any_value::Value::BoolValue(b)),
            Value::Int(i) => Some(any_value::Value::IntValue(i)),
            Value::Float(f) => Some(any_value::Value::DoubleValue(f)),
            Value::Str(s) => Some(any_value::Value::StringValue(s.into_owned())),
            Value::Bytes(b) => Some(any_value::Value::BytesValue(b.into_owned())),
            Value::Map(m) => Some(any_value::Value::KvlistValue(KeyValueList {
                values: m.into_owned(),
            })),
            Value::List(l) => Some(any_value::Value::ArrayValue(ArrayValue {
                values: l.into_owned(),
            })),
        };
        AnyValue { value }
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Map(_) => "map",
            Value::List(_) => "list",
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Indexes a map by key or a list by position; nil when absent, as a
    /// missing attribute reads as nil.
    pub(crate) fn index(self, key: &crate::ast::Key) -> Result<Value<'a>, String> {
        use crate::ast::Key;
        match (self, key) {
            (Value::Nil, _) => Ok(Value::Nil),
            (Value::Map(Cow::Borrowed(m)), Key::Str(k)) => Ok(Value::from_opt_any(
                find(m, k).and_then(|kv| kv.value.as_ref()),
            )),
            (Value::Map(Cow::Owned(m)), Key::Str(k)) => Ok(find(&m, k)
                .and_then(|kv| kv.value.as_ref())
                .map_or(Value::Nil, |v| Value::from_any(v).into_owned())),
            (Value::List(Cow::Borrowed(l)), Key::Int(i)) => {
                match usize::try_from(*i).ok().and_then(|i| l.get(i)) {
                    Some(v) => Ok(Value::from_any(v)),
                    None => Err(format!("index {i} out of range of a list of {}", l.len())),
                }
            }
            (Value::List(Cow::Owned(l)), Key::Int(i)) => {
                match usize::try_from(*i).ok().and_then(|i| l.get(i)) {
                    Some(v) => Ok(Value::from_any(v).into_owned()),
                    None => Err(format!("index {i} out of range of a list of {}", l.len())),
                }
            }
            (v, Key::Str(_)) => Err(format!("a {} cannot be indexed by key", v.type_name())),
            (v, Key::Int(_)) => Err(format!("a {} cannot be indexed by position", v.type_name())),
        }
    }

    /// The text form used by string-like arguments (Concat, IsMatch): `None`
    /// for maps and lists.
    pub(crate) fn to_text(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Value::Nil => Cow::Borrowed("<nil>"),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Float(f) => Cow::Owned(format_float(*f)),
            Value::Str(s) => Cow::Borrowed(s),
            Value::Bytes(b) => Cow::Owned(hex(b)),
            Value::Map(_) | Value::List(_) => return None,
        })
    }
}

impl<'a> Value<'a> {
    /// [`Value::to_text`], keeping what a string borrows from the record.
    pub(crate) fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Value::Str(s) => Some(s),
            Value::Nil => Some(Cow::Borrowed("<nil>")),
            Value::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
            other => other.to_text().map(|t| Cow::Owned(t.into_owned())),
        }
    }
}

pub(crate) fn find<'m>(map: &'m [KeyValue], key: &str) -> Option<&'m KeyValue> {
    map.iter().find(|kv| kv.key == key)
}

/// Lower-case hex. Written by hand: two table lookups per byte, where
/// `write!` goes through the formatter for every byte (hashes are hexed
/// per record).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Shortest form that reads back to the same float, as the Collector
/// prints floats ("1.5", "2", "1e+21" style is not reproduced exactly).
pub(crate) fn format_float(f: f64) -> String {
    f.to_string()
}

/// Compares two values with `op`, with the Collector's rules: nil equals
/// only nil; ints and floats compare numerically; strings, bytes and bools
/// compare within their type; maps and lists support only (in)equality;
/// values of different types are unequal and unordered.
pub(crate) fn compare(op: CmpOp, a: &Value<'_>, b: &Value<'_>) -> bool {
    let ord = match (a, b) {
        (Value::Nil, Value::Nil) => Some(Ordering::Equal),
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y),
        (Value::Int(x), Value::Float(y)) => (*x as f64).partial_cmp(y),
        (Value::Float(x), Value::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Value::Str(x), Value::Str(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (Value::Bytes(x), Value::Bytes(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (Value::Bool(x), Value::Bool(y)) => {
            return match op {
                CmpOp::Eq => x == y,
                CmpOp::Ne => x != y,
                _ => false,
            };
        }
        (Value::Map(x), Value::Map(y)) => {
            return match op {
                CmpOp::Eq => maps_equal(x, y),
                CmpOp::Ne => !maps_equal(x, y),
                _ => false,
            };
        }
        (Value::List(x), Value::List(y)) => {
            return match op {
                CmpOp::Eq => x == y,
                CmpOp::Ne => x != y,
                _ => false,
            };
        }
        _ => None,
    };
    match (op, ord) {
        (CmpOp::Eq, o) => o == Some(Ordering::Equal),
        (CmpOp::Ne, o) => o != Some(Ordering::Equal),
        (_, None) => false,
        (CmpOp::Lt, Some(o)) => o == Ordering::Less,
        (CmpOp::Le, Some(o)) => o != Ordering::Greater,
        (CmpOp::Gt, Some(o)) => o == Ordering::Greater,
        (CmpOp::Ge, Some(o)) => o != Ordering::Less,
    }
}

/// Maps are equal whatever the order of their keys.
fn maps_equal(x: &[KeyValue], y: &[KeyValue]) -> bool {
    x.len() == y.len()
        && x.iter()
            .all(|kv| find(y, &kv.key).is_some_and(|other| other.value == kv.value))
}

pub(crate) fn key_value(key: impl Into<String>, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
        ..Default::default()
    }
}
