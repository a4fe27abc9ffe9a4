//! The health gate: a remote config is on trial from the moment it is
//! applied until it has run healthy for `control.health_window`. Healthy
//! means, since the trial began: every supervised task alive; no more ring
//! losses than `control.budget.ring_losses`; no more of the exported
//! signals lost to export failures than `budget.export_failure_ratio`, and
//! no sink retrying without delivering anything; the agent's own CPU
//! (averaged over the window so far) and resident memory within
//! `budget.cpu` and `budget.rss`.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::config::Budget;
use crate::{
    export::{
        ExportMetrics,
        metrics::{self as export, DropReason},
    },
    supervise::Health,
    telemetry::{
        KernelCounters,
        metrics::{process_cpu_time, resident_memory_bytes},
    },
};

/// What the gate looks at, shared with the rest of the agent.
#[derive(Clone)]
pub struct Watch {
    health: Arc<Health>,
    export: ExportMetrics,
    kernel: Option<KernelCounters>,
}

/// Which check failed: the `check` label of
/// `selfops_health_gate_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    Tasks,
    RingLosses,
    Export,
    Cpu,
    Rss,
}

impl Check {
    pub const ALL: [Check; 5] = [
        Check::Tasks,
        Check::RingLosses,
        Check::Export,
        Check::Cpu,
        Check::Rss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::Tasks => "tasks",
            Check::RingLosses => "ring_losses",
            Check::Export => "export",
            Check::Cpu => "cpu",
            Check::Rss => "rss",
        }
    }
}

/// A failed check and its one-line reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Unhealthy {
    pub check: Check,
    pub reason: String,
}

impl Unhealthy {
    fn new(check: Check, reason: String) -> Self {
        Self { check, reason }
    }
}

/// The counters when a trial began.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    sinks: [SinkCounts; 2],
    /// Signals lost to export failures, all sinks together.
    export_lost: u64,
    ring_losses: u64,
    cpu: Option<Duration>,
    at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct SinkCounts {
    failures: u64,
    retries: u64,
    delivered: u64,
}

const SINKS: [&str; 2] = [export::SINK_FILE, export::SINK_OTLP];
const SIGNALS: [&str; 3] = [export::TRACES, export::METRICS, export::LOGS];

/// CPU use is judged over at least this much of the window (or the whole
/// window when it is shorter), so start-up work after an apply does not
/// read as a runaway agent.
const CPU_SPAN: Duration = Duration::from_secs(5);
/// Below this no average means anything (a window of 0s).
const CPU_MIN_SPAN: Duration = Duration::from_millis(100);

const MIB: f64 = (1u64 << 20) as f64;

impl Watch {
    pub fn new(health: Arc<Health>, export: ExportMetrics) -> Self {
        Self {
            health,
            export,
            kernel: None,
        }
    }

    /// Judges ring losses too, from the kernel's counters.
    pub fn with_kernel(mut self, kernel: Option<KernelCounters>) -> Self {
        self.kernel = kernel;
        self
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn baseline(&self) -> Baseline {
        let sinks = SINKS.map(|sink| {
            let label = export::SinkLabels { sink };
            SinkCounts {
                failures: self.export.failures.get_or_create(&label).get(),
                retries: self.export.retries.get_or_create(&label).get(),
                delivered: SIGNALS
                    .iter()
                    .map(|&signal| self.export.exported_count(signal, sink))
                    .fold(0u64, u64::saturating_add),
            }
        });
        let export_lost = SIGNALS
            .iter()
            .flat_map(|&signal| {
                [
                    DropReason::ExportFailed,
                    DropReason::RetriesExhausted,
                    DropReason::Tls,
                ]
                .map(|reason| self.export.dropped_count(signal, reason))
            })
            .fold(0u64, u64::saturating_add);
        Baseline {
            sinks,
            export_lost,
            ring_losses: self.kernel.as_ref().map_or(0, KernelCounters::ring_losses),
            cpu: process_cpu_time(),
            at: Instant::now(),
        }
    }

    /// `Err` naming the first check that failed since `since`, and by how
    /// much. `window` is the trial's whole length (the CPU average needs
    /// enough of it).
    pub fn check(
        &self,
        since: &Baseline,
        budget: &Budget,
        window: Duration,
    ) -> Result<(), Unhealthy> {
        self.health
            .live()
            .map_err(|reason| Unhealthy::new(Check::Tasks, reason))?;
        let now = self.baseline();
        ring_losses(since, &now, budget)?;
        export_health(since, &now, budget)?;
        cpu(since, &now, budget, window)?;
        rss(resident_memory_bytes(), budget)
    }
}

fn ring_losses(since: &Baseline, now: &Baseline, budget: &Budget) -> Result<(), Unhealthy> {
    let lost = now.ring_losses.saturating_sub(since.ring_losses);
    if lost > budget.ring_losses {
        return Err(Unhealthy::new(
            Check::RingLosses,
            format!(
                "ring buffers full: {lost} events lost since the config was applied, budget {}",
                budget.ring_losses
            ),
        ));
    }
    Ok(())
}

fn export_health(since: &Baseline, now: &Baseline, budget: &Budget) -> Result<(), Unhealthy> {
    let lost = now.export_lost.saturating_sub(since.export_lost);
    let delivered = now
        .sinks
        .iter()
        .zip(&since.sinks)
        .map(|(now, then)| now.delivered.saturating_sub(then.delivered))
        .fold(0u64, u64::saturating_add);
    // Signals a sink gave up on count once per sink, as delivered ones do.
    let ratio = lost as f64 / lost.saturating_add(delivered).max(1) as f64;
    if lost > 0 && ratio > budget.export_failure_ratio {
        let sinks: Vec<String> = SINKS
            .iter()
            .zip(now.sinks.iter().zip(&since.sinks))
            .filter_map(|(sink, (now, then))| {
                let failures = now.failures.saturating_sub(then.failures);
                (failures > 0).then(|| format!("{sink} gave up {failures} batch(es)"))
            })
            .collect();
        return Err(Unhealthy::new(
            Check::Export,
            format!(
                "export failing: {lost} of {} signals not delivered since the config was applied ({:.1}%, budget {:.1}%){}{}",
                lost.saturating_add(delivered),
                ratio * 100.0,
                budget.export_failure_ratio * 100.0,
                if sinks.is_empty() { "" } else { "; " },
                sinks.join(", ")
            ),
        ));
    }
    for ((sink, then), now) in SINKS.iter().zip(&since.sinks).zip(&now.sinks) {
        let retries = now.retries.saturating_sub(then.retries);
        if retries > 0 && now.delivered == then.delivered {
            return Err(Unhealthy::new(
                Check::Export,
                format!(
                    "export to {sink} failing: {retries} retries and nothing delivered since the config was applied"
                ),
            ));
        }
    }
    Ok(())
}

fn cpu(
    since: &Baseline,
    now: &Baseline,
    budget: &Budget,
    window: Duration,
) -> Result<(), Unhealthy> {
    let (Some(then_cpu), Some(now_cpu)) = (since.cpu, now.cpu) else {
        return Ok(());
    };
    let elapsed = now.at.saturating_duration_since(since.at);
    if elapsed < CPU_SPAN.min(window) || elapsed < CPU_MIN_SPAN {
        return Ok(());
    }
    let cores = now_cpu.saturating_sub(then_cpu).as_secs_f64() / elapsed.as_secs_f64();
    if cores > budget.cpu {
        return Err(Unhealthy::new(
            Check::Cpu,
            format!(
                "CPU {cores:.2} cores over {:.1}s since the config was applied, budget {} cores",
                elapsed.as_secs_f64(),
                budget.cpu
            ),
        ));
    }
    Ok(())
}

fn rss(resident: Option<u64>, budget: &Budget) -> Result<(), Unhealthy> {
    match resident {
        Some(bytes) if bytes > budget.rss => Err(Unhealthy::new(
            Check::Rss,
            format!(
                "resident memory {:.0} MiB, budget {:.0} MiB",
                bytes as f64 / MIB,
                budget.rss as f64 / MIB
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
