//! The audit lane: a span burst fills the signal queue and a sink's batch
//! queue, and the record of an action still gets through; the lane's own
//! overflow is counted apart.

use std::time::Duration;

use prometheus_client::registry::Registry;

use super::{
    ExportOptions, ExportPipeline,
    metrics::{DropReason, ExportMetrics, LOGS, TRACES},
    queue::{self, Batcher},
    sinks::SinkSet,
    test_support::{log_record, resource, span, temp_dir},
};
use crate::{config::ExportConfig, signal::Signal};

fn config(capacity: usize) -> ExportConfig {
    ExportConfig {
        file: true,
        otlp: None,
        queue_capacity: capacity,
        batch_size: 1,
        batch_timeout: Duration::from_secs(3600),
    }
}

#[test]
fn a_full_signal_queue_does_not_drop_audit_records() {
    let dir = temp_dir("audit-queue");
    let mut registry = Registry::with_prefix("selfops");
    let options = ExportOptions {
        audit_queue_capacity: 2,
        ..ExportOptions::default()
    };
    // Never run: nothing drains either queue.
    let (handle, _pipeline) =
        ExportPipeline::start_with(&config(2), &dir, &mut registry, options).unwrap();
    let res = resource("svc", 1);
    for n in 0..50 {
        handle.send(Signal::Span(span(&res, n, None)));
    }
    handle.send_audit(Signal::Log(log_record(&res, 1)));
    handle.send_audit(Signal::Log(log_record(&res, 2)));
    let m = handle.metrics();
    assert_eq!(m.dropped_count(TRACES, DropReason::QueueFull), 48);
    assert_eq!(m.dropped_count(LOGS, DropReason::QueueFull), 0);
    assert_eq!(m.dropped_count(LOGS, DropReason::AuditQueueFull), 0);
    // The lane's own bound, counted under its own reason.
    handle.send_audit(Signal::Log(log_record(&res, 3)));
    assert_eq!(m.dropped_count(LOGS, DropReason::AuditQueueFull), 1);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"selfops_export_dropped_total{signal="logs",reason="audit_queue_full"} 1"#),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_full_sink_queue_does_not_drop_audit_batches_and_they_go_first() {
    let metrics = ExportMetrics::default();
    let channels = queue::channels([1000, 16, 2], metrics.clone());
    // One span batch fits at the sink, which is not reading.
    let (sink, mut input) = queue::sink_queue("test", 1, 4);
    let batcher = Batcher {
        signals: channels.signals,
        audit: channels.audit,
        profiles: channels.profiles,
        batch_size: 1,
        batch_timeout: Duration::from_secs(3600),
        deadline: channels.deadline,
        sinks: SinkSet::fixed(vec![sink]),
        metrics: metrics.clone(),
        updates: None,
        pipelines: crate::pipeline::Pipelines::pass_through(),
        received: None,
    };
    let handle = channels.handle;
    let task = tokio::spawn(batcher.run());
    let res = resource("svc", 1);
    for n in 0..20 {
        handle.send(Signal::Span(span(&res, n, None)));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.dropped_count(TRACES, DropReason::QueueFull) < 19 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "span batches not dropped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.send_audit(Signal::Log(log_record(&res, 7)));
    while input.audit.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit batch not queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = tokio::time::timeout(Duration::from_secs(10), input.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.log_count, 1, "the audit batch is read first");
    let second = input.recv().await.unwrap();
    assert_eq!(second.span_count, 1);
    assert_eq!(metrics.dropped_count(LOGS, DropReason::QueueFull), 0);
    assert_eq!(metrics.dropped_count(LOGS, DropReason::AuditQueueFull), 0);
    drop(handle);
    task.await.unwrap();
    assert!(input.recv().await.is_none(), "closed once the batcher ends");
}

#[tokio::test]
async fn audit_records_reach_the_file_through_a_span_burst_and_at_shutdown() {
    let dir = temp_dir("audit-file");
    let mut registry = Registry::default();
    let (handle, pipeline) = ExportPipeline::start(&config(4), &dir, &mut registry).unwrap();
    let task = tokio::spawn(pipeline);
    let res = resource("svc", 1);
    for n in 0..200 {
        handle.send(Signal::Span(span(&res, n, None)));
    }
    handle.send_audit(Signal::Log(log_record(&res, 1)));
    for n in 0..200 {
        handle.send(Signal::Span(span(&res, n, None)));
    }
    // Sent as the agent stops (the `withdrawn` records): still written.
    handle.send_audit(Signal::Log(log_record(&res, 2)));
    assert!(handle.shutdown(Duration::from_secs(5)).await);
    task.await.unwrap();
    let logs = std::fs::read_to_string(dir.join("logs.jsonl")).unwrap();
    let records: usize = logs
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .sum();
    assert_eq!(records, 2, "{logs}");
    let m = handle.metrics();
    assert_eq!(m.dropped_count(LOGS, DropReason::QueueFull), 0);
    assert_eq!(m.dropped_count(LOGS, DropReason::AuditQueueFull), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
