//! Handing a decoded request to the pipeline: unusable items removed, the
//! peer's resource merged, a `try_send` that never waits, and everything
//! counted.

use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use tokio::sync::{
    OwnedSemaphorePermit, Semaphore,
    mpsc::{self, error::TrySendError},
};

use super::{
    decode::{self, Rejected, Signal},
    enrich::enrich,
    metrics::{Outcome, ReceiverMetrics, Transport},
};
use crate::export::OtlpBatch;

/// Why a well-formed request was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The pipeline's queue is full: retry later.
    Backpressure,
    /// The pipeline is closed: the agent is stopping.
    Shutdown,
}

/// Requests read and decoded at once, over every connection. Each may hold
/// up to `max_request_bytes` as sent, again once gunzipped, and its decoded
/// form: this bounds the receiver's memory under any number of senders.
pub const DECODING_AT_ONCE: usize = 8;

#[derive(Clone)]
pub struct Intake {
    pipeline: mpsc::Sender<OtlpBatch>,
    pub metrics: ReceiverMetrics,
    decoding: Arc<Semaphore>,
}

impl Intake {
    pub fn new(pipeline: mpsc::Sender<OtlpBatch>, metrics: ReceiverMetrics) -> Self {
        Self {
            pipeline,
            metrics,
            decoding: Arc::new(Semaphore::new(DECODING_AT_ONCE)),
        }
    }

    /// A turn to read and decode one request, held until it is handed over;
    /// `None` when [`DECODING_AT_ONCE`] requests already have one (counted
    /// as back-pressure: the sender is told to retry later).
    pub fn decoding_turn(
        &self,
        transport: Transport,
        signal: Signal,
    ) -> Option<OwnedSemaphorePermit> {
        let turn = self.decoding.clone().try_acquire_owned().ok();
        if turn.is_none() {
            self.metrics
                .request(transport, signal, Outcome::RefusedBackpressure);
        }
        turn
    }

    /// Takes one request's batch. On success, what was rejected from it
    /// (for the response's partial success).
    pub fn submit(
        &self,
        transport: Transport,
        signal: Signal,
        mut batch: OtlpBatch,
        resource: Option<&[KeyValue]>,
    ) -> Result<Rejected, Refusal> {
        let rejected = decode::reject_invalid(&mut batch);
        self.metrics.items(signal, "rejected", rejected.count);
        let items = decode::item_count(&batch, signal);
        if items == 0 {
            self.metrics.request(transport, signal, Outcome::Accepted);
            return Ok(rejected);
        }
        if let Some(attributes) = resource {
            enrich(&mut batch, attributes);
        }
        let (outcome, result) = match self.pipeline.try_send(batch) {
            Ok(()) => (Outcome::Accepted, Ok(rejected)),
            Err(TrySendError::Full(_)) => {
                (Outcome::RefusedBackpressure, Err(Refusal::Backpressure))
            }
            Err(TrySendError::Closed(_)) => (Outcome::Shutdown, Err(Refusal::Shutdown)),
        };
        self.metrics.request(transport, signal, outcome);
        self.metrics.items(signal, outcome.as_str(), items);
        result
    }

    /// Counts a request refused before it could be decoded.
    pub fn refused(&self, transport: Transport, signal: Signal, outcome: Outcome) {
        self.metrics.request(transport, signal, outcome);
    }
}
