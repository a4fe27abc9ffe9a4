//! A stopped rollout returns its step's agents, and only those, to what
//! they ran before: here their local config, through the signed empty
//! config, one of them after failing its own health gate and one after
//! applying the config. The fleet's metrics show it.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use super::{
    api,
    rollout::{self, Plan, RolloutError},
    server::Limits,
    status,
    store::{Returned, Store},
    tests::{Agent, WITHIN, start_agent_with, start_server_on, wait_for},
};
use crate::{
    control::{identity, signed::SecretKey},
    export::metrics::{DropReason, SINK_OTLP, TRACES},
};

/// The agents' health window: long enough that a breaker (below) acts
/// within it, short enough for a rollout of a few steps.
pub(super) const WINDOW: &str = "3s";

/// Stands in for a component that breaks under a config: while the trace
/// section the agent runs excludes `executable`, its OTLP sink gives up a
/// batch every 100 ms, which is what the health gate sees of a dead
/// endpoint. Repeated, because the gate counts only failures after the
/// trial began.
pub(super) fn break_export_under(agent: &Agent, executable: &str) -> tokio::task::JoinHandle<()> {
    let mut trace = agent.trace.clone();
    let export = agent.export.clone();
    let executable = executable.to_owned();
    tokio::spawn(async move {
        loop {
            let broken = trace
                .borrow_and_update()
                .exclude
                .iter()
                .any(|s| s.executable.as_deref() == Some(executable.as_str()));
            if broken {
                // A batch given up, as the OTLP sink counts it: the
                // batch and the signals in it.
                export.failure(SINK_OTLP);
                export.drop_signals(TRACES, DropReason::ExportFailed, 4);
                tokio::time::sleep(Duration::from_millis(100)).await;
            } else if trace.changed().await.is_err() {
                return;
            }
        }
    })
}

/// The server's /metrics text.
pub(super) async fn metrics_text(server: &str) -> String {
    let body = status::call(server, "/metrics", None).await.unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// One series' value in /metrics text, e.g. `selfops_fleet_rollout_step`.
pub(super) fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// One series' value at the server's /metrics; it must be there.
pub(super) async fn metric(server: &str, series: &str) -> f64 {
    let text = metrics_text(server).await;
    value_of(&text, series).unwrap_or_else(|| panic!("{series} not in:\n{text}"))
}

pub(super) fn uid_of(dir: &std::path::Path) -> String {
    identity::load_or_create(dir)
        .unwrap()
        .hyphenated()
        .to_string()
}

pub(super) fn plan(steps: &[u8]) -> Plan {
    Plan {
        steps: steps.to_vec(),
        health_window: Duration::from_millis(200),
        max_failures_percent: 0,
        step_timeout: WITHIN,
        poll: Duration::from_millis(100),
    }
}

pub(super) fn zone_a() -> BTreeMap<String, String> {
    [("zone".to_owned(), "a".to_owned())].into()
}

pub(super) async fn stop_all(agents: Vec<Agent>) {
    for agent in agents {
        let _ = agent.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), agent.task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_rollout_returns_its_step_to_the_local_config() {
    let (addr, stop_server) = start_server_on(
        Store::open_in_memory().unwrap(),
        Limits::default(),
        Duration::from_secs(1),
    )
    .await;
    let server = format!("http://{addr}");
    let key = SecretKey::generate();
    let base = std::env::temp_dir().join(format!("selfops-fleet-return-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let endpoint = format!("ws://{addr}/v1/opamp");
    let dirs: Vec<PathBuf> = (0..4).map(|i| base.join(i.to_string())).collect();
    let agents: Vec<Agent> = dirs
        .iter()
        .map(|dir| start_agent_with(dir, &endpoint, &key, "a", WINDOW))
        .collect();
    wait_for(&server, "every agent listed", |a| a.len() == 4).await;

    // The first step (50%) is the first two agents by uid; the first of
    // them breaks under the config, the second runs it well.
    let mut order: Vec<(String, usize)> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| (uid_of(dir), i))
        .collect();
    order.sort();
    let breaker = break_export_under(&agents[order[0].1], "break-me");

    let yaml = "trace:\n  exclude: [{ executable: break-me }]\n";
    let err = rollout::run(&server, yaml, &key, &zone_a(), &plan(&[50, 100]))
        .await
        .unwrap_err();
    let RolloutError::Stopped {
        step: 50,
        failed: 1,
        of: 2,
        mut returned,
        ..
    } = err
    else {
        panic!("{err}");
    };
    returned.sort_by(|a, b| a.uid.cmp(&b.uid));
    let empty = api::empty_hash();
    let expected: Vec<Returned> = order[..2]
        .iter()
        .map(|(uid, _)| Returned {
            uid: uid.clone(),
            hash: empty.clone(),
        })
        .collect();
    assert_eq!(returned, expected);

    // Both run their local config again: the empty config is APPLIED and
    // the trace section is the local file's.
    let canary = [&order[0].0, &order[1].0];
    let all = wait_for(&server, "the step back on its local config", |all| {
        all.iter()
            .filter(|a| canary.contains(&&a.uid))
            .all(|a| a.remote_hash == empty && a.remote_status == "APPLIED")
    })
    .await;
    for (_, i) in &order[..2] {
        assert!(agents[*i].trace.borrow().exclude.is_empty());
    }
    // The next step's agents were never offered anything.
    for agent in all.iter().filter(|a| !canary.contains(&&a.uid)) {
        assert_eq!(
            (agent.desired_hash.as_str(), agent.remote_status.as_str()),
            ("", ""),
            "{agent:?}"
        );
    }

    let rollout = status::call(&server, "/v1/rollout", None).await.unwrap();
    let rollout: super::store::RolloutRow = serde_json::from_slice(&rollout).unwrap();
    assert_eq!(
        (
            rollout.step,
            rollout.offered,
            rollout.returned,
            rollout.stopped
        ),
        (50, 2, 2, true)
    );
    for (series, value) in [
        ("selfops_fleet_rollbacks_total{by=\"rollout\"}", 2.0),
        ("selfops_fleet_rollbacks_total{by=\"agent\"}", 1.0),
        ("selfops_fleet_rollout_step", 50.0),
        ("selfops_fleet_rollout_agents{state=\"offered\"}", 2.0),
        ("selfops_fleet_rollout_agents{state=\"returned\"}", 2.0),
        ("selfops_fleet_rollout_stopped", 1.0),
        ("selfops_fleet_connected_agents", 4.0),
    ] {
        assert_eq!(metric(&server, series).await, value, "{series}");
    }
    for status in ["APPLYING", "APPLIED", "FAILED"] {
        let series = format!("selfops_fleet_remote_config_reports_total{{status=\"{status}\"}}");
        assert!(metric(&server, &series).await >= 1.0, "{series}");
    }
    let accepted = "selfops_fleet_connections_total{transport=\"websocket\",outcome=\"accepted\"}";
    assert!(metric(&server, accepted).await >= 4.0);
    assert!(
        metric(
            &server,
            "selfops_fleet_messages_total{direction=\"received\"}"
        )
        .await
            > 0.0
    );
    assert!(metric(&server, "selfops_fleet_messages_total{direction=\"sent\"}").await > 0.0);

    breaker.abort();
    stop_all(agents).await;
    let _ = stop_server.send(());
    let _ = std::fs::remove_dir_all(&base);
}
