//! `cargo xtask bench trace`: wrk against nginx with and without the agent.

use std::time::Duration;

use anyhow::{Context as _, bail};
use selfops_tests::{Agent, scratch_dir, services::nginx};

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

/// Throughput (requests/s) and p99 latency (ms) of one wrk run.
struct Load {
    requests: f64,
    rps: f64,
    p99_ms: f64,
}

fn wrk(url: &str, seconds: u32) -> anyhow::Result<Load> {
    let out = selfops_tests::command_output(
        "wrk",
        &["-t2", "-c32", &format!("-d{seconds}s"), "--latency", url],
    )
    .context("wrk (installed by `cargo xtask setup`)")?;
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

pub fn run() -> anyhow::Result<()> {
    let dir = scratch_dir("bench-trace");
    let server = nginx(&dir);
    let url = format!("http://127.0.0.1:{}/index.html", server.port);
    let seconds = 10;

    wrk(&url, 2)?; // warm-up
    let baseline = wrk(&url, seconds)?;

    let agent = Agent::start("bench-trace-agent", "");
    let lost = || agent.metric("selfops_sensor_events_lost_total", &["socket"]);
    let cpu_before = cpu_of(agent.pid())?;
    let lost_before = lost();
    let traced = wrk(&url, seconds)?;
    let cpu = cpu_of(agent.pid())?.saturating_sub(cpu_before);
    let lost_saturated = lost() - lost_before;
    let spans = agent.metric("selfops_trace_spans_total", &[]);
    let rss = agent.metric("selfops_agent_resident_memory_bytes", &[]);

    // A fixed 10,000 requests/s (hey: 20 workers × 500/s) for the loss check.
    let lost_before_rate = lost();
    let hey = selfops_tests::command_output("hey", &["-z", "10s", "-c", "20", "-q", "500", &url])
        .context("hey (installed by `cargo xtask setup`)")?;
    let hey_rps = hey
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let lost_at_rate = lost() - lost_before_rate;
    drop(agent);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "bench trace: wrk -t2 -c32 -d{seconds}s against nginx on loopback, same machine, same run"
    );
    println!(
        "  baseline      {:>10.0} req/s   p99 {:>7.2} ms",
        baseline.rps, baseline.p99_ms
    );
    println!(
        "  with selfops  {:>10.0} req/s   p99 {:>7.2} ms",
        traced.rps, traced.p99_ms
    );
    println!("  throughput ratio {:.3}", traced.rps / baseline.rps);
    println!("  p99 latency ratio {:.3}", traced.p99_ms / baseline.p99_ms);
    println!(
        "  agent CPU {:.0} ms for {:.0} requests: {:.2} ms per 1,000 requests",
        cpu.as_secs_f64() * 1000.0,
        traced.requests,
        cpu.as_secs_f64() * 1000.0 / (traced.requests / 1000.0)
    );
    println!(
        "  spans produced {spans:.0}; socket events lost {lost_saturated:.0}; agent RSS {:.1} MiB",
        rss / 1048576.0
    );
    println!("  at {hey_rps:.0} req/s (hey -q): socket events lost {lost_at_rate:.0}");
    Ok(())
}
