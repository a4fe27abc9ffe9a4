//! Starting and stopping the profiler inside `selfops run`.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context as _;
use aya::{
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported},
};
use prometheus_client::registry::Registry;

use crate::export::ExportHandle;

use super::{
    filter::ProcessFilter,
    live::{Sampling, Tuner},
    metrics::ProfileMetrics,
    outputs::ProfileOutputs,
    profiler::{Retune, Worker},
    sampler::{Sampler, SamplerError},
};
use crate::{
    config::Config,
    process::{ResourceBuilder, SharedTable},
};

/// Metrics and outputs registered, nothing in the kernel yet: the registry
/// is only writable before the agent shares it.
pub struct Prepared {
    config: crate::config::ProfileConfig,
    metrics: ProfileMetrics,
    outputs: ProfileOutputs,
}

/// Helpers the sampler's program calls that older kernels lack, with the
/// release that added each.
const NEWER_HELPERS: [(BpfHelper, &str, &str); 2] = [
    (
        BpfHelper::BPF_FUNC_get_current_task_btf,
        "bpf_get_current_task_btf",
        "5.11",
    ),
    (BpfHelper::BPF_FUNC_task_pt_regs, "bpf_task_pt_regs", "5.15"),
];

/// The first of [`NEWER_HELPERS`] the kernel says it lacks for perf_event
/// programs. A probe that fails otherwise (no permission, say) proves
/// nothing, and the sampler's own load then reports what is wrong.
fn missing_helper() -> Option<(&'static str, &'static str)> {
    NEWER_HELPERS.iter().find_map(|&(helper, name, since)| {
        matches!(
            is_helper_supported(ProgramType::PerfEvent, helper),
            Ok(false)
        )
        .then_some((name, since))
    })
}

pub struct Running {
    stop: Arc<AtomicBool>,
    retune: std::sync::mpsc::Sender<Retune>,
    /// Follows the live profile section; taken by the supervising task.
    pub tuner: Option<Tuner>,
    worker: std::thread::JoinHandle<ProfileOutputs>,
    outputs_task: tokio::task::AbortHandle,
    sampler: Sampler,
}

impl Prepared {
    /// `None` when profiling is off.
    /// Profiles leave through `export`, the agent's export pipeline.
    pub fn new(
        config: &Config,
        registry: &mut Registry,
        export: ExportHandle,
    ) -> anyhow::Result<Option<Self>> {
        if !config.profile.enabled {
            return Ok(None);
        }
        if let Some((helper, since)) = missing_helper() {
            // One line instead of a failed start: the verifier would refuse
            // the sampler's program on this kernel.
            tracing::warn!(
                helper,
                since = %format!("Linux {since}"),
                "CPU profiler off: the kernel lacks a BPF helper it needs"
            );
            return Ok(None);
        }
        let metrics = ProfileMetrics::register(registry);
        let outputs = ProfileOutputs::new(&config.data_dir, export).context("profile outputs")?;
        Ok(Some(Self {
            config: config.profile.clone(),
            metrics,
            outputs,
        }))
    }

    /// Attaches the sampler to every CPU and starts the worker thread.
    pub fn start(
        self,
        table: SharedTable,
        resources: Arc<ResourceBuilder>,
    ) -> anyhow::Result<Running> {
        let mut sampler = Sampler::start(self.config.frequency_hz, self.config.ring_bytes)
            .context("starting the CPU profiler (perf_event cpu-clock)")?;
        let filter = ProcessFilter::new(&self.config.include, &self.config.exclude)
            .context("profile.include/exclude")?;
        let ring = sampler.take_ring()?;
        let counters = sampler.take_counters()?;
        tracing::info!(
            cpus = sampler.cpus,
            frequency_hz = self.config.frequency_hz,
            interval = ?self.config.interval,
            "CPU profiler attached"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let tuner = Tuner::new(&self.config, self.metrics.frequency_hz.clone());
        let (retune, retunes) = std::sync::mpsc::channel();
        let outputs = self.outputs;
        let outputs_task = outputs.task_handle();
        let worker = std::thread::Builder::new()
            .name("selfops-profiler".into())
            .spawn({
                let stop = stop.clone();
                let config = self.config.clone();
                let metrics = self.metrics;
                // Built on its own thread: the symbolizer is not Send.
                move || {
                    let worker = Worker::new(
                        &config, ring, counters, filter, table, resources, metrics, retunes,
                    );
                    worker.run(&stop, &mut |profile| outputs.emit(profile));
                    outputs
                }
            })
            .context("starting the profiler thread")?;
        Ok(Running {
            stop,
            retune,
            tuner: Some(tuner),
            worker,
            outputs_task,
            sampler,
        })
    }
}

impl Running {
    /// What has ended before being asked to stop (a panic included): the
    /// worker thread or the task writing and exporting its profiles.
    pub fn ended(&self) -> Option<&'static str> {
        if self.worker.is_finished() {
            Some("the profiler thread ended")
        } else if self.outputs_task.is_finished() {
            Some("the profile output task ended")
        } else {
            None
        }
    }

    /// Detaches the sampler, emits the partial interval and flushes the
    /// outputs within `timeout`.
    pub async fn stop(self, timeout: Duration) {
        drop(self.sampler);
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let worker = self.worker;
        // The worker finishes within its shutdown budgets; a table build in
        // progress is not interrupted, so do not wait on it without bound.
        let joined = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::task::spawn_blocking(move || worker.join()),
        )
        .await;
        match joined {
            Err(_) => {
                tracing::warn!("the profiler thread did not stop in 3 s; its last interval is lost")
            }
            Ok(Ok(Ok(outputs))) => {
                if !outputs.shutdown(timeout).await {
                    tracing::warn!("profile outputs not drained at shutdown");
                }
            }
            _ => tracing::warn!("the profiler thread ended abnormally"),
        }
    }
}

impl Sampling for Running {
    fn set_rate(&mut self, frequency_hz: Option<u32>) -> Result<(), SamplerError> {
        self.sampler.set_rate(frequency_hz)
    }

    fn retune(&mut self, retune: Retune) {
        // Gone only with the worker, which the supervisor reports anyway.
        let _ = self.retune.send(retune);
    }
}
