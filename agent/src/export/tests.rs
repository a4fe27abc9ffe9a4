//! Pipeline tests: queue bound, batching, shutdown, start-up errors. (The
//! OTLP transports against real receivers are tested in
//! `tests/tests/otlp_export.rs`, and for log records in `logs_otlp_tests.rs`.)

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;

use super::{
    ExportError, ExportOptions, ExportPipeline,
    metrics::{DropReason, LOGS, METRICS, SINK_FILE, SINK_OTLP, TRACES},
    test_support::{histogram, log_record, resource, span, temp_dir},
};
use crate::{
    config::{ExportConfig, OtlpConfig, OtlpProtocol},
    signal::Signal,
};

/// Where a test's point is what was exported, not how fast the pipeline
/// stops: a deadline no loaded machine reaches (shutdown returns as soon
/// as the pipeline is done).
const FLUSHED_WITHIN: Duration = Duration::from_secs(20);

fn config(capacity: usize, batch_size: usize, batch_timeout: Duration) -> ExportConfig {
    ExportConfig {
        file: true,
        otlp: None,
        queue_capacity: capacity,
        batch_size,
        batch_timeout,
    }
}

/// Complete lines only: the sink may be mid-write while a test reads.
fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn spans_in(line: &serde_json::Value) -> usize {
    line["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| rs["scopeSpans"][0]["spans"].as_array().unwrap().len())
        .sum()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn full_queue_drops_and_counts() {
    let dir = temp_dir("queue-full");
    let mut registry = Registry::with_prefix("selfops");
    // The pipeline future is never run, so nothing drains the queue.
    let (handle, _pipeline) =
        ExportPipeline::start(&config(2, 10, Duration::from_secs(1)), &dir, &mut registry).unwrap();
    let res = resource("svc", 1);
    for n in 0..4 {
        handle.send(Signal::Span(span(&res, n, None)));
    }
    handle.send(Signal::Histogram(histogram(&res, "h")));
    handle.send(Signal::Log(log_record(&res, 1)));
    assert_eq!(handle.queue_len(), 2);
    let m = handle.metrics();
    assert_eq!(m.dropped_count(TRACES, DropReason::QueueFull), 2);
    assert_eq!(m.dropped_count(METRICS, DropReason::QueueFull), 1);
    assert_eq!(m.dropped_count(LOGS, DropReason::QueueFull), 1);
    assert_eq!(m.queue_length.get(), 2);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"selfops_export_dropped_total{signal="traces",reason="queue_full"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"selfops_export_dropped_total{signal="logs",reason="queue_full"} 1"#),
        "{text}"
    );
    assert!(text.contains("selfops_export_queue_length 2"), "{text}");
    for name in [
        "selfops_export_signals_total",
        "selfops_export_retries_total",
        "selfops_export_failures_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {}", name.trim_end_matches("_total"))),
            "{name}: {text}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn batches_by_size_then_flushes_on_shutdown() {
    let dir = temp_dir("batch-size");
    let mut registry = Registry::default();
    let (handle, pipeline) = ExportPipeline::start(
        &config(100, 3, Duration::from_secs(3600)),
        &dir,
        &mut registry,
    )
    .unwrap();
    let task = tokio::spawn(pipeline);
    let a = resource("a", 1);
    let b = resource("b", 2);
    for n in 0..7 {
        let res = if n % 2 == 0 { &a } else { &b };
        handle.send(Signal::Span(span(res, n, None)));
    }
    let traces = dir.join("traces.jsonl");
    wait_for("two full batches", || lines(&traces).len() == 2).await;
    let written = lines(&traces);
    assert_eq!(spans_in(&written[0]), 3);
    assert_eq!(written[0]["resourceSpans"].as_array().unwrap().len(), 2);
    // The 7th span waits for its batch (timeout an hour) until shutdown.
    assert!(handle.shutdown(FLUSHED_WITHIN).await);
    task.await.unwrap();
    let written = lines(&traces);
    assert_eq!(written.len(), 3);
    assert_eq!(spans_in(&written[2]), 1);
    assert_eq!(handle.metrics().exported_count(TRACES, SINK_FILE), 7);
    assert!(!dir.join("metrics.jsonl").exists(), "no empty envelopes");

    // After shutdown a signal is dropped and counted.
    handle.send(Signal::Span(span(&a, 9, None)));
    assert_eq!(
        handle.metrics().dropped_count(TRACES, DropReason::Shutdown),
        1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn batches_by_timeout() {
    let dir = temp_dir("batch-timeout");
    let mut registry = Registry::default();
    let (handle, pipeline) = ExportPipeline::start(
        &config(100, 1000, Duration::from_millis(50)),
        &dir,
        &mut registry,
    )
    .unwrap();
    let task = tokio::spawn(pipeline);
    let res = resource("a", 1);
    let start = Instant::now();
    handle.send(Signal::Span(span(&res, 1, None)));
    handle.send(Signal::Histogram(histogram(&res, "d")));
    handle.send(Signal::Span(span(&res, 2, None)));
    let traces = dir.join("traces.jsonl");
    wait_for("the timed-out batch", || lines(&traces).len() == 1).await;
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert_eq!(spans_in(&lines(&traces)[0]), 2);
    wait_for("metrics line", || {
        lines(&dir.join("metrics.jsonl")).len() == 1
    })
    .await;
    // Counted once the line is written: after it, not with it.
    wait_for("metrics counted", || {
        handle.metrics().exported_count(METRICS, SINK_FILE) == 1
    })
    .await;
    assert!(handle.shutdown(FLUSHED_WITHIN).await);
    task.await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn log_records_go_to_logs_jsonl() {
    let dir = temp_dir("logs-file");
    let mut registry = Registry::default();
    let (handle, pipeline) = ExportPipeline::start(
        &config(100, 100, Duration::from_millis(10)),
        &dir,
        &mut registry,
    )
    .unwrap();
    let task = tokio::spawn(pipeline);
    let agent = resource("selfops", 1);
    let web = resource("nginx", 2);
    handle.send(Signal::Log(log_record(&agent, 1)));
    handle.send(Signal::Span(span(&web, 1, None)));
    let mut refused = log_record(&agent, 2);
    refused.severity = crate::signal::Severity::Info;
    refused.event_name = "selfops.action.refused";
    refused.body = "budget exhausted".to_owned();
    handle.send(Signal::Log(refused));
    assert!(handle.shutdown(FLUSHED_WITHIN).await);
    task.await.unwrap();

    let written = lines(&dir.join("logs.jsonl"));
    assert_eq!(written.len(), 1, "one batch, one line");
    let resource_logs = written[0]["resourceLogs"].as_array().unwrap();
    assert_eq!(resource_logs.len(), 1, "the span's resource has no logs");
    let attrs = &resource_logs[0]["resource"]["attributes"];
    assert_eq!(attrs[0]["key"], "service.name");
    assert_eq!(attrs[0]["value"]["stringValue"], "selfops");
    let records = resource_logs[0]["scopeLogs"][0]["logRecords"]
        .as_array()
        .unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["severityNumber"], 13);
    assert_eq!(records[0]["eventName"], "selfops.action.applied");
    assert_eq!(
        records[0]["body"]["stringValue"],
        "rate limit applied to nginx (1)"
    );
    assert_eq!(records[0]["attributes"][1]["key"], "selfops.action.seq");
    assert_eq!(records[0]["attributes"][1]["value"]["intValue"], "1");
    assert_eq!(records[1]["severityNumber"], 9);
    assert_eq!(records[1]["severityText"], "INFO");
    assert_eq!(records[1]["eventName"], "selfops.action.refused");
    assert_eq!(records[1]["body"]["stringValue"], "budget exhausted");
    assert_eq!(records[1]["timeUnixNano"], "1700000002000000002");

    // Each signal kept to its own file.
    assert_eq!(lines(&dir.join("traces.jsonl")).len(), 1);
    assert!(!dir.join("metrics.jsonl").exists());
    let m = handle.metrics();
    assert_eq!(m.exported_count(LOGS, SINK_FILE), 2);
    assert_eq!(m.exported_count(TRACES, SINK_FILE), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn malformed_histogram_is_counted() {
    let dir = temp_dir("malformed");
    let mut registry = Registry::default();
    let (handle, pipeline) = ExportPipeline::start(
        &config(10, 10, Duration::from_millis(10)),
        &dir,
        &mut registry,
    )
    .unwrap();
    let task = tokio::spawn(pipeline);
    let res = resource("a", 1);
    let mut bad = histogram(&res, "d");
    bad.bucket_counts = vec![1];
    handle.send(Signal::Histogram(bad));
    assert!(handle.shutdown(FLUSHED_WITHIN).await);
    task.await.unwrap();
    assert_eq!(
        handle
            .metrics()
            .dropped_count(METRICS, DropReason::EncodeFailed),
        1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn otlp(endpoint: &str, protocol: OtlpProtocol) -> OtlpConfig {
    OtlpConfig {
        endpoint: endpoint.to_owned(),
        protocol,
        gzip: true,
        timeout: Duration::from_secs(5),
        headers: BTreeMap::new(),
        retry_for: Duration::from_secs(30),
        tls: None,
    }
}

/// A loopback port with nothing listening.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn shutdown_is_bounded_while_the_collector_is_down() {
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let dir = temp_dir("bounded-shutdown");
        let mut registry = Registry::default();
        let mut cfg = config(100, 10, Duration::from_millis(10));
        cfg.otlp = Some(otlp(
            &format!("http://127.0.0.1:{}", closed_port()),
            protocol,
        ));
        let options = ExportOptions {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            ..ExportOptions::default()
        };
        let (handle, pipeline) =
            ExportPipeline::start_with(&cfg, &dir, &mut registry, options).unwrap();
        let task = tokio::spawn(pipeline);
        let res = resource("a", 1);
        for n in 0..3 {
            handle.send(Signal::Span(span(&res, n, None)));
        }
        handle.send(Signal::Log(log_record(&res, 1)));
        let m = handle.metrics().clone();
        wait_for("a retry", || {
            m.retries
                .get_or_create(&super::metrics::SinkLabels { sink: SINK_OTLP })
                .get()
                > 0
        })
        .await;
        let start = Instant::now();
        assert!(
            handle.shutdown(Duration::from_millis(300)).await,
            "{protocol:?}"
        );
        assert!(start.elapsed() < Duration::from_millis(700), "{protocol:?}");
        task.await.unwrap();
        assert_eq!(
            m.dropped_count(TRACES, DropReason::Shutdown),
            3,
            "{protocol:?}"
        );
        assert_eq!(m.dropped_count(LOGS, DropReason::Shutdown), 1);
        // The file got them regardless.
        assert_eq!(m.exported_count(TRACES, SINK_FILE), 3);
        assert_eq!(m.exported_count(LOGS, SINK_FILE), 1);
        assert_eq!(m.exported_count(TRACES, SINK_OTLP), 0);
        assert_eq!(m.exported_count(LOGS, SINK_OTLP), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bad_otlp_settings_are_refused() {
    let dir = Path::new("/nonexistent");
    let mut registry = Registry::default();
    let mut cfg = config(10, 10, Duration::from_secs(1));
    let mut plain_with_tls = otlp("http://collector:4317", OtlpProtocol::Grpc);
    plain_with_tls.tls = Some(crate::tls::TlsConfig::default());
    cfg.otlp = Some(plain_with_tls);
    let err = ExportPipeline::start(&cfg, dir, &mut registry)
        .err()
        .unwrap();
    assert!(
        matches!(err, ExportError::TlsWithPlainEndpoint { .. }),
        "{err}"
    );
    assert!(err.to_string().starts_with("export.otlp.tls: "), "{err}");

    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let mut o = otlp("http://collector:4317", protocol);
        o.headers.insert("bad header".to_owned(), "x".to_owned());
        cfg.otlp = Some(o);
        let err = ExportPipeline::start(&cfg, dir, &mut registry)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("export.otlp.headers.bad header"),
            "{err}"
        );

        let mut o = otlp("http://collector:4317", protocol);
        o.headers
            .insert("authorization".to_owned(), "a\nb".to_owned());
        cfg.otlp = Some(o);
        assert!(ExportPipeline::start(&cfg, dir, &mut registry).is_err());

        cfg.otlp = Some(otlp("http://bad host:4317", protocol));
        let err = ExportPipeline::start(&cfg, dir, &mut registry)
            .err()
            .unwrap();
        assert!(matches!(err, ExportError::InvalidEndpoint { .. }), "{err}");
    }
}

#[tokio::test]
async fn file_sink_writes_every_waiting_batch_in_order() {
    let dir = temp_dir("file-groups");
    let metrics = super::metrics::ExportMetrics::default();
    // More batches wait than one trip to the blocking pool takes.
    let waiting = 20;
    let (queue, input) = super::queue::sink_queue(SINK_FILE, waiting, 1);
    let res = resource("svc", 1);
    for n in 0..waiting {
        let spans = (0..=n % 3)
            .map(|i| Signal::Span(span(&res, (n * 3 + i) as u8, None)))
            .collect();
        let batch = super::convert::convert(spans);
        queue.batches.try_send(std::sync::Arc::new(batch)).unwrap();
    }
    let audit = super::convert::convert(vec![Signal::Log(log_record(&res, 7))]);
    queue.audit.try_send(std::sync::Arc::new(audit)).unwrap();
    drop(queue);
    super::sink::run_file_sink(dir.clone(), u64::MAX, input, metrics.clone()).await;

    let written = lines(&dir.join("traces.jsonl"));
    assert_eq!(written.len(), waiting, "one line per batch");
    let sizes: Vec<usize> = written.iter().map(spans_in).collect();
    let expected: Vec<usize> = (0..waiting).map(|n| n % 3 + 1).collect();
    assert_eq!(sizes, expected, "in queue order");
    let total: usize = expected.iter().sum();
    assert_eq!(metrics.exported_count(TRACES, SINK_FILE), total as u64);
    assert_eq!(lines(&dir.join("logs.jsonl")).len(), 1);
    assert_eq!(metrics.exported_count(LOGS, SINK_FILE), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
