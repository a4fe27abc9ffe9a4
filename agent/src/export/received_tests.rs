//! Batches the OTLP receiver hands over: exported like the agent's own, and
//! taken only while every sink has room, so a slow exporter pushes back on
//! the receiver (which answers its senders) instead of dropping.

use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};

use super::{
    convert,
    metrics::{DropReason, ExportMetrics, TRACES},
    queue::{self, Batcher},
    sinks::SinkSet,
    test_support::{resource, span},
};
use crate::{pipeline::Pipelines, signal::Signal};

#[tokio::test]
async fn received_batches_wait_for_room_at_the_sinks() {
    let metrics = ExportMetrics::default();
    let channels = queue::channels([16, 16, 2], metrics.clone());
    let (sink, mut input) = queue::sink_queue("test", 1, 1);
    let (received_tx, received) = mpsc::channel(2);
    let batcher = Batcher {
        signals: channels.signals,
        audit: channels.audit,
        profiles: channels.profiles,
        batch_size: 16,
        batch_timeout: Duration::from_secs(3600),
        deadline: channels.deadline,
        sinks: SinkSet::fixed(vec![sink]),
        metrics: metrics.clone(),
        updates: None,
        pipelines: Pipelines::pass_through(),
        received: Some(received),
    };
    let handle = channels.handle;
    let task = tokio::spawn(batcher.run());
    let res = resource("sdk", 3);
    let batch = |n: u8| convert(vec![Signal::Span(span(&res, n, None))]);
    received_tx.send(batch(1)).await.unwrap();
    // The sink holds that one; the next two wait in the receiver's queue,
    // and a fourth finds it full: the receiver's cue to push back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while input.batches.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first batch not delivered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    received_tx.send(batch(2)).await.unwrap();
    received_tx.send(batch(3)).await.unwrap();
    assert!(matches!(
        received_tx.try_send(batch(4)),
        Err(TrySendError::Full(_))
    ));
    assert_eq!(metrics.dropped_count(TRACES, DropReason::QueueFull), 0);
    // Read by the sink, room again: the rest follows, in order.
    for n in 1..=3u8 {
        let got = tokio::time::timeout(Duration::from_secs(10), input.recv())
            .await
            .unwrap()
            .unwrap();
        let traces = got.traces_request().unwrap();
        assert_eq!(
            traces.resource_spans[0].scope_spans[0].spans[0].span_id[7],
            n
        );
    }
    drop(received_tx);
    drop(handle);
    task.await.unwrap();
    assert_eq!(metrics.dropped_count(TRACES, DropReason::QueueFull), 0);
}
