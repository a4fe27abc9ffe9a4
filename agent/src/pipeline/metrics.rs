//! What the processors leave out, by processor: filtered (a filter's
//! condition matched), sampled out, and run-time errors. Drops for other
//! reasons stay in `selfops_export_dropped_total`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessorLabels {
    pub signal: &'static str,
    pub processor: String,
}

#[derive(Debug, Clone, Default)]
pub struct PipelineMetrics {
    pub filtered: Family<ProcessorLabels, Counter>,
    pub sampled_out: Family<ProcessorLabels, Counter>,
    pub errors: Family<ProcessorLabels, Counter>,
}

impl PipelineMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "pipeline_filtered",
            "Spans, data points and log records a filter processor removed",
            metrics.filtered.clone(),
        );
        registry.register(
            "pipeline_sampled_out",
            "Spans and log records a sampling processor left out (not counted as dropped)",
            metrics.sampled_out.clone(),
        );
        registry.register(
            "pipeline_processor_errors",
            "Run-time errors of processors (OTTL statements, routing conditions)",
            metrics.errors.clone(),
        );
        metrics
    }

    pub fn add(
        family: &Family<ProcessorLabels, Counter>,
        signal: &'static str,
        processor: &str,
        n: u64,
    ) {
        if n > 0 {
            family
                .get_or_create(&ProcessorLabels {
                    signal,
                    processor: processor.to_owned(),
                })
                .inc_by(n);
        }
    }
}
