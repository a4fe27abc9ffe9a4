//! The transform processor: groups of statements, each run over every
//! record of its context, group after group, as the Collector does.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics, metric};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::config::{ContextStatements, ErrorMode, TransformConfig};
use crate::context::Context;
use crate::error::{LoadError, RunError};
use crate::record::{PointMut, Rec, metric_type};
use crate::statement::{Errors, LoadedCond, Statement, any_matches, run_all};

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Spans, data points or log records removed (filter only).
    pub dropped: u64,
    /// Span events removed (filter only).
    pub dropped_events: u64,
    /// Run-time errors met, whatever the error mode.
    pub errors: u64,
}

struct Group {
    context: Context,
    conditions: Vec<LoadedCond>,
    statements: Vec<Statement>,
}

/// Loaded transform statements. `Send + Sync`: share it behind an `Arc`.
pub struct Transform {
    error_mode: ErrorMode,
    traces: Vec<Group>,
    metrics: Vec<Group>,
    logs: Vec<Group>,
}

fn load_groups(
    groups: &[ContextStatements],
    allowed: &[Context],
    signal: &str,
) -> Result<Vec<Group>, LoadError> {
    groups
        .iter()
        .map(|g| {
            if !allowed.contains(&g.context) {
                let source = g.statements.first().cloned().unwrap_or_default();
                return Err(LoadError {
                    kind: "statement",
                    index: 1,
                    statement: source,
                    column: 1,
                    message: format!(
                        "the {} context does not apply to {signal}",
                        g.context.name()
                    ),
                });
            }
            let conditions = g
                .conditions
                .iter()
                .enumerate()
                .map(|(i, c)| LoadedCond::load(c, i + 1, g.context))
                .collect::<Result<_, _>>()?;
            let statements = g
                .statements
                .iter()
                .enumerate()
                .map(|(i, s)| Statement::load(s, i + 1, g.context))
                .collect::<Result<_, _>>()?;
            Ok(Group {
                context: g.context,
                conditions,
                statements,
            })
        })
        .collect()
}

pub(crate) const TRACE_CONTEXTS: &[Context] = &[
    Context::Resource,
    Context::Scope,
    Context::Span,
    Context::SpanEvent,
];
pub(crate) const METRIC_CONTEXTS: &[Context] = &[
    Context::Resource,
    Context::Scope,
    Context::Metric,
    Context::DataPoint,
];
pub(crate) const LOG_CONTEXTS: &[Context] = &[Context::Resource, Context::Scope, Context::Log];

impl Group {
    /// Runs the group on one record: its statements, if any condition
    /// holds (or there are none).
    fn run(&self, rec: &mut Rec<'_>, errors: &mut Errors) -> Result<(), RunError> {
        if !self.conditions.is_empty() && !any_matches(&self.conditions, &rec.view(), errors)? {
            return Ok(());
        }
        run_all(&self.statements, rec, errors)
    }
}

impl Transform {
    pub fn new(config: &TransformConfig) -> Result<Transform, LoadError> {
        Ok(Transform {
            error_mode: config.error_mode,
            traces: load_groups(&config.trace_statements, TRACE_CONTEXTS, "traces")?,
            metrics: load_groups(&config.metric_statements, METRIC_CONTEXTS, "metrics")?,
            logs: load_groups(&config.log_statements, LOG_CONTEXTS, "logs")?,
        })
    }

    /// Whether there are no statements at all (the pipeline may skip it).
    pub fn is_empty(&self) -> bool {
        self.traces.is_empty() && self.metrics.is_empty() && self.logs.is_empty()
    }

    pub fn traces(&self, request: &mut ExportTraceServiceRequest) -> Result<Outcome, RunError> {
        let mut errors = Errors::new(self.error_mode);
        for group in &self.traces {
            for rs in &mut request.resource_spans {
                traces_group(group, rs, &mut errors)?;
            }
        }
        Ok(Outcome {
            errors: errors.count,
            ..Outcome::default()
        })
    }

    pub fn metrics(&self, request: &mut ExportMetricsServiceRequest) -> Result<Outcome, RunError> {
        let mut errors = Errors::new(self.error_mode);
        for group in &self.metrics {
            for rm in &mut request.resource_metrics {
                metrics_group(group, rm, &mut errors)?;
            }
        }
        Ok(Outcome {
            errors: errors.count,
            ..Outcome::default()
        })
    }

    pub fn logs(&self, request: &mut ExportLogsServiceRequest) -> Result<Outcome, RunError> {
        let mut errors = Errors::new(self.error_mode);
        for group in &self.logs {
            for rl in &mut request.resource_logs {
                logs_group(group, rl, &mut errors)?;
            }
        }
        Ok(Outcome {
            errors: errors.count,
            ..Outcome::default()
        })
    }
}

fn traces_group(
    group: &Group,
    rs: &mut ResourceSpans,
    errors: &mut Errors,
) -> Result<(), RunError> {
    let ResourceSpans {
        resource,
        scope_spans,
        ..
    } = rs;
    if group.context == Context::Resource {
        let mut rec = Rec {
            resource: Some(resource),
            ..Rec::default()
        };
        return group.run(&mut rec, errors);
    }
    for ss in scope_spans {
        let ScopeSpans { scope, spans, .. } = ss;
        match group.context {
            Context::Scope => {
                let mut rec = Rec {
                    resource: Some(&mut *resource),
                    scope: Some(scope),
                    ..Rec::default()
                };
                group.run(&mut rec, errors)?;
            }
            Context::Span => {
                for span in spans {
                    let mut rec = Rec {
                        resource: Some(&mut *resource),
                        scope: Some(&mut *scope),
                        span: Some(span),
                        ..Rec::default()
                    };
                    group.run(&mut rec, errors)?;
                }
            }
            _ => {
                for span in spans {
                    span_events(group, resource, scope, span, errors)?;
                }
            }
        }
    }
    Ok(())
}

/// The events are moved out of the span while they run, so that the span's
/// own fields stay readable and writable; they are put back even on error.
fn span_events(
    group: &Group,
    resource: &mut Option<opentelemetry_proto::tonic::resource::v1::Resource>,
    scope: &mut Option<opentelemetry_proto::tonic::common::v1::InstrumentationScope>,
    span: &mut Span,
    errors: &mut Errors,
) -> Result<(), RunError> {
    let mut events = std::mem::take(&mut span.events);
    let mut result = Ok(());
    for event in &mut events {
        let mut rec = Rec {
            resource: Some(&mut *resource),
            scope: Some(&mut *scope),
            span: Some(&mut *span),
            event: Some(event),
            ..Rec::default()
        };
        result = group.run(&mut rec, errors);
        if result.is_err() {
            break;
        }
    }
    span.events = events;
    result
}

fn metrics_group(
    group: &Group,
    rm: &mut ResourceMetrics,
    errors: &mut Errors,
) -> Result<(), RunError> {
    let ResourceMetrics {
        resource,
        scope_metrics,
        ..
    } = rm;
    if group.context == Context::Resource {
        let mut rec = Rec {
            resource: Some(resource),
            ..Rec::default()
        };
        return group.run(&mut rec, errors);
    }
    for sm in scope_metrics {
        let ScopeMetrics { scope, metrics, .. } = sm;
        match group.context {
            Context::Scope => {
                let mut rec = Rec {
                    resource: Some(&mut *resource),
                    scope: Some(scope),
                    ..Rec::default()
                };
                group.run(&mut rec, errors)?;
            }
            Context::Metric => {
                for m in metrics {
                    let ty = metric_type(m.data.as_ref());
                    let mut rec = Rec {
                        resource: Some(&mut *resource),
                        scope: Some(&mut *scope),
                        metric: Some(m),
                        metric_type: ty,
                        ..Rec::default()
                    };
                    group.run(&mut rec, errors)?;
                }
            }
            _ => {
                for m in metrics {
                    data_points(group, resource, scope, m, errors)?;
                }
            }
        }
    }
    Ok(())
}

/// As for span events: the data are moved out of the metric meanwhile.
fn data_points(
    group: &Group,
    resource: &mut Option<opentelemetry_proto::tonic::resource::v1::Resource>,
    scope: &mut Option<opentelemetry_proto::tonic::common::v1::InstrumentationScope>,
    m: &mut Metric,
    errors: &mut Errors,
) -> Result<(), RunError> {
    let ty = metric_type(m.data.as_ref());
    let mut data = m.data.take();
    let mut points: Vec<PointMut<'_>> = match &mut data {
        None => Vec::new(),
        Some(metric::Data::Gauge(g)) => g.data_points.iter_mut().map(PointMut::Number).collect(),
        Some(metric::Data::Sum(s)) => s.data_points.iter_mut().map(PointMut::Number).collect(),
        Some(metric::Data::Histogram(h)) => {
            h.data_points.iter_mut().map(PointMut::Histogram).collect()
        }
        Some(metric::Data::ExponentialHistogram(h)) => h
            .data_points
            .iter_mut()
            .map(PointMut::ExpHistogram)
            .collect(),
        Some(metric::Data::Summary(s)) => s.data_points.iter_mut().map(PointMut::Summary).collect(),
    };
    let mut result = Ok(());
    for point in points.drain(..) {
        let mut rec = Rec {
            resource: Some(&mut *resource),
            scope: Some(&mut *scope),
            metric: Some(&mut *m),
            metric_type: ty,
            point: Some(point),
            ..Rec::default()
        };
        result = group.run(&mut rec, errors);
        if result.is_err() {
            break;
        }
    }
    drop(points);
    m.data = data;
    result
}

fn logs_group(group: &Group, rl: &mut ResourceLogs, errors: &mut Errors) -> Result<(), RunError> {
    let ResourceLogs {
        resource,
        scope_logs,
        ..
    } = rl;
    if group.context == Context::Resource {
        let mut rec = Rec {
            resource: Some(resource),
            ..Rec::default()
        };
        return group.run(&mut rec, errors);
    }
    for sl in scope_logs {
        let ScopeLogs {
            scope, log_records, ..
        } = sl;
        if group.context == Context::Scope {
            let mut rec = Rec {
                resource: Some(&mut *resource),
                scope: Some(scope),
                ..Rec::default()
            };
            group.run(&mut rec, errors)?;
            continue;
        }
        for log in log_records {
            let mut rec = Rec {
                resource: Some(&mut *resource),
                scope: Some(&mut *scope),
                log: Some(log),
                ..Rec::default()
            };
            group.run(&mut rec, errors)?;
        }
    }
    Ok(())
}
