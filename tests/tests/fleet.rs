//! A fleet on one host: `selfops fleet serve`, three real agents (each in
//! a mount namespace of its own with a private /run/selfops, so each
//! takes its own one-agent-per-host lock) and 1,000 simulated agents
//! (`selfops fleet simulate`). A 4-step rollout that changes the
//! profiling frequency and the trace filter live reaches every agent; a
//! config whose OTLP endpoint is dead fails the real agents' health gate
//! at the canary step (the simulated agents, with no export pipeline,
//! apply it), so the rollout stops there and returns the whole canary to
//! the config it had, while the agents past the canary never see it.
//! Once with one server on SQLite, once with two servers sharing one
//! PostgreSQL (Debian's, started by the test in a temporary directory),
//! the agents split between them and the rollout driven through one.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use selfops_agent::fleet::test_postgres::Cluster;
use selfops_tests::{
    Agent,
    fleet::{FleetServer, Simulator, SimulatorOptions, count, keygen, tmpfs_dir},
    free_port, privileged, scratch_dir, selfops_bin,
};

const SIMULATED: usize = 1000;
const REAL: usize = 3;
const TOTAL: usize = SIMULATED + REAL;
/// Agents in the 1% canary step: 1% of 1,003 rounded up.
const CANARY: usize = 11;
const WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// `selfops run` in a new mount namespace with a tmpfs of its own on
/// /run/selfops: the host lock there is private to it. Batches leave
/// every 100 ms, so a dead endpoint shows within the health window; the
/// budget is generous, since a thousand simulated agents on the same
/// cores are load the real agents see but did not cause.
fn real_agent(name: &str, endpoint: &str, trusted_key: &str) -> Agent {
    let extra = format!(
        "profile: {{ enabled: true, frequency_hz: 19 }}\n\
         export: {{ batch_timeout: 100ms }}\n\
         control:\n  opamp: {{ endpoint: '{endpoint}', heartbeat_interval: 1s }}\n  \
         trusted_keys: ['{trusted_key}']\n  labels: {{ fleet: test, kind: real }}\n  \
         health_window: 3s\n  budget: {{ cpu: 64, rss: 4GiB, ring_losses: 1000000 }}\n"
    );
    Agent::start_command(name, &extra, |config| {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mkdir -p /run/selfops && mount -t tmpfs selfops-lock /run/selfops \
                 && exec \"$0\" run --config \"$1\"",
            )
            .arg(selfops_bin())
            .arg(config);
        command
    })
}

fn rollout(server: &FleetServer, config: &Path, key: &Path) -> std::process::Output {
    Command::new(selfops_bin())
        .args(["fleet", "rollout", "--server", &server.api(), "--config"])
        .arg(config)
        .arg("--key")
        .arg(key)
        .args([
            "--select",
            "fleet=test",
            "--steps",
            "1%,10%,50%,100%",
            "--health-window",
            "2s",
            "--step-timeout",
            "60s",
        ])
        .output()
        .expect("run selfops fleet rollout")
}

/// `selfops_remote_config_applies_total{outcome}` of a real agent.
fn applies(agent: &Agent, outcome: &str) -> f64 {
    agent.metric(
        "selfops_remote_config_applies_total",
        &[&format!("outcome=\"{outcome}\"")],
    )
}

fn label<'a>(agent: &'a serde_json::Value, key: &str) -> &'a str {
    agent["labels"][key].as_str().unwrap_or_default()
}

#[test]
fn a_rollout_reaches_real_and_simulated_agents_and_a_failing_canary_stops_it() {
    if !privileged("fleet") {
        return;
    }
    let _one = selfops_tests::one_agent_at_a_time();
    let dir = scratch_dir("fleet-test");
    let database = dir.join("fleet.db").display().to_string();
    rollout_and_canary(&dir, &[database]);
}

#[test]
fn two_servers_on_one_postgres_share_the_fleet_and_its_rollouts() {
    if !privileged("fleet_postgres") {
        return;
    }
    let _one = selfops_tests::one_agent_at_a_time();
    let Some(cluster) = Cluster::start("fleet-test") else {
        return;
    };
    let dir = scratch_dir("fleet-test-pg");
    let database = cluster.url("postgres");
    rollout_and_canary(&dir, &[database.clone(), database]);
}

/// The scenario with one server per entry of `databases`: real agent `i`
/// and an equal share of the simulated ones connect to server `i % n`;
/// rollouts go through the first.
fn rollout_and_canary(dir: &Path, databases: &[String]) {
    let started = Instant::now();
    let agents_dir = tmpfs_dir(&format!("fleet-test-agents-{}", databases.len()));
    let (key, public) = keygen(dir);
    let trusted = key.public().to_base64();
    let mut servers: Vec<FleetServer> = databases
        .iter()
        .enumerate()
        .map(|(i, database)| {
            let server_dir = dir.join(format!("server-{i}"));
            std::fs::create_dir_all(&server_dir).unwrap();
            FleetServer::start(&server_dir, database, 4096)
        })
        .collect();

    // The real agents first: their UUIDv7 uids sort before the simulated
    // agents', so the canary step (the first uids) holds all three.
    let real: Vec<Agent> = (0..REAL)
        .map(|i| {
            let endpoint = servers[i % servers.len()].endpoint();
            real_agent(&format!("fleet-real-{i}"), &endpoint, &trusted)
        })
        .collect();
    servers[0].wait_summary("the real agents listed", WITHIN, POLL, |s| {
        s.agents == REAL && s.connected == REAL
    });
    let mut simulators: Vec<Simulator> = servers
        .iter()
        .enumerate()
        .map(|(i, each)| {
            let data_dir = agents_dir.join(i.to_string());
            Simulator::start(
                &SimulatorOptions {
                    endpoint: &each.endpoint(),
                    agents: SIMULATED / servers.len(),
                    trusted_key: &public,
                    labels: "fleet=test,kind=simulated",
                    health_window: "2s",
                    data_dir: &data_dir,
                },
                dir.join(format!("simulate-{i}.log")),
            )
        })
        .collect();
    servers[0].wait_summary("every agent listed and connected", WITHIN, POLL, |s| {
        s.agents == TOTAL && s.connected == TOTAL
    });
    for simulator in &mut simulators {
        simulator.assert_running();
    }
    for agent in &real {
        assert_eq!(
            agent.metric("selfops_profile_frequency_hz", &[]),
            19.0,
            "{}",
            agent.log()
        );
    }

    // 1. A live change, in four steps, to every agent.
    let good = "profile:\n  frequency_hz: 29\ntrace:\n  exclude: [{ executable: fleet-test }]\n";
    let good_file = dir.join("good.yaml");
    std::fs::write(&good_file, good).unwrap();
    let out = rollout(&servers[0], &good_file, &dir.join("fleet.key"));
    assert!(
        out.status.success(),
        "rollout: {}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        servers[0].log()
    );
    let good_hash = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("rolled out ")
        .expect("rolled out HASH")
        .to_owned();
    let summary = servers[0].summary();
    assert_eq!(count(&summary, &good_hash, "APPLIED"), TOTAL, "{summary:?}");
    for agent in &real {
        // Applied live: the perf events re-opened at the new frequency,
        // nothing restarted.
        assert_eq!(agent.metric("selfops_profile_frequency_hz", &[]), 29.0);
        assert_eq!(applies(agent, "applied"), 1.0, "{}", agent.get("/metrics"));
    }

    // 2. A config whose OTLP endpoint is a closed port. The real agents
    // apply it live, their export fails the health gate and they roll
    // back by themselves (FAILED, "rolled back"); the simulated agents
    // have no export pipeline and apply it. 3 of the canary's 11 failed:
    // the rollout stops at 1% and returns the canary, the simulated
    // agents that applied it included, to the first rollout's config.
    let closed = free_port();
    let bad = format!("export:\n  otlp: {{ endpoint: 'http://127.0.0.1:{closed}' }}\n");
    let bad_file = dir.join("bad.yaml");
    std::fs::write(&bad_file, &bad).unwrap();
    let out = rollout(&servers[0], &bad_file, &dir.join("fleet.key"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the rollout went through: {stderr}");
    assert!(
        stderr.contains(&format!(
            "stopped at step 1%: {REAL} of {CANARY} agents failed (at most 0% may); \
             {CANARY} of the step's agents returned to their previous config"
        )),
        "{stderr}"
    );
    let bad_hash =
        selfops_agent::fleet::hex::encode(&selfops_agent::control::signed::sha256(bad.as_bytes()));

    // The canary is the first 11 uids: the 3 real agents and 8 simulated.
    let mut inventory = servers[0].agents();
    inventory.sort_by(|a, b| a["uid"].as_str().cmp(&b["uid"].as_str()));
    let canary: Vec<String> = inventory[..CANARY]
        .iter()
        .map(|a| a["uid"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        inventory[..CANARY]
            .iter()
            .filter(|a| label(a, "kind") == "real")
            .count(),
        REAL,
        "the real agents are the canary's first uids"
    );
    // Each returned to the first rollout's config.
    let short = &good_hash[..12];
    let mut returned: Vec<&str> = stdout
        .lines()
        .filter_map(|line| {
            line.strip_prefix("returned ")?
                .strip_suffix(&format!(" to config {short}"))
        })
        .collect();
    returned.sort_unstable();
    assert_eq!(returned, canary, "{stdout}");
    let rollout_row = servers[0].rollout();
    for (field, value) in [
        ("step", serde_json::json!(1)),
        ("offered", serde_json::json!(CANARY)),
        ("returned", serde_json::json!(CANARY)),
        ("stopped", serde_json::json!(true)),
    ] {
        assert_eq!(rollout_row[field], value, "{field}: {rollout_row}");
    }

    // Back on the first rollout's config, every one of them: the canary
    // applied it again, and the others never left it.
    let summary =
        servers[0].wait_summary("the canary back on the config before", WITHIN, POLL, |s| {
            count(s, &good_hash, "APPLIED") == TOTAL
        });
    assert_eq!(count(&summary, &bad_hash, "APPLIED"), 0, "{summary:?}");
    assert_eq!(count(&summary, &bad_hash, "FAILED"), 0, "{summary:?}");
    for agent in servers[0].agents() {
        assert_eq!(agent["desired_hash"], good_hash.as_str(), "{agent}");
        assert_eq!(agent["remote_hash"], good_hash.as_str(), "{agent}");
        assert_eq!(agent["remote_status"], "APPLIED", "{agent}");
        assert_eq!(agent["previous_hash"], "", "{agent}");
    }
    // Counted by the server that stopped the rollout, and by those that
    // heard the agents' reports.
    for (by, agents) in [("by=\"rollout\"", CANARY), ("by=\"agent\"", REAL)] {
        let counted: f64 = servers
            .iter()
            .map(|s| s.metric("selfops_fleet_rollbacks_total", &[by]))
            .sum();
        assert_eq!(counted, agents as f64, "{by}");
    }
    for agent in &real {
        // Rolled back by its own gate, then offered the first config again
        // by the rollout and applied it: running as before throughout.
        assert_eq!(agent.metric("selfops_profile_frequency_hz", &[]), 29.0);
        assert_eq!(
            applies(agent, "rolled_back"),
            1.0,
            "{}",
            agent.get("/metrics")
        );
        assert_eq!(applies(agent, "failed"), 0.0, "{}", agent.get("/metrics"));
        assert_eq!(applies(agent, "applied"), 2.0, "{}", agent.get("/metrics"));
        assert_eq!(agent.status_of("/readyz").map(|(code, _)| code), Some(200));
        let gate = agent.metric("selfops_health_gate_failures_total", &["check=\"export\""]);
        assert_eq!(gate, 1.0, "{}", agent.get("/metrics"));
    }

    for mut simulator in simulators {
        simulator.assert_running();
        simulator.stop();
    }
    for agent in real {
        let (status, _) = agent.stop(libc::SIGTERM);
        assert!(status.success(), "{status}");
    }
    let disconnected =
        servers[0].wait_summary("agents said goodbye", WITHIN, POLL, |s| s.connected == 0);
    assert_eq!(disconnected.agents, TOTAL);
    for server in servers.drain(..) {
        server.stop();
    }
    let _ = std::fs::remove_dir_all(&agents_dir);
    let _ = std::fs::remove_dir_all(dir);
    eprintln!(
        "fleet test with {} server(s) took {:?}",
        databases.len(),
        started.elapsed()
    );
}
