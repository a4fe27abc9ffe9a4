//! Splits a processed batch among exporters. Each resource's data goes to a
//! set of exporters (a bit mask over the exporters' indices): the first
//! route whose condition its resource matches, else the pipeline's default.
//! Entries with the same set travel together in one batch that every
//! exporter of the set shares, so nothing is copied.

use opentelemetry_proto::tonic::resource::v1::Resource;
use selfops_ottl::{Condition, Context};

use super::config::RoutingConfig;
use crate::export::OtlpBatch;

/// A set of exporters, by index (at most 64 exporters).
pub type ExporterSet = u64;

pub struct Router {
    routes: Vec<(Condition, ExporterSet)>,
    default: ExporterSet,
}

impl Router {
    /// `set_of` resolves exporter names; `pipeline` is the pipeline's own
    /// set, the default when the table gives none.
    pub fn new(
        config: &RoutingConfig,
        pipeline: ExporterSet,
        set_of: &dyn Fn(&[String]) -> Result<ExporterSet, String>,
    ) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(config.table.len());
        for (i, route) in config.table.iter().enumerate() {
            let condition = Condition::new(&route.condition, Context::Resource)
                .map_err(|e| format!("table[{i}].condition: {e}"))?;
            if route.exporters.is_empty() {
                return Err(format!("table[{i}].exporters: name at least one exporter"));
            }
            let set = set_of(&route.exporters).map_err(|e| format!("table[{i}].exporters: {e}"))?;
            routes.push((condition, set));
        }
        let default = if config.default_exporters.is_empty() {
            pipeline
        } else {
            set_of(&config.default_exporters).map_err(|e| format!("default_exporters: {e}"))?
        };
        Ok(Self { routes, default })
    }

    /// The exporters `resource`'s data goes to, and whether evaluating a
    /// condition failed (the default is taken then).
    pub fn route(&self, resource: Option<&Resource>) -> (ExporterSet, bool) {
        let empty = Resource::default();
        let resource = resource.unwrap_or(&empty);
        let mut failed = false;
        for (condition, set) in &self.routes {
            match condition.matches_resource(resource) {
                Ok(true) => return (*set, failed),
                Ok(false) => {}
                Err(_) => failed = true,
            }
        }
        (self.default, failed)
    }
}

/// Batches by exporter set.
#[derive(Debug, Default)]
pub struct Routed {
    pub parts: Vec<(ExporterSet, OtlpBatch)>,
}

impl Routed {
    /// The batch of `set`, made when first asked for.
    pub fn part(&mut self, set: ExporterSet) -> &mut OtlpBatch {
        let at = match self.parts.iter().position(|(s, _)| *s == set) {
            Some(at) => at,
            None => {
                self.parts.push((set, OtlpBatch::default()));
                self.parts.len() - 1
            }
        };
        &mut self.parts[at].1
    }
}
