//! The sinks the batcher feeds, built from `export` and rebuilt live when
//! a remote config changes it. The signal queue and the batcher stay; a
//! sink that stays keeps its own queue too. The OTLP sink takes a new
//! target in place (its queued and in-flight batches go to the new one); a
//! sink that is switched off has its queue closed, drains it and ends; a
//! sink switched on starts with an empty queue.

use std::path::PathBuf;

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
use crate::config::{ExportConfig, OtlpConfig, OtlpProtocol};

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
    otlp: Option<OtlpSlot>,
    /// Fed as given, never rebuilt (tests that read a sink's queue).
    fixed: Vec<SinkQueue>,
    builder: Option<Builder>,
    /// Checked at construction, started by `start` inside the runtime.
    initial: Option<ExportConfig>,
    tasks: JoinSet<()>,
}

impl SinkSet {
    /// The sinks `config` asks for, checked now and started by `start`.
    pub fn new(
        config: &ExportConfig,
        data_dir: PathBuf,
        options: ExportOptions,
        metrics: ExportMetrics,
        deadline: Deadline,
    ) -> Result<Self, ExportError> {
        super::check(config)?;
        Ok(Self {
            file: None,
            otlp: None,
            fixed: Vec::new(),
            builder: Some(Builder {
                data_dir,
                options,
                metrics,
                deadline,
            }),
            initial: Some(config.clone()),
            tasks: JoinSet::new(),
        })
    }

    /// Sinks whose input the caller reads itself.
    #[cfg(test)]
    pub fn fixed(queues: Vec<SinkQueue>) -> Self {
        Self {
            file: None,
            otlp: None,
            fixed: queues,
            builder: None,
            initial: None,
            tasks: JoinSet::new(),
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
            .chain(self.otlp.as_ref().map(|slot| &slot.queue))
            .chain(&self.fixed)
    }

    /// Rebuilds what `config` changes; see the module docs.
    pub fn apply(&mut self, config: &ExportConfig) {
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
        let wanted = config
            .otlp
            .as_ref()
            .map(|otlp| (otlp, otlp_target(otlp, &builder.options)));
        match (wanted, &mut self.otlp) {
            (None, slot) => {
                if slot.take().is_some() {
                    tracing::info!("OTLP exporter removed: what it holds gets one more try");
                }
            }
            (Some((otlp, Err(err))), _) => {
                // The policy checks the config first; this is the last guard.
                tracing::error!(endpoint = %otlp.endpoint, %err, "OTLP exporter not changed");
            }
            (Some((otlp, Ok(target))), Some(slot)) => {
                if *otlp != slot.config {
                    slot.target.send_replace(target);
                    slot.config = otlp.clone();
                    tracing::info!(endpoint = %otlp.endpoint, "OTLP exporter retargeted");
                }
            }
            (Some((otlp, Ok(target))), None) => {
                let (queue, input) = builder.queue(metrics::SINK_OTLP);
                let (sender, receiver) = watch::channel(target);
                self.tasks.spawn(sink::run_otlp_sink(
                    receiver,
                    builder.deadline.clone(),
                    input,
                    builder.metrics.clone(),
                ));
                self.otlp = Some(OtlpSlot {
                    queue,
                    config: otlp.clone(),
                    target: sender,
                });
                tracing::info!(endpoint = %otlp.endpoint, "OTLP exporter started");
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
        // The OTLP target stays until the sink is done: this is shutdown
        // (its deadline rules), not the exporter being removed.
        let _target = self.otlp.take().map(|slot| slot.target);
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
