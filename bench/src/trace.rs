//! `cargo xtask bench trace`: wrk against nginx with and without the agent.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use selfops_tests::{Agent, scratch_dir, selfops_bin, services::nginx};

mod cost;

use cost::{BpfStatsSwitch, ProgramStats, children_cpu, nginx_cpu};

/// User + system CPU time of process `pid` so far.
pub fn cpu_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 1000 / clock_ticks()))
}

pub fn clock_ticks() -> u64 {
    selfops_tests::command_output("getconf", &["CLK_TCK"])
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100)
}

/// Throughput (requests/s) and p99 latency (ms) of one wrk run, and the CPU
/// the load generator and the server spent on it.
struct Load {
    requests: f64,
    rps: f64,
    p99_ms: f64,
    /// wrk's and nginx's (master and workers) user + system CPU.
    cpu: Duration,
}

impl Load {
    fn cpu_ns_per_request(&self) -> f64 {
        self.cpu.as_nanos() as f64 / self.requests.max(1.0)
    }
}

/// wrk for `seconds` against `url`, served by the nginx master `nginx_pid`.
fn wrk(url: &str, seconds: u32, nginx_pid: u32) -> anyhow::Result<Load> {
    let nginx_before = nginx_cpu(nginx_pid)?;
    // wrk's own CPU: the waited-for children's times of this process grow
    // by exactly wrk's when it is reaped (nothing else is reaped meanwhile).
    let children_before = children_cpu()?;
    let out = selfops_tests::command_output(
        "wrk",
        &["-t2", "-c32", &format!("-d{seconds}s"), "--latency", url],
    )
    .context("wrk (installed by `cargo xtask setup`)")?;
    let wrk_cpu = children_cpu()?.saturating_sub(children_before);
    let nginx = nginx_cpu(nginx_pid)?.saturating_sub(nginx_before);
    let number = |prefix: &str| -> Option<&str> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = number("Requests/sec:")
        .context("wrk: no Requests/sec")?
        .parse()?;
    let requests: f64 = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .context("wrk: no request count")?;
    let p99 = number("99%").context("wrk: no 99% latency")?;
    Ok(Load {
        requests,
        rps,
        p99_ms: duration_ms(p99)?,
        cpu: wrk_cpu + nginx,
    })
}

fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let (value, scale) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        bail!("unknown duration {text:?}");
    };
    Ok(value.parse::<f64>()? * scale)
}

/// Which socket-sensor attachment a traced run uses: the agent's default,
/// or one chosen through `SELFOPS_SOCKET_HOOK` (the bench compares them).
fn hooks_to_compare() -> Vec<Option<String>> {
    match std::env::var("SELFOPS_BENCH_SOCKET_HOOKS") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|h| Some(h.trim().to_owned())).collect()
        }
        _ => vec![None],
    }
}

/// Which agent binaries to compare (`SELFOPS_BENCH_AGENTS`, comma
/// separated): two builds side by side in one run say more about a change
/// than two runs on a shared machine. By default the one under test.
fn agents_to_compare() -> Vec<PathBuf> {
    match std::env::var("SELFOPS_BENCH_AGENTS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|path| PathBuf::from(path.trim()))
            .collect(),
        _ => vec![selfops_bin()],
    }
}

/// How many rounds of baseline and traced runs (`SELFOPS_BENCH_ROUNDS`,
/// 1–10): the variants take turns within each round and each round starts
/// with the next one, so drift of the machine's load and any cost of
/// running second fall on all of them alike.
fn rounds() -> usize {
    std::env::var("SELFOPS_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 10)
}

pub fn run() -> anyhow::Result<()> {
    let dir = scratch_dir("bench-trace");
    let server = nginx(&dir);
    let url = format!("http://127.0.0.1:{}/index.html", server.port);
    let seconds = 10;
    let agents = agents_to_compare();
    let hooks = hooks_to_compare();
    let rounds = rounds();

    wrk(&url, 2, server.pid())?; // warm-up
    println!(
        "bench trace: wrk -t2 -c32 -d{seconds}s against nginx on loopback, same machine, same run"
    );
    let mut outcomes: Vec<(String, Shares)> = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            println!("round {round} of {rounds}");
        }
        let baseline = wrk(&url, seconds, server.pid())?;
        println!(
            "  baseline      {:>10.0} req/s   p99 {:>7.2} ms   nginx+wrk CPU {:.1} µs/request",
            baseline.rps,
            baseline.p99_ms,
            baseline.cpu_ns_per_request() / 1000.0
        );
        let variants: Vec<(&PathBuf, &Option<String>)> = agents
            .iter()
            .flat_map(|agent| hooks.iter().map(move |hook| (agent, hook)))
            .collect();
        // Each round starts with the next variant: the one run right after
        // the baseline is not always the same.
        let first = (round - 1) % variants.len();
        for &(agent, hook) in variants[first..].iter().chain(&variants[..first]) {
            if agents.len() > 1 {
                println!("  agent binary: {}", agent.display());
            }
            let shares = traced_run(&url, seconds, &server, &baseline, agent, hook.as_deref())?;
            let label = format!(
                "{} {}",
                agent.display(),
                hook.as_deref().unwrap_or("default hook")
            );
            outcomes.push((label, shares));
        }
    }
    if outcomes.len() > 1 {
        print_summary(&outcomes);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Why the export path drops spans (`selfops_export_dropped_total`).
const DROP_REASONS: [&str; 3] = ["queue_full", "export_failed", "encode_failed"];

/// One traced run's figures, each relative to its round's baseline.
#[derive(Clone, Copy)]
struct Shares {
    throughput: f64,
    agent: f64,
    kernel: f64,
}

/// Mean and range of each variant's ratios over the rounds.
fn print_summary(outcomes: &[(String, Shares)]) {
    println!(
        "summary (mean, min–max over the rounds): throughput ratio; agent share; kernel share"
    );
    let mut labels: Vec<&str> = Vec::new();
    for (label, _) in outcomes {
        if !labels.contains(&label.as_str()) {
            labels.push(label);
        }
    }
    for label in labels {
        let runs: Vec<Shares> = outcomes
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, s)| *s)
            .collect();
        let stat = |f: fn(&Shares) -> f64| {
            let values: Vec<f64> = runs.iter().map(f).collect();
            let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{mean:.3} ({min:.3}–{max:.3})")
        };
        println!(
            "  {label}: {}; {}; {}",
            stat(|s| s.throughput),
            stat(|s| s.agent),
            stat(|s| s.kernel)
        );
    }
}

/// One run with the agent tracing nginx, printed beside the baseline.
fn traced_run(
    url: &str,
    seconds: u32,
    server: &selfops_tests::services::Service,
    baseline: &Load,
    binary: &Path,
    hook: Option<&str>,
) -> anyhow::Result<Shares> {
    let agent = Agent::start_command("bench-trace-agent", "", |config| {
        let mut command = Command::new(binary);
        command.args(["run", "--config"]).arg(config);
        if let Some(hook) = hook {
            command.env("SELFOPS_SOCKET_HOOK", hook);
        }
        command
    });
    let lost = || agent.metric("selfops_sensor_events_lost_total", &["socket"]);
    // Spans made, and those made but not written (the export queue full,
    // or any other drop), in all and by reason. `+ 0.0`: a sum over no
    // line is -0.0, printed "-0".
    let span_counts = || -> Vec<f64> {
        let mut counts = vec![
            agent.metric("selfops_trace_spans_total", &[]) + 0.0,
            agent.metric("selfops_export_dropped_total", &["signal=\"traces\""]) + 0.0,
        ];
        counts.extend(DROP_REASONS.iter().map(|reason| {
            let label = format!("reason=\"{reason}\"");
            agent.metric(
                "selfops_export_dropped_total",
                &["signal=\"traces\"", &label],
            ) + 0.0
        }));
        counts
    };
    // A warm-up with the agent running: what it does once per executable
    // (the profiler's unwind tables for wrk, kept by build-id) is not a
    // cost per request, and is paid here rather than in the window
    // measured.
    wrk(url, 2, server.pid())?;
    let spans_before = span_counts();
    let stats_switch = BpfStatsSwitch::enable()?;
    let programs_before = ProgramStats::socket_sensor_of(agent.pid())?;
    let cpu_before = cpu_of(agent.pid())?;
    let lost_before = lost();
    let traced = wrk(url, seconds, server.pid())?;
    let cpu = cpu_of(agent.pid())?.saturating_sub(cpu_before);
    let programs = ProgramStats::socket_sensor_of(agent.pid())?.since(&programs_before);
    drop(stats_switch);
    let lost_saturated = lost() - lost_before;
    let made: Vec<f64> = span_counts()
        .iter()
        .zip(&spans_before)
        .map(|(now, before)| now - before + 0.0)
        .collect();
    let (spans, export_dropped) = (made[0], made[1]);
    let dropped_by_reason: Vec<(&str, f64)> = DROP_REASONS
        .into_iter()
        .zip(made[2..].iter().copied())
        .collect();
    let rss = agent.metric("selfops_agent_resident_memory_bytes", &[]);

    // A fixed 10,000 requests/s (hey: 20 workers × 500/s) for the loss check.
    let lost_before_rate = lost();
    let hey = selfops_tests::command_output("hey", &["-z", "10s", "-c", "20", "-q", "500", url])
        .context("hey (installed by `cargo xtask setup`)")?;
    let hey_rps = hey
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let lost_at_rate = lost() - lost_before_rate;
    let exit_took = stop_timed(agent);

    let requests = traced.requests.max(1.0);
    let baseline_ns = baseline.cpu_ns_per_request().max(1.0);
    let agent_ns = cpu.as_nanos() as f64 / requests;
    let kernel_ns = programs.run_time_ns as f64 / requests;
    println!(
        "  socket sensor hook: {}",
        hook.unwrap_or("the agent's default")
    );
    println!(
        "  with selfops  {:>10.0} req/s   p99 {:>7.2} ms   nginx+wrk CPU {:.1} µs/request",
        traced.rps,
        traced.p99_ms,
        traced.cpu_ns_per_request() / 1000.0
    );
    println!("  throughput ratio {:.3}", traced.rps / baseline.rps);
    println!("  p99 latency ratio {:.3}", traced.p99_ms / baseline.p99_ms);
    println!(
        "  agent CPU {:.0} ms for {:.0} requests: {:.2} ms per 1,000 requests",
        cpu.as_secs_f64() * 1000.0,
        traced.requests,
        agent_ns / 1000.0
    );
    println!(
        "  agent CPU per request as a share of baseline: {:.3}",
        agent_ns / baseline_ns
    );
    println!(
        "  kernel programs ({} of them): {:.0} runs, {:.2} runs per request, {:.0} ns per run, {:.2} µs per request",
        programs.names.len(),
        programs.run_cnt,
        programs.run_cnt as f64 / requests,
        programs.run_time_ns as f64 / (programs.run_cnt.max(1) as f64),
        kernel_ns / 1000.0
    );
    for (name, (cnt, ns)) in programs.by_program.iter().filter(|(_, (cnt, _))| *cnt > 0) {
        println!(
            "    {name:<20} {:>6.2} runs per request {:>6.0} ns per run",
            *cnt as f64 / requests,
            *ns as f64 / (*cnt).max(1) as f64
        );
    }
    println!(
        "  kernel programs' CPU per request as a share of baseline: {:.3}",
        kernel_ns / baseline_ns
    );
    println!(
        "  spans produced {spans:.0}; socket events lost {lost_saturated:.0}; agent RSS {:.1} MiB",
        rss / 1048576.0
    );
    println!(
        "  spans dropped on the export path at saturation: {export_dropped:.0} ({:.1} %)",
        100.0 * export_dropped / spans.max(1.0)
    );
    for (reason, n) in dropped_by_reason.iter().filter(|(_, n)| *n > 0.0) {
        println!("    reason {reason}: {n:.0}");
    }
    println!("  at {hey_rps:.0} req/s (hey -q): socket events lost {lost_at_rate:.0}");
    println!(
        "  SIGTERM to exit: {:.2} s (mostly detaching the programs)",
        exit_took.as_secs_f64()
    );
    Ok(Shares {
        throughput: traced.rps / baseline.rps,
        agent: agent_ns / baseline_ns,
        kernel: kernel_ns / baseline_ns,
    })
}

/// Stops the agent with SIGTERM and times its exit, which is dominated by
/// detaching the programs.
fn stop_timed(agent: Agent) -> Duration {
    let (status, took) = agent.stop(libc::SIGTERM);
    if !status.success() {
        eprintln!("  the agent exited with {status} on SIGTERM");
    }
    took
}
