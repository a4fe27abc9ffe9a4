//! The control plane: an OpAMP client that reports the agent's status and
//! takes remote configuration — verified against the local trusted keys,
//! checked by the same validator as the file, limited to what may change
//! remotely, and applied live through watch channels, one per component.

mod audit;
pub mod backoff;
pub(crate) mod client;
pub mod config;
pub mod frame;
pub mod gate;
mod http;
pub mod identity;
pub mod last_good;
mod metrics;
pub mod policy;
pub mod restart;
pub mod signed;
pub mod state;
mod ws;

use std::sync::Arc;

use anyhow::Context as _;
use selfops_proto::opamp::AgentDescription;
use tokio::{sync::watch, task::JoinHandle};

pub use client::AuditSink;

/// How a rollback by the agent's own health gate begins its FAILED
/// status, which the fleet server counts by.
pub const ROLLED_BACK: &str = "rolled back to the last-known-good config";
pub use config::ControlConfig;
pub use metrics::{ControlMetrics, OutcomeLabel};

use crate::{
    act::ActuationConfig,
    config::{Config, ExportConfig, ProfileConfig, ServiceConfig, TraceConfig},
    export::ExportMetrics,
    supervise::Health,
};

/// The sections applied live, each on its own channel: a component
/// subscribes to its section and rebuilds what depends on it, while its
/// sensors, rings and queues stay as they are.
pub struct Live {
    pub trace: watch::Sender<TraceConfig>,
    pub profile: watch::Sender<ProfileConfig>,
    /// Playbooks, allowlist, mode, interval and concurrency: the actuation
    /// loop swaps its playbooks (withdrawing what removed ones held).
    pub actuation: watch::Sender<ActuationConfig>,
    /// Service rules: new spans and profiles carry the new service.name.
    pub service: watch::Sender<ServiceConfig>,
    /// Exporters: the sinks are rebuilt behind the same bounded queue.
    pub export: watch::Sender<ExportConfig>,
    /// Whether the profiler was started: one that was not (profiling off
    /// in the config the agent started with) has nothing to turn on live.
    profiler: bool,
}

impl Live {
    /// `config` is the one the agent's components were started with.
    pub fn new(config: &Config) -> Self {
        Self {
            trace: watch::Sender::new(config.trace.clone()),
            profile: watch::Sender::new(config.profile.clone()),
            actuation: watch::Sender::new(config.actuation.clone()),
            service: watch::Sender::new(config.service.clone()),
            export: watch::Sender::new(config.export.clone()),
            profiler: config.profile.enabled,
        }
    }

    /// The first key of the change to `config` (`keys`) that cannot be
    /// applied live here.
    pub(crate) fn restart_key(
        &self,
        config: &Config,
        keys: &[&'static str],
    ) -> Option<&'static str> {
        policy::restart_key(self.profiler, config, keys)
    }

    /// Publishes the sections among `keys` (checked by the policy to be
    /// live keys only).
    fn apply(&self, config: &Config, keys: &[&str]) {
        let touches = |section: &str| {
            keys.iter().any(|k| {
                k.strip_prefix(section)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
        };
        if touches("trace") {
            self.trace.send_replace(config.trace.clone());
        }
        if touches("profile") {
            self.profile.send_replace(config.profile.clone());
        }
        if touches("actuation") {
            self.actuation.send_replace(config.actuation.clone());
        }
        if touches("service") {
            self.service.send_replace(config.service.clone());
        }
        if touches("export") {
            self.export.send_replace(config.export.clone());
        }
    }
}

/// The next value of a live section, or never when there is no channel
/// (or it closed: the agent runs without a control plane). A component
/// selects on it beside its own work.
pub async fn next_update<T: Clone>(updates: &mut Option<watch::Receiver<T>>) -> Option<T> {
    let Some(rx) = updates else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        *updates = None;
        return std::future::pending().await;
    }
    let value = rx.borrow_and_update().clone();
    Some(value)
}

/// The running client; stopping it sends agent_disconnect.
pub struct ControlHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ControlHandle {
    /// Asks the client to say goodbye, waiting at most `within`.
    pub async fn stop(self, within: std::time::Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(within, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Starts the client when `control.opamp` is set.
pub fn start(
    config: &Arc<Config>,
    live: Live,
    health: Arc<Health>,
    export: ExportMetrics,
    metrics: ControlMetrics,
    audit: AuditSink,
    kernel: Option<crate::telemetry::KernelCounters>,
) -> anyhow::Result<Option<ControlHandle>> {
    let Some(opamp) = config.control.opamp.clone() else {
        return Ok(None);
    };
    let uid = identity::load_or_create(&config.data_dir).with_context(|| {
        format!(
            "instance uid in {}",
            config.data_dir.join(identity::FILE).display()
        )
    })?;
    let description = description(&config.control);
    let resource = Arc::new(crate::process::resource::own_resource(
        config.kubernetes.cluster_name.as_deref(),
    ));
    let state = state::ClientState::new(uid, description);
    tracing::info!(endpoint = %opamp.endpoint, %uid, "OpAMP client starting");
    let client = client::Client::new(
        opamp,
        state,
        metrics,
        config.clone(),
        live,
        audit,
        resource,
        gate::Watch::new(health, export).with_kernel(kernel),
    );
    let (stop, stopping) = watch::channel(false);
    let task = tokio::spawn(client.run(stopping));
    Ok(Some(ControlHandle { stop, task }))
}

/// service.* identify the agent; host.*, os.type and the configured labels
/// describe where it runs.
pub fn description(control: &ControlConfig) -> AgentDescription {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let mut non_identifying = vec![
        ("host.name", host),
        (
            "host.arch",
            crate::process::resource::host_arch().to_owned(),
        ),
        ("os.type", "linux".to_owned()),
    ];
    non_identifying.extend(crate::k8s::own_pod::attributes(None));
    let mut non_identifying = state::attributes(&non_identifying);
    non_identifying.extend(
        control
            .labels
            .iter()
            .map(|(k, v)| selfops_proto::opamp::KeyValue {
                key: k.clone(),
                value: Some(selfops_proto::opamp::AnyValue {
                    value: Some(selfops_proto::opamp::any_value::Value::StringValue(
                        v.clone(),
                    )),
                }),
            }),
    );
    AgentDescription {
        identifying_attributes: state::attributes(&[
            ("service.name", "selfops".to_owned()),
            ("service.version", env!("CARGO_PKG_VERSION").to_owned()),
        ]),
        non_identifying_attributes: non_identifying,
    }
}

#[cfg(test)]
mod live_tests;
#[cfg(test)]
mod tests;
