//! `cargo xtask bench profile`: the agent's CPU profiler at 19 Hz against
//! `perf record -F 19 -g` on the same workload in the same run: both cores
//! busy with 200 distinct executables (copies of one program whose GNU
//! build-id notes differ), so the agent builds and holds 200 unwind tables.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use selfops_agent::profile::unwind::table::UnwindTable;
use selfops_tests::{Agent, scratch_dir};

use super::trace::cpu_of;

const EXECUTABLES: usize = 200;
/// Signal number of SIGINT on Linux.
const SIGINT: i32 = 2;
const PHASE: Duration = Duration::from_secs(25);
/// The build-id the workload is linked with; each copy gets its own.
const BUILD_ID: &str = "5e1f0b5e1f0b5e1f0b5e1f0b5e1f0b5e1f0b5e1f";

const WORKLOAD: &str = r#"
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
static volatile uint64_t sink;
__attribute__((noinline)) static uint64_t spin(uint64_t n) {
    uint64_t x = sink;
    for (uint64_t i = 0; i < n; i++) x = x * 6364136223846793005ull + 1;
    return x;
}
__attribute__((noinline)) static uint64_t work(uint64_t n) { return spin(n) * 3 + 1; }
int main(int argc, char **argv) {
    time_t end = time(0) + (argc > 1 ? atoi(argv[1]) : 10);
    while (time(0) < end) sink = work(1000000);
    return 0;
}
"#;

/// Compiles the workload once and writes `EXECUTABLES` copies, each with
/// its build-id note bytes rewritten.
fn executables(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let source = dir.join("spin.c");
    std::fs::write(&source, WORKLOAD)?;
    let base = dir.join("spin");
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer"])
        .arg(format!("-Wl,--build-id=0x{BUILD_ID}"))
        .arg("-o")
        .arg(&base)
        .arg(&source)
        .status()
        .context("gcc")?;
    if !status.success() {
        bail!("gcc failed");
    }
    let bytes = std::fs::read(&base)?;
    let id: Vec<u8> = (0..BUILD_ID.len() / 2)
        .map(|i| u8::from_str_radix(&BUILD_ID[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()?;
    let at = bytes
        .windows(id.len())
        .position(|w| w == id.as_slice())
        .context("build-id bytes not found in the workload")?;
    let mut paths = Vec::new();
    for i in 0..EXECUTABLES {
        let mut copy = bytes.clone();
        copy[at..at + 4].copy_from_slice(&(i as u32).to_le_bytes());
        let path = dir.join(format!("spin-{i:03}"));
        std::fs::write(&path, &copy)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        paths.push(path);
    }
    Ok(paths)
}

fn start_workload(paths: &[PathBuf], seconds: u64) -> anyhow::Result<Vec<Child>> {
    paths
        .iter()
        .map(|p| {
            Command::new(p)
                .arg(seconds.to_string())
                .spawn()
                .with_context(|| format!("running {}", p.display()))
        })
        .collect()
}

fn stop_workload(children: Vec<Child>) {
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Peak resident set (VmHWM) of `pid`, in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")?;
    Ok(kib * 1024.0)
}

/// Run count and total run time of the sampler program (kernel.bpf_stats).
fn sampler_stats() -> Option<(u64, u64)> {
    let out = selfops_tests::command_output("bpftool", &["-j", "prog", "show"])?;
    let progs: serde_json::Value = serde_json::from_str(&out).ok()?;
    progs.as_array()?.iter().find_map(|p| {
        let name = p["name"].as_str()?;
        name.starts_with("profile_cpu_clo").then(|| {
            (
                p["run_cnt"].as_u64().unwrap_or(0),
                p["run_time_ns"].as_u64().unwrap_or(0),
            )
        })
    })
}

/// Rows and bytes of the unwind tables of a few distribution binaries: what
/// an in-kernel unwinder would have to load into maps.
fn table_sizes() -> Vec<(String, usize, usize)> {
    [
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/bin/python3",
        "/usr/sbin/nginx",
    ]
    .into_iter()
    .filter_map(|path| {
        let real = std::fs::canonicalize(path).ok()?;
        let file = std::fs::File::open(&real).ok()?;
        let table = UnwindTable::build(&file).ok()?;
        Some((path.to_owned(), table.rows(), table.size_bytes()))
    })
    .collect()
}

pub fn run() -> anyhow::Result<()> {
    let dir = scratch_dir("bench-profile");
    let paths = executables(&dir)?;
    let seconds = PHASE.as_secs() + 5;
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");

    // Phase 1: the agent.
    let agent = Agent::start(
        "bench-profile-agent",
        "trace: { enabled: false }\nprofile: { enabled: true, frequency_hz: 19, interval: 10s }\n",
    );
    let workload = start_workload(&paths, seconds)?;
    // Let every process start before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let stats_before = sampler_stats();
    let cpu_before = cpu_of(agent.pid())?;
    let started = Instant::now();
    std::thread::sleep(PHASE);
    let agent_cpu = cpu_of(agent.pid())?.saturating_sub(cpu_before);
    let wall = started.elapsed();
    let stats_after = sampler_stats();
    let agent_rss = agent.metric("selfops_agent_resident_memory_bytes", &[]);
    let agent_peak = peak_rss(agent.pid())?;
    let m = |name: &str, filters: &[&str]| agent.metric(name, filters);
    let tables = m("selfops_profile_unwind_tables", &[]);
    let table_bytes = m("selfops_profile_unwind_table_bytes", &[]);
    let samples = m("selfops_profile_kernel_samples_total", &["recorded"]);
    // abs(): an empty float sum is -0.0.
    let ring_full = m("selfops_profile_kernel_samples_total", &["ring_full"]).abs();
    let unwinds = m("selfops_profile_unwinds_total", &[]);
    let complete = m("selfops_profile_unwinds_total", &["complete"]);
    let unwind_seconds = m("selfops_profile_unwind_seconds_total", &[]);
    let build_seconds = m("selfops_profile_unwind_table_build_seconds_total", &[]);
    stop_workload(workload);
    let (status, _) = agent.stop(SIGINT);
    if !status.success() {
        bail!("agent exited with {status}");
    }

    // Phase 2: perf record on the same workload.
    let workload = start_workload(&paths, seconds)?;
    std::thread::sleep(Duration::from_secs(2));
    let data = dir.join("perf.data");
    let perf = Command::new("perf")
        .args(["record", "-F", "19", "-g", "-a", "-q", "-o"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("perf (linux-perf)")?;
    let perf_pid = perf.id();
    std::thread::sleep(Duration::from_millis(200));
    let perf_cpu_before = cpu_of(perf_pid)?;
    let perf_started = Instant::now();
    std::thread::sleep(PHASE);
    let perf_cpu = cpu_of(perf_pid)?.saturating_sub(perf_cpu_before);
    let perf_wall = perf_started.elapsed();
    let perf_peak = peak_rss(perf_pid)?;
    // perf writes its file on SIGINT.
    let _ = Command::new("kill")
        .args(["-INT", &perf_pid.to_string()])
        .status();
    let mut perf = perf;
    let _ = perf.wait();
    stop_workload(workload);
    let _ = std::fs::remove_dir_all(&dir);

    let share = |cpu: Duration, wall: Duration| cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    let mib = |b: f64| b / 1048576.0;
    println!(
        "bench profile: {EXECUTABLES} distinct executables keeping both cores busy, 19 Hz, {} s per side, same run",
        PHASE.as_secs()
    );
    println!(
        "  selfops        CPU {:>5.2} % of one core   RSS {:>5.1} MiB (peak {:.1} MiB)",
        share(agent_cpu, wall),
        mib(agent_rss),
        mib(agent_peak)
    );
    println!(
        "  perf record -g CPU {:>5.2} % of one core   RSS peak {:.1} MiB",
        share(perf_cpu, perf_wall),
        mib(perf_peak)
    );
    println!(
        "  samples {samples:.0} (ring full {ring_full:.0}); unwinds {unwinds:.0}, complete {complete:.0}; \
         unwind tables {tables:.0} holding {:.2} MiB",
        mib(table_bytes)
    );
    if unwinds > 0.0 {
        println!(
            "  userspace unwind cost {:.1} us per sample, plus {:.0} ms once building the tables",
            (unwind_seconds - build_seconds).max(0.0) / unwinds * 1e6,
            build_seconds * 1e3
        );
    }
    if let (Some((n0, t0)), Some((n1, t1))) = (stats_before, stats_after)
        && n1 > n0
    {
        println!(
            "  kernel sampler cost {:.2} us per sample (bpf_stats, {} runs)",
            (t1 - t0) as f64 / (n1 - n0) as f64 / 1000.0,
            n1 - n0
        );
    }
    for (path, rows, bytes) in table_sizes() {
        println!(
            "  unwind table {path}: {rows} rows, {:.0} KiB",
            bytes as f64 / 1024.0
        );
    }
    Ok(())
}
