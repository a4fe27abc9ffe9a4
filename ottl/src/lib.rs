//! A subset of the OpenTelemetry Transformation Language (OTTL), after the
//! Collector's `pkg/ottl`: statements (`set(attributes["k"], "v") where …`)
//! and conditions, over OTLP protobuf requests, for the transform and filter
//! processors and for the agent's routing.
//!
//! Statements are parsed and compiled once ([`Transform::new`],
//! [`Filter::new`], [`Condition::new`]): paths resolve to fields, functions
//! are checked, regexes compiled. Running them touches no names and, where
//! a condition does not match, allocates nothing.
//!
//! What is supported:
//! - contexts `resource`, `scope`, `span`, `spanevent`, `metric`,
//!   `datapoint`, `log`, each reaching the fields of the records enclosing
//!   it through a prefix (`resource.attributes["k"]`, `scope.name`,
//!   `instrumentation_scope.version`, `span.name` from a span event,
//!   `metric.name` from a data point); its own fields may take their
//!   context's prefix too (`span.attributes`);
//! - literals (strings with `\" \\ \n \t \r` escapes, ints, floats, bools,
//!   `nil`, bytes `0x…`), lists, maps, OTLP enums (`SPAN_KIND_SERVER`,
//!   `STATUS_CODE_ERROR`, `METRIC_DATA_TYPE_SUM`, `SEVERITY_NUMBER_WARN`,
//!   `AGGREGATION_TEMPORALITY_DELTA` …), keys on maps and lists
//!   (`attributes["a"]["b"][0]`), `+ - * /`, comparisons, `and`, `or`,
//!   `not`;
//! - editors `set`, `delete_key`, `delete_matching_keys`, `keep_keys`,
//!   `keep_matching_keys`, `limit`, `truncate_all`, `replace_pattern`,
//!   `replace_all_patterns` (with the optional function, `SHA256`,
//!   `SHA512`, `ToLowerCase` or `ToUpperCase`, and format), `merge_maps`;
//! - converters `SHA256`, `SHA512`, `Concat`, `IsMatch`, `Int`, `Double`,
//!   `String`, `Len`, `Substring`, `ToLowerCase`, `ToUpperCase`,
//!   `IsString`, `IsInt`, `IsDouble`, `IsBool`, `IsMap`, `IsList`.
//!
//! Where it is stricter than the Collector: regex patterns, key lists,
//! modes and formats must be literals (they are compiled at load time);
//! int overflow in arithmetic is an error rather than wrapping; a value of
//! the wrong type written to a typed field (`set(name, 1)`) is an error
//! rather than ignored. A log body is shortened with
//! `set(body, Substring(body, 0, N)) where Len(body) > N`; `truncate_all`
//! applies to maps (attributes, a structured body).

mod ast;
mod compile;
mod condition;
mod config;
mod context;
mod error;
mod eval;
mod filter;
mod functions;
mod keyset;
mod lexer;
mod parser;
mod pattern;
mod record;
mod statement;
mod transform;
mod value;

#[cfg(test)]
mod tests;

pub use condition::Condition;
pub use config::{
    ContextStatements, ErrorMode, FilterConfig, LogConditions, MetricConditions, TraceConditions,
    TransformConfig,
};
pub use context::Context;
pub use error::{LoadError, RunError};
pub use filter::Filter;
pub use transform::{Outcome, Transform};

/// Deepest nesting of parentheses, lists, maps and calls a statement may
/// have.
pub const MAX_NESTING: usize = parser::MAX_DEPTH;
