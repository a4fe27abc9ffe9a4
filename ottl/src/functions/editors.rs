//! Editors: the functions a statement applies (lower-case names).

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};

use crate::ast;
use crate::compile::{
    CResult, Compiler, Expr, Kind, Matcher, PathRef, arity, literal_int, literal_str,
    literal_str_list, matcher, regex,
};
use crate::error::{EvalError, EvalResult, Located};
use crate::eval::eval;
use crate::functions::converters::StrFn;
use crate::keyset::KeySet;
use crate::pattern::Pattern;
use crate::record::{Rec, get_path, map_mut, set_path};
use crate::value::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Key,
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
    Insert,
    Update,
    Upsert,
}

/// How each match is replaced: the replacement (with `$1` style groups),
/// optionally passed through a function, optionally wrapped in a format
/// with one `%s`.
#[derive(Debug)]
pub(crate) struct Replace {
    pub re: Pattern,
    pub replacement: Expr,
    pub function: Option<StrFn>,
    /// The format split around its `%s`.
    pub format: Option<(String, String)>,
}

#[derive(Debug)]
pub(crate) enum Editor {
    Set(PathRef, Expr),
    DeleteKey(PathRef, Expr),
    DeleteMatchingKeys(PathRef, Matcher),
    KeepKeys(PathRef, KeySet),
    KeepMatchingKeys(PathRef, Matcher),
    Limit(PathRef, usize, KeySet),
    TruncateAll(PathRef, usize),
    ReplacePattern(PathRef, Replace),
    ReplaceAllPatterns(PathRef, Mode, Replace),
    MergeMaps(PathRef, Expr, Strategy),
}

pub(crate) fn compile(c: &Compiler, call: &ast::Call, pos: usize) -> CResult<Editor> {
    let a = &call.args;
    Ok(match call.name.as_str() {
        "set" => {
            arity(call, pos, 2, 2)?;
            Editor::Set(c.target(&a[0])?, c.value(&a[1])?)
        }
        "delete_key" => {
            arity(call, pos, 2, 2)?;
            Editor::DeleteKey(c.target(&a[0])?, c.typed(&a[1], Kind::Str)?)
        }
        "delete_matching_keys" => {
            arity(call, pos, 2, 2)?;
            Editor::DeleteMatchingKeys(c.target(&a[0])?, matcher(&a[1])?)
        }
        "keep_keys" => {
            arity(call, pos, 2, 2)?;
            let keys = literal_str_list(&a[1], "the keys")?;
            Editor::KeepKeys(c.target(&a[0])?, KeySet::new(keys))
        }
        "keep_matching_keys" => {
            arity(call, pos, 2, 2)?;
            Editor::KeepMatchingKeys(c.target(&a[0])?, matcher(&a[1])?)
        }
        "limit" => {
            arity(call, pos, 2, 3)?;
            let limit = non_negative(&a[1], "the limit")?;
            let priority = match a.get(2) {
                Some(n) => literal_str_list(n, "the priority keys")?,
                None => Vec::new(),
            };
            if priority.len() > limit {
                return Err(Located::new(
                    a[2].pos,
                    "more priority keys than the limit keeps",
                ));
            }
            Editor::Limit(c.target(&a[0])?, limit, KeySet::new(priority))
        }
        "truncate_all" => {
            arity(call, pos, 2, 2)?;
            Editor::TruncateAll(c.target(&a[0])?, non_negative(&a[1], "the limit")?)
        }
        "replace_pattern" => {
            arity(call, pos, 3, 5)?;
            Editor::ReplacePattern(c.target(&a[0])?, replace(c, &a[1..])?)
        }
        "replace_all_patterns" => {
            arity(call, pos, 4, 6)?;
            let mode = match literal_str(&a[1], "the mode")?.as_str() {
                "key" => Mode::Key,
                "value" => Mode::Value,
                _ => return Err(Located::new(a[1].pos, "the mode is \"key\" or \"value\"")),
            };
            Editor::ReplaceAllPatterns(c.target(&a[0])?, mode, replace(c, &a[2..])?)
        }
        "merge_maps" => {
            arity(call, pos, 3, 3)?;
            let strategy = match literal_str(&a[2], "the strategy")?.as_str() {
                "insert" => Strategy::Insert,
                "update" => Strategy::Update,
                "upsert" => Strategy::Upsert,
                _ => {
                    return Err(Located::new(
                        a[2].pos,
                        "the strategy is \"insert\", \"update\" or \"upsert\"",
                    ));
                }
            };
            Editor::MergeMaps(c.target(&a[0])?, c.typed(&a[1], Kind::Map)?, strategy)
        }
        name => return Err(Located::new(pos, format!("unknown editor '{name}'"))),
    })
}

fn non_negative(node: &ast::Node, what: &str) -> CResult<usize> {
    let i = literal_int(node, what)?;
    usize::try_from(i).map_err(|_| Located::new(node.pos, format!("{what} must not be negative")))
}

/// `regex, replacement [, function [, format]]`.
fn replace(c: &Compiler, a: &[ast::Node]) -> CResult<Replace> {
    let re = regex(&a[0])?;
    let replacement = c.typed(&a[1], Kind::Str)?;
    let function = match a.get(2) {
        None => None,
        Some(n) => match &n.expr {
            ast::Expr::Ident(name) => Some(StrFn::by_name(name).ok_or_else(|| {
                Located::new(
                    n.pos,
                    format!("'{name}' cannot be applied to a replacement"),
                )
            })?),
            _ => {
                return Err(Located::new(
                    n.pos,
                    "expected a function name such as SHA256",
                ));
            }
        },
    };
    let format = match a.get(3) {
        None => None,
        Some(n) => {
            let f = literal_str(n, "the replacement format")?;
            Some(split_format(&f).ok_or_else(|| {
                Located::new(
                    n.pos,
                    "the replacement format needs exactly one %s and no other %",
                )
            })?)
        }
    };
    Ok(Replace {
        re,
        replacement,
        function,
        format,
    })
}

fn split_format(f: &str) -> Option<(String, String)> {
    let (before, after) = f.split_once("%s")?;
    if before.contains('%') || after.contains('%') {
        return None;
    }
    Some((before.to_owned(), after.to_owned()))
}

impl Replace {
    /// `s` with every match replaced; `None` when nothing matches (the
    /// common case, which allocates nothing).
    fn apply(&self, s: &str, replacement: &str) -> Option<String> {
        // `is_match` first: it is cheaper than `replace_all` finding
        // nothing, which is the common case.
        if !self.re.is_match(s) {
            return None;
        }
        let re = self.re.regex();
        // `replace_all` lends the input back only when nothing matches.
        let out = if self.function.is_none() && self.format.is_none() {
            re.replace_all(s, replacement)
        } else {
            re.replace_all(s, |caps: &regex::Captures<'_>| {
                let mut expanded = String::new();
                caps.expand(replacement, &mut expanded);
                let mut done = match self.function {
                    Some(f) => f.apply(&expanded),
                    None => expanded,
                };
                if let Some((before, after)) = &self.format {
                    done = format!("{before}{done}{after}");
                }
                done
            })
        };
        match out {
            Cow::Borrowed(_) => None,
            Cow::Owned(out) => Some(out),
        }
    }

    /// The replacement text: a literal is lent, anything else evaluated
    /// and copied before the record is written.
    fn replacement<'e>(&'e self, rec: &Rec<'_>) -> EvalResult<Cow<'e, str>> {
        if let Some(s) = self.replacement.literal_str() {
            return Ok(Cow::Borrowed(s));
        }
        match eval(&self.replacement, &rec.view())? {
            Value::Str(s) => Ok(Cow::Owned(s.into_owned())),
            other => Err(EvalError::new(format!(
                "the replacement must be a string, not {}",
                other.type_name()
            ))),
        }
    }
}

impl Editor {
    pub(crate) fn apply(&self, rec: &mut Rec<'_>) -> EvalResult<()> {
        match self {
            Editor::Set(target, value) => {
                let value = eval(value, &rec.view())?.into_owned();
                // Like the Collector, setting nil (say, a missing
                // attribute) leaves the target as it is.
                if matches!(value, Value::Nil) {
                    return Ok(());
                }
                set_path(target.field, &target.keys, rec, value)
            }
            Editor::DeleteKey(target, key) => {
                let key = match key.literal_str() {
                    Some(k) => Cow::Borrowed(k),
                    None => match eval(key, &rec.view())? {
                        Value::Str(s) => Cow::Owned(s.into_owned()),
                        other => {
                            return Err(EvalError::new(format!(
                                "the key must be a string, not {}",
                                other.type_name()
                            )));
                        }
                    },
                };
                with_map(target, rec, |m| m.retain(|kv| kv.key != key))
            }
            Editor::DeleteMatchingKeys(target, re) => {
                with_map(target, rec, |m| m.retain(|kv| !re.is_match(&kv.key)))
            }
            Editor::KeepKeys(target, keys) => {
                with_map(target, rec, |m| m.retain(|kv| keys.contains(&kv.key)))
            }
            Editor::KeepMatchingKeys(target, re) => {
                with_map(target, rec, |m| m.retain(|kv| re.is_match(&kv.key)))
            }
            Editor::Limit(target, limit, priority) => {
                with_map(target, rec, |m| limit_map(m, *limit, priority))
            }
            Editor::TruncateAll(target, limit) => with_map(target, rec, |m| {
                for kv in m.iter_mut() {
                    if let Some(any_value::Value::StringValue(s)) =
                        kv.value.as_mut().and_then(|v| v.value.as_mut())
                    {
                        truncate(s, *limit);
                    }
                }
            }),
            Editor::ReplacePattern(target, r) => {
                let replaced = {
                    let current = get_path(target.field, &target.keys, &rec.view())?;
                    match (current.as_str(), r.replacement.literal_str()) {
                        // Only strings are rewritten; other types are left.
                        (None, _) => None,
                        (Some(s), Some(replacement)) => r.apply(s, replacement),
                        // A computed replacement is only evaluated (and may
                        // only fail) when there is something to replace.
                        (Some(s), None) if r.re.is_match(s) => {
                            let replacement = r.replacement(rec)?;
                            r.apply(s, &replacement)
                        }
                        (Some(_), None) => None,
                    }
                };
                match replaced {
                    Some(s) => set_path(target.field, &target.keys, rec, Value::Str(Cow::Owned(s))),
                    None => Ok(()),
                }
            }
            Editor::ReplaceAllPatterns(target, mode, r) => {
                let replacement = r.replacement(rec)?;
                with_map(target, rec, |m| replace_all(m, *mode, r, &replacement))
            }
            Editor::MergeMaps(target, source, strategy) => {
                let source = match eval(source, &rec.view())?.into_owned() {
                    Value::Map(m) => m.into_owned(),
                    Value::Nil => return Ok(()),
                    other => {
                        return Err(EvalError::new(format!(
                            "merge_maps takes a map as source, not {}",
                            other.type_name()
                        )));
                    }
                };
                with_map(target, rec, |m| merge(m, source, *strategy))
            }
        }
    }
}

fn with_map(
    target: &PathRef,
    rec: &mut Rec<'_>,
    f: impl FnOnce(&mut Vec<KeyValue>),
) -> EvalResult<()> {
    if let Some(m) = map_mut(target.field, &target.keys, rec)? {
        f(m);
    }
    Ok(())
}

/// Keeps at most `limit` entries: the priority keys present first, then
/// the others in their order.
fn limit_map(m: &mut Vec<KeyValue>, limit: usize, priority: &KeySet) {
    if m.len() <= limit {
        return;
    }
    let is_priority = |kv: &KeyValue| priority.contains(&kv.key);
    let prioritized = m.iter().filter(|kv| is_priority(kv)).count();
    let mut others = limit.saturating_sub(prioritized);
    m.retain(|kv| {
        if is_priority(kv) {
            return true;
        }
        if others > 0 {
            others -= 1;
            true
        } else {
            false
        }
    });
}

/// Cuts `s` to at most `limit` bytes, back to a character boundary.
fn truncate(s: &mut String, limit: usize) {
    if s.len() <= limit {
        return;
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

fn replace_all(m: &mut [KeyValue], mode: Mode, r: &Replace, replacement: &str) {
    for kv in m.iter_mut() {
        match mode {
            Mode::Key => {
                if let Some(k) = r.apply(&kv.key, replacement) {
                    kv.key = k;
                }
            }
            Mode::Value => {
                if let Some(any_value::Value::StringValue(s)) =
                    kv.value.as_mut().and_then(|v| v.value.as_mut())
                    && let Some(new) = r.apply(s, replacement)
                {
                    *s = new;
                }
            }
        }
    }
}

fn merge(m: &mut Vec<KeyValue>, source: Vec<KeyValue>, strategy: Strategy) {
    for kv in source {
        match m.iter_mut().find(|e| e.key == kv.key) {
            Some(existing) => {
                if strategy != Strategy::Insert {
                    existing.value = kv.value;
                }
            }
            None => {
                if strategy != Strategy::Update {
                    m.push(kv);
                }
            }
        }
    }
}
