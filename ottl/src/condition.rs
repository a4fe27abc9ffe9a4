//! A single condition for the agent's own decisions (routing by resource,
//! sampling by span…), evaluated read-only.

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::context::Context;
use crate::error::{LoadError, RunError};
use crate::record::{View, metric_type};
use crate::statement::LoadedCond;

/// A loaded boolean expression in one context. Paths of levels the caller
/// does not pass (say, `span.name` given only a resource) read as nil.
pub struct Condition {
    context: Context,
    inner: LoadedCond,
}

impl Condition {
    pub fn new(source: &str, context: Context) -> Result<Condition, LoadError> {
        Ok(Condition {
            context,
            inner: LoadedCond::load(source, 0, context)?,
        })
    }

    pub fn context(&self) -> Context {
        self.context
    }

    pub fn source(&self) -> &str {
        &self.inner.source
    }

    fn test(&self, view: View<'_>) -> Result<bool, RunError> {
        self.inner.test(&view).map_err(|e| self.inner.run_error(e))
    }

    pub fn matches_resource(&self, resource: &Resource) -> Result<bool, RunError> {
        self.test(View {
            resource: Some(resource),
            ..View::default()
        })
    }

    pub fn matches_scope(
        &self,
        resource: Option<&Resource>,
        scope: &InstrumentationScope,
    ) -> Result<bool, RunError> {
        self.test(View {
            resource,
            scope: Some(scope),
            ..View::default()
        })
    }

    pub fn matches_span(
        &self,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        span: &Span,
    ) -> Result<bool, RunError> {
        self.test(View {
            resource,
            scope,
            span: Some(span),
            ..View::default()
        })
    }

    pub fn matches_metric(
        &self,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        metric: &Metric,
    ) -> Result<bool, RunError> {
        self.test(View {
            resource,
            scope,
            metric: Some(metric),
            metric_type: metric_type(metric.data.as_ref()),
            ..View::default()
        })
    }

    pub fn matches_log(
        &self,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        log: &LogRecord,
    ) -> Result<bool, RunError> {
        self.test(View {
            resource,
            scope,
            log: Some(log),
            ..View::default()
        })
    }
}
