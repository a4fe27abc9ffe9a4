//! Configuration, shaped like the Collector's transform and filter
//! processors.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::context::Context;

/// What a run-time error does. The Collector's default for both processors
/// is `propagate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorMode {
    /// Stop and return the error (the batch is left partly processed).
    #[default]
    Propagate,
    /// Log at debug level, count, go on with the next statement.
    Ignore,
    /// Count and go on.
    Silent,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    #[serde(default)]
    pub error_mode: ErrorMode,
    #[serde(default)]
    pub trace_statements: Vec<ContextStatements>,
    #[serde(default)]
    pub metric_statements: Vec<ContextStatements>,
    #[serde(default)]
    pub log_statements: Vec<ContextStatements>,
}

/// Statements run in one context, when any of `conditions` holds (or
/// always, with none). In configuration, a plain string stands for a group
/// of one statement whose context is told by its paths' prefixes.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextStatements {
    pub context: Context,
    pub conditions: Vec<String>,
    pub statements: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    context: Context,
    #[serde(default)]
    conditions: Vec<String>,
    statements: Vec<String>,
}

impl<'de> Deserialize<'de> for ContextStatements {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum: the group's own errors
        // (unknown field, missing statements) stay precise.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContextStatements;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a statement or a {context, conditions, statements} group")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                let context = crate::statement::infer_context(s).map_err(E::custom)?;
                Ok(ContextStatements {
                    context,
                    conditions: Vec::new(),
                    statements: vec![s.to_owned()],
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let g = Group::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ContextStatements {
                    context: g.context,
                    conditions: g.conditions,
                    statements: g.statements,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Conditions of the filter processor: whatever matches any of them is
/// dropped.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    #[serde(default)]
    pub error_mode: ErrorMode,
    #[serde(default)]
    pub traces: TraceConditions,
    #[serde(default)]
    pub metrics: MetricConditions,
    #[serde(default)]
    pub logs: LogConditions,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConditions {
    #[serde(default)]
    pub span: Vec<String>,
    #[serde(default)]
    pub spanevent: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConditions {
    #[serde(default)]
    pub metric: Vec<String>,
    #[serde(default)]
    pub datapoint: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConditions {
    #[serde(default)]
    pub log_record: Vec<String>,
}
