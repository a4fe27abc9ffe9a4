//! Evaluates compiled values and conditions over a record.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::AnyValue;

use crate::ast::ArithOp;
use crate::compile::{Cond, Expr};
use crate::error::{EvalError, EvalResult};
use crate::record::{View, get_path};
use crate::value::{Value, compare, key_value};

/// A literal, lent rather than copied.
fn lend<'a>(v: &'a Value<'static>) -> Value<'a> {
    match v {
        Value::Nil => Value::Nil,
        Value::Bool(b) => Value::Bool(*b),
        Value::Int(i) => Value::Int(*i),
        Value::Float(f) => Value::Float(*f),
        Value::Str(s) => Value::Str(Cow::Borrowed(s)),
        Value::Bytes(b) => Value::Bytes(Cow::Borrowed(b)),
        Value::Map(m) => Value::Map(Cow::Borrowed(m)),
        Value::List(l) => Value::List(Cow::Borrowed(l)),
    }
}

pub(crate) fn eval<'a>(e: &'a Expr, v: &View<'a>) -> EvalResult<Value<'a>> {
    match e {
        Expr::Lit(lit) => Ok(lend(lit)),
        Expr::Path(p) => get_path(p.field, &p.keys, v),
        Expr::Call(conv, keys) => {
            let mut value = conv.eval(v)?;
            for key in keys {
                value = value.index(key).map_err(EvalError)?;
            }
            Ok(value)
        }
        Expr::List(items) => {
            let values = items
                .iter()
                .map(|i| Ok(eval(i, v)?.into_owned().into_any()))
                .collect::<EvalResult<Vec<AnyValue>>>()?;
            Ok(Value::List(Cow::Owned(values)))
        }
        Expr::Map(items) => {
            let values = items
                .iter()
                .map(|(k, i)| Ok(key_value(k.clone(), eval(i, v)?.into_owned().into_any())))
                .collect::<EvalResult<Vec<_>>>()?;
            Ok(Value::Map(Cow::Owned(values)))
        }
        Expr::Arith(op, a, b) => arith(*op, eval(a, v)?, eval(b, v)?),
        Expr::Neg(a) => match eval(a, v)? {
            Value::Int(i) => i
                .checked_neg()
                .map(Value::Int)
                .ok_or_else(|| EvalError::new("integer overflow")),
            Value::Float(f) => Ok(Value::Float(-f)),
            other => Err(EvalError::new(format!(
                "cannot negate {}",
                other.type_name()
            ))),
        },
    }
}

/// Arithmetic as the Collector does it: int with int stays int (here
/// overflow is an error rather than wrapping), a float on either side
/// makes a float, anything else is an error.
fn arith(op: ArithOp, a: Value<'_>, b: Value<'_>) -> EvalResult<Value<'static>> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => {
            let r = match op {
                ArithOp::Add => x.checked_add(y),
                ArithOp::Sub => x.checked_sub(y),
                ArithOp::Mul => x.checked_mul(y),
                ArithOp::Div => {
                    if y == 0 {
                        return Err(EvalError::new("division by zero"));
                    }
                    x.checked_div(y)
                }
            };
            r.map(Value::Int)
                .ok_or_else(|| EvalError::new("integer overflow"))
        }
        (Value::Int(x), Value::Float(y)) => float_op(op, x as f64, y),
        (Value::Float(x), Value::Int(y)) => float_op(op, x, y as f64),
        (Value::Float(x), Value::Float(y)) => float_op(op, x, y),
        (x, y) => Err(EvalError::new(format!(
            "arithmetic on {} and {}",
            x.type_name(),
            y.type_name()
        ))),
    }
}

fn float_op(op: ArithOp, x: f64, y: f64) -> EvalResult<Value<'static>> {
    Ok(Value::Float(match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div => {
            if y == 0.0 {
                return Err(EvalError::new("division by zero"));
            }
            x / y
        }
    }))
}

pub(crate) fn test(c: &Cond, v: &View<'_>) -> EvalResult<bool> {
    match c {
        Cond::Const(b) => Ok(*b),
        // A literal side (the common `attributes["k"] == "v"`) is compared
        // where it is, without going through `eval`.
        Cond::Cmp(op, a, Expr::Lit(b)) => Ok(compare(*op, &eval(a, v)?, b)),
        Cond::Cmp(op, Expr::Lit(a), b) => Ok(compare(*op, a, &eval(b, v)?)),
        Cond::Cmp(op, a, b) => Ok(compare(*op, &eval(a, v)?, &eval(b, v)?)),
        // Both short-circuit, as the Collector's do.
        Cond::And(a, b) => Ok(test(a, v)? && test(b, v)?),
        Cond::Or(a, b) => Ok(test(a, v)? || test(b, v)?),
        Cond::Not(a) => Ok(!test(a, v)?),
        Cond::Value(e) => match eval(e, v)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError::new(format!(
                "condition is {}, not a bool",
                other.type_name()
            ))),
        },
    }
}
