//! The output pipeline end to end: files on disk read back (and by
//! `go tool pprof`), the agent's export pipeline sending to a real gRPC
//! ProfilesService and an OTLP/HTTP receiver on loopback, retries, drops
//! and the bounded queue.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
    profiles_service_server::{ProfilesService, ProfilesServiceServer},
};
use prometheus_client::registry::Registry;
use tonic::{Code, codec::CompressionEncoding};

use super::{
    files::{self, Retention},
    model::IntervalProfile,
    otlp::check_dictionary,
    outputs::{OutputOptions, ProfileOutputs, SINK_PPROF, SINK_SVG},
    test_fixture,
};
use crate::{
    config::{ExportConfig, OtlpConfig, OtlpProtocol},
    export::{
        DropReason, ExportHandle, ExportOptions, ExportPipeline,
        metrics::{PROFILES, SINK_OTLP},
    },
};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("selfops-outputs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An hour after the fixture's first interval, whatever today's date: the
/// fixture's intervals have fixed dates.
fn fixture_now() -> std::time::SystemTime {
    test_fixture::start() + Duration::from_secs(3600)
}

fn options() -> OutputOptions {
    OutputOptions {
        clock: fixture_now,
        ..OutputOptions::default()
    }
}

/// The agent's export pipeline, with no file exporter and `otlp` as its
/// only exporter, running on the test's runtime.
fn export(otlp: Option<OtlpConfig>, registry: &mut Registry) -> ExportHandle {
    let config = ExportConfig {
        file: false,
        otlp,
        ..ExportConfig::default()
    };
    let options = ExportOptions {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..ExportOptions::default()
    };
    let data = std::env::temp_dir();
    let (handle, pipeline) = ExportPipeline::start_with(&config, &data, registry, options).unwrap();
    tokio::spawn(pipeline);
    handle
}

/// Outputs that export nothing.
fn files_only(data: &Path, options: OutputOptions) -> ProfileOutputs {
    let mut registry = Registry::default();
    ProfileOutputs::with_options(data, export(None, &mut registry), options).unwrap()
}

fn otlp_config(addr: SocketAddr) -> OtlpConfig {
    OtlpConfig {
        endpoint: format!("http://{addr}"),
        protocol: OtlpProtocol::Grpc,
        gzip: true,
        timeout: Duration::from_secs(2),
        headers: BTreeMap::from([("x-selfops-test".to_owned(), "profiles".to_owned())]),
        retry_for: Duration::from_secs(5),
        tls: None,
    }
}

/// Interval `n` of the fixture, starting `n` minutes after it.
fn interval(n: u32) -> IntervalProfile {
    let mut p = test_fixture::interval();
    p.start += Duration::from_secs(60) * n;
    p
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
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

/// Replies with the scripted failures first, then accepts.
#[derive(Clone, Default)]
struct Receiver {
    failures: Arc<Mutex<Vec<Code>>>,
    requests: Arc<Mutex<Vec<ExportProfilesServiceRequest>>>,
    headers: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl ProfilesService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportProfilesServiceRequest>,
    ) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        self.headers
            .lock()
            .unwrap()
            .push((header("grpc-encoding"), header("x-selfops-test")));
        let failure = {
            let mut failures = self.failures.lock().unwrap();
            (!failures.is_empty()).then(|| failures.remove(0))
        };
        if let Some(code) = failure {
            return Err(tonic::Status::new(code, "scripted failure"));
        }
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(
            ExportProfilesServiceResponse::default(),
        ))
    }
}

async fn grpc_receiver(receiver: &Receiver) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_service(
        ProfilesServiceServer::new(receiver.clone()).accept_compressed(CompressionEncoding::Gzip),
    );
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        router.serve_with_incoming(incoming).await.unwrap();
    });
    addr
}

#[tokio::test]
async fn writes_files_and_exports_with_retries() {
    let data = temp_dir("export");
    let receiver = Receiver::default();
    receiver.failures.lock().unwrap().push(Code::Unavailable);
    let addr = grpc_receiver(&receiver).await;
    let mut registry = Registry::with_prefix("selfops");
    let export = export(Some(otlp_config(addr)), &mut registry);
    let outputs = ProfileOutputs::with_options(&data, export.clone(), options()).unwrap();
    let dir = outputs.dir().to_owned();
    assert_eq!(dir, data.join("profiles"));
    outputs.emit(interval(0));
    outputs.emit(interval(1));
    let requests = Arc::clone(&receiver.requests);
    wait_for("two exports", || requests.lock().unwrap().len() == 2).await;
    let metrics = outputs.metrics().clone();
    assert!(outputs.shutdown(Duration::from_secs(2)).await);
    assert!(export.shutdown(Duration::from_secs(2)).await);

    // Files: two intervals, named by their start, both formats.
    let stem0 = files::timestamp(interval(0).start);
    let stem1 = files::timestamp(interval(1).start);
    assert_eq!(stem0, "20261125T153000Z");
    assert_eq!(
        names_in(&dir),
        [
            format!("{stem0}.pb.gz"),
            format!("{stem0}.svg"),
            format!("{stem1}.pb.gz"),
            format!("{stem1}.svg"),
        ]
    );
    let svg = std::fs::read_to_string(dir.join(format!("{stem1}.svg"))).unwrap();
    assert!(svg.contains("validate_sku") && svg.contains("20261125T153100Z"));
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(
            std::fs::read(dir.join(format!("{stem0}.pb.gz")))
                .unwrap()
                .as_slice(),
        ),
        &mut raw,
    )
    .unwrap();
    let pprof = <selfops_proto::pprof::Profile as prost::Message>::decode(raw.as_slice()).unwrap();
    super::pprof::check_invariants(&pprof);
    assert_eq!(pprof.sample.len(), 3);

    // OTLP: retried once after UNAVAILABLE, gzip and headers sent, every
    // dictionary index resolves.
    for request in receiver.requests.lock().unwrap().iter() {
        let samples = check_dictionary(request);
        assert_eq!(samples.iter().map(|s| s.count).sum::<i64>(), 42);
        assert!(
            samples
                .iter()
                .any(|s| s.frames[0].functions == ["validate_sku", "parse_order"])
        );
    }
    for (encoding, test_header) in receiver.headers.lock().unwrap().iter() {
        assert_eq!(encoding, "gzip");
        assert_eq!(test_header, "profiles");
    }
    assert_eq!(
        metrics
            .retries
            .get_or_create(&crate::export::metrics::SinkLabels { sink: SINK_OTLP })
            .get(),
        1
    );
    // Two processes per interval.
    assert_eq!(metrics.exported_count(PROFILES, SINK_OTLP), 4);
    assert_eq!(metrics.exported_count(PROFILES, SINK_PPROF), 4);
    assert_eq!(metrics.exported_count(PROFILES, SINK_SVG), 4);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"selfops_export_signals_total{signal="profiles",sink="otlp"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"selfops_export_signals_total{signal="profiles",sink="pprof"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"selfops_export_retries_total{sink="otlp"} 1"#),
        "{text}"
    );
    std::fs::remove_dir_all(&data).unwrap();
}

/// Every file the pipeline writes is readable by `go tool pprof`.
#[tokio::test]
async fn go_tool_pprof_reads_every_written_file() {
    let Some(go) = super::pprof::tests::go_binary() else {
        return;
    };
    let data = temp_dir("go-pprof");
    let outputs = files_only(&data, options());
    let dir = outputs.dir().to_owned();
    outputs.emit(interval(0));
    outputs.emit(test_fixture::large_interval(300));
    let mut empty = interval(2);
    empty.stacks.clear();
    outputs.emit(empty);
    assert!(outputs.shutdown(Duration::from_secs(5)).await);
    let written: Vec<String> = names_in(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".pb.gz"))
        .collect();
    // The large interval starts at the fixture's start too: a second name.
    assert_eq!(written.len(), 3, "{written:?}");
    assert!(
        written.contains(&"20261125T153000Z-2.pb.gz".to_owned()),
        "{written:?}"
    );
    for name in &written {
        let top = super::pprof::tests::go_pprof_top(&go, &dir.join(name));
        if name != "20261125T153200Z.pb.gz" {
            assert!(
                top.contains("main") || top.contains("fn_"),
                "{name}:\n{top}"
            );
        }
    }
    std::fs::remove_dir_all(&data).unwrap();
}

/// The handle the profiler's supervisor watches is the output task's own:
/// it reports the task ended once it has, and not before.
#[tokio::test]
async fn task_handle_sees_the_output_task_end() {
    let data = temp_dir("task-handle");
    let outputs = files_only(&data, options());
    let handle = outputs.task_handle();
    assert!(!handle.is_finished());
    handle.abort();
    wait_for("the aborted output task to end", || handle.is_finished()).await;
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn retention_bounds_the_directory() {
    let data = temp_dir("retention");
    let options = OutputOptions {
        retention: Retention {
            max_intervals: 2,
            max_age: Duration::from_secs(1_000_000_000),
            max_bytes: u64::MAX,
        },
        ..options()
    };
    let outputs = files_only(&data, options);
    let dir = outputs.dir().to_owned();
    for n in 0..4 {
        outputs.emit(interval(n));
    }
    assert!(outputs.shutdown(Duration::from_secs(5)).await);
    assert_eq!(
        names_in(&dir),
        [
            "20261125T153200Z.pb.gz",
            "20261125T153200Z.svg",
            "20261125T153300Z.pb.gz",
            "20261125T153300Z.svg",
        ]
    );
    std::fs::remove_dir_all(&data).unwrap();
}

/// On a current-thread runtime the tasks cannot run while the test emits,
/// so the queue's bound is exact.
#[tokio::test(flavor = "current_thread")]
async fn full_queue_drops_and_counts() {
    let data = temp_dir("queue");
    let mut registry = Registry::with_prefix("selfops");
    let options = OutputOptions {
        queue_capacity: 2,
        ..options()
    };
    let export = export(None, &mut registry);
    let outputs = ProfileOutputs::with_options(&data, export, options).unwrap();
    for n in 0..5 {
        outputs.emit(interval(n));
    }
    let metrics = outputs.metrics().clone();
    // Three intervals of two processes each.
    assert_eq!(metrics.dropped_count(PROFILES, DropReason::QueueFull), 6);
    assert!(outputs.shutdown(Duration::from_secs(5)).await);
    assert_eq!(metrics.exported_count(PROFILES, SINK_PPROF), 4);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"selfops_export_dropped_total{signal="profiles",reason="queue_full"} 6"#),
        "{text}"
    );
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn permanent_and_exhausted_failures_are_counted() {
    let data = temp_dir("failures");
    let receiver = Receiver::default();
    receiver.failures.lock().unwrap().extend([
        Code::InvalidArgument,
        Code::Unavailable,
        Code::Unavailable,
        Code::Unavailable,
    ]);
    let addr = grpc_receiver(&receiver).await;
    let mut config = otlp_config(addr);
    config.retry_for = Duration::from_millis(30);
    let mut registry = Registry::default();
    let outputs =
        ProfileOutputs::with_options(&data, export(Some(config), &mut registry), options())
            .unwrap();
    let metrics = outputs.metrics().clone();
    outputs.emit(interval(0));
    outputs.emit(interval(1));
    wait_for("both intervals settled", || {
        metrics.dropped_count(PROFILES, DropReason::ExportFailed)
            + metrics.dropped_count(PROFILES, DropReason::RetriesExhausted)
            == 4
    })
    .await;
    assert_eq!(metrics.dropped_count(PROFILES, DropReason::ExportFailed), 2);
    assert_eq!(
        metrics.dropped_count(PROFILES, DropReason::RetriesExhausted),
        2
    );
    assert_eq!(
        metrics
            .failures
            .get_or_create(&crate::export::metrics::SinkLabels { sink: SINK_OTLP })
            .get(),
        2
    );
    // The files are written all the same.
    assert_eq!(metrics.exported_count(PROFILES, SINK_PPROF), 4);
    assert!(outputs.shutdown(Duration::from_secs(2)).await);
    std::fs::remove_dir_all(&data).unwrap();
}

#[tokio::test]
async fn shutdown_deadline_drops_what_the_collector_did_not_take() {
    let data = temp_dir("shutdown");
    // Nothing listens: every attempt is a retryable connection error.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let mut registry = Registry::default();
    let export = export(Some(otlp_config(addr)), &mut registry);
    let outputs = ProfileOutputs::with_options(&data, export.clone(), options()).unwrap();
    let metrics = outputs.metrics().clone();
    outputs.emit(interval(0));
    wait_for("a first try failed", || {
        metrics
            .retries
            .get_or_create(&crate::export::metrics::SinkLabels { sink: SINK_OTLP })
            .get()
            > 0
    })
    .await;
    assert_eq!(metrics.exported_count(PROFILES, SINK_PPROF), 2);
    let start = Instant::now();
    assert!(outputs.shutdown(Duration::from_millis(200)).await);
    export.shutdown(Duration::from_millis(200)).await;
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(metrics.dropped_count(PROFILES, DropReason::Shutdown), 2);
    std::fs::remove_dir_all(&data).unwrap();
}

/// OTLP/HTTP exporters send profiles too, to the path the Collector
/// serves them on, as protobuf.
#[tokio::test]
async fn http_exporter_posts_profiles() {
    use axum::{Router, body::Bytes, http::StatusCode, routing::post};
    let data = temp_dir("http");
    let received: Arc<Mutex<Vec<ExportProfilesServiceRequest>>> = Arc::default();
    let app = Router::new().route(
        "/v1development/profiles",
        post({
            let received = Arc::clone(&received);
            move |body: Bytes| async move {
                match <ExportProfilesServiceRequest as prost::Message>::decode(body) {
                    Ok(request) => {
                        received.lock().unwrap().push(request);
                        let response = ExportProfilesServiceResponse::default();
                        (StatusCode::OK, prost::Message::encode_to_vec(&response))
                    }
                    Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = OtlpConfig {
        protocol: OtlpProtocol::HttpProtobuf,
        gzip: false,
        ..otlp_config(addr)
    };
    let mut registry = Registry::default();
    let export = export(Some(config), &mut registry);
    let outputs = ProfileOutputs::with_options(&data, export.clone(), options()).unwrap();
    let metrics = outputs.metrics().clone();
    outputs.emit(interval(0));
    wait_for("one export", || received.lock().unwrap().len() == 1).await;
    assert!(outputs.shutdown(Duration::from_secs(2)).await);
    assert!(export.shutdown(Duration::from_secs(2)).await);
    let samples = check_dictionary(&received.lock().unwrap()[0]);
    assert_eq!(samples.iter().map(|s| s.count).sum::<i64>(), 42);
    assert_eq!(metrics.exported_count(PROFILES, SINK_OTLP), 2);
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn needs_a_runtime() {
    let data = temp_dir("errors");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let export = {
        let _guard = runtime.enter();
        export(None, &mut Registry::default())
    };
    assert!(matches!(
        ProfileOutputs::new(&data, export),
        Err(super::outputs::OutputError::NoRuntime)
    ));
    std::fs::remove_dir_all(&data).unwrap();
}

/// Encoding cost of a busy interval; run with
/// `cargo test --release -p selfops-agent --lib encode_5000_stacks -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check; run by hand in release"]
fn encode_5000_stacks() {
    let interval = test_fixture::large_interval(5000);
    let frames: usize = interval.stacks.iter().map(|s| s.frames.len()).sum();
    let time = |what: &str, f: &mut dyn FnMut() -> usize| {
        let mut best = Duration::MAX;
        let mut size = 0;
        for _ in 0..5 {
            let start = Instant::now();
            size = f();
            best = best.min(start.elapsed());
        }
        println!(
            "{what:<22} {:>8.2} ms  {size:>9} bytes",
            best.as_secs_f64() * 1e3
        );
    };
    println!("5000 stacks, {frames} frames");
    time("pprof (message)", &mut || {
        prost::Message::encoded_len(&super::pprof::encode(&interval))
    });
    time("pprof (gzip file)", &mut || {
        super::pprof::encode_gzip(&interval).unwrap().len()
    });
    time("flame graph (svg)", &mut || {
        super::flamegraph::render_svg(&interval, "bench")
            .unwrap()
            .len()
    });
    time("otlp (request)", &mut || {
        prost::Message::encoded_len(&super::otlp::build_request(&interval).unwrap())
    });
}
