//! Loaded statements and conditions, and how run-time errors are handled
//! under each error mode.

use crate::ast;
use crate::compile::{Compiler, Cond};
use crate::config::ErrorMode;
use crate::context::{self, Context};
use crate::error::{EvalError, LoadError, RunError};
use crate::eval::test;
use crate::functions::editors::Editor;
use crate::parser;
use crate::record::{Rec, View};

pub(crate) struct Statement {
    pub source: String,
    pub index: usize,
    condition: Option<Cond>,
    editor: Editor,
}

impl Statement {
    pub(crate) fn load(source: &str, index: usize, context: Context) -> Result<Self, LoadError> {
        let fail = |e: crate::error::Located| e.into_load("statement", index, source);
        let parsed = parser::parse_statement(source).map_err(fail)?;
        let c = Compiler { context };
        let editor = c.editor(&parsed.editor, parsed.editor_pos).map_err(fail)?;
        let condition = parsed
            .condition
            .as_ref()
            .map(|n| c.cond(n))
            .transpose()
            .map_err(fail)?;
        Ok(Statement {
            source: source.to_owned(),
            index,
            condition,
            editor,
        })
    }

    pub(crate) fn run(&self, rec: &mut Rec<'_>) -> Result<(), EvalError> {
        if let Some(c) = &self.condition
            && !test(c, &rec.view())?
        {
            return Ok(());
        }
        self.editor.apply(rec)
    }
}

/// A loaded condition with its origin, for error messages.
pub(crate) struct LoadedCond {
    pub source: String,
    pub index: usize,
    pub cond: Cond,
}

impl LoadedCond {
    pub(crate) fn load(source: &str, index: usize, context: Context) -> Result<Self, LoadError> {
        let fail = |e: crate::error::Located| e.into_load("condition", index, source);
        let node = parser::parse_condition(source).map_err(fail)?;
        let cond = Compiler { context }.cond(&node).map_err(fail)?;
        Ok(LoadedCond {
            source: source.to_owned(),
            index,
            cond,
        })
    }

    pub(crate) fn test(&self, v: &View<'_>) -> Result<bool, EvalError> {
        test(&self.cond, v)
    }

    pub(crate) fn run_error(&self, e: EvalError) -> RunError {
        RunError {
            kind: "condition",
            index: self.index,
            statement: self.source.clone(),
            message: e.0,
        }
    }
}

/// Whether any of `conds` holds (they are ORed, as in the Collector); an
/// error counts as not matching unless the mode propagates it.
pub(crate) fn any_matches(
    conds: &[LoadedCond],
    v: &View<'_>,
    errors: &mut Errors,
) -> Result<bool, RunError> {
    for c in conds {
        match c.test(v) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => errors.handle(|| c.run_error(e))?,
        }
    }
    Ok(false)
}

/// Counts run-time errors and decides, by mode, whether they stop the run.
pub(crate) struct Errors {
    pub mode: ErrorMode,
    pub count: u64,
}

impl Errors {
    pub(crate) fn new(mode: ErrorMode) -> Self {
        Errors { mode, count: 0 }
    }

    pub(crate) fn handle(&mut self, error: impl FnOnce() -> RunError) -> Result<(), RunError> {
        self.count += 1;
        match self.mode {
            ErrorMode::Propagate => Err(error()),
            ErrorMode::Ignore => {
                // The message is only built when someone reads it.
                if tracing::enabled!(tracing::Level::DEBUG) {
                    tracing::debug!(error = %error(), "OTTL run-time error ignored");
                }
                Ok(())
            }
            ErrorMode::Silent => Ok(()),
        }
    }
}

/// Runs `statements` on one record, handling each failure by mode.
pub(crate) fn run_all(
    statements: &[Statement],
    rec: &mut Rec<'_>,
    errors: &mut Errors,
) -> Result<(), RunError> {
    for s in statements {
        if let Err(e) = s.run(rec) {
            errors.handle(|| RunError {
                kind: "statement",
                index: s.index,
                statement: s.source.clone(),
                message: e.0,
            })?;
        }
    }
    Ok(())
}

/// The context of a statement given as a plain string, from its paths.
pub(crate) fn infer_context(source: &str) -> Result<Context, String> {
    let parsed = parser::parse_statement(source)
        .map_err(|e| e.into_load("statement", 0, source).to_string())?;
    let mut paths: Vec<&ast::Path> = Vec::new();
    for arg in &parsed.editor.args {
        arg.visit_paths(&mut |p| paths.push(p));
    }
    if let Some(c) = &parsed.condition {
        c.visit_paths(&mut |p| paths.push(p));
    }
    context::infer(&paths).ok_or_else(|| {
        format!(
            "cannot tell the context of `{source}`: give it in a group with `context:`, or prefix its paths (span., log., datapoint., resource. …)"
        )
    })
}
