//! `selfops fleet simulate`: a testing tool that runs many agents' control
//! planes in one process, to load a fleet server and rehearse rollouts.
//!
//! Each simulated agent is the agent's own OpAMP client, built as
//! `control::start` builds it: its config parsed from YAML by the agent's
//! parser, a UUIDv7 instance uid persisted in its own data directory,
//! remote configs verified against the trusted key, laid over its local
//! file by the same policy, applied to its own live channels and put on
//! trial by the same health gate, last-known-good kept on disk. What is
//! not there: kernel sensors, the tracer, the profiler and the export
//! pipeline. Its health gate therefore watches a supervisor health with
//! every task alive and export counters no sink moves, and its CPU and
//! memory budget is unbounded (the process's use is all its agents'
//! together, which no one agent's budget fits): a simulated agent fails a
//! config only where its own checks refuse it (signature, policy, a key
//! that needs a restart), never by its health.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use selfops_proto::opamp::{AnyValue, any_value};
use serde_yaml_ng::{Mapping, Value};
use tokio::{sync::watch, task::JoinSet};

use crate::{
    config::Config,
    control::{
        self, ControlMetrics, Live, OutcomeLabel, client::Client, gate, identity,
        signed::TrustedKey, state::ClientState,
    },
    export::ExportMetrics,
    signal::Resource,
    supervise::Health,
};

/// `selfops fleet simulate …`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's OpAMP endpoint: ws://ADDR/v1/opamp or http://ADDR/v1/opamp.
    #[arg(long)]
    pub server: String,
    /// How many agents.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// The public key the agents trust: base64, or a file holding it
    /// (`selfops fleet keygen`'s .pub).
    #[arg(long, value_parser = parse_trusted_key)]
    pub trusted_key: TrustedKey,
    /// `k=v,…`: control.labels of every agent.
    #[arg(long, default_value = "", value_parser = parse_labels)]
    pub labels: BTreeMap<String, String>,
    /// control.health_window of every agent.
    #[arg(long, default_value = "0s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub health_window: Duration,
    /// The agents' heartbeat (control.opamp.heartbeat_interval).
    #[arg(long, default_value = "30s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Where the agents keep their data, one subdirectory each (instance
    /// uid, last-known-good config); default: a new directory under the
    /// system temp dir. Kept, so a rerun brings back the same agents.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl From<Args> for Simulation {
    fn from(args: Args) -> Self {
        Self {
            data_dir: args.data_dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("selfops-simulate-{}", std::process::id()))
            }),
            endpoint: args.server,
            agents: args.agents,
            trusted_key: args.trusted_key,
            labels: args.labels,
            health_window: args.health_window,
            heartbeat: args.heartbeat,
        }
    }
}

/// What `selfops fleet simulate` was asked for.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// `ws://…/v1/opamp` or `http://…/v1/opamp`.
    pub endpoint: String,
    pub agents: usize,
    pub trusted_key: TrustedKey,
    /// `control.labels` of every simulated agent (beside `selfops.simulated`).
    pub labels: BTreeMap<String, String>,
    pub health_window: Duration,
    pub heartbeat: Duration,
    /// One subdirectory per agent, `0`, `1`, …
    pub data_dir: PathBuf,
}

/// The label every simulated agent carries, so a rollout can tell them
/// from real agents.
pub const SIMULATED_LABEL: &str = "selfops.simulated";

/// The most cores `control.budget.cpu` takes: the simulator's CPU is all
/// its agents' together.
const UNBOUNDED_CPU: f64 = 1024.0;

/// How long the agents get to say goodbye when stopped.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// How often the progress line is printed (when it changed).
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The local config file of agent `index`, as YAML text.
fn local_yaml(sim: &Simulation, index: usize, dir: &Path) -> anyhow::Result<String> {
    let text = |s: &str| Value::String(s.to_owned());
    let mut labels: Mapping = sim.labels.iter().map(|(k, v)| (text(k), text(v))).collect();
    labels.insert(text(SIMULATED_LABEL), text("true"));
    labels.insert(text("selfops.simulated.index"), text(&index.to_string()));
    let opamp: Mapping = [
        (text("endpoint"), text(&sim.endpoint)),
        (
            text("heartbeat_interval"),
            text(&humantime_serde::re::humantime::format_duration(sim.heartbeat).to_string()),
        ),
    ]
    .into_iter()
    .collect();
    let control: Mapping = [
        (text("opamp"), Value::Mapping(opamp)),
        (
            text("trusted_keys"),
            Value::Sequence(vec![text(&sim.trusted_key.to_base64())]),
        ),
        (text("labels"), Value::Mapping(labels)),
        (
            text("health_window"),
            text(&humantime_serde::re::humantime::format_duration(sim.health_window).to_string()),
        ),
        (
            text("budget"),
            Value::Mapping(
                [
                    (text("cpu"), Value::Number(UNBOUNDED_CPU.into())),
                    (text("rss"), Value::Number(u64::MAX.into())),
                ]
                .into_iter()
                .collect(),
            ),
        ),
    ]
    .into_iter()
    .collect();
    let root: Mapping = [
        (text("data_dir"), text(&dir.display().to_string())),
        (text("control"), Value::Mapping(control)),
    ]
    .into_iter()
    .collect();
    serde_yaml_ng::to_string(&root).context("writing the simulated agent's config")
}

/// The agent's description, with a host.name of its own: the simulated
/// agents share one host, the inventory should not show them as one.
fn description(config: &Config, index: usize) -> selfops_proto::opamp::AgentDescription {
    let mut description = control::description(&config.control);
    for kv in &mut description.non_identifying_attributes {
        if kv.key == "host.name"
            && let Some(AnyValue {
                value: Some(any_value::Value::StringValue(host)),
            }) = &mut kv.value
        {
            host.push_str(&format!("-sim-{index}"));
        }
    }
    description
}

/// One simulated agent's client, ready to run.
fn client(sim: &Simulation, index: usize, metrics: &ControlMetrics) -> anyhow::Result<Client> {
    let dir = sim.data_dir.join(index.to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let yaml = local_yaml(sim, index, &dir)?;
    let config = Config::parse(&yaml, &dir.join("selfops.yaml"))
        .map_err(|e| anyhow::anyhow!("simulated agent {index}: {e}"))?;
    let config = Arc::new(config);
    let opamp = config
        .control
        .opamp
        .clone()
        .context("the simulated config names the server")?;
    let uid = identity::load_or_create(&dir)
        .with_context(|| format!("instance uid in {}", dir.display()))?;
    let state = ClientState::new(uid, description(&config, index));
    let health = Arc::new(Health::default());
    // No task to start: the supervisor has nothing that can fail.
    health.started();
    let resource = Arc::new(Resource {
        attributes: vec![("service.name", "selfops".into())],
    });
    Ok(Client::new(
        opamp,
        state,
        metrics.clone(),
        config.clone(),
        Live::new(&config),
        // Audit records have no pipeline to go to: dropped, as an agent
        // without exporters would.
        Box::new(|_| {}),
        resource,
        gate::Watch::new(health, ExportMetrics::default()),
    ))
}

/// Runs the agents until `stop` completes, then lets each say goodbye.
pub async fn run(
    sim: Simulation,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // Shared by all: the counters add up to the fleet's.
    let metrics = ControlMetrics::default();
    let (stopping, stop_rx) = watch::channel(false);
    let mut agents = JoinSet::new();
    for index in 0..sim.agents {
        let client = client(&sim, index, &metrics)?;
        agents.spawn(client.run(stop_rx.clone()));
    }
    println!(
        "simulating {} agents against {} (data in {})",
        sim.agents,
        sim.endpoint,
        sim.data_dir.display()
    );
    tokio::pin!(stop);
    let mut report = tokio::time::interval(REPORT_EVERY);
    let mut last = String::new();
    // A client runs until told to stop: one that ends before is a dead
    // agent the server would only see as silent.
    let mut ended_early = 0usize;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(ended) = agents.join_next() => {
                ended_early += 1;
                tracing::error!(result = ?ended, ended_early, "a simulated agent ended before the stop");
            }
            _ = report.tick() => {
                let mut line = progress(&metrics);
                if ended_early > 0 {
                    line.push_str(&format!(", {ended_early} ended early"));
                }
                if line != last {
                    println!("{line}");
                    last = line;
                }
            }
        }
    }
    let _ = stopping.send(true);
    let ended = tokio::time::timeout(STOP_WITHIN, async {
        while let Some(ended) = agents.join_next().await {
            if let Err(err) = ended {
                tracing::error!(%err, "a simulated agent failed while stopping");
            }
        }
    })
    .await;
    if ended.is_err() {
        tracing::warn!(left = agents.len(), "simulated agents not stopped in time");
        agents.abort_all();
    }
    println!("{}", progress(&metrics));
    Ok(())
}

/// The fleet's counters in one line.
fn progress(metrics: &ControlMetrics) -> String {
    use prometheus_client::metrics::{counter::Counter, family::Family};
    let count = |family: &Family<OutcomeLabel, Counter>, outcome: &'static str| {
        family.get_or_create(&OutcomeLabel { outcome }).get()
    };
    let sessions = |outcome| count(&metrics.connections, outcome);
    let configs = |outcome| count(&metrics.applies, outcome);
    format!(
        "sessions: {} connected, {} failed, {} closed by the server; \
         configs: {} accepted, {} applied, {} refused, {} rolled back",
        sessions("connected"),
        sessions("failed"),
        sessions("closed"),
        configs("accepted"),
        configs("applied"),
        configs("failed"),
        configs("rolled_back"),
    )
}

/// A label list as `control.labels` carries it (`k=v`, comma separated).
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|pair| super::cli::parse_label(pair.trim()))
        .collect()
}

/// `KEY` is the base64 public key itself or a file holding it (a
/// `selfops fleet keygen` `.pub`).
pub fn parse_trusted_key(text: &str) -> Result<TrustedKey, String> {
    let path = Path::new(text);
    let owned;
    let key = if path.is_file() {
        owned = std::fs::read_to_string(path).map_err(|e| format!("{text}: {e}"))?;
        owned.as_str()
    } else {
        text
    };
    TrustedKey::parse(key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::signed::SecretKey;

    #[test]
    fn each_agent_has_its_own_config_uid_and_host_name() {
        let dir = std::env::temp_dir().join(format!("selfops-simulate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sim = Simulation {
            endpoint: "ws://127.0.0.1:1/v1/opamp".into(),
            agents: 2,
            trusted_key: SecretKey::generate().public(),
            labels: parse_labels("zone=a, team=b").unwrap(),
            health_window: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            data_dir: dir.clone(),
        };
        let metrics = ControlMetrics::default();
        for index in 0..2 {
            client(&sim, index, &metrics).unwrap();
        }
        let uids: Vec<String> = (0..2)
            .map(|i| std::fs::read_to_string(dir.join(i.to_string()).join(identity::FILE)).unwrap())
            .collect();
        assert_ne!(uids[0], uids[1]);

        let agent = dir.join("1");
        let config = Config::parse(&local_yaml(&sim, 1, &agent).unwrap(), Path::new("t")).unwrap();
        assert_eq!(config.data_dir, agent);
        assert_eq!(config.control.health_window, Duration::from_secs(2));
        assert_eq!(config.control.trusted_keys, vec![sim.trusted_key.clone()]);
        assert_eq!(
            (config.control.budget.cpu, config.control.budget.rss),
            (UNBOUNDED_CPU, u64::MAX)
        );
        let labels = &config.control.labels;
        assert_eq!(labels["zone"], "a");
        assert_eq!(labels["team"], "b");
        assert_eq!(labels[SIMULATED_LABEL], "true");
        let host = description(&config, 1)
            .non_identifying_attributes
            .into_iter()
            .find(|kv| kv.key == "host.name")
            .and_then(|kv| kv.value?.value);
        assert!(
            matches!(&host, Some(any_value::Value::StringValue(h)) if h.ends_with("-sim-1")),
            "{host:?}"
        );
        assert!(parse_labels("novalue").is_err());
        assert!(parse_trusted_key("not a key").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
