//! Turns the parsed tree into its run-time form: paths resolved to fields,
//! enums to numbers, functions looked up and their arguments checked,
//! regexes compiled. Nothing is looked up by name while running.

use std::borrow::Cow;

use crate::ast::{self, ArithOp, CmpOp, Key};
use crate::context::{self, Context, Field};
use crate::error::Located;
use crate::functions::converters::Converter;
use crate::functions::editors::Editor;
use crate::pattern::Pattern;
use crate::value::Value;

/// A resolved path: a field and the keys indexing into it.
#[derive(Debug, Clone)]
pub(crate) struct PathRef {
    pub field: Field,
    pub keys: Vec<Key>,
}

#[derive(Debug)]
pub(crate) enum Expr {
    Lit(Value<'static>),
    Path(PathRef),
    Call(Box<Converter>, Vec<Key>),
    List(Vec<Expr>),
    Map(Vec<(String, Expr)>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
}

#[derive(Debug)]
pub(crate) enum Cond {
    Const(bool),
    Cmp(CmpOp, Expr, Expr),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    /// A path or converter that must yield a bool.
    Value(Expr),
}

/// What is known of an expression's type before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Nil,
    Bool,
    Int,
    Float,
    Str,
    Bytes,
    List,
    Map,
    /// Only known at run time (paths, some converters).
    Any,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Nil => "nil",
            Kind::Bool => "a bool",
            Kind::Int => "an int",
            Kind::Float => "a float",
            Kind::Str => "a string",
            Kind::Bytes => "bytes",
            Kind::List => "a list",
            Kind::Map => "a map",
            Kind::Any => "a value",
        }
    }
}

impl Expr {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Expr::Lit(v) => match v {
                Value::Nil => Kind::Nil,
                Value::Bool(_) => Kind::Bool,
                Value::Int(_) => Kind::Int,
                Value::Float(_) => Kind::Float,
                Value::Str(_) => Kind::Str,
                Value::Bytes(_) => Kind::Bytes,
                Value::Map(_) => Kind::Map,
                Value::List(_) => Kind::List,
            },
            Expr::Path(_) | Expr::Arith(..) | Expr::Neg(_) => Kind::Any,
            Expr::Call(c, keys) if keys.is_empty() => c.kind(),
            Expr::Call(..) => Kind::Any,
            Expr::List(_) => Kind::List,
            Expr::Map(_) => Kind::Map,
        }
    }

    /// The literal string, when the expression is one.
    pub(crate) fn literal_str(&self) -> Option<&str> {
        match self {
            Expr::Lit(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// Compiles within one context.
#[derive(Clone, Copy)]
pub(crate) struct Compiler {
    pub context: Context,
}

pub(crate) type CResult<T> = Result<T, Located>;

impl Compiler {
    pub(crate) fn path(&self, node: &ast::Node) -> CResult<PathRef> {
        match &node.expr {
            ast::Expr::Path(p) => {
                let field = context::resolve(self.context, p, node.pos)?;
                if !p.keys.is_empty() && !field.indexable() {
                    return Err(Located::new(
                        node.pos,
                        format!("'{}' cannot be indexed", p.segments.join(".")),
                    ));
                }
                Ok(PathRef {
                    field,
                    keys: p.keys.clone(),
                })
            }
            _ => Err(Located::new(node.pos, "expected a path")),
        }
    }

    /// A path that an editor writes.
    pub(crate) fn target(&self, node: &ast::Node) -> CResult<PathRef> {
        let path = self.path(node)?;
        if path.field.read_only() {
            return Err(Located::new(node.pos, "this path cannot be written"));
        }
        Ok(path)
    }

    pub(crate) fn value(&self, node: &ast::Node) -> CResult<Expr> {
        use ast::Expr as A;
        Ok(match &node.expr {
            A::Nil => Expr::Lit(Value::Nil),
            A::Bool(b) => Expr::Lit(Value::Bool(*b)),
            A::Int(i) => Expr::Lit(Value::Int(*i)),
            A::Float(f) => Expr::Lit(Value::Float(*f)),
            A::Str(s) => Expr::Lit(Value::Str(Cow::Owned(s.clone()))),
            A::Bytes(b) => Expr::Lit(Value::Bytes(Cow::Owned(b.clone()))),
            A::List(items) => Expr::List(
                items
                    .iter()
                    .map(|n| self.value(n))
                    .collect::<CResult<_>>()?,
            ),
            A::Map(items) => Expr::Map(
                items
                    .iter()
                    .map(|(k, n)| Ok((k.clone(), self.value(n)?)))
                    .collect::<CResult<_>>()?,
            ),
            A::Ident(name) => match enum_value(name) {
                Some(v) => Expr::Lit(Value::Int(v)),
                None => {
                    return Err(Located::new(
                        node.pos,
                        format!(
                            "unknown enum '{name}' (a function name is only allowed as a function argument)"
                        ),
                    ));
                }
            },
            A::Path(_) => Expr::Path(self.path(node)?),
            A::Call(call) => {
                let conv = crate::functions::converters::compile(self, call, node.pos)?;
                Expr::Call(Box::new(conv), call.keys.clone())
            }
            A::Neg(inner) => {
                let inner = self.numeric(inner)?;
                Expr::Neg(Box::new(inner))
            }
            A::Arith(op, a, b) => {
                let a = self.numeric(a)?;
                let b = self.numeric(b)?;
                if let (Expr::Lit(Value::Int(_)), Expr::Lit(Value::Int(0))) = (&a, &b)
                    && *op == ArithOp::Div
                {
                    return Err(Located::new(node.pos, "division by zero"));
                }
                Expr::Arith(*op, Box::new(a), Box::new(b))
            }
            A::Cmp(..) | A::Not(_) | A::And(..) | A::Or(..) => {
                return Err(Located::new(
                    node.pos,
                    "a boolean expression is only allowed as a condition",
                ));
            }
        })
    }

    /// An operand of arithmetic: ints and floats, or what may be one.
    fn numeric(&self, node: &ast::Node) -> CResult<Expr> {
        let e = self.value(node)?;
        match e.kind() {
            Kind::Int | Kind::Float | Kind::Any => Ok(e),
            k => Err(Located::new(
                node.pos,
                format!("arithmetic takes ints and floats, not {}", k.name()),
            )),
        }
    }

    /// A value the caller needs to be of `kind` (or of unknown type, then
    /// checked at run time).
    pub(crate) fn typed(&self, node: &ast::Node, kind: Kind) -> CResult<Expr> {
        let e = self.value(node)?;
        let k = e.kind();
        if k == kind || k == Kind::Any {
            Ok(e)
        } else {
            Err(Located::new(
                node.pos,
                format!("expected {}, found {}", kind.name(), k.name()),
            ))
        }
    }

    pub(crate) fn cond(&self, node: &ast::Node) -> CResult<Cond> {
        use ast::Expr as A;
        Ok(match &node.expr {
            A::Bool(b) => Cond::Const(*b),
            A::Cmp(op, a, b) => Cond::Cmp(*op, self.value(a)?, self.value(b)?),
            A::And(a, b) => Cond::And(Box::new(self.cond(a)?), Box::new(self.cond(b)?)),
            A::Or(a, b) => Cond::Or(Box::new(self.cond(a)?), Box::new(self.cond(b)?)),
            A::Not(a) => Cond::Not(Box::new(self.cond(a)?)),
            A::Path(_) | A::Call(_) => {
                let e = self.value(node)?;
                match e.kind() {
                    Kind::Bool | Kind::Any => Cond::Value(e),
                    k => {
                        return Err(Located::new(
                            node.pos,
                            format!("expected a boolean expression, found {}", k.name()),
                        ));
                    }
                }
            }
            _ => {
                return Err(Located::new(node.pos, "expected a boolean expression"));
            }
        })
    }

    pub(crate) fn editor(&self, call: &ast::Call, pos: usize) -> CResult<Editor> {
        crate::functions::editors::compile(self, call, pos)
    }
}

/// Literal-only arguments (regex patterns, key lists, modes).
pub(crate) fn literal_str(node: &ast::Node, what: &str) -> CResult<String> {
    match &node.expr {
        ast::Expr::Str(s) => Ok(s.clone()),
        _ => Err(Located::new(
            node.pos,
            format!("{what} must be a string literal"),
        )),
    }
}

pub(crate) fn literal_int(node: &ast::Node, what: &str) -> CResult<i64> {
    match &node.expr {
        ast::Expr::Int(i) => Ok(*i),
        _ => Err(Located::new(
            node.pos,
            format!("{what} must be an integer literal"),
        )),
    }
}

pub(crate) fn literal_str_list(node: &ast::Node, what: &str) -> CResult<Vec<String>> {
    match &node.expr {
        ast::Expr::List(items) => items.iter().map(|n| literal_str(n, what)).collect(),
        _ => Err(Located::new(
            node.pos,
            format!("{what} must be a list of string literals"),
        )),
    }
}

pub(crate) fn regex(node: &ast::Node) -> CResult<Pattern> {
    let pattern = literal_str(node, "a regex pattern")?;
    // Bounded so that a hostile pattern cannot make a huge automaton.
    regex::RegexBuilder::new(&pattern)
        .size_limit(1 << 20)
        .build()
        .map(Pattern::new)
        .map_err(|e| Located::new(node.pos, format!("invalid regex: {e}")))
}

/// A regex used only to test a match. Anchored literal patterns, common
/// for keys (`^internal\.`, `^/api/`), are tested without the regex engine.
#[derive(Debug)]
pub(crate) enum Matcher {
    Prefix(String),
    Exact(String),
    Regex(Pattern),
}

impl Matcher {
    pub(crate) fn is_match(&self, s: &str) -> bool {
        match self {
            Matcher::Prefix(p) => s.starts_with(p.as_str()),
            Matcher::Exact(p) => s == p,
            Matcher::Regex(re) => re.is_match(s),
        }
    }
}

pub(crate) fn matcher(node: &ast::Node) -> CResult<Matcher> {
    let re = regex(node)?;
    Ok(match anchored_literal(re.regex().as_str()) {
        Some((text, true)) => Matcher::Exact(text),
        Some((text, false)) => Matcher::Prefix(text),
        None => Matcher::Regex(re),
    })
}

/// `^abc\.d` → ("abc.d", false), `^abc$` → ("abc", true); `None` when the
/// pattern is not an anchored literal.
fn anchored_literal(pattern: &str) -> Option<(String, bool)> {
    let mut chars = pattern.strip_prefix('^')?.chars().peekable();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                e @ ('.' | '\\' | '-' | '/' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '{'
                | '}' | '|' | '^' | '$' | ':' | '=' | '_') => out.push(e),
                _ => return None,
            },
            '$' if chars.peek().is_none() => return Some((out, true)),
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return None;
            }
            c => out.push(c),
        }
    }
    Some((out, false))
}

/// Checks the number of arguments of a call.
pub(crate) fn arity(call: &ast::Call, pos: usize, min: usize, max: usize) -> CResult<()> {
    let n = call.args.len();
    if n < min || n > max {
        let expected = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(Located::new(
            pos,
            format!("{} takes {expected} arguments, got {n}", call.name),
        ));
    }
    Ok(())
}

/// The enums of OTLP, by their OTTL names.
fn enum_value(name: &str) -> Option<i64> {
    Some(match name {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        "METRIC_DATA_TYPE_NONE" => 0,
        "METRIC_DATA_TYPE_GAUGE" => 1,
        "METRIC_DATA_TYPE_SUM" => 2,
        "METRIC_DATA_TYPE_HISTOGRAM" => 3,
        "METRIC_DATA_TYPE_EXPONENTIAL_HISTOGRAM" => 4,
        "METRIC_DATA_TYPE_SUMMARY" => 5,
        "AGGREGATION_TEMPORALITY_UNSPECIFIED" => 0,
        "AGGREGATION_TEMPORALITY_DELTA" => 1,
        "AGGREGATION_TEMPORALITY_CUMULATIVE" => 2,
        "FLAG_NONE" => 0,
        "FLAG_NO_RECORDED_VALUE" => 1,
        "SEVERITY_NUMBER_UNSPECIFIED" => 0,
        _ => return severity(name),
    })
}

/// SEVERITY_NUMBER_TRACE … SEVERITY_NUMBER_FATAL4: four numbers per level.
fn severity(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("SEVERITY_NUMBER_")?;
    let levels = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
    let (i, level) = levels
        .iter()
        .enumerate()
        .find(|(_, l)| rest.starts_with(**l))?;
    let step = match &rest[level.len()..] {
        "" => 0,
        "2" => 1,
        "3" => 2,
        "4" => 3,
        _ => return None,
    };
    Some(i as i64 * 4 + 1 + step)
}
