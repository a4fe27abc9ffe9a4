//! The processors between sources and exporters: one chain per signal,
//! built from `processors` and `pipelines`, run by the export batcher over
//! every batch — kernel-made signals once converted to OTLP, and what the
//! OTLP receiver accepted — before the batch is routed to its exporters.
//!
//! ```text
//! kernel sensors ─┐                 ┌ traces:  transform → filter → sampler → route ┐  ┌ file
//! audit, metrics ─┼─ batch ─ OTLP ──┼ metrics: transform → filter → route           ├──┼ otlp
//! OTLP receiver ──┘                 └ logs:    transform → filter → route           ┘  └ otlp/NAME
//! profiler ─────────────────────────── profiles ───────────────────────────────────────── otlp, otlp/NAME
//! ```
//!
//! Audit records skip the processors (they are the agent's account of what
//! it did, not data to reshape) and go to every exporter of the logs
//! pipeline's routes like any log record.

pub mod config;
mod metrics;
#[cfg(test)]
mod ottl_tests;
mod routing;
mod sampling;
mod signals;
#[cfg(test)]
mod tests;

use std::sync::Mutex;

use selfops_ottl::{Filter, Outcome, RunError, Transform};
use tokio::time::Instant;

pub use config::{
    ExportersConfig, PipelineConfig, PipelinesConfig, ProcessorConfig, ProcessorsConfig,
};
pub use metrics::PipelineMetrics;
pub use routing::{ExporterSet, Routed};

use crate::export::{
    DropReason, ExportMetrics, OtlpBatch,
    metrics::{SINK_FILE, SINK_OTLP},
};
use routing::Router;
use sampling::{ProbabilisticSampler, RateLimiter};
use signals::Request;

/// Exporters a pipeline can name: `file`, `otlp` and up to this many in
/// all (an exporter set is a 64-bit mask).
pub const MAX_EXPORTERS: usize = 64;

/// A configuration the pipeline cannot run; names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PipelineError {
    pub key: String,
    pub message: String,
}

fn error(key: impl Into<String>, message: impl Into<String>) -> PipelineError {
    PipelineError {
        key: key.into(),
        message: message.into(),
    }
}

enum Processor {
    Transform(Transform),
    Filter(Filter),
    Sampler(ProbabilisticSampler),
    RateLimit(Mutex<RateLimiter>),
}

struct Step {
    name: String,
    processor: Processor,
}

/// One signal's chain: processors in order, then its exporters or routes.
struct Chain {
    steps: Vec<Step>,
    exporters: ExporterSet,
    router: Option<(String, Router)>,
}

pub struct Pipelines {
    /// Exporter names by index: `file`, `otlp`, then `exporters`' names.
    exporters: Vec<&'static str>,
    traces: Chain,
    metrics: Chain,
    logs: Chain,
    /// Where profiles go: OTLP exporters only.
    profiles: ExporterSet,
    counters: PipelineMetrics,
    export: ExportMetrics,
}

impl std::fmt::Debug for Pipelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipelines")
            .field("exporters", &self.exporters)
            .finish_non_exhaustive()
    }
}

impl Pipelines {
    /// Checks the configuration without keeping anything.
    pub fn check(
        processors: &ProcessorsConfig,
        exporters: &ExportersConfig,
        pipelines: &PipelinesConfig,
    ) -> Result<(), PipelineError> {
        Self::new(
            processors,
            exporters,
            pipelines,
            PipelineMetrics::default(),
            ExportMetrics::default(),
        )
        .map(drop)
    }

    pub fn new(
        processors: &ProcessorsConfig,
        exporters: &ExportersConfig,
        pipelines: &PipelinesConfig,
        counters: PipelineMetrics,
        export: ExportMetrics,
    ) -> Result<Self, PipelineError> {
        let mut names = vec![SINK_FILE, SINK_OTLP];
        for name in exporters.keys() {
            let key = format!("exporters.{name}");
            if !name.starts_with("otlp/") || name.len() == "otlp/".len() {
                return Err(error(
                    key,
                    "name OTLP exporters `otlp/NAME` (`export.otlp` is the one named `otlp`)",
                ));
            }
            if names.len() == MAX_EXPORTERS {
                return Err(error(key, format!("at most {MAX_EXPORTERS} exporters")));
            }
            names.push(crate::export::sink_name(name).ok_or_else(|| {
                error(
                    &key,
                    "too many distinct exporter names over the agent's life",
                )
            })?);
        }
        let all: ExporterSet = if names.len() == 64 {
            u64::MAX
        } else {
            (1u64 << names.len()) - 1
        };
        let set_of = |list: &[String]| -> Result<ExporterSet, String> {
            let mut set = 0u64;
            for name in list {
                let at = names
                    .iter()
                    .position(|n| n == name)
                    .ok_or_else(|| format!("no exporter named {name:?}"))?;
                set |= 1 << at;
            }
            Ok(set)
        };
        let mut chains = Vec::with_capacity(3);
        for (signal, pipeline) in pipelines.signals() {
            let default = PipelineConfig::default();
            let pipeline = pipeline.unwrap_or(&default);
            let key = format!("pipelines.{signal}");
            let exporters = if pipeline.exporters.is_empty() {
                all
            } else {
                set_of(&pipeline.exporters).map_err(|m| error(format!("{key}.exporters"), m))?
            };
            let mut chain = Chain {
                steps: Vec::new(),
                exporters,
                router: None,
            };
            for (i, name) in pipeline.processors.iter().enumerate() {
                let key = format!("{key}.processors[{i}]");
                let config = processors
                    .0
                    .get(name)
                    .ok_or_else(|| error(&key, format!("no processor named {name:?}")))?;
                if chain.router.is_some() {
                    return Err(error(&key, "the routing processor must come last"));
                }
                let at = |m: String| error(format!("processors.{name}"), m);
                let processor = match config {
                    ProcessorConfig::Transform(c) => {
                        Processor::Transform(Transform::new(c).map_err(|e| at(e.to_string()))?)
                    }
                    ProcessorConfig::Filter(c) => {
                        Processor::Filter(Filter::new(c).map_err(|e| at(e.to_string()))?)
                    }
                    ProcessorConfig::ProbabilisticSampler(c) if signal != "metrics" => {
                        Processor::Sampler(ProbabilisticSampler::new(c).map_err(at)?)
                    }
                    ProcessorConfig::RateLimit(c) if signal == "traces" => {
                        Processor::RateLimit(Mutex::new(RateLimiter::new(c).map_err(at)?))
                    }
                    ProcessorConfig::Routing(c) => {
                        let router = Router::new(c, exporters, &set_of).map_err(at)?;
                        chain.router = Some((name.clone(), router));
                        continue;
                    }
                    other => {
                        return Err(error(
                            &key,
                            format!("a {} processor does not apply to {signal}", other.kind()),
                        ));
                    }
                };
                chain.steps.push(Step {
                    name: name.clone(),
                    processor,
                });
            }
            chains.push(chain);
        }
        let profiles = profile_exporters(pipelines.profiles.as_ref(), all, &set_of)?;
        let mut chains = chains.into_iter();
        let (Some(traces), Some(metrics), Some(logs)) =
            (chains.next(), chains.next(), chains.next())
        else {
            unreachable!("three signals")
        };
        Ok(Self {
            exporters: names,
            traces,
            metrics,
            logs,
            profiles,
            counters,
            export,
        })
    }

    /// No processor, everything to every exporter.
    #[cfg(test)]
    pub fn pass_through() -> Self {
        Self::new(
            &ProcessorsConfig::default(),
            &ExportersConfig::default(),
            &PipelinesConfig::default(),
            PipelineMetrics::default(),
            ExportMetrics::default(),
        )
        .unwrap_or_else(|e| unreachable!("the default pipelines: {e}"))
    }

    /// The names of the exporters in `set`.
    pub fn exporter_names(&self, set: ExporterSet) -> impl Iterator<Item = &'static str> + '_ {
        self.exporters
            .iter()
            .enumerate()
            .filter(move |(i, _)| set & (1 << i) != 0)
            .map(|(_, name)| *name)
    }

    /// Whether the sink named `name` takes what goes to `set`. A sink the
    /// pipelines do not know (one a test reads itself) takes everything.
    pub fn includes(&self, set: ExporterSet, name: &str) -> bool {
        match self.exporters.iter().position(|n| *n == name) {
            Some(at) => set & (1 << at) != 0,
            None => true,
        }
    }

    /// Runs `batch` through its signals' processors (unless
    /// `skip_processors`) and splits it by the exporters each part goes to.
    pub fn process(&self, mut batch: OtlpBatch, skip_processors: bool) -> Routed {
        let mut routed = Routed::default();
        self.agent_spans(&mut batch, skip_processors, &mut routed);
        self.run::<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>(
            &self.traces,
            &mut batch,
            skip_processors,
            &mut routed,
        );
        self.run::<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>(
            &self.metrics,
            &mut batch,
            skip_processors,
            &mut routed,
        );
        self.run::<opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest>(
            &self.logs,
            &mut batch,
            skip_processors,
            &mut routed,
        );
        if let Some(profiles) = batch.profiles.take() {
            let part = routed.part(self.profiles);
            part.profiles = Some(profiles);
            part.profile_count = batch.profile_count;
        }
        routed.parts.retain(|(_, part)| !part.is_empty());
        routed
    }

    /// The agent's own spans go whole to the pipeline's exporters when no
    /// processor or route has to read them; otherwise they join the
    /// batch's OTLP request, converted, and take the same way as that.
    fn agent_spans(&self, batch: &mut OtlpBatch, skip_processors: bool, routed: &mut Routed) {
        let Some(spans) = batch.agent_spans.take() else {
            return;
        };
        let chain = &self.traces;
        if (skip_processors || chain.steps.is_empty()) && chain.router.is_none() {
            let count = spans.span_count();
            batch.span_count = batch.span_count.saturating_sub(count);
            let part = routed.part(chain.exporters);
            part.span_count += count;
            match &mut part.agent_spans {
                Some(kept) => kept.append(spans),
                None => part.agent_spans = Some(spans),
            }
        } else {
            batch
                .traces
                .get_or_insert_with(Default::default)
                .resource_spans
                .extend(spans.into_request().resource_spans);
        }
    }

    fn run<R: Request>(
        &self,
        chain: &Chain,
        batch: &mut OtlpBatch,
        skip_processors: bool,
        routed: &mut Routed,
    ) {
        let Some((mut request, before)) = R::take(batch) else {
            return;
        };
        if !skip_processors {
            for step in &chain.steps {
                if let Err(err) = self.step(step, &mut request) {
                    // error_mode propagate: the batch of this signal is
                    // not exported, as the Collector fails the request.
                    tracing::debug!(processor = %step.name, %err, "processor failed; batch dropped");
                    PipelineMetrics::add(&self.counters.errors, R::SIGNAL, &step.name, 1);
                    self.export
                        .drop_signals(R::SIGNAL, DropReason::ProcessorError, before);
                    return;
                }
            }
        }
        for entry in request.entries() {
            if R::count(&entry) == 0 {
                continue;
            }
            let set = match &chain.router {
                Some((name, router)) => {
                    let (set, failed) = router.route(R::resource(&entry));
                    if failed {
                        PipelineMetrics::add(&self.counters.errors, R::SIGNAL, name, 1);
                    }
                    set
                }
                None => chain.exporters,
            };
            R::add_to(routed.part(set), entry);
        }
    }

    fn step<R: Request>(&self, step: &Step, request: &mut R) -> Result<(), RunError> {
        let counters = &self.counters;
        let outcome = |outcome: Outcome, family| {
            PipelineMetrics::add(family, R::SIGNAL, &step.name, outcome.dropped);
            PipelineMetrics::add(&counters.errors, R::SIGNAL, &step.name, outcome.errors);
        };
        match &step.processor {
            Processor::Transform(t) => outcome(R::transform(t, request)?, &counters.filtered),
            Processor::Filter(f) => outcome(R::filter(f, request)?, &counters.filtered),
            Processor::Sampler(s) => {
                let n = request.sample(s);
                PipelineMetrics::add(&counters.sampled_out, R::SIGNAL, &step.name, n);
            }
            Processor::RateLimit(limiter) => {
                let mut limiter = limiter.lock().unwrap_or_else(|e| e.into_inner());
                let n = request.rate_limit(&mut limiter, Instant::now());
                PipelineMetrics::add(&counters.sampled_out, R::SIGNAL, &step.name, n);
            }
        }
        Ok(())
    }
}

/// The exporters of the profiles pipeline: the OTLP ones it names, or all
/// of them; never the file exporter (bit 0), whose files hold other signals.
fn profile_exporters(
    pipeline: Option<&PipelineConfig>,
    all: ExporterSet,
    set_of: &dyn Fn(&[String]) -> Result<ExporterSet, String>,
) -> Result<ExporterSet, PipelineError> {
    let file: ExporterSet = 1;
    let Some(pipeline) = pipeline else {
        return Ok(all & !file);
    };
    if !pipeline.processors.is_empty() {
        return Err(error(
            "pipelines.profiles.processors",
            "no processor applies to profiles; list exporters only",
        ));
    }
    if pipeline.exporters.iter().any(|e| e == SINK_FILE) {
        return Err(error(
            "pipelines.profiles.exporters",
            "the file exporter takes no profiles (the profiler writes pprof and SVG files under profiles/)",
        ));
    }
    if pipeline.exporters.is_empty() {
        return Ok(all & !file);
    }
    set_of(&pipeline.exporters).map_err(|m| error("pipelines.profiles.exporters", m))
}
