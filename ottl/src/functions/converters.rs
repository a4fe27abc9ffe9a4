//! Converters: functions that compute a value (upper-case names).

use std::borrow::Cow;

use sha2::{Digest, Sha256, Sha512};

use crate::ast;
use crate::compile::{CResult, Compiler, Expr, Kind, Matcher, arity, literal_str, matcher};
use crate::error::{EvalError, EvalResult, Located};
use crate::eval::eval;
use crate::record::View;
use crate::value::{Value, hex};

/// A converter that maps one string to another, usable both as a call and
/// as the optional function argument of the replace editors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrFn {
    Sha256,
    Sha512,
    ToLowerCase,
    ToUpperCase,
}

impl StrFn {
    pub(crate) fn by_name(name: &str) -> Option<StrFn> {
        Some(match name {
            "SHA256" => StrFn::Sha256,
            "SHA512" => StrFn::Sha512,
            "ToLowerCase" => StrFn::ToLowerCase,
            "ToUpperCase" => StrFn::ToUpperCase,
            _ => return None,
        })
    }

    pub(crate) fn apply(self, s: &str) -> String {
        match self {
            StrFn::Sha256 => hex(&Sha256::digest(s.as_bytes())),
            StrFn::Sha512 => hex(&Sha512::digest(s.as_bytes())),
            StrFn::ToLowerCase => s.to_lowercase(),
            StrFn::ToUpperCase => s.to_uppercase(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeTest {
    String,
    Int,
    Double,
    Bool,
    Map,
    List,
}

#[derive(Debug)]
pub(crate) enum Converter {
    Str(StrFn, Expr),
    Concat(Vec<Expr>, String),
    IsMatch(Expr, Matcher),
    Int(Expr),
    Double(Expr),
    String(Expr),
    Len(Expr),
    Substring(Expr, Expr, Expr),
    Is(TypeTest, Expr),
}

pub(crate) fn compile(c: &Compiler, call: &ast::Call, pos: usize) -> CResult<Converter> {
    let a = &call.args;
    if let Some(f) = StrFn::by_name(&call.name) {
        arity(call, pos, 1, 1)?;
        return Ok(Converter::Str(f, c.typed(&a[0], Kind::Str)?));
    }
    Ok(match call.name.as_str() {
        "Concat" => {
            arity(call, pos, 2, 2)?;
            let items = match &a[0].expr {
                ast::Expr::List(items) => items
                    .iter()
                    .map(|n| c.value(n))
                    .collect::<CResult<Vec<_>>>()?,
                _ => return Err(Located::new(a[0].pos, "Concat takes a list of values")),
            };
            Converter::Concat(items, literal_str(&a[1], "the delimiter")?)
        }
        "IsMatch" => {
            arity(call, pos, 2, 2)?;
            Converter::IsMatch(c.value(&a[0])?, matcher(&a[1])?)
        }
        "Int" => {
            arity(call, pos, 1, 1)?;
            Converter::Int(c.value(&a[0])?)
        }
        "Double" => {
            arity(call, pos, 1, 1)?;
            Converter::Double(c.value(&a[0])?)
        }
        "String" => {
            arity(call, pos, 1, 1)?;
            Converter::String(c.value(&a[0])?)
        }
        "Len" => {
            arity(call, pos, 1, 1)?;
            let e = c.value(&a[0])?;
            if matches!(e.kind(), Kind::Int | Kind::Float | Kind::Bool | Kind::Nil) {
                return Err(Located::new(
                    a[0].pos,
                    "Len takes a string, bytes, a map or a list",
                ));
            }
            Converter::Len(e)
        }
        "Substring" => {
            arity(call, pos, 3, 3)?;
            Converter::Substring(
                c.typed(&a[0], Kind::Str)?,
                c.typed(&a[1], Kind::Int)?,
                c.typed(&a[2], Kind::Int)?,
            )
        }
        name => {
            let test = match name {
                "IsString" => TypeTest::String,
                "IsInt" => TypeTest::Int,
                "IsDouble" => TypeTest::Double,
                "IsBool" => TypeTest::Bool,
                "IsMap" => TypeTest::Map,
                "IsList" => TypeTest::List,
                _ => return Err(Located::new(pos, format!("unknown converter '{name}'"))),
            };
            arity(call, pos, 1, 1)?;
            Converter::Is(test, c.value(&a[0])?)
        }
    })
}

fn want_str<'v>(name: &str, v: &'v Value<'_>) -> EvalResult<&'v str> {
    v.as_str()
        .ok_or_else(|| EvalError::new(format!("{name} takes a string, not {}", v.type_name())))
}

fn want_int(name: &str, v: &Value<'_>) -> EvalResult<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(EvalError::new(format!(
            "{name} takes an int, not {}",
            other.type_name()
        ))),
    }
}

impl Converter {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Converter::Str(..) | Converter::Concat(..) | Converter::Substring(..) => Kind::Str,
            Converter::IsMatch(..) | Converter::Is(..) => Kind::Bool,
            // Int, Double and String give nil on what they cannot convert.
            Converter::Int(_) | Converter::Double(_) | Converter::String(_) => Kind::Any,
            Converter::Len(_) => Kind::Int,
        }
    }

    pub(crate) fn eval<'a>(&'a self, v: &View<'a>) -> EvalResult<Value<'a>> {
        Ok(match self {
            Converter::Str(f, arg) => {
                let value = eval(arg, v)?;
                Value::Str(Cow::Owned(f.apply(want_str("the function", &value)?)))
            }
            Converter::Concat(items, delimiter) => {
                Value::Str(Cow::Owned(concat(items, delimiter, v)?))
            }
            Converter::IsMatch(arg, re) => {
                let value = eval(arg, v)?;
                match value {
                    // A missing value does not match, rather than fail.
                    Value::Nil => Value::Bool(false),
                    Value::Str(s) => Value::Bool(re.is_match(&s)),
                    other => match other.to_text() {
                        Some(text) => Value::Bool(re.is_match(&text)),
                        None => {
                            return Err(EvalError::new(format!(
                                "IsMatch takes a string, not {}",
                                other.type_name()
                            )));
                        }
                    },
                }
            }
            Converter::Int(arg) => match eval(arg, v)? {
                Value::Int(i) => Value::Int(i),
                // Truncation towards zero; out of range or NaN gives nil.
                Value::Float(f) if f.is_finite() && f.trunc().abs() < 9.2e18 => {
                    Value::Int(f.trunc() as i64)
                }
                Value::Bool(b) => Value::Int(i64::from(b)),
                Value::Str(s) => s.trim().parse::<i64>().map_or(Value::Nil, Value::Int),
                _ => Value::Nil,
            },
            Converter::Double(arg) => match eval(arg, v)? {
                Value::Int(i) => Value::Float(i as f64),
                Value::Float(f) => Value::Float(f),
                Value::Bool(b) => Value::Float(if b { 1.0 } else { 0.0 }),
                Value::Str(s) => s.trim().parse::<f64>().map_or(Value::Nil, Value::Float),
                _ => Value::Nil,
            },
            Converter::String(arg) => match eval(arg, v)? {
                Value::Nil => Value::Nil,
                Value::Str(s) => Value::Str(s),
                other => match other.to_text() {
                    Some(text) => Value::Str(Cow::Owned(text.into_owned())),
                    None => Value::Str(Cow::Owned(to_json(&other))),
                },
            },
            Converter::Len(arg) => {
                let n = match eval(arg, v)? {
                    Value::Str(s) => s.len(),
                    Value::Bytes(b) => b.len(),
                    Value::Map(m) => m.len(),
                    Value::List(l) => l.len(),
                    other => {
                        return Err(EvalError::new(format!(
                            "Len takes a string, bytes, a map or a list, not {}",
                            other.type_name()
                        )));
                    }
                };
                Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
            }
            Converter::Substring(target, start, length) => {
                let value = eval(target, v)?;
                let s = want_str("Substring", &value)?;
                let start = want_int("Substring", &eval(start, v)?)?;
                let length = want_int("Substring", &eval(length, v)?)?;
                Value::Str(Cow::Owned(substring(s, start, length)?.to_owned()))
            }
            Converter::Is(test, arg) => {
                let value = eval(arg, v)?;
                Value::Bool(matches!(
                    (test, value),
                    (TypeTest::String, Value::Str(_))
                        | (TypeTest::Int, Value::Int(_))
                        | (TypeTest::Double, Value::Float(_))
                        | (TypeTest::Bool, Value::Bool(_))
                        | (TypeTest::Map, Value::Map(_))
                        | (TypeTest::List, Value::List(_))
                ))
            }
        })
    }
}

/// Parts of a `Concat` held on the stack, so that the result can be
/// allocated once at its exact size (which also lets the allocator hand
/// back the string it replaces, of the same size).
const CONCAT_PARTS: usize = 8;

fn concat<'a>(items: &'a [Expr], delimiter: &str, v: &View<'a>) -> EvalResult<String> {
    let text = |item: &'a Expr| -> EvalResult<Cow<'a, str>> {
        let value = eval(item, v)?;
        let name = value.type_name();
        value
            .into_text()
            .ok_or_else(|| EvalError::new(format!("Concat cannot join {name}")))
    };
    if items.len() > CONCAT_PARTS {
        let mut out = String::new();
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(delimiter);
            }
            out.push_str(&text(item)?);
        }
        return Ok(out);
    }
    let mut parts: [Cow<'a, str>; CONCAT_PARTS] = Default::default();
    let mut len = delimiter
        .len()
        .saturating_mul(items.len().saturating_sub(1));
    for (part, item) in parts.iter_mut().zip(items) {
        *part = text(item)?;
        len = len.saturating_add(part.len());
    }
    let mut out = String::with_capacity(len);
    for (i, part) in parts[..items.len()].iter().enumerate() {
        if i > 0 {
            out.push_str(delimiter);
        }
        out.push_str(part);
    }
    Ok(out)
}

/// `length` bytes of `s` from byte `start`, as the Collector counts; a
/// range past the end or splitting a character is an error.
fn substring(s: &str, start: i64, length: i64) -> EvalResult<&str> {
    let bad = || {
        EvalError::new(format!(
            "invalid range {start}+{length} of a string of {}",
            s.len()
        ))
    };
    let start = usize::try_from(start).map_err(|_| bad())?;
    let length = usize::try_from(length).map_err(|_| bad())?;
    let end = start.checked_add(length).ok_or_else(bad)?;
    s.get(start..end).ok_or_else(bad)
}

/// A JSON rendering of maps and lists for `String`.
fn to_json(v: &Value<'_>) -> String {
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    fn any(out: &mut String, a: &AnyValue) {
        write(out, &Value::from_any(a));
    }
    fn quote(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn write(out: &mut String, v: &Value<'_>) {
        match v {
            Value::Nil => out.push_str("null"),
            Value::Str(s) => quote(out, s),
            Value::Bytes(b) => quote(out, &hex(b)),
            Value::Map(m) => {
                out.push('{');
                for (i, kv) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    quote(out, &kv.key);
                    out.push(':');
                    match &kv.value {
                        Some(a) => any(out, a),
                        None => out.push_str("null"),
                    }
                }
                out.push('}');
            }
            Value::List(l) => {
                out.push('[');
                for (i, a) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    any(out, a);
                }
                out.push(']');
            }
            other => {
                if let Some(t) = other.to_text() {
                    out.push_str(&t);
                }
            }
        }
    }
    let mut out = String::new();
    write(&mut out, v);
    out
}
