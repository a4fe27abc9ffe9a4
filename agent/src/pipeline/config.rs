//! The pipeline's configuration, shaped like the Collector's: named
//! `processors` (the kind is the name up to its first `/`, as in
//! `transform/redact`), named `exporters` besides `export.file` and
//! `export.otlp`, and one pipeline per signal listing the processors it
//! runs, in order, and the exporters it feeds.

use std::{collections::BTreeMap, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};

use crate::config::OtlpConfig;

/// Named processors, each of the kind its name starts with.
#[derive(Debug, Clone, Default)]
pub struct ProcessorsConfig(pub BTreeMap<String, ProcessorConfig>);

#[derive(Debug, Clone)]
pub enum ProcessorConfig {
    /// OTTL statements that change signals in place.
    Transform(selfops_ottl::TransformConfig),
    /// OTTL conditions; what matches is dropped.
    Filter(selfops_ottl::FilterConfig),
    /// Keeps a share of traces, the same share on every node.
    ProbabilisticSampler(SamplerConfig),
    /// Caps the kernel-made spans of each service.
    RateLimit(RateLimitConfig),
    /// Sends each resource's data to the exporters its first matching
    /// route names.
    Routing(RoutingConfig),
}

impl ProcessorConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ProcessorConfig::Transform(_) => "transform",
            ProcessorConfig::Filter(_) => "filter",
            ProcessorConfig::ProbabilisticSampler(_) => "probabilistic_sampler",
            ProcessorConfig::RateLimit(_) => "rate_limit",
            ProcessorConfig::Routing(_) => "routing",
        }
    }
}

const KINDS: &[&str] = &[
    "transform",
    "filter",
    "probabilistic_sampler",
    "rate_limit",
    "routing",
];

impl<'de> Deserialize<'de> for ProcessorsConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Processors;
        impl<'de> Visitor<'de> for Processors {
            type Value = ProcessorsConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of processor names (kind or kind/name) to their settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    let kind = name.split('/').next().unwrap_or_default();
                    let config = match kind {
                        "transform" => ProcessorConfig::Transform(map.next_value()?),
                        "filter" => ProcessorConfig::Filter(map.next_value()?),
                        "probabilistic_sampler" => {
                            ProcessorConfig::ProbabilisticSampler(map.next_value()?)
                        }
                        "rate_limit" => ProcessorConfig::RateLimit(map.next_value()?),
                        "routing" => ProcessorConfig::Routing(map.next_value()?),
                        _ => return Err(serde::de::Error::unknown_variant(kind, KINDS)),
                    };
                    if out.insert(name.clone(), config).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "processor {name:?} is named twice"
                        )));
                    }
                }
                Ok(ProcessorsConfig(out))
            }
        }
        deserializer.deserialize_map(Processors)
    }
}

/// Consistent probability sampling by trace id: a span is kept when the
/// 56 random bits of its trace id (W3C Trace Context level 2) reach the
/// threshold `sampling_percentage` sets, so every node keeps or drops the
/// same traces. Log records with a trace id follow their trace; the rest,
/// and metrics, pass.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    /// Share of traces kept, 0 to 100.
    pub sampling_percentage: f64,
}

/// A token bucket per `service.name` over the spans the agent makes from
/// the kernel (scope `selfops`); spans an SDK sent are not limited.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Spans per second each service may export.
    pub spans_per_second: u32,
    /// Spans a service may export at once after a quiet spell (default:
    /// one second's worth).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Services tracked; beyond it new services share one bucket.
    #[serde(default = "default_max_services")]
    pub max_services: usize,
}

fn default_max_services() -> usize {
    4096
}

/// Routes by a condition on the resource (OTTL, resource context): the
/// first route that matches takes the resource's data; none matching, the
/// `default_exporters`, or the pipeline's exporters when that is empty.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    pub table: Vec<RouteConfig>,
    #[serde(default)]
    pub default_exporters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// e.g. `resource.attributes["tenant"] == "acme"`.
    pub condition: String,
    pub exporters: Vec<String>,
}

/// OTLP exporters besides `export.otlp`, named `otlp/NAME`.
pub type ExportersConfig = BTreeMap<String, OtlpConfig>;

/// One pipeline per signal; a signal without one runs no processor and
/// feeds every exporter.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelinesConfig {
    pub traces: Option<PipelineConfig>,
    pub metrics: Option<PipelineConfig>,
    pub logs: Option<PipelineConfig>,
    /// Exporters only: no processor reads profiles yet, and the `file`
    /// exporter takes none (the profiler writes pprof and SVG files).
    pub profiles: Option<PipelineConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Processor names, run in this order; a routing processor comes last.
    pub processors: Vec<String>,
    /// Exporter names (`file`, `otlp`, `otlp/NAME`); empty: all of them.
    pub exporters: Vec<String>,
}

impl PipelinesConfig {
    pub fn signals(&self) -> [(&'static str, Option<&PipelineConfig>); 3] {
        [
            ("traces", self.traces.as_ref()),
            ("metrics", self.metrics.as_ref()),
            ("logs", self.logs.as_ref()),
        ]
    }
}
