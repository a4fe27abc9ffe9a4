//! The sinks the batcher feeds, built from `export` and rebuilt live when
//! a remote config changes it. The signal queue and the batcher stay; a
//! sink that stays keeps its own queue too. The OTLP sink takes a new
//! target in place (its queued and in-flight batches go to the new one); a
//! sink that is switched off has its queue closed, drains it and ends; a
//! sink switched on starts with an empty queue.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{sync::watch, task::JoinSet};

use super::{
    ExportError, ExportOptions,
    metrics::{self, ExportMetrics},
    otlp_grpc::GrpcSettings,
    otlp_http::HttpExporter,
    queue::{SinkQueue, sink_queue},
    retry::{Deadline, RetryPolicy},
    sink::{self, OtlpSettings, OtlpTarget},
};
use crate::{
    config::{ExportConfig, OtlpConfig, OtlpProtocol},
    pipeline::ExportersConfig,
};

/// The validated OTLP target `config` describes.
pub fn otlp_target(
    config: &OtlpConfig,
    options: &ExportOptions,
) -> Result<OtlpTarget, ExportError> {
    let settings = match config.protocol {
        OtlpProtocol::Grpc => OtlpSettings::Grpc(Box::new(GrpcSettings::new(config)?)),
        OtlpProtocol::HttpProtobuf => OtlpSettings::Http(Box::new(HttpExporter::new(config)?)),
    };
    Ok(OtlpTarget {
        settings,
        policy: RetryPolicy {
            retry_for: config.retry_for,
            timeout: config.timeout,
            initial_backoff: options.initial_backoff,
            max_backoff: options.max_backoff,
        },
    })
}

/// The running OTLP sink: its queue, what it was built from, and the
/// channel that hands it a new target.
struct OtlpSlot {
    queue: SinkQueue,
    config: OtlpConfig,
    target: watch::Sender<OtlpTarget>,
}

/// What a sink needs to be started.
struct Builder {
    data_dir: PathBuf,
    options: ExportOptions,
    metrics: ExportMetrics,
    deadline: Deadline,
}

pub struct SinkSet {
    file: Option<SinkQueue>,
    /// `export.otlp` (named `otlp`) and the named `exporters`.
    otlp: BTreeMap<&'static str, OtlpSlot>,
    /// The named OTLP exporters: fixed for the agent's life.
    named: ExportersConfig,
    /// Fed as given, never rebuilt (tests that read a sink's queue).
    fixed: Vec<SinkQueue>,
    builder: Option<Builder>,
    /// Checked at construction, started by `start` inside the runtime.
    initial: Option<ExportConfig>,
    tasks: JoinSet<()>,
    /// Set while an OTLP exporter runs.
    otlp_running: Arc<AtomicBool>,
}

impl SinkSet {
    /// The sinks `config` and `named` ask for, checked now and started by
    /// `start`.
    pub fn new(
        config: &ExportConfig,
        named: &ExportersConfig,
        data_dir: PathBuf,
        options: ExportOptions,
        metrics: ExportMetrics,
        deadline: Deadline,
    ) -> Result<Self, ExportError> {
        super::check(config)?;
        for otlp in named.values() {
            otlp_target(otlp, &options)?;
        }
        Ok(Self {
            file: None,
            otlp: BTreeMap::new(),
            named: named.clone(),
            fixed: Vec::new(),
            builder: Some(Builder {
                data_dir,
                options,
                metrics,
                deadline,
            }),
            initial: Some(config.clone()),
            tasks: JoinSet::new(),
            // True from the start when OTLP exporters will run, so nothing
            // handed over before `start` is built in vain or skipped.
            otlp_running: Arc::new(AtomicBool::new(config.otlp.is_some() || !named.is_empty())),
        })
    }

    /// Sinks whose input the caller reads itself.
    #[cfg(test)]
    pub fn fixed(queues: Vec<SinkQueue>) -> Self {
        Self {
            file: None,
            otlp: BTreeMap::new(),
            named: ExportersConfig::new(),
            fixed: queues,
            builder: None,
            initial: None,
            tasks: JoinSet::new(),
            otlp_running: Arc::default(),
        }
    }

    /// Starts the initial sinks (on the runtime: each is a task of its own,
    /// so a sink waiting on a collector never holds up the batcher).
    pub fn start(&mut self) {
        if let Some(config) = self.initial.take() {
            self.apply(&config);
        }
    }

    /// Every sink's queues, for the batcher.
    pub fn queues(&self) -> impl Iterator<Item = &SinkQueue> {
        self.file
            .iter()
            .chain(self.otlp.values().map(|slot| &slot.queue))
            .chain(&self.fixed)
    }

    /// True while an OTLP exporter runs, kept up to date by `apply`.
    pub fn otlp_running(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.otlp_running)
    }

    /// Rebuilds what `config` changes; see the module docs.
    pub fn apply(&mut self, config: &ExportConfig) {
        self.rebuild(config);
        self.otlp_running
            .store(!self.otlp.is_empty(), Ordering::Relaxed);
    }

    fn rebuild(&mut self, config: &ExportConfig) {
        let Some(builder) = &self.builder else {
            return;
        };
        match (config.file, self.file.is_some()) {
            (true, false) => {
                let (queue, input) = builder.queue(metrics::SINK_FILE);
                self.tasks.spawn(sink::run_file_sink(
                    builder.data_dir.clone(),
                    builder.options.rotate_bytes,
                    input,
                    builder.metrics.clone(),
                ));
                self.file = Some(queue);
                tracing::info!("file exporter started");
            }
            (false, true) => {
                self.file = None;
                tracing::info!("file exporter stopping once its queue is written");
            }
            _ => {}
        }
        let mut wanted: Vec<(&'static str, &OtlpConfig)> = Vec::new();
        if let Some(otlp) = &config.otlp {
            wanted.push((metrics::SINK_OTLP, otlp));
        }
        for (name, otlp) in &self.named {
            // Interned when the pipeline was checked; a name refused there
            // never gets here.
            if let Some(name) = metrics::sink_name(name) {
                wanted.push((name, otlp));
            }
        }
        self.otlp.retain(|name, _| {
            let keep = wanted.iter().any(|(w, _)| w == name);
            if !keep {
                tracing::info!(
                    exporter = name,
                    "OTLP exporter removed: what it holds gets one more try"
                );
            }
            keep
        });
        for (name, otlp) in wanted {
            let target = match otlp_target(otlp, &builder.options) {
                Ok(target) => target,
                Err(err) => {
                    // The policy checks the config first; this is the last
                    // guard.
                    tracing::error!(exporter = name, endpoint = %otlp.endpoint, %err, "OTLP exporter not changed");
                    continue;
                }
            };
            match self.otlp.get_mut(name) {
                Some(slot) => {
                    if *otlp != slot.config {
                        slot.target.send_replace(target);
                        slot.config = otlp.clone();
                        tracing::info!(exporter = name, endpoint = %otlp.endpoint, "OTLP exporter retargeted");
                    }
                }
                None => {
                    let (queue, input) = builder.queue(name);
                    let (sender, receiver) = watch::channel(target);
                    self.tasks.spawn(sink::run_otlp_sink(
                        name,
                        receiver,
                        builder.deadline.clone(),
                        input,
                        builder.metrics.clone(),
                    ));
                    self.otlp.insert(
                        name,
                        OtlpSlot {
                            queue,
                            config: otlp.clone(),
                            target: sender,
                        },
                    );
                    tracing::info!(exporter = name, endpoint = %otlp.endpoint, "OTLP exporter started");
                }
            }
        }
    }

    /// Resolves when a sink task ends (one switched off, done draining);
    /// never while none runs. A sink that panicked takes the pipeline with
    /// it, as when the sinks ran inside the pipeline's own task.
    pub async fn reap(&mut self) {
        match self.tasks.join_next().await {
            None => std::future::pending().await,
            Some(Ok(())) => {}
            Some(Err(err)) => match err.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(err) => tracing::warn!(%err, "an export sink was cancelled"),
            },
        }
    }

    /// Closes every sink's queue and waits for the sinks to empty them.
    pub async fn finish(mut self) {
        self.file = None;
        self.fixed.clear();
        // The OTLP targets stay until the sinks are done: this is shutdown
        // (its deadline rules), not the exporters being removed.
        let _targets: Vec<_> = std::mem::take(&mut self.otlp)
            .into_values()
            .map(|slot| slot.target)
            .collect();
        while !self.tasks.is_empty() {
            self.reap().await;
        }
    }
}

impl Builder {
    fn queue(&self, name: &'static str) -> (SinkQueue, super::queue::SinkInput) {
        sink_queue(
            name,
            self.options.sink_queue_batches,
            self.options.sink_audit_batches,
        )
    }
}
