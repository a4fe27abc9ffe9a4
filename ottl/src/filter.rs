//! The filter processor: records matching any condition are dropped, and
//! the scopes and resources left empty with them.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};

use crate::config::{ErrorMode, FilterConfig};
use crate::context::Context;
use crate::error::{LoadError, RunError};
use crate::record::{PointRef, View, metric_type};
use crate::statement::{Errors, LoadedCond, any_matches};
use crate::transform::Outcome;

/// Loaded filter conditions. `Send + Sync`: share it behind an `Arc`.
pub struct Filter {
    error_mode: ErrorMode,
    span: Vec<LoadedCond>,
    spanevent: Vec<LoadedCond>,
    metric: Vec<LoadedCond>,
    datapoint: Vec<LoadedCond>,
    log_record: Vec<LoadedCond>,
}

fn load(conds: &[String], context: Context) -> Result<Vec<LoadedCond>, LoadError> {
    conds
        .iter()
        .enumerate()
        .map(|(i, c)| LoadedCond::load(c, i + 1, context))
        .collect()
}

/// Removes what `keep` refuses, stopping at the first error (what is left
/// after it is kept).
fn retain_checked<T>(
    items: &mut Vec<T>,
    mut keep: impl FnMut(&mut T) -> Result<bool, RunError>,
) -> Result<(), RunError> {
    let mut failed = None;
    items.retain_mut(|item| {
        if failed.is_some() {
            return true;
        }
        keep(item).unwrap_or_else(|e| {
            failed = Some(e);
            true
        })
    });
    failed.map_or(Ok(()), Err)
}

impl Filter {
    pub fn new(config: &FilterConfig) -> Result<Filter, LoadError> {
        Ok(Filter {
            error_mode: config.error_mode,
            span: load(&config.traces.span, Context::Span)?,
            spanevent: load(&config.traces.spanevent, Context::SpanEvent)?,
            metric: load(&config.metrics.metric, Context::Metric)?,
            datapoint: load(&config.metrics.datapoint, Context::DataPoint)?,
            log_record: load(&config.logs.log_record, Context::Log)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.span.is_empty()
            && self.spanevent.is_empty()
            && self.metric.is_empty()
            && self.datapoint.is_empty()
            && self.log_record.is_empty()
    }

    pub fn traces(&self, request: &mut ExportTraceServiceRequest) -> Result<Outcome, RunError> {
        let mut errors = Errors::new(self.error_mode);
        let mut out = Outcome::default();
        if self.span.is_empty() && self.spanevent.is_empty() {
            return Ok(out);
        }
        let result = (|| {
            for rs in &mut request.resource_spans {
                let resource = rs.resource.as_ref();
                for ss in &mut rs.scope_spans {
                    let scope = ss.scope.as_ref();
                    retain_checked(&mut ss.spans, |span| {
                        let view = View {
                            resource,
                            scope,
                            span: Some(span),
                            ..View::default()
                        };
                        if any_matches(&self.span, &view, &mut errors)? {
                            out.dropped += 1;
                            return Ok(false);
                        }
                        if self.spanevent.is_empty() {
                            return Ok(true);
                        }
                        let mut events = std::mem::take(&mut span.events);
                        let result = retain_checked(&mut events, |event| {
                            let view = View {
                                resource,
                                scope,
                                span: Some(span),
                                event: Some(event),
                                ..View::default()
                            };
                            let hit = any_matches(&self.spanevent, &view, &mut errors)?;
                            out.dropped_events += u64::from(hit);
                            Ok(!hit)
                        });
                        span.events = events;
                        result.map(|()| true)
                    })?;
                }
            }
            Ok(())
        })();
        // Empty containers go even when an error stopped the run part way.
        for rs in &mut request.resource_spans {
            rs.scope_spans.retain(|ss| !ss.spans.is_empty());
        }
        request
            .resource_spans
            .retain(|rs| !rs.scope_spans.is_empty());
        result?;
        out.errors = errors.count;
        Ok(out)
    }

    pub fn metrics(&self, request: &mut ExportMetricsServiceRequest) -> Result<Outcome, RunError> {
        let mut errors = Errors::new(self.error_mode);
        let mut out = Outcome::default();
        if self.metric.is_empty() && self.datapoint.is_empty() {
            return Ok(out);
        }
        let result = (|| {
            for rm in &mut request.resource_metrics {
                let resource = rm.resource.as_ref();
                for sm in &mut rm.scope_metrics {
                    let scope = sm.scope.as_ref();
                    retain_checked(&mut sm.metrics, |m| {
                        let ty = metric_type(m.data.as_ref());
                        let view = View {
                            resource,
                            scope,
                            metric: Some(m),
                            metric_type: ty,
                            ..View::default()
                        };
                        if any_matches(&self.metric, &view, &mut errors)? {
                            out.dropped += point_count(m);
                            return Ok(false);
                        }
                        if self.datapoint.is_empty() || m.data.is_none() {
                            return Ok(true);
                        }
                        let before = point_count(m);
                        let mut data = m.data.take();
                        let result = filter_points(&mut data, |point| {
                            let view = View {
                                resource,
                                scope,
                                metric: Some(m),
                                metric_type: ty,
                                point: Some(point),
                                ..View::default()
                            };
                            any_matches(&self.datapoint, &view, &mut errors)
                        });
                        m.data = data;
                        result?;
                        let after = point_count(m);
                        out.dropped += before - after;
                        // A metric whose points all went goes too.
                        Ok(after > 0 || before == 0)
                    })?;
                }
            }
            Ok(())
        })();
        for rm in &mut request.resource_metrics {
            rm.scope_metrics.retain(|sm| !sm.metrics.is_empty());
        }
        request
            .resource_metrics
            .retain(|rm| !rm.scope_metrics.is_empty());
        result?;
        out.errors = errors.count;
        Ok(out)
    }

    pub fn logs(&self, request: &mut ExportLogsServiceRequest) -> Result<Outcome, RunError> {
        let mut errors = Errors::new(self.error_mode);
        let mut out = Outcome::default();
        if self.log_record.is_empty() {
            return Ok(out);
        }
        let result = (|| {
            for rl in &mut request.resource_logs {
                let resource = rl.resource.as_ref();
                for sl in &mut rl.scope_logs {
                    let scope = sl.scope.as_ref();
                    retain_checked(&mut sl.log_records, |log| {
                        let view = View {
                            resource,
                            scope,
                            log: Some(log),
                            ..View::default()
                        };
                        let hit = any_matches(&self.log_record, &view, &mut errors)?;
                        out.dropped += u64::from(hit);
                        Ok(!hit)
                    })?;
                }
            }
            Ok(())
        })();
        for rl in &mut request.resource_logs {
            rl.scope_logs.retain(|sl| !sl.log_records.is_empty());
        }
        request.resource_logs.retain(|rl| !rl.scope_logs.is_empty());
        result?;
        out.errors = errors.count;
        Ok(out)
    }
}

fn point_count(m: &Metric) -> u64 {
    let n = match &m.data {
        None => 0,
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(metric::Data::Summary(s)) => s.data_points.len(),
    };
    n as u64
}

/// Drops the points `hit` matches.
fn filter_points(
    data: &mut Option<metric::Data>,
    mut hit: impl FnMut(PointRef<'_>) -> Result<bool, RunError>,
) -> Result<(), RunError> {
    match data {
        None => Ok(()),
        Some(metric::Data::Gauge(g)) => {
            retain_checked(&mut g.data_points, |p| Ok(!hit(PointRef::Number(p))?))
        }
        Some(metric::Data::Sum(s)) => {
            retain_checked(&mut s.data_points, |p| Ok(!hit(PointRef::Number(p))?))
        }
        Some(metric::Data::Histogram(h)) => {
            retain_checked(&mut h.data_points, |p| Ok(!hit(PointRef::Histogram(p))?))
        }
        Some(metric::Data::ExponentialHistogram(h)) => {
            retain_checked(&mut h.data_points, |p| Ok(!hit(PointRef::ExpHistogram(p))?))
        }
        Some(metric::Data::Summary(s)) => {
            retain_checked(&mut s.data_points, |p| Ok(!hit(PointRef::Summary(p))?))
        }
    }
}
