//! Load errors (a statement or condition that does not parse or compile) and
//! run-time errors (one that fails on some record).

use thiserror::Error;

/// A statement or condition rejected at load time.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{}: column {column}: {message}", origin(.kind, *.index, .statement))]
pub struct LoadError {
    /// "statement" or "condition".
    pub kind: &'static str,
    /// 1-based position of the statement in its list; 0 when loaded alone.
    pub index: usize,
    pub statement: String,
    /// 1-based column, in characters, of the offending token.
    pub column: usize,
    pub message: String,
}

/// A statement or condition that failed on some record, under
/// `error_mode: propagate`.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{}: {message}", origin(.kind, *.index, .statement))]
pub struct RunError {
    pub kind: &'static str,
    pub index: usize,
    pub statement: String,
    pub message: String,
}

fn origin(kind: &str, index: usize, source: &str) -> String {
    if index == 0 {
        format!("{kind} `{source}`")
    } else {
        format!("{kind} {index} (`{source}`)")
    }
}

/// A load error before it knows its statement: offset and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub offset: usize,
    pub message: String,
}

impl Located {
    pub(crate) fn new(offset: usize, message: impl Into<String>) -> Self {
        Located {
            offset,
            message: message.into(),
        }
    }

    pub(crate) fn into_load(self, kind: &'static str, index: usize, source: &str) -> LoadError {
        LoadError {
            kind,
            index,
            statement: source.to_owned(),
            column: crate::lexer::column(source, self.offset),
            message: self.message,
        }
    }
}

/// A run-time failure before it knows its statement. Only built on the
/// error path, so the allocation is not on the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EvalError(pub String);

impl EvalError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        EvalError(message.into())
    }
}

pub(crate) type EvalResult<T> = Result<T, EvalError>;
