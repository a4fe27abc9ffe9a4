//! From the `kubernetes` section to a running watch: a kubeconfig if one is
//! named, else the pod's service account, else nothing (off).

use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;

use super::{
    client::ApiClient,
    directory::PodDirectory,
    metrics::KubeMetrics,
    source,
    watch::{PodWatch, WatchSettings},
};
use crate::config::KubernetesConfig;

/// Largest list page held, whatever `page_size × max_object_bytes` says.
const MAX_PAGE_BYTES: usize = 64 << 20;

/// The directory and the watch that fills it, or `None` when there is no
/// API server to ask.
pub fn prepare(
    config: &KubernetesConfig,
    registry: &mut Registry,
) -> anyhow::Result<Option<(Arc<PodDirectory>, PodWatch)>> {
    if !config.enabled {
        return Ok(None);
    }
    let (source, explicit) = match &config.kubeconfig {
        Some(path) => (
            source::from_kubeconfig(path).context("kubernetes.kubeconfig")?,
            true,
        ),
        None => match source::in_cluster() {
            Some(source) => (
                source.context("kubernetes: the pod's service account")?,
                false,
            ),
            None => {
                tracing::debug!("not in a pod and no kubernetes.kubeconfig: no pod metadata");
                return Ok(None);
            }
        },
    };
    let node = config
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty());
    let Some(node) = node else {
        if explicit {
            anyhow::bail!("kubernetes: no node name: set kubernetes.node_name or NODE_NAME");
        }
        tracing::warn!(
            "in a pod, but neither NODE_NAME (downward API) nor kubernetes.node_name is set: no pod metadata"
        );
        return Ok(None);
    };
    tracing::info!(?source, %node, "pod metadata from the Kubernetes API server");
    let metrics = KubeMetrics::register(registry);
    let directory = Arc::new(
        PodDirectory::new(
            &node,
            config.cluster_name.as_deref(),
            config.max_pods,
            metrics.clone(),
        )
        .with_deleted_grace(config.deleted_pod_grace),
    );
    let page_bytes = config
        .max_object_bytes
        .saturating_mul(usize::try_from(config.page_size).unwrap_or(usize::MAX))
        .min(MAX_PAGE_BYTES);
    let client = ApiClient::new(source, config.max_object_bytes, page_bytes);
    let watch = PodWatch::new(
        client,
        directory.clone(),
        metrics,
        WatchSettings {
            page_size: config.page_size,
            max_backoff: config.max_backoff,
            watch_timeout: config.watch_timeout,
        },
    );
    Ok(Some((directory, watch)))
}
