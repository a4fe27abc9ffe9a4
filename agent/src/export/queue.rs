//! The bounded signal queue, its handle, and the batcher that turns queued
//! signals into converted batches for the sinks.
//!
//! Audit records (the actuation loop's decisions) have a lane of their own
//! from end to end: their own bounded queue in, their own batches, and
//! their own small queue at each sink, read before the others. A span burst
//! can fill the signal queue or a sink's batch queue, never theirs; their
//! own overflow is counted as `reason="audit_queue_full"`.
//!
//! Profiles (one request per profiler interval, already encoded) have a
//! small queue of their own into the batcher, which runs them through the
//! profiles pipeline to the OTLP exporters like any other batch.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{
        mpsc::{self, error::TrySendError},
        watch,
    },
    time::Instant,
};

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;

use super::{
    convert::{OtlpBatch, convert},
    metrics::{DropReason, ExportMetrics, LOGS, METRICS, PROFILES, TRACES},
    retry::Deadline,
    sinks::SinkSet,
};
use crate::{
    config::ExportConfig,
    control::next_update,
    pipeline::{ExporterSet, Pipelines},
    signal::Signal,
};

/// After the shutdown deadline the sinks only count what they drop; this is
/// the time allowed for that.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

/// How long the batcher lets a burst of signals accumulate after the first
/// one wakes it.
const COALESCE: Duration = Duration::from_millis(2);

/// Stands in for durations too large to add to an `Instant` (about 30
/// years: tokio's own far future).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Feeds the export pipeline. Cheap to clone; every clone feeds the same
/// queue.
#[derive(Debug, Clone)]
pub struct ExportHandle {
    signals: mpsc::Sender<Signal>,
    audit: mpsc::Sender<Signal>,
    profiles: mpsc::Sender<OtlpBatch>,
    /// Whether an OTLP exporter runs (kept by the sinks, which change live).
    pub(super) otlp_exporters: Arc<AtomicBool>,
    /// Set once, by `shutdown`: when the pipeline must be done.
    deadline: Arc<watch::Sender<Option<Instant>>>,
    done: watch::Receiver<bool>,
    metrics: ExportMetrics,
}

fn signal_name(signal: &Signal) -> &'static str {
    match signal {
        Signal::Span(_) => TRACES,
        Signal::Histogram(_) => METRICS,
        Signal::Log(_) => LOGS,
    }
}

impl ExportHandle {
    /// Queues a signal without waiting. When the queue is full (the sinks
    /// are behind) or shutdown has begun, the signal is dropped and counted.
    pub fn send(&self, signal: Signal) {
        match self.signals.try_send(signal) {
            Ok(()) => {}
            Err(TrySendError::Full(signal)) => {
                self.metrics
                    .drop_signals(signal_name(&signal), DropReason::QueueFull, 1);
            }
            Err(TrySendError::Closed(signal)) => {
                self.metrics
                    .drop_signals(signal_name(&signal), DropReason::Shutdown, 1);
            }
        }
        self.metrics.queue_length.set(self.queue_len() as i64);
    }

    /// Queues an audit record on the audit lane, without waiting. Dropped
    /// and counted (`audit_queue_full`) only when that lane is full.
    pub fn send_audit(&self, signal: Signal) {
        match self.audit.try_send(signal) {
            Ok(()) => {}
            Err(TrySendError::Full(signal)) => {
                self.metrics
                    .drop_signals(signal_name(&signal), DropReason::AuditQueueFull, 1);
            }
            Err(TrySendError::Closed(signal)) => {
                self.metrics
                    .drop_signals(signal_name(&signal), DropReason::Shutdown, 1);
            }
        }
    }

    /// Whether profiles handed over now would be sent anywhere: the profiler
    /// builds an OTLP request only then.
    pub fn takes_profiles(&self) -> bool {
        self.otlp_exporters.load(Ordering::Relaxed)
    }

    /// Queues one interval's profiles without waiting; dropped and counted
    /// (`signal="profiles"`) when intervals arrive faster than the
    /// exporters take them.
    pub fn send_profiles(&self, request: ExportProfilesServiceRequest) {
        let batch = OtlpBatch::profiles(request);
        let n = batch.profile_count;
        match self.profiles.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics
                    .drop_signals(PROFILES, DropReason::QueueFull, n);
            }
            Err(TrySendError::Closed(_)) => {
                self.metrics.drop_signals(PROFILES, DropReason::Shutdown, n);
            }
        }
    }

    /// Signals waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.signals.max_capacity() - self.signals.capacity()
    }

    pub fn metrics(&self) -> &ExportMetrics {
        &self.metrics
    }

    /// Flushes and stops the pipeline: queued signals are batched and
    /// exported, retries stop at `within`, and what is still unsent then is
    /// dropped and counted (`reason="shutdown"`). Signals sent after this
    /// call are dropped and counted too. Returns true when the pipeline
    /// finished in time; waits at most `within` plus a short grace.
    pub async fn shutdown(&self, within: Duration) -> bool {
        // A caller's huge `within` means "no deadline" in practice.
        let at = Instant::now()
            .checked_add(within)
            .unwrap_or_else(|| Instant::now() + FAR_FUTURE);
        // The first caller's deadline stands.
        self.deadline.send_if_modified(|deadline| {
            if deadline.is_none() {
                *deadline = Some(at);
                true
            } else {
                false
            }
        });
        let at = (*self.deadline.borrow()).unwrap_or(at);
        let mut done = self.done.clone();
        matches!(
            tokio::time::timeout_at(
                at.checked_add(SHUTDOWN_GRACE).unwrap_or(at),
                done.wait_for(|done| *done)
            )
            .await,
            Ok(Ok(_))
        )
    }
}

/// The handle's channels and the batcher's ends of them.
pub struct Channels {
    pub handle: ExportHandle,
    pub signals: mpsc::Receiver<Signal>,
    pub audit: mpsc::Receiver<Signal>,
    pub profiles: mpsc::Receiver<OtlpBatch>,
    pub deadline: Deadline,
    pub done: watch::Sender<bool>,
}

/// Queue sizes: signals, audit records, profile requests.
pub fn channels(capacity: [usize; 3], metrics: ExportMetrics) -> Channels {
    let [capacity, audit_capacity, profiles_capacity] = capacity;
    let (signals_tx, signals) = mpsc::channel(capacity.max(1));
    let (audit_tx, audit) = mpsc::channel(audit_capacity.max(1));
    let (profiles_tx, profiles) = mpsc::channel(profiles_capacity.max(1));
    let (deadline_tx, deadline) = watch::channel(None);
    let (done, done_rx) = watch::channel(false);
    Channels {
        handle: ExportHandle {
            signals: signals_tx,
            audit: audit_tx,
            profiles: profiles_tx,
            otlp_exporters: Arc::default(),
            deadline: Arc::new(deadline_tx),
            done: done_rx,
            metrics,
        },
        signals,
        audit,
        profiles,
        deadline,
        done,
    }
}

/// A sink's queues: batches of signals, and batches of audit records.
pub struct SinkQueue {
    pub name: &'static str,
    pub batches: mpsc::Sender<Arc<OtlpBatch>>,
    pub audit: mpsc::Sender<Arc<OtlpBatch>>,
}

/// A sink's end of its queues; audit batches are taken first.
pub struct SinkInput {
    pub batches: mpsc::Receiver<Arc<OtlpBatch>>,
    pub audit: mpsc::Receiver<Arc<OtlpBatch>>,
}

impl SinkInput {
    /// A batch already waiting, audit first, without waiting.
    pub fn try_recv(&mut self) -> Option<Arc<OtlpBatch>> {
        self.audit
            .try_recv()
            .or_else(|_| self.batches.try_recv())
            .ok()
    }

    /// The next batch, audit first; `None` once both queues are closed and
    /// empty.
    pub async fn recv(&mut self) -> Option<Arc<OtlpBatch>> {
        tokio::select! {
            biased;
            Some(batch) = self.audit.recv() => Some(batch),
            Some(batch) = self.batches.recv() => Some(batch),
            else => None,
        }
    }
}

/// A sink's pair of queues and its input, of `batches` and `audit` batches.
pub fn sink_queue(name: &'static str, batches: usize, audit: usize) -> (SinkQueue, SinkInput) {
    let (batches_tx, batches_rx) = mpsc::channel(batches.max(1));
    let (audit_tx, audit_rx) = mpsc::channel(audit.max(1));
    (
        SinkQueue {
            name,
            batches: batches_tx,
            audit: audit_tx,
        },
        SinkInput {
            batches: batches_rx,
            audit: audit_rx,
        },
    )
}

pub struct Batcher {
    pub signals: mpsc::Receiver<Signal>,
    pub audit: mpsc::Receiver<Signal>,
    pub profiles: mpsc::Receiver<OtlpBatch>,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub deadline: Deadline,
    pub sinks: SinkSet,
    pub metrics: ExportMetrics,
    /// New `export` sections from a remote config.
    pub updates: Option<watch::Receiver<ExportConfig>>,
    /// The processors and routes every batch goes through.
    pub pipelines: Pipelines,
    /// Batches the OTLP receiver accepted.
    pub received: Option<mpsc::Receiver<OtlpBatch>>,
}

/// How often a received batch waiting for room at the sinks looks again.
const ROOM_POLL: Duration = Duration::from_millis(5);

impl Batcher {
    /// Runs until every handle is dropped or shutdown has drained the
    /// queues; then the sinks' queues close and they finish.
    pub async fn run(mut self) {
        self.sinks.start();
        let mut batch: Vec<Signal> = Vec::with_capacity(self.batch_size.min(4096));
        // When the oldest signal of the batch arrived.
        let mut oldest: Option<Instant> = None;
        let mut shutting_down = false;
        let mut deadline_open = true;
        let (mut signals_open, mut audit_open) = (true, true);
        let mut received_open = self.received.is_some();
        while signals_open || audit_open {
            let room = self.sinks_have_room();
            // A batch_timeout too large for the clock: flushed by size only.
            let flush_at = oldest.and_then(|t| t.checked_add(self.batch_timeout));
            tokio::select! {
                biased;
                received = self.audit.recv(), if audit_open => match received {
                    Some(record) => {
                        let mut records = vec![record];
                        if !shutting_down {
                            // Decisions of one tick come together.
                            tokio::time::sleep(COALESCE).await;
                        }
                        while records.len() < self.batch_size {
                            match self.audit.try_recv() {
                                Ok(record) => records.push(record),
                                Err(_) => break,
                            }
                        }
                        // Audit records do not wait for a batch to fill.
                        self.flush(&mut records, shutting_down, Lane::Audit).await;
                    }
                    None => audit_open = false,
                },
                Some(config) = next_update(&mut self.updates), if !shutting_down => {
                    // The batch being filled goes to the sinks as they are
                    // now, then the new ones take over.
                    self.flush(&mut batch, false, Lane::Signals).await;
                    oldest = None;
                    self.batch_size = config.batch_size.max(1);
                    self.batch_timeout = config.batch_timeout;
                    self.sinks.apply(&config);
                    self.metrics.reconfigured.inc();
                }
                received = self.signals.recv(), if signals_open => match received {
                    Some(signal) => {
                        if batch.is_empty() {
                            oldest = Some(Instant::now());
                        }
                        batch.push(signal);
                        // Producers send in bursts (a ring drain): let the
                        // burst land, then take it whole, instead of waking
                        // once per signal. A backlog of a batch or more
                        // needs no wait: sleeping then only lets the queue
                        // fill (at saturation, to overflowing).
                        let backlog =
                            self.signals.len() >= self.batch_size.saturating_sub(batch.len());
                        if !shutting_down && !backlog {
                            tokio::time::sleep(COALESCE).await;
                        }
                        while batch.len() < self.batch_size {
                            match self.signals.try_recv() {
                                Ok(signal) => batch.push(signal),
                                Err(_) => break,
                            }
                        }
                        if batch.len() >= self.batch_size {
                            self.flush(&mut batch, shutting_down, Lane::Signals).await;
                            oldest = None;
                        }
                    }
                    None => signals_open = false,
                },
                () = sleep_until_some(flush_at) => {
                    self.flush(&mut batch, shutting_down, Lane::Signals).await;
                    oldest = None;
                }
                Some(profiles) = self.profiles.recv() => {
                    self.deliver(profiles, shutting_down, Lane::Signals).await;
                }
                received = recv_some(&mut self.received), if received_open && room => match received {
                    Some(batch) => self.deliver(batch, shutting_down, Lane::Signals).await,
                    None => received_open = false,
                },
                () = tokio::time::sleep(ROOM_POLL), if received_open && !room => {}
                () = self.sinks.reap() => {}
                changed = self.deadline.changed(), if deadline_open && !shutting_down => {
                    match changed {
                        Ok(()) => {
                            // New sends now fail (and are counted); what is
                            // queued is still received, then recv gives None.
                            shutting_down = true;
                            self.signals.close();
                            self.audit.close();
                            self.profiles.close();
                        }
                        Err(_) => deadline_open = false,
                    }
                }
            }
            self.metrics.queue_length.set(self.signals.len() as i64);
        }
        self.flush(&mut batch, true, Lane::Signals).await;
        while let Ok(profiles) = self.profiles.try_recv() {
            self.deliver(profiles, true, Lane::Signals).await;
        }
        // What the receiver handed over before it stopped.
        while let Some(Ok(received)) = self.received.as_mut().map(|r| r.try_recv()) {
            self.deliver(received, true, Lane::Signals).await;
        }
        self.metrics.queue_length.set(0);
        self.sinks.finish().await;
    }

    async fn flush(&self, batch: &mut Vec<Signal>, shutting_down: bool, lane: Lane) {
        if batch.is_empty() {
            return;
        }
        let converted = convert(std::mem::take(batch));
        self.metrics.drop_signals(
            METRICS,
            DropReason::EncodeFailed,
            converted.malformed_points,
        );
        if converted.is_empty() {
            return;
        }
        self.deliver(converted, shutting_down, lane).await;
    }

    /// Whether every sink can take a batch now.
    fn sinks_have_room(&self) -> bool {
        self.sinks.queues().all(|sink| sink.batches.capacity() > 0)
    }

    /// Runs `batch` through the pipelines and hands each part to its
    /// exporters.
    async fn deliver(&self, batch: OtlpBatch, shutting_down: bool, lane: Lane) {
        let routed = self.pipelines.process(batch, matches!(lane, Lane::Audit));
        for (set, part) in routed.parts {
            self.send_part(set, Arc::new(part), shutting_down, lane)
                .await;
        }
    }

    async fn send_part(
        &self,
        set: ExporterSet,
        converted: Arc<OtlpBatch>,
        shutting_down: bool,
        lane: Lane,
    ) {
        for sink in self
            .sinks
            .queues()
            .filter(|sink| self.pipelines.includes(set, sink.name))
        {
            let (queue, full) = match lane {
                Lane::Signals => (&sink.batches, DropReason::QueueFull),
                Lane::Audit => (&sink.audit, DropReason::AuditQueueFull),
            };
            let lost = if shutting_down {
                // The final batches wait for room, but not past the
                // deadline.
                let send = queue.send(Arc::clone(&converted));
                let deadline = *self.deadline.borrow();
                let sent = match deadline {
                    Some(at) => tokio::time::timeout_at(at, send).await,
                    // All handles dropped without a shutdown: no deadline.
                    None => Ok(send.await),
                };
                match sent {
                    Ok(Ok(())) => None,
                    Ok(Err(_)) => Some(DropReason::ExportFailed),
                    Err(_) => Some(DropReason::Shutdown),
                }
            } else {
                match queue.try_send(Arc::clone(&converted)) {
                    Ok(()) => None,
                    Err(TrySendError::Full(_)) => Some(full),
                    Err(TrySendError::Closed(_)) => Some(DropReason::ExportFailed),
                }
            };
            if let Some(reason) = lost {
                tracing::debug!(sink = sink.name, reason = reason.as_str(), "batch dropped");
                self.metrics
                    .drop_signals(TRACES, reason, converted.span_count);
                self.metrics
                    .drop_signals(METRICS, reason, converted.point_count);
                self.metrics.drop_signals(LOGS, reason, converted.log_count);
                self.metrics
                    .drop_signals(PROFILES, reason, converted.profile_count);
            }
        }
    }
}

/// Which of a sink's queues a batch goes to.
#[derive(Debug, Clone, Copy)]
enum Lane {
    Signals,
    Audit,
}

async fn recv_some(receiver: &mut Option<mpsc::Receiver<OtlpBatch>>) -> Option<OtlpBatch> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
