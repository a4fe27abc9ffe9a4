//! A subset of the OpenTelemetry Transformation Language (OTTL), after the
//! Collector's `pkg/ottl`: statements (`set(attributes["k"], "v") where …`)
//! and conditions, over OTLP protobuf requests, for the transform and filter
//! processors and for the agent's routing.
//!
//! Statements are parsed and compiled once ([`Transform::new`],
//! [`Filter::new`], [`Condition::new`]): paths resolve to fields, functions
//! are checked, regexes compiled. Running them touches no names and, where
//! a condition does not match, allocates nothing.

mod ast;
mod compile;
mod condition;
mod config;
mod context;
mod error;
mod eval;
mod filter;
mod functions;
mod lexer;
mod parser;
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
