//! The kernel matrix's hook comparison: in each VM the agent runs once per
//! socket-sensor hook (`SELFOPS_SOCKET_HOOK`), the same requests go through
//! each, and the kernel's own statistics of the agent's programs (at
//! /metrics, with `kernel.bpf_stats_enabled` on) say what each hook cost per
//! request. Under emulation the figures are indicative only: their ratios
//! matter, not their values.

use std::fmt::Write as _;

/// One hook's run, from the VM's `KMATRIX tier HOOK START END REQUESTS`.
#[derive(Debug, Clone, PartialEq)]
pub struct TierRun {
    pub hook: String,
    /// /proc/uptime when SIGTERM was sent and when the agent had exited.
    pub stop_start: f64,
    pub stop_end: f64,
    pub requests: u64,
}

impl TierRun {
    /// The words after `tier`.
    pub fn parse(hook: &str, rest: &str) -> Option<Self> {
        let mut words = rest.split_whitespace();
        let stop_start = words.next()?.parse().ok()?;
        let stop_end = words.next()?.parse().ok()?;
        let requests = words.next()?.parse().ok()?;
        Some(Self {
            hook: hook.to_owned(),
            stop_start,
            stop_end,
            requests,
        })
    }
}

/// The socket sensor's programs' totals in one /metrics text.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SocketProgramCost {
    pub runs: f64,
    pub seconds: f64,
}

/// Sums the `net_*` programs' runs and run time.
pub fn socket_program_cost(metrics: &str) -> SocketProgramCost {
    let mut cost = SocketProgramCost::default();
    for line in metrics.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if !series.contains("program=\"net_") {
            continue;
        }
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series.starts_with("selfops_bpf_program_runs_total{") {
            cost.runs += value;
        } else if series.starts_with("selfops_bpf_program_run_seconds_total{") {
            cost.seconds += value;
        }
    }
    cost
}

/// What the report prints for one hook.
pub struct TierFigures {
    pub hook: String,
    pub runs_per_request: f64,
    pub ns_per_run: f64,
    pub us_per_request: f64,
    pub stop_seconds: f64,
}

pub fn figures(run: &TierRun, cost: SocketProgramCost) -> TierFigures {
    let requests = run.requests.max(1) as f64;
    TierFigures {
        hook: run.hook.clone(),
        runs_per_request: cost.runs / requests,
        ns_per_run: if cost.runs > 0.0 {
            cost.seconds * 1e9 / cost.runs
        } else {
            0.0
        },
        us_per_request: cost.seconds * 1e6 / requests,
        stop_seconds: run.stop_end - run.stop_start,
    }
}

/// A table of the hooks side by side.
pub fn table(rows: &[TierFigures]) -> String {
    let mut out =
        String::from("    hook          runs/request   ns/run   µs/request   SIGTERM→exit\n");
    for row in rows {
        let _ = writeln!(
            out,
            "    {:<13} {:>12.1} {:>8.0} {:>12.1} {:>12.2} s",
            row.hook, row.runs_per_request, row.ns_per_run, row.us_per_request, row.stop_seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_socket_programs_only() {
        let metrics = "\
# TYPE selfops_bpf_program_runs counter
selfops_bpf_program_runs_total{program=\"net_fexit_read\"} 120
selfops_bpf_program_runs_total{program=\"net_fexit_write\"} 80
selfops_bpf_program_runs_total{program=\"process_exec\"} 7
selfops_bpf_program_run_seconds_total{program=\"net_fexit_read\"} 0.000036
selfops_bpf_program_run_seconds_total{program=\"net_fexit_write\"} 0.000024
selfops_bpf_program_run_seconds_total{program=\"process_exec\"} 0.5
";
        let cost = socket_program_cost(metrics);
        assert_eq!(cost.runs, 200.0);
        assert!((cost.seconds - 0.00006).abs() < 1e-12);
        let run = TierRun::parse("fentry", "12.50 13.25 40").unwrap();
        let row = figures(&run, cost);
        assert_eq!(row.runs_per_request, 5.0);
        assert!((row.ns_per_run - 300.0).abs() < 1e-6);
        assert!((row.us_per_request - 1.5).abs() < 1e-9);
        assert!((row.stop_seconds - 0.75).abs() < 1e-9);
        assert!(table(&[row]).contains("fentry"));
    }

    #[test]
    fn refuses_a_short_line() {
        assert_eq!(TierRun::parse("kprobe", "1.0 2.0"), None);
        assert_eq!(TierRun::parse("kprobe", "x 2.0 40"), None);
    }
}
