//! `cargo xtask bench fleet`: `selfops fleet serve` and N simulated agents
//! (`selfops fleet simulate`, the agent's own OpAMP client) over WebSocket
//! on loopback. One signed config is offered to all (health window 0);
//! measured: the time from the offer to every agent reported APPLIED, the
//! fleet server's CPU and memory per 1,000 agents, and the simulator's
//! memory per agent.

use std::time::{Duration, Instant};

use anyhow::ensure;
use selfops_tests::{
    fleet::{FleetServer, Simulator, SimulatorOptions, count, keygen, status_kib, tmpfs_dir},
    scratch_dir,
};

use crate::trace::cpu_of;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated agents.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// The fleet server's database (`fleet serve --database`); default: a
    /// new SQLite file in a temporary directory.
    #[arg(long)]
    database: Option<String>,
}

/// Targets the issue sets.
const TARGET_APPLIED: Duration = Duration::from_secs(5);
const TARGET_RSS_MIB_PER_10K: f64 = 50.0;

/// How often the summary is polled while waiting.
const POLL: Duration = Duration::from_millis(100);

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.agents > 0, "--agents: at least one");
    let dir = scratch_dir("bench-fleet");
    let agents_dir = tmpfs_dir("bench-fleet-agents");
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| dir.join("fleet.db").display().to_string());
    let (key, public) = keygen(&dir);

    let mut server = FleetServer::start(&dir, &database, args.agents.saturating_add(256));
    let idle_rss = status_kib(server.pid(), "VmRSS");
    let cpu_start = cpu_of(server.pid())?;
    let connect_start = Instant::now();
    let mut simulator = Simulator::start(
        &SimulatorOptions {
            endpoint: &server.endpoint(),
            agents: args.agents,
            trusted_key: &public,
            labels: "bench=fleet",
            health_window: "0s",
            data_dir: &agents_dir,
        },
        dir.join("simulate.log"),
    );
    let within = Duration::from_secs(120).max(Duration::from_millis(
        u64::try_from(args.agents)
            .unwrap_or(u64::MAX)
            .saturating_mul(20),
    ));
    server.wait_summary("every agent listed and connected", within, POLL, |s| {
        s.agents == args.agents && s.connected == args.agents
    });
    simulator.assert_running();
    let connected_in = connect_start.elapsed();
    let cpu_connected = cpu_of(server.pid())?;
    let rss_connected = status_kib(server.pid(), "VmRSS");

    let yaml = "trace:\n  exclude: [{ executable: bench-fleet }]\n";
    let sim_cpu_before = cpu_of(simulator.pid())?;
    let offer_start = Instant::now();
    let offer = server.offer(yaml, &key, Default::default());
    let offered_in = offer_start.elapsed();
    ensure!(
        offer.agents.len() == args.agents,
        "offered to {} agents of {}",
        offer.agents.len(),
        args.agents
    );
    let summary = server.wait_summary("every agent APPLIED", within, POLL, |s| {
        count(s, &offer.hash, "APPLIED") == args.agents
    });
    let applied_in = offer_start.elapsed();
    let cpu_applied = cpu_of(server.pid())?;
    let sim_cpu = cpu_of(simulator.pid())?.saturating_sub(sim_cpu_before);
    let rss = status_kib(server.pid(), "VmRSS");
    let hwm = status_kib(server.pid(), "VmHWM");
    let sim_rss = status_kib(simulator.pid(), "VmRSS");
    simulator.assert_running();
    ensure!(summary.agents == args.agents, "{summary:?}");
    simulator.stop();
    server.stop();
    let _ = std::fs::remove_dir_all(&agents_dir);
    let _ = std::fs::remove_dir_all(&dir);

    let n = args.agents as f64;
    let per_thousand = |x: f64| x * 1000.0 / n;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "bench fleet: {} simulated agents over WebSocket on loopback, database {}",
        args.agents,
        args.database
            .as_deref()
            .unwrap_or("SQLite (temporary file)")
    );
    println!(
        "fleet: {} agents applied in {:.2} s (target < {} s); the offer itself {:.0} ms",
        args.agents,
        applied_in.as_secs_f64(),
        TARGET_APPLIED.as_secs(),
        ms(offered_in)
    );
    println!(
        "  all connected and listed in {:.1} s: server CPU {:.0} ms per 1,000 agents",
        connected_in.as_secs_f64(),
        per_thousand(ms(cpu_connected.saturating_sub(cpu_start)))
    );
    println!(
        "  rollout: server CPU {:.0} ms per 1,000 agents; the simulator's agents (verify, apply, \
         keep last-known-good) {:.0} ms per 1,000, on the same cores",
        per_thousand(ms(cpu_applied.saturating_sub(cpu_connected))),
        per_thousand(ms(sim_cpu))
    );
    println!(
        "  server RSS idle {:.1} MiB, connected {:.1} MiB, after the rollout {:.1} MiB (peak {:.1} MiB)",
        mib(idle_rss),
        mib(rss_connected),
        mib(rss),
        mib(hwm)
    );
    let per_10k = |kib: u64| mib(kib) * 10_000.0 / n;
    println!(
        "fleet server RSS per 10,000 agents: {:.1} MiB (target < {}); peak {:.1} MiB; {:.1} MiB per 1,000",
        per_10k(rss),
        TARGET_RSS_MIB_PER_10K,
        per_10k(hwm),
        mib(rss) * 1000.0 / n
    );
    println!(
        "  simulator RSS {:.1} MiB: {:.1} KiB per simulated agent",
        mib(sim_rss),
        sim_rss as f64 / n
    );
    Ok(())
}
