//! `cargo xtask bench receiver`: OTLP/gRPC spans pushed into the agent's
//! receiver by concurrent clients, through a transform and a filter, to the
//! file exporter. Measured: spans accepted per second of the agent's CPU
//! (per core), and the agent's memory under that load beside the same
//! agent without a receiver, in the same run.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind},
};
use selfops_tests::{Agent, free_port};

use crate::trace::cpu_of;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Spans sent in all.
    #[arg(long, default_value_t = 1_000_000)]
    spans: u64,
    /// Spans per export request.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Clients sending at once.
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

/// Both agents: no kernel tracing or profiling, so what is measured is the
/// receiver's path.
const COMMON: &str = "trace: { enabled: false }\nprofile: { enabled: false }\n";

const PROCESSORS: &str = r#"processors:
  transform/redact:
    error_mode: ignore
    trace_statements:
      - context: span
        statements:
          - set(attributes["card"], SHA256(attributes["card"])) where attributes["card"] != nil
          - delete_key(attributes, "password")
          - set(attributes["edge"], "selfops")
  filter/health:
    traces:
      span: ['attributes["url.path"] == "/healthz"']
pipelines:
  traces: { processors: [transform/redact, filter/health] }
"#;

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.batch > 0 && args.clients > 0,
        "--batch and --clients: at least 1"
    );
    // Baseline: the same agent with the receiver off, idle.
    let baseline = Agent::start(
        "bench-receiver-off",
        &format!("{COMMON}receivers: {{ otlp: {{ enabled: false }} }}\n"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss_off = rss_kib(baseline.pid())?;
    baseline.stop(libc::SIGTERM);

    let port = free_port();
    let agent = Agent::start(
        "bench-receiver",
        &format!(
            "{COMMON}receivers:\n  otlp:\n    grpc: {{ endpoint: '127.0.0.1:{port}' }}\n    http: null\n{PROCESSORS}"
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = rss_kib(agent.pid())?;
    let requests = args.spans.div_ceil(args.batch as u64);
    let request = Arc::new(request(args.batch));
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(rss_idle));
    let pid = agent.pid();
    let cpu_before = cpu_of(pid)?;
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.clients {
            let (request, sent, refused) = (request.clone(), sent.clone(), refused.clone());
            tasks.spawn(async move {
                let mut client =
                    TraceServiceClient::connect(format!("http://127.0.0.1:{port}")).await?;
                while sent.fetch_add(1, Ordering::Relaxed) < requests {
                    loop {
                        match client.export((*request).clone()).await {
                            Ok(_) => break,
                            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            Err(status) => anyhow::bail!("export: {status}"),
                        }
                    }
                }
                anyhow::Ok(())
            });
        }
        let peak = peak.clone();
        let watch = tokio::spawn(async move {
            loop {
                if let Ok(rss) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        watch.abort();
        anyhow::Ok(())
    })?;
    let sent_in = started.elapsed();
    // Every span either written or filtered (one in eight is a health
    // check) before the clock stops.
    let total = requests * args.batch as u64;
    let healthz = total / 8;
    let written = || {
        agent.metric(
            "selfops_export_signals_total",
            &["signal=\"traces\"", "sink=\"file\""],
        ) as u64
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while written() < total - healthz {
        ensure!(
            Instant::now() < deadline,
            "only {} of {} spans written",
            written(),
            total - healthz
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let cpu = cpu_of(pid)?.saturating_sub(cpu_before);
    let rss_after = rss_kib(pid)?;
    let dropped = agent.metric("selfops_export_dropped_total", &["signal=\"traces\""]);
    agent.stop(libc::SIGTERM);

    let per_core = total as f64 / cpu.as_secs_f64().max(1e-3);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "bench receiver: {total} spans in {requests} OTLP/gRPC requests of {}, {} clients",
        args.batch, args.clients
    );
    println!(
        "  pipeline: receiver → transform (3 statements) → filter (/healthz, 1 in 8) → file exporter"
    );
    println!(
        "  sent in {:.2} s, written in {:.2} s: {:.0} spans/s wall",
        sent_in.as_secs_f64(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  agent CPU {:.2} s: {:.0} spans/s per core ({:.2} µs per span)",
        cpu.as_secs_f64(),
        per_core,
        cpu.as_secs_f64() * 1e6 / total as f64
    );
    println!(
        "  back-pressure answers (RESOURCE_EXHAUSTED, retried): {}; spans dropped: {}",
        refused.load(Ordering::Relaxed),
        dropped.max(0.0) as u64
    );
    println!(
        "  agent RSS: without a receiver {:.1} MiB; with it idle {:.1} MiB, peak under load {:.1} MiB, after {:.1} MiB",
        mib(rss_off),
        mib(rss_idle),
        mib(peak.load(Ordering::Relaxed)),
        mib(rss_after)
    );
    println!(
        "  ratio to the agent without a receiver: idle {:.2}, peak {:.2}",
        rss_idle as f64 / rss_off as f64,
        peak.load(Ordering::Relaxed) as f64 / rss_off as f64
    );
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// One request of `spans` HTTP server spans, as an SDK sends them: one in
/// eight a health check, one in four carrying a card number and a password.
fn request(spans: usize) -> ExportTraceServiceRequest {
    let spans = (0..spans)
        .map(|i| {
            let n = i as u64;
            let path = if i % 8 == 0 {
                "/healthz"
            } else {
                "/api/orders"
            };
            let mut attributes = vec![
                string("http.request.method", "POST"),
                string("url.path", path),
                string("url.scheme", "http"),
                int("http.response.status_code", 200),
                string("server.address", "orders.internal"),
                int("server.port", 8080),
                string("user_agent.original", "python-requests/2.32"),
                string("network.peer.address", "10.1.2.3"),
            ];
            if i % 4 == 1 {
                attributes.push(string("card", "4111111111111111"));
                attributes.push(string("password", "hunter2"));
            }
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            trace_id[8..].copy_from_slice(&(n + 1).to_be_bytes());
            Span {
                trace_id: trace_id.to_vec(),
                span_id: (n + 1).to_be_bytes().to_vec(),
                name: format!("POST {path}"),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: 1_700_000_000_000_000_000 + n * 1000,
                end_time_unix_nano: 1_700_000_000_000_500_000 + n * 1000,
                attributes,
                ..Span::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", "orders"),
                    string("telemetry.sdk.language", "python"),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "orders.app".into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}
