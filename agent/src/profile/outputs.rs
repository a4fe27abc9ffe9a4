//! Where each interval's profile goes: a gzip pprof file and an SVG flame
//! graph under `<data_dir>/profiles/`, and OTLP profiles to the collector.
//!
//! ```ignore
//! let outputs = ProfileOutputs::new(&config.data_dir, config.export.otlp.as_ref(),
//!                                   metrics.registry_mut())?;  // inside the runtime
//! outputs.emit(interval);                          // never waits
//! outputs.shutdown(Duration::from_secs(2)).await;  // flush, bounded
//! ```
//!
//! `emit` puts the interval into a bounded queue; a full queue drops it.
//! A task encodes it on the blocking pool, writes both files (atomically)
//! and prunes old ones, then hands the OTLP request to a second task with
//! its own small queue, so a slow collector never holds up the files. That
//! task retries retryable gRPC errors with backoff for at most
//! `export.otlp.retry_for`, as the trace export does. Everything lost is
//! counted in `selfops_profile_export_dropped_total{signal="profiles",
//! reason}`; deliveries in `selfops_profile_export_signals_total{sink}`
//! (sinks `pprof`, `svg`, `otlp`). The unit is one process's profile of
//! one interval.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use prometheus_client::registry::Registry;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    files::{self, PPROF_SUFFIX, PROFILES_DIR, Retention, SVG_SUFFIX},
    flamegraph::{self, FlameGraphError},
    model::IntervalProfile,
    otlp::{self, ProfilesExporter},
    pprof,
};
use crate::{
    config::{OtlpConfig, OtlpProtocol},
    export::{
        DropReason, ExportError, ExportMetrics,
        metrics::SINK_OTLP,
        otlp_grpc::GrpcSettings,
        retry::{Backoff, Deadline, RetryPolicy, WarnLimiter, deadline_passed, with_retries},
        sink::record_otlp,
    },
};

/// The `signal` label of the profile outputs' metrics.
pub const PROFILES: &str = "profiles";
pub const SINK_PPROF: &str = "pprof";
pub const SINK_SVG: &str = "svg";

const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why the outputs could not start. Messages name the config key.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("profiles directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile outputs must be started inside the tokio runtime")]
    NoRuntime,
    #[error(transparent)]
    Otlp(#[from] ExportError),
}

/// Internal knobs with sensible defaults (tests shorten them).
#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// Intervals waiting to be written; beyond it `emit` drops.
    pub queue_capacity: usize,
    /// Encoded requests waiting for the collector; beyond it the newest is
    /// dropped for OTLP (its files are still written).
    pub otlp_queue_capacity: usize,
    pub retention: Retention,
    /// "Now" for retention by age: the wall clock, or a fixed time in
    /// tests whose intervals have fixed dates.
    pub clock: fn() -> SystemTime,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 4,
            otlp_queue_capacity: 2,
            retention: Retention::default(),
            clock: SystemTime::now,
            initial_backoff: Backoff::INITIAL,
            max_backoff: Backoff::MAX,
        }
    }
}

/// Handle on the output tasks.
pub struct ProfileOutputs {
    intervals: mpsc::Sender<IntervalProfile>,
    metrics: ExportMetrics,
    deadline: watch::Sender<Option<Instant>>,
    task: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

impl ProfileOutputs {
    /// Creates `<data_dir>/profiles`, registers the metrics (prefix
    /// `profile_export_`) and starts the tasks on the current runtime.
    pub fn new(
        data_dir: &Path,
        otlp: Option<&OtlpConfig>,
        registry: &mut Registry,
    ) -> Result<Self, OutputError> {
        Self::with_options(data_dir, otlp, registry, OutputOptions::default())
    }

    pub fn with_options(
        data_dir: &Path,
        otlp: Option<&OtlpConfig>,
        registry: &mut Registry,
        options: OutputOptions,
    ) -> Result<Self, OutputError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OutputError::NoRuntime)?;
        let otlp = match otlp {
            Some(config) if config.protocol == OtlpProtocol::Grpc => {
                let policy = RetryPolicy {
                    retry_for: config.retry_for,
                    timeout: config.timeout,
                    initial_backoff: options.initial_backoff,
                    max_backoff: options.max_backoff,
                };
                Some((GrpcSettings::new(config)?, policy))
            }
            Some(config) => {
                tracing::warn!(
                    endpoint = %config.endpoint,
                    "export.otlp.protocol is http_protobuf: CPU profiles are sent over gRPC \
                     only, so they are written to files but not exported"
                );
                None
            }
            None => None,
        };
        let dir = data_dir.join(PROFILES_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| OutputError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let metrics = ExportMetrics::register(registry.sub_registry_with_prefix("profile"));
        let (intervals, rx) = mpsc::channel(options.queue_capacity.max(1));
        let (deadline, deadline_rx) = watch::channel(None);
        let otlp = otlp.map(|(settings, policy)| {
            let (tx, requests) = mpsc::channel(options.otlp_queue_capacity.max(1));
            let task = run_otlp(
                settings,
                policy,
                deadline_rx.clone(),
                requests,
                metrics.clone(),
            );
            (tx, task)
        });
        let (otlp_tx, otlp_task) = otlp.unzip();
        let files = run_files(
            dir.clone(),
            options.retention,
            options.clock,
            rx,
            deadline_rx,
            otlp_tx,
            metrics.clone(),
        );
        let task = runtime.spawn(async move {
            let otlp = async move {
                if let Some(task) = otlp_task {
                    task.await;
                }
            };
            tokio::join!(files, otlp);
        });
        Ok(Self {
            intervals,
            metrics,
            deadline,
            task,
            dir,
        })
    }

    /// Queues one interval; drops (and counts) it when the queue is full.
    pub fn emit(&self, profile: IntervalProfile) {
        let n = process_count(&profile);
        match self.intervals.try_send(profile) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics
                    .drop_signals(PROFILES, DropReason::QueueFull, n);
                tracing::debug!("profile output queue full; interval dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.drop_signals(PROFILES, DropReason::Shutdown, n);
            }
        }
        self.set_queue_length();
    }

    /// Watches the output task without owning it: the profiler's supervisor
    /// sees it end (a panic included) while the worker thread owns `self`.
    pub fn task_handle(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }

    /// `<data_dir>/profiles`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn metrics(&self) -> &ExportMetrics {
        &self.metrics
    }

    /// Stops accepting intervals, writes and sends the queued ones, and
    /// gives up (counting what is left as `shutdown` drops) after
    /// `timeout`. True when everything was handled in time.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        let at = Instant::now() + timeout;
        let _ = self.deadline.send(Some(at));
        drop(self.intervals);
        // The tasks stop by themselves at the deadline; the margin covers an
        // encode already running on the blocking pool.
        let mut task = self.task;
        match tokio::time::timeout_at(at + Duration::from_secs(1), &mut task).await {
            Ok(_) => Instant::now() <= at,
            Err(_) => {
                task.abort();
                false
            }
        }
    }

    fn set_queue_length(&self) {
        let queued = self.intervals.max_capacity() - self.intervals.capacity();
        self.metrics
            .queue_length
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
    }
}

/// The unit of the metrics: distinct processes in the interval.
fn process_count(profile: &IntervalProfile) -> u64 {
    let pids: HashSet<u32> = profile.stacks.iter().map(|s| s.labels.pid).collect();
    pids.len() as u64
}

/// What writing one interval came to.
struct Written {
    processes: u64,
    pprof: std::io::Result<PathBuf>,
    svg: Result<PathBuf, FlameGraphError>,
    otlp: Option<Result<ExportProfilesServiceRequest, otlp::OtlpEncodeError>>,
    pruned: std::io::Result<usize>,
}

/// Encodes, writes and prunes on the calling (blocking) thread.
fn write_interval(
    dir: &Path,
    profile: &IntervalProfile,
    retention: Retention,
    clock: fn() -> SystemTime,
    want_otlp: bool,
) -> Written {
    let stem = files::free_stem(dir, profile.start);
    let pprof = pprof::encode_gzip(profile)
        .and_then(|bytes| files::write_atomic(dir, &format!("{stem}{PPROF_SUFFIX}"), &bytes));
    let title = format!(
        "CPU {} ({} s)",
        files::timestamp(profile.start),
        profile.duration.as_secs()
    );
    let svg = flamegraph::render_svg(profile, &title).and_then(|bytes| {
        files::write_atomic(dir, &format!("{stem}{SVG_SUFFIX}"), &bytes).map_err(Into::into)
    });
    let otlp = (want_otlp && !profile.stacks.is_empty()).then(|| otlp::build_request(profile));
    let pruned = files::prune(dir, retention, clock());
    Written {
        processes: process_count(profile),
        pprof,
        svg,
        otlp,
        pruned,
    }
}

async fn run_files(
    dir: PathBuf,
    retention: Retention,
    clock: fn() -> SystemTime,
    mut intervals: mpsc::Receiver<IntervalProfile>,
    mut deadline: Deadline,
    otlp: Option<mpsc::Sender<Arc<ExportProfilesServiceRequest>>>,
    metrics: ExportMetrics,
) {
    let mut warn = WarnLimiter::new(WARN_EVERY);
    loop {
        let profile = tokio::select! {
            // A passed deadline wins over queued intervals.
            biased;
            () = deadline_passed(&mut deadline) => {
                intervals.close();
                while let Ok(profile) = intervals.try_recv() {
                    metrics.drop_signals(PROFILES, DropReason::Shutdown, process_count(&profile));
                }
                break;
            }
            profile = intervals.recv() => match profile {
                Some(profile) => profile,
                None => break,
            },
        };
        metrics.queue_length.set(intervals.len() as i64);
        let job_dir = dir.clone();
        let want_otlp = otlp.is_some();
        let n = process_count(&profile);
        let written = tokio::task::spawn_blocking(move || {
            write_interval(&job_dir, &profile, retention, clock, want_otlp)
        })
        .await;
        let written = match written {
            Ok(written) => written,
            Err(err) => {
                tracing::warn!(error = %err, "profile output task failed; interval dropped");
                metrics.failure(SINK_PPROF);
                metrics.drop_signals(PROFILES, DropReason::ExportFailed, n);
                continue;
            }
        };
        record_files(&metrics, &mut warn, &dir, &written);
        let queued = match (written.otlp, &otlp) {
            (Some(Ok(request)), Some(tx)) => tx.try_send(Arc::new(request)).is_ok(),
            (Some(Err(err)), _) => {
                metrics.drop_signals(PROFILES, DropReason::EncodeFailed, n);
                if warn.should_warn("otlp encode") {
                    tracing::warn!(error = %err, "cannot encode OTLP profiles; interval not exported");
                }
                true
            }
            // Not exported, or nothing to export.
            _ => true,
        };
        if !queued {
            metrics.drop_signals(PROFILES, DropReason::QueueFull, n);
            if warn.should_warn("otlp queue") {
                tracing::warn!("OTLP profile export is behind; interval not exported");
            }
        }
    }
}

fn record_files(metrics: &ExportMetrics, warn: &mut WarnLimiter, dir: &Path, written: &Written) {
    let n = written.processes;
    match &written.pprof {
        Ok(path) => {
            metrics.exported(PROFILES, SINK_PPROF, n);
            tracing::debug!(path = %path.display(), "pprof profile written");
        }
        Err(err) => file_failed(metrics, warn, dir, SINK_PPROF, n, err),
    }
    match &written.svg {
        Ok(_) => metrics.exported(PROFILES, SINK_SVG, n),
        // Nothing to draw is not a loss: the pprof file says the same.
        Err(FlameGraphError::Empty) => {}
        Err(FlameGraphError::Render(err)) => file_failed(metrics, warn, dir, SINK_SVG, n, err),
    }
    if let Err(err) = &written.pruned
        && warn.should_warn("prune")
    {
        tracing::warn!(dir = %dir.display(), error = %err, "cannot prune old profile files");
    }
}

fn file_failed(
    metrics: &ExportMetrics,
    warn: &mut WarnLimiter,
    dir: &Path,
    sink: &'static str,
    n: u64,
    err: &std::io::Error,
) {
    metrics.failure(sink);
    metrics.drop_signals(PROFILES, DropReason::ExportFailed, n);
    if warn.should_warn(sink) {
        tracing::warn!(
            sink, dir = %dir.display(), error = %err,
            "cannot write profile file; interval dropped for this output \
             (further errors logged at debug for a minute)"
        );
    } else {
        tracing::debug!(sink, error = %err, "cannot write profile file");
    }
}

async fn run_otlp(
    settings: GrpcSettings,
    policy: RetryPolicy,
    deadline: Deadline,
    mut requests: mpsc::Receiver<Arc<ExportProfilesServiceRequest>>,
    metrics: ExportMetrics,
) {
    let exporter = ProfilesExporter::connect(settings);
    let mut warn = WarnLimiter::new(WARN_EVERY);
    while let Some(request) = requests.recv().await {
        let n = otlp::profile_count(&request);
        let delivery = with_retries(&policy, &deadline, &metrics, SINK_OTLP, |timeout| {
            exporter.export(&request, timeout)
        })
        .await;
        record_otlp(&metrics, SINK_OTLP, &mut warn, PROFILES, n, delivery);
    }
}
