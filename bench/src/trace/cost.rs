//! What a traced run costs besides throughput: the CPU of nginx and wrk per
//! request, and the run time of the socket sensor's kernel programs from
//! the kernel's BPF statistics.

use std::{collections::BTreeSet, time::Duration};

use anyhow::Context as _;

use super::clock_ticks;

const BPF_STATS_ENABLED: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Fields after the command name of a /proc/PID/stat line (the name may hold
/// spaces and parentheses, so split after the last `)`).
fn stat_fields(path: &str) -> anyhow::Result<Vec<u64>> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    // Field 3 (the state letter) becomes 0, like every other non-number.
    Ok(after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

fn ticks(fields: &[u64], index: usize) -> anyhow::Result<u64> {
    fields.get(index).copied().context("short stat line")
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks.saturating_mul(1000) / clock_ticks().max(1))
}

/// User + system CPU of this process's reaped children (cutime + cstime).
pub fn children_cpu() -> anyhow::Result<Duration> {
    let fields = stat_fields("/proc/self/stat")?;
    // stat fields 16 and 17, counted from 3 at index 0.
    Ok(ticks_to_duration(ticks(&fields, 13)? + ticks(&fields, 14)?))
}

/// User + system CPU of the nginx master `master` and its workers, each
/// from one read of its stat line.
pub fn nginx_cpu(master: u32) -> anyhow::Result<Duration> {
    // stat fields 14 and 15 (utime, stime), counted from 3 at index 0.
    let cpu = |fields: &[u64]| -> anyhow::Result<Duration> {
        Ok(ticks_to_duration(ticks(fields, 11)? + ticks(fields, 12)?))
    };
    let mut total = cpu(&stat_fields(&format!("/proc/{master}/stat"))?)?;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that exits meanwhile is skipped.
        let Ok(fields) = stat_fields(&format!("/proc/{pid}/stat")) else {
            continue;
        };
        if fields.get(1).copied() == Some(u64::from(master)) {
            total += cpu(&fields).unwrap_or_default();
        }
    }
    Ok(total)
}

/// `kernel.bpf_stats_enabled` on while this lives, its old value restored
/// on drop (the statistics cost every program a clock read per run).
pub struct BpfStatsSwitch {
    previous: String,
}

impl BpfStatsSwitch {
    pub fn enable() -> anyhow::Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS_ENABLED)
            .with_context(|| format!("reading {BPF_STATS_ENABLED}"))?;
        std::fs::write(BPF_STATS_ENABLED, "1")
            .with_context(|| format!("writing {BPF_STATS_ENABLED}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStatsSwitch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS_ENABLED, self.previous.trim()) {
            eprintln!("restoring {BPF_STATS_ENABLED}: {e}");
        }
    }
}

/// Summed run count and run time of a set of programs.
#[derive(Debug, Default)]
pub struct ProgramStats {
    pub names: Vec<String>,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// (run count, run time) by program name.
    pub by_program: std::collections::BTreeMap<String, (u64, u64)>,
}

/// Name prefixes of the socket sensor's programs (syscall tracepoints and
/// TLS uprobes).
const SOCKET_SENSOR_PREFIXES: [&str; 2] = ["net_", "ssl_"];

impl ProgramStats {
    /// The socket sensor's programs held by the agent `pid` (found through
    /// the prog ids of its descriptors, named by bpftool).
    pub fn socket_sensor_of(pid: u32) -> anyhow::Result<Self> {
        let ids = prog_ids_of(pid)?;
        let out = selfops_tests::command_output("bpftool", &["prog", "show", "-j"])
            .context("bpftool (installed by `cargo xtask setup`)")?;
        let programs: Vec<serde_json::Value> =
            serde_json::from_str(&out).context("bpftool prog show -j")?;
        let mut stats = Self::default();
        for program in programs {
            let id = program["id"].as_u64().unwrap_or(0);
            let name = program["name"].as_str().unwrap_or("");
            if !ids.contains(&id) || !SOCKET_SENSOR_PREFIXES.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let cnt = program["run_cnt"].as_u64().unwrap_or(0);
            let ns = program["run_time_ns"].as_u64().unwrap_or(0);
            stats.names.push(name.to_owned());
            stats.run_cnt += cnt;
            stats.run_time_ns += ns;
            let entry = stats.by_program.entry(name.to_owned()).or_default();
            entry.0 += cnt;
            entry.1 += ns;
        }
        stats.names.sort();
        anyhow::ensure!(
            !stats.names.is_empty(),
            "no socket-sensor program found among the agent's {} programs",
            ids.len()
        );
        Ok(stats)
    }

    /// What ran between `earlier` and this reading.
    pub fn since(self, earlier: &Self) -> Self {
        let by_program = self
            .by_program
            .into_iter()
            .map(|(name, (cnt, ns))| {
                let (cnt0, ns0) = earlier.by_program.get(&name).copied().unwrap_or_default();
                (name, (cnt.saturating_sub(cnt0), ns.saturating_sub(ns0)))
            })
            .collect();
        Self {
            names: self.names,
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            by_program,
        }
    }
}

/// Ids of the BPF programs the process `pid` holds descriptors of
/// (programs and the links to them both name a `prog_id`).
fn prog_ids_of(pid: u32) -> anyhow::Result<BTreeSet<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        ids.extend(text.lines().find_map(|l| {
            l.strip_prefix("prog_id:")
                .and_then(|v| v.trim().parse::<u64>().ok())
        }));
    }
    Ok(ids)
}
