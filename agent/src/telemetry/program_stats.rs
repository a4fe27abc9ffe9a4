//! The kernel's own run counts and run time of the agent's eBPF programs
//! (`selfops_bpf_program_runs_total`, `selfops_bpf_program_run_seconds_total`):
//! what tracing costs the traced host, per program. The kernel counts
//! only while `kernel.bpf_stats_enabled` is 1 (it costs two clock reads per
//! run, so it is off by default); otherwise the series stay at zero.

use std::{collections::HashMap, sync::Mutex};

use aya::programs::loaded_programs;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::Metrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
}

/// The agent's programs by kernel id, and their series.
pub struct ProgramStats {
    programs: Mutex<HashMap<u32, ProgramLabel>>,
    runs: Family<ProgramLabel, Counter>,
    run_seconds: Family<ProgramLabel, Counter<f64>>,
}

impl ProgramStats {
    pub fn register(registry: &mut Registry) -> Self {
        let stats = Self {
            programs: Mutex::new(HashMap::new()),
            runs: Family::default(),
            run_seconds: Family::default(),
        };
        registry.register(
            "bpf_program_runs",
            "Runs of each of the agent's eBPF programs, counted by the kernel while kernel.bpf_stats_enabled is 1",
            stats.runs.clone(),
        );
        registry.register(
            "bpf_program_run_seconds",
            "Time spent in each of the agent's eBPF programs, counted by the kernel while kernel.bpf_stats_enabled is 1",
            stats.run_seconds.clone(),
        );
        stats
    }

    /// Follows these programs (name, kernel id) from now on.
    pub fn follow(&self, programs: impl IntoIterator<Item = (String, u32)>) {
        let mut known = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        for (program, id) in programs {
            known.insert(id, ProgramLabel { program });
        }
    }

    /// Raises the series to the kernel's figures. The kernel offers them
    /// per program id through its program list, so the list is walked once.
    pub fn refresh(&self) {
        let known = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if known.is_empty() {
            return;
        }
        for info in loaded_programs() {
            let info = match info {
                Ok(info) => info,
                Err(err) => {
                    tracing::debug!(%err, "reading a loaded program's statistics");
                    continue;
                }
            };
            let Some(label) = known.get(&info.id()) else {
                continue;
            };
            Metrics::raise_to(&self.runs.get_or_create(label), info.run_count());
            let seconds = info.run_time().as_secs_f64();
            let counted = self.run_seconds.get_or_create(label);
            let behind = seconds - counted.get();
            if behind > 0.0 {
                counted.inc_by(behind);
            }
        }
    }
}
