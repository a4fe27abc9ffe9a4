//! What the pipeline needs of each signal's OTLP request, so one generic
//! path runs traces, metrics and logs through their processors and routes.

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    logs::v1::ResourceLogs,
    metrics::v1::{ResourceMetrics, metric::Data},
    resource::v1::Resource,
    trace::v1::ResourceSpans,
};
use selfops_ottl::{Filter, Outcome, RunError, Transform};
use tokio::time::Instant;

use super::sampling::{ProbabilisticSampler, RateLimiter};

use crate::export::{
    OtlpBatch,
    metrics::{LOGS, METRICS, TRACES},
};

pub trait Request: Default + Sized {
    /// One resource's data.
    type Entry;
    const SIGNAL: &'static str;
    fn entries(self) -> Vec<Self::Entry>;
    fn resource(entry: &Self::Entry) -> Option<&Resource>;
    /// Spans, data points or log records in `entry`.
    fn count(entry: &Self::Entry) -> u64;
    /// Adds `entry` to `batch`'s request of this signal, and its count.
    fn add_to(batch: &mut OtlpBatch, entry: Self::Entry);
    /// Takes this signal's request out of `batch`, with its count.
    fn take(batch: &mut OtlpBatch) -> Option<(Self, u64)>;
    fn transform(transform: &Transform, request: &mut Self) -> Result<Outcome, RunError>;
    fn filter(filter: &Filter, request: &mut Self) -> Result<Outcome, RunError>;
    /// What the sampler leaves out (the config check keeps each sampling
    /// processor to the signals it applies to).
    fn sample(&mut self, _sampler: &ProbabilisticSampler) -> u64 {
        0
    }
    fn rate_limit(&mut self, _limiter: &mut RateLimiter, _now: Instant) -> u64 {
        0
    }
}

impl Request for ExportTraceServiceRequest {
    type Entry = ResourceSpans;
    const SIGNAL: &'static str = TRACES;
    fn entries(self) -> Vec<ResourceSpans> {
        self.resource_spans
    }
    fn resource(entry: &ResourceSpans) -> Option<&Resource> {
        entry.resource.as_ref()
    }
    fn count(entry: &ResourceSpans) -> u64 {
        entry.scope_spans.iter().map(|s| s.spans.len() as u64).sum()
    }
    fn add_to(batch: &mut OtlpBatch, entry: ResourceSpans) {
        batch.span_count += Self::count(&entry);
        batch
            .traces
            .get_or_insert_with(Default::default)
            .resource_spans
            .push(entry);
    }
    fn take(batch: &mut OtlpBatch) -> Option<(Self, u64)> {
        let count = std::mem::take(&mut batch.span_count);
        batch.traces.take().map(|request| (request, count))
    }
    fn transform(transform: &Transform, request: &mut Self) -> Result<Outcome, RunError> {
        transform.traces(request)
    }
    fn filter(filter: &Filter, request: &mut Self) -> Result<Outcome, RunError> {
        filter.traces(request)
    }
    fn sample(&mut self, sampler: &ProbabilisticSampler) -> u64 {
        sampler.traces(self)
    }
    fn rate_limit(&mut self, limiter: &mut RateLimiter, now: Instant) -> u64 {
        limiter.traces(self, now)
    }
}

impl Request for ExportMetricsServiceRequest {
    type Entry = ResourceMetrics;
    const SIGNAL: &'static str = METRICS;
    fn entries(self) -> Vec<ResourceMetrics> {
        self.resource_metrics
    }
    fn resource(entry: &ResourceMetrics) -> Option<&Resource> {
        entry.resource.as_ref()
    }
    fn count(entry: &ResourceMetrics) -> u64 {
        entry
            .scope_metrics
            .iter()
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            } as u64)
            .sum()
    }
    fn add_to(batch: &mut OtlpBatch, entry: ResourceMetrics) {
        batch.point_count += Self::count(&entry);
        batch
            .metrics
            .get_or_insert_with(Default::default)
            .resource_metrics
            .push(entry);
    }
    fn take(batch: &mut OtlpBatch) -> Option<(Self, u64)> {
        let count = std::mem::take(&mut batch.point_count);
        batch.metrics.take().map(|request| (request, count))
    }
    fn transform(transform: &Transform, request: &mut Self) -> Result<Outcome, RunError> {
        transform.metrics(request)
    }
    fn filter(filter: &Filter, request: &mut Self) -> Result<Outcome, RunError> {
        filter.metrics(request)
    }
}

impl Request for ExportLogsServiceRequest {
    type Entry = ResourceLogs;
    const SIGNAL: &'static str = LOGS;
    fn entries(self) -> Vec<ResourceLogs> {
        self.resource_logs
    }
    fn resource(entry: &ResourceLogs) -> Option<&Resource> {
        entry.resource.as_ref()
    }
    fn count(entry: &ResourceLogs) -> u64 {
        entry
            .scope_logs
            .iter()
            .map(|s| s.log_records.len() as u64)
            .sum()
    }
    fn add_to(batch: &mut OtlpBatch, entry: ResourceLogs) {
        batch.log_count += Self::count(&entry);
        batch
            .logs
            .get_or_insert_with(Default::default)
            .resource_logs
            .push(entry);
    }
    fn take(batch: &mut OtlpBatch) -> Option<(Self, u64)> {
        let count = std::mem::take(&mut batch.log_count);
        batch.logs.take().map(|request| (request, count))
    }
    fn transform(transform: &Transform, request: &mut Self) -> Result<Outcome, RunError> {
        transform.logs(request)
    }
    fn filter(filter: &Filter, request: &mut Self) -> Result<Outcome, RunError> {
        filter.logs(request)
    }
    fn sample(&mut self, sampler: &ProbabilisticSampler) -> u64 {
        sampler.logs(self)
    }
}
