//! The bounded signal queue, its handle, and the batcher that turns queued
//! signals into converted batches for the sinks.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{
        mpsc::{self, error::TrySendError},
        watch,
    },
    time::Instant,
};

use super::{
    convert::{OtlpBatch, convert},
    metrics::{DropReason, ExportMetrics, LOGS, METRICS, TRACES},
    retry::Deadline,
};
use crate::signal::Signal;

/// After the shutdown deadline the sinks only count what they drop; this is
/// the time allowed for that.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

/// How long the batcher lets a burst of signals accumulate after the first
/// one wakes it.
const COALESCE: Duration = Duration::from_millis(2);

/// Feeds the export pipeline. Cheap to clone; every clone feeds the same
/// queue.
#[derive(Debug, Clone)]
pub struct ExportHandle {
    signals: mpsc::Sender<Signal>,
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
        let at = Instant::now() + within;
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
            tokio::time::timeout_at(at + SHUTDOWN_GRACE, done.wait_for(|done| *done)).await,
            Ok(Ok(_))
        )
    }
}

/// The handle's channels and the batcher's ends of them.
pub struct Channels {
    pub handle: ExportHandle,
    pub signals: mpsc::Receiver<Signal>,
    pub deadline: Deadline,
    pub done: watch::Sender<bool>,
}

pub fn channels(capacity: usize, metrics: ExportMetrics) -> Channels {
    let (signals_tx, signals) = mpsc::channel(capacity.max(1));
    let (deadline_tx, deadline) = watch::channel(None);
    let (done, done_rx) = watch::channel(false);
    Channels {
        handle: ExportHandle {
            signals: signals_tx,
            deadline: Arc::new(deadline_tx),
            done: done_rx,
            metrics,
        },
        signals,
        deadline,
        done,
    }
}

/// A sink's batch queue.
pub struct SinkQueue {
    pub name: &'static str,
    pub batches: mpsc::Sender<Arc<OtlpBatch>>,
}

pub struct Batcher {
    pub signals: mpsc::Receiver<Signal>,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub deadline: Deadline,
    pub sinks: Vec<SinkQueue>,
    pub metrics: ExportMetrics,
}

impl Batcher {
    /// Runs until every handle is dropped or shutdown has drained the
    /// queue; then the sinks' queues close and they finish.
    pub async fn run(mut self) {
        let mut batch: Vec<Signal> = Vec::with_capacity(self.batch_size.min(4096));
        // When the oldest signal of the batch arrived.
        let mut oldest: Option<Instant> = None;
        let mut shutting_down = false;
        let mut deadline_open = true;
        loop {
            let flush_at = oldest.map(|t| t + self.batch_timeout);
            tokio::select! {
                received = self.signals.recv() => match received {
                    Some(signal) => {
                        if batch.is_empty() {
                            oldest = Some(Instant::now());
                        }
                        batch.push(signal);
                        if !shutting_down {
                            // Producers send in bursts (a ring drain): let
                            // the burst land, then take it whole, instead of
                            // waking once per signal.
                            tokio::time::sleep(COALESCE).await;
                        }
                        while batch.len() < self.batch_size {
                            match self.signals.try_recv() {
                                Ok(signal) => batch.push(signal),
                                Err(_) => break,
                            }
                        }
                        if batch.len() >= self.batch_size {
                            self.flush(&mut batch, shutting_down).await;
                            oldest = None;
                        }
                    }
                    None => break,
                },
                () = sleep_until_some(flush_at) => {
                    self.flush(&mut batch, shutting_down).await;
                    oldest = None;
                }
                changed = self.deadline.changed(), if deadline_open && !shutting_down => {
                    match changed {
                        Ok(()) => {
                            // New sends now fail (and are counted); what is
                            // queued is still received, then recv gives None.
                            shutting_down = true;
                            self.signals.close();
                        }
                        Err(_) => deadline_open = false,
                    }
                }
            }
            self.metrics.queue_length.set(self.signals.len() as i64);
        }
        self.flush(&mut batch, true).await;
        self.metrics.queue_length.set(0);
    }

    async fn flush(&self, batch: &mut Vec<Signal>, shutting_down: bool) {
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
        let converted = Arc::new(converted);
        for sink in &self.sinks {
            let lost = if shutting_down {
                // The final batches wait for room, but not past the
                // deadline.
                let send = sink.batches.send(Arc::clone(&converted));
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
                match sink.batches.try_send(Arc::clone(&converted)) {
                    Ok(()) => None,
                    Err(TrySendError::Full(_)) => Some(DropReason::QueueFull),
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
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
