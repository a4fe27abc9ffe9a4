//! The pod part of trace and profile selectors: a namespace glob and labels
//! that must all match, applied to the pod a process's container is in.

use globset::{Glob, GlobMatcher};

use super::PodDirectory;
use crate::{config::Selector, process::Process};

pub struct PodSelector {
    namespace: Option<GlobMatcher>,
    labels: Vec<(String, String)>,
}

impl PodSelector {
    /// `None` when `selector` picks by something other than pods.
    pub fn new(selector: &Selector) -> Result<Option<Self>, globset::Error> {
        if !selector.is_pod() {
            return Ok(None);
        }
        let namespace = match &selector.namespace {
            Some(glob) => Some(Glob::new(glob)?.compile_matcher()),
            None => None,
        };
        let labels = selector
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Some(Self { namespace, labels }))
    }

    /// A process outside any known pod matches no pod selector.
    pub fn matches(&self, process: Option<&Process>, pods: Option<&PodDirectory>) -> bool {
        let Some(container) = process
            .and_then(|p| p.container_id.as_deref())
            .and_then(|id| pods?.container(id))
        else {
            return false;
        };
        let pod = &container.pod;
        self.namespace
            .as_ref()
            .is_none_or(|m| m.is_match(&*pod.namespace))
            && self
                .labels
                .iter()
                .all(|(k, v)| pod.label(k) == Some(v.as_str()))
    }
}
