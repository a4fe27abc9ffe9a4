//! Where each interval's profile goes: a gzip pprof file and an SVG flame
//! graph under `<data_dir>/profiles/`, and an OTLP profiles request into
//! the shared export pipeline, whose OTLP exporters send it.
//!
//! ```ignore
//! let outputs = ProfileOutputs::new(&config.data_dir, export_handle)?;  // inside the runtime
//! outputs.emit(interval);                          // never waits
//! outputs.shutdown(Duration::from_secs(2)).await;  // flush, bounded
//! ```
//!
//! `emit` puts the interval into a bounded queue; a full queue drops it.
//! A task encodes it on the blocking pool, writes both files (atomically)
//! and prunes old ones, then hands the OTLP request to the export
//! pipeline (`ExportHandle::send_profiles`), which routes it by
//! `pipelines.profiles` to the OTLP exporters, each with its queue and
//! retries. Everything is counted in the export metrics with
//! `signal="profiles"`: losses in `selfops_export_dropped_total{reason}`,
//! deliveries in `selfops_export_signals_total{sink}` (sinks `pprof`,
//! `svg`, and the OTLP exporters' names). The unit is one process's
//! profile of one interval.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    files::{self, PPROF_SUFFIX, PROFILES_DIR, Retention, SVG_SUFFIX},
    flamegraph::{self, FlameGraphError},
    model::IntervalProfile,
    otlp, pprof,
};
use crate::export::{
    DropReason, ExportHandle, ExportMetrics,
    metrics::PROFILES,
    retry::{Deadline, WarnLimiter, deadline_passed},
};

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
}

/// Internal knobs with sensible defaults (tests shorten them).
#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// Intervals waiting to be written; beyond it `emit` drops.
    pub queue_capacity: usize,
    pub retention: Retention,
    /// "Now" for retention by age: the wall clock, or a fixed time in
    /// tests whose intervals have fixed dates.
    pub clock: fn() -> SystemTime,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 4,
            retention: Retention::default(),
            clock: SystemTime::now,
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
    /// Creates `<data_dir>/profiles` and starts the task on the current
    /// runtime; what it exports goes through `export`, and is counted in
    /// `export`'s metrics.
    pub fn new(data_dir: &Path, export: ExportHandle) -> Result<Self, OutputError> {
        Self::with_options(data_dir, export, OutputOptions::default())
    }

    pub fn with_options(
        data_dir: &Path,
        export: ExportHandle,
        options: OutputOptions,
    ) -> Result<Self, OutputError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OutputError::NoRuntime)?;
        let dir = data_dir.join(PROFILES_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| OutputError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let metrics = export.metrics().clone();
        let (intervals, rx) = mpsc::channel(options.queue_capacity.max(1));
        let (deadline, deadline_rx) = watch::channel(None);
        let files = run_files(
            dir.clone(),
            options.retention,
            options.clock,
            rx,
            deadline_rx,
            export,
            metrics.clone(),
        );
        let task = runtime.spawn(files);
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
    otlp: Option<Result<opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest, otlp::OtlpEncodeError>>,
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
    export: ExportHandle,
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
        let job_dir = dir.clone();
        // No OTLP exporter: the request would go nowhere.
        let want_otlp = export.takes_profiles();
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
        match written.otlp {
            Some(Ok(request)) => export.send_profiles(request),
            Some(Err(err)) => {
                metrics.drop_signals(PROFILES, DropReason::EncodeFailed, n);
                if warn.should_warn("otlp encode") {
                    tracing::warn!(error = %err, "cannot encode OTLP profiles; interval not exported");
                }
            }
            // Nothing sampled.
            None => {}
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
