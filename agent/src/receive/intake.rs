//! Handing a decoded request to the pipeline: unusable items removed, the
//! peer's resource merged, a `try_send` that never waits, and everything
//! counted.

use opentelemetry_proto::tonic::common::v1::KeyValue;
use tokio::sync::mpsc::{self, error::TrySendError};

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

#[derive(Clone)]
pub struct Intake {
    pipeline: mpsc::Sender<OtlpBatch>,
    pub metrics: ReceiverMetrics,
}

impl Intake {
    pub fn new(pipeline: mpsc::Sender<OtlpBatch>, metrics: ReceiverMetrics) -> Self {
        Self { pipeline, metrics }
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
