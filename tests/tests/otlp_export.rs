//! The export pipeline against real OTLP receivers on loopback: a tonic
//! gRPC server implementing the collector's TraceService and MetricsService,
//! and an axum HTTP server taking `/v1/traces` and `/v1/metrics`. Most tests
//! need no privilege: they drive the agent library's pipeline directly; the
//! `real_agent_*` ones run the agent binary against a receiver that asks
//! for delays no clock can hold.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    io::Read,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prometheus_client::registry::Registry;
use prost::Message;
use selfops_agent::{
    config::{ExportConfig, OtlpConfig, OtlpProtocol},
    export::{ExportHandle, ExportOptions, ExportPipeline},
    signal::{AttrValue, HistogramPoint, Resource, Signal, Span, SpanKind, SpanStatus},
};
use selfops_tests::{Agent, one_agent_at_a_time, privileged};
use tonic::{Code, codec::CompressionEncoding};

// ---- signals -------------------------------------------------------------

fn resource(service: &str, pid: i64) -> Arc<Resource> {
    Arc::new(Resource {
        attributes: vec![
            ("service.name", AttrValue::from(service)),
            ("process.pid", AttrValue::Int(pid)),
        ],
    })
}

fn span(resource: &Arc<Resource>, n: u8) -> Span {
    let start = 1_700_000_000_000_000_000 + u64::from(n) * 1000;
    Span {
        trace_id: [0xa0 ^ n; 16],
        span_id: [0x5a, 0, 0, 0, 0, 0, 0, n],
        parent_span_id: (n % 2 == 1).then_some([0x77; 8]),
        name: format!("GET /item/{n}").into(),
        kind: if n.is_multiple_of(2) {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        start_unix_nano: start,
        end_unix_nano: start + 250_000,
        attributes: vec![("http.response.status_code", AttrValue::Int(200))],
        status: if n == 3 {
            SpanStatus::Error {
                message: "upstream reset".to_owned(),
            }
        } else {
            SpanStatus::Unset
        },
        resource: Arc::clone(resource),
    }
}

fn histogram(resource: &Arc<Resource>) -> HistogramPoint {
    HistogramPoint {
        name: "http.server.request.duration",
        description: "Duration of HTTP server requests",
        unit: "s",
        attributes: vec![("http.route", AttrValue::from("/item/{id}"))],
        start_unix_nano: 1_699_999_990_000_000_000,
        time_unix_nano: 1_700_000_000_000_000_000,
        count: 4,
        sum: 1.25,
        min: 0.01,
        max: 1.0,
        bounds: &[0.1, 0.5],
        bucket_counts: vec![2, 1, 1],
        resource: Arc::clone(resource),
    }
}

// ---- what the receivers saw ------------------------------------------------

#[derive(Debug, Default)]
struct Seen {
    /// Every export call, failed ones included.
    trace_calls: usize,
    metric_calls: usize,
    /// Requests answered with success.
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    /// `grpc-encoding` or `content-encoding` of each call.
    encodings: Vec<String>,
    content_types: Vec<String>,
    test_header: Vec<String>,
}

/// What the receiver answers, call by call; after the script, success.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Ok,
    /// Partial success rejecting this many spans.
    Partial(i64),
    Grpc(Code),
    /// A gRPC error carrying a google.rpc.RetryInfo.
    GrpcWithRetryInfo(Code),
    /// A gRPC error whose RetryInfo asks for this many seconds.
    GrpcRetryDelay(Code, i64),
    Http(u16),
    /// An HTTP error with this `Retry-After`.
    HttpRetryAfter(u16, &'static str),
}

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Seen>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

impl Receiver {
    fn scripted(replies: &[Reply]) -> Self {
        let receiver = Self::default();
        receiver.script.lock().unwrap().extend(replies);
        receiver
    }

    fn next_reply(&self) -> Reply {
        self.script.lock().unwrap().pop_front().unwrap_or(Reply::Ok)
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

// google.rpc.Status / RetryInfo, to build a throttling answer.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

fn grpc_error(code: Code, retry_info: bool) -> tonic::Status {
    if !retry_info {
        return tonic::Status::new(code, "scripted failure");
    }
    grpc_error_with_delay(code, 0, 20_000_000)
}

fn grpc_error_with_delay(code: Code, seconds: i64, nanos: i32) -> tonic::Status {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration { seconds, nanos }),
    };
    let status = RpcStatus {
        code: code as i32,
        message: "scripted throttling".to_owned(),
        details: vec![ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".to_owned(),
            value: info.encode_to_vec(),
        }],
    };
    tonic::Status::with_details(code, "scripted throttling", status.encode_to_vec().into())
}

// ---- gRPC receiver -----------------------------------------------------------

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let reply = self.next_reply();
        let mut seen = self.seen.lock().unwrap();
        seen.trace_calls += 1;
        seen.encodings.push(header(&headers, "grpc-encoding"));
        seen.test_header.push(header(&headers, "x-selfops-test"));
        match reply {
            Reply::Ok => {
                seen.traces.push(request.into_inner());
                Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
            }
            Reply::Partial(rejected) => {
                seen.traces.push(request.into_inner());
                Ok(tonic::Response::new(ExportTraceServiceResponse {
                    partial_success: Some(ExportTracePartialSuccess {
                        rejected_spans: rejected,
                        error_message: "span too old".to_owned(),
                    }),
                }))
            }
            Reply::Grpc(code) => Err(grpc_error(code, false)),
            Reply::GrpcWithRetryInfo(code) => Err(grpc_error(code, true)),
            Reply::GrpcRetryDelay(code, seconds) => Err(grpc_error_with_delay(code, seconds, 0)),
            Reply::Http(_) | Reply::HttpRetryAfter(..) => {
                unreachable!("HTTP reply scripted for gRPC")
            }
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let mut seen = self.seen.lock().unwrap();
        seen.metric_calls += 1;
        seen.encodings.push(header(&headers, "grpc-encoding"));
        seen.metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn grpc_receiver(receiver: &Receiver) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder()
        .add_service(
            TraceServiceServer::new(receiver.clone()).accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(receiver.clone())
                .accept_compressed(CompressionEncoding::Gzip),
        );
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        router.serve_with_incoming(incoming).await.unwrap();
    });
    addr
}

// ---- HTTP receiver -------------------------------------------------------------

fn decode_body(headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    if header(headers, "content-encoding") == "gzip" {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut raw)
            .unwrap();
        raw
    } else {
        body.to_vec()
    }
}

fn protobuf(status: StatusCode, message: &impl Message) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        message.encode_to_vec(),
    )
        .into_response()
}

async fn http_traces(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = receiver.next_reply();
    let mut seen = receiver.seen.lock().unwrap();
    seen.trace_calls += 1;
    seen.encodings.push(header(&headers, "content-encoding"));
    seen.content_types.push(header(&headers, "content-type"));
    seen.test_header.push(header(&headers, "x-selfops-test"));
    match reply {
        Reply::Ok => {
            let request =
                ExportTraceServiceRequest::decode(decode_body(&headers, &body).as_slice()).unwrap();
            seen.traces.push(request);
            protobuf(StatusCode::OK, &ExportTraceServiceResponse::default())
        }
        Reply::Http(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            let body = RpcStatus {
                code: 0,
                message: format!("scripted {code}"),
                details: Vec::new(),
            };
            let mut response = protobuf(status, &body);
            if code == 503 {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, "0".parse().unwrap());
            }
            response
        }
        Reply::HttpRetryAfter(code, after) => {
            let mut response = (StatusCode::from_u16(code).unwrap(), "slow down").into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, after.parse().unwrap());
            response
        }
        other => unreachable!("{other:?} scripted for HTTP"),
    }
}

async fn http_metrics(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut seen = receiver.seen.lock().unwrap();
    seen.metric_calls += 1;
    seen.encodings.push(header(&headers, "content-encoding"));
    seen.content_types.push(header(&headers, "content-type"));
    let request =
        ExportMetricsServiceRequest::decode(decode_body(&headers, &body).as_slice()).unwrap();
    seen.metrics.push(request);
    protobuf(StatusCode::OK, &ExportMetricsServiceResponse::default())
}

async fn http_receiver(receiver: &Receiver) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/v1/traces", post(http_traces))
        .route("/v1/metrics", post(http_metrics))
        .with_state(receiver.clone());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

// ---- the pipeline ------------------------------------------------------------

struct Pipeline {
    handle: ExportHandle,
    task: tokio::task::JoinHandle<()>,
    registry: Registry,
    dir: PathBuf,
}

impl Pipeline {
    fn start(addr: SocketAddr, protocol: OtlpProtocol, retry_for: Duration) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "selfops-otlp-export-{}-{}",
            std::process::id(),
            addr.port()
        ));
        let mut headers = BTreeMap::new();
        headers.insert("x-selfops-test".to_owned(), "yes".to_owned());
        let config = ExportConfig {
            file: false,
            otlp: Some(OtlpConfig {
                endpoint: format!("http://{addr}"),
                protocol,
                gzip: true,
                timeout: Duration::from_secs(5),
                headers,
                retry_for,
                tls: None,
            }),
            queue_capacity: 1000,
            // Each `send_all` is one batch: few signals, sent at once.
            batch_size: 100,
            batch_timeout: Duration::from_millis(200),
        };
        let options = ExportOptions {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            ..ExportOptions::default()
        };
        let mut registry = Registry::with_prefix("selfops");
        let (handle, future) =
            ExportPipeline::start_with(&config, &dir, &mut registry, options).unwrap();
        let task = tokio::spawn(future);
        Self {
            handle,
            task,
            registry,
            dir,
        }
    }

    /// A sample from the registry's text exposition, 0 when absent.
    fn metric(&self, sample: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    async fn stop(self) {
        assert!(self.handle.shutdown(Duration::from_secs(1)).await);
        self.task.await.unwrap();
        assert!(!self.dir.exists(), "file sink is off");
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sent_ids(n: u8) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let s = span(&resource("x", 0), i);
            (s.trace_id.to_vec(), s.span_id.to_vec())
        })
        .collect()
}

fn received_ids(requests: &[ExportTraceServiceRequest]) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
    requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| (s.trace_id.clone(), s.span_id.clone()))
        .collect()
}

const TRACES_OTLP: &str = r#"selfops_export_signals_total{signal="traces",sink="otlp"}"#;
const METRICS_OTLP: &str = r#"selfops_export_signals_total{signal="metrics",sink="otlp"}"#;
const RETRIES: &str = r#"selfops_export_retries_total{sink="otlp"}"#;
const FAILURES: &str = r#"selfops_export_failures_total{sink="otlp"}"#;

fn dropped(reason: &str) -> String {
    format!(r#"selfops_export_dropped_total{{signal="traces",reason="{reason}"}}"#)
}

/// Sends spans 0..n over two resources, and one histogram point.
fn send_all(handle: &ExportHandle, spans: u8) {
    let web = resource("web", 10);
    let db = resource("db", 20);
    for n in 0..spans {
        handle.send(Signal::Span(span(
            if n.is_multiple_of(2) { &web } else { &db },
            n,
        )));
    }
    handle.send(Signal::Histogram(histogram(&web)));
}

fn check_delivered_content(receiver: &Receiver, spans: u8) {
    receiver.seen(|seen| {
        assert_eq!(received_ids(&seen.traces), sent_ids(spans));
        let request = &seen.traces[0];
        assert_eq!(
            request.resource_spans.len(),
            2,
            "one ResourceSpans per process"
        );
        let resource = request.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
        let scope = request.resource_spans[0].scope_spans[0]
            .scope
            .as_ref()
            .unwrap();
        assert_eq!(scope.name, "selfops");
        let spans: Vec<_> = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans[0].spans)
            .collect();
        for s in &spans {
            let n = s.span_id[7];
            assert_eq!(s.kind, if n.is_multiple_of(2) { 2 } else { 3 });
            assert_eq!(s.parent_span_id.is_empty(), n.is_multiple_of(2));
            let status = s.status.as_ref().unwrap();
            if n == 3 {
                assert_eq!(
                    (status.code, status.message.as_str()),
                    (2, "upstream reset")
                );
            } else {
                assert_eq!(status.code, 0);
            }
        }
        assert_eq!(seen.metrics.len(), 1);
        let metric = &seen.metrics[0].resource_metrics[0].scope_metrics[0].metrics[0];
        assert_eq!(metric.name, "http.server.request.duration");
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        match &metric.data {
            Some(Data::Histogram(h)) => {
                assert_eq!(h.aggregation_temporality, 2);
                let p = &h.data_points[0];
                assert_eq!(
                    (p.count, p.sum, p.min, p.max),
                    (4, Some(1.25), Some(0.01), Some(1.0))
                );
                assert_eq!(p.bucket_counts, vec![2, 1, 1]);
                assert_eq!(p.explicit_bounds, vec![0.1, 0.5]);
            }
            other => panic!("not a histogram: {other:?}"),
        }
    });
}

// ---- tests ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_delivers_gzipped_with_headers() {
    let receiver = Receiver::default();
    let addr = grpc_receiver(&receiver).await;
    let pipeline = Pipeline::start(addr, OtlpProtocol::Grpc, Duration::from_secs(10));
    send_all(&pipeline.handle, 6);
    eventually("spans and metrics", || {
        pipeline.metric(TRACES_OTLP) == 6 && pipeline.metric(METRICS_OTLP) == 1
    })
    .await;
    check_delivered_content(&receiver, 6);
    receiver.seen(|seen| {
        assert_eq!((seen.trace_calls, seen.metric_calls), (1, 1));
        assert_eq!(seen.encodings.len(), 2, "a trace and a metric request");
        assert!(
            seen.encodings.iter().all(|e| e == "gzip"),
            "{:?}",
            seen.encodings
        );
        assert_eq!(seen.test_header, vec!["yes"]);
    });
    assert_eq!(pipeline.metric(RETRIES), 0);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_twice_then_delivered() {
    let receiver = Receiver::scripted(&[
        Reply::Grpc(Code::Unavailable),
        Reply::Grpc(Code::Unavailable),
    ]);
    let addr = grpc_receiver(&receiver).await;
    let pipeline = Pipeline::start(addr, OtlpProtocol::Grpc, Duration::from_secs(10));
    send_all(&pipeline.handle, 4);
    eventually("delivery after retries", || {
        pipeline.metric(TRACES_OTLP) == 4
    })
    .await;
    assert_eq!(receiver.seen(|s| s.trace_calls), 3);
    assert_eq!(pipeline.metric(RETRIES), 2);
    assert_eq!(pipeline.metric(FAILURES), 0);
    assert_eq!(
        received_ids(&receiver.seen(|s| s.traces.clone())),
        sent_ids(4)
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_invalid_argument_is_dropped_and_counted() {
    let receiver = Receiver::scripted(&[Reply::Grpc(Code::InvalidArgument)]);
    let addr = grpc_receiver(&receiver).await;
    let pipeline = Pipeline::start(addr, OtlpProtocol::Grpc, Duration::from_secs(10));
    send_all(&pipeline.handle, 5);
    eventually("the drop", || {
        pipeline.metric(&dropped("export_failed")) == 5
    })
    .await;
    assert_eq!(pipeline.metric(FAILURES), 1);
    assert_eq!(pipeline.metric(TRACES_OTLP), 0);
    // Metrics were a separate request and went through.
    eventually("metrics", || pipeline.metric(METRICS_OTLP) == 1).await;
    pipeline.stop().await;
    assert_eq!(receiver.seen(|s| s.trace_calls), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resource_exhausted_retried_only_with_retry_info() {
    let receiver = Receiver::scripted(&[
        Reply::GrpcWithRetryInfo(Code::ResourceExhausted),
        Reply::Ok,
        Reply::Grpc(Code::ResourceExhausted),
    ]);
    let addr = grpc_receiver(&receiver).await;
    let pipeline = Pipeline::start(addr, OtlpProtocol::Grpc, Duration::from_secs(10));
    send_all(&pipeline.handle, 2);
    eventually("throttled then delivered", || {
        pipeline.metric(TRACES_OTLP) == 2
    })
    .await;
    assert_eq!(pipeline.metric(RETRIES), 1);
    // Now without RetryInfo: not retryable.
    send_all(&pipeline.handle, 3);
    eventually("the drop", || {
        pipeline.metric(&dropped("export_failed")) == 3
    })
    .await;
    assert_eq!(pipeline.metric(RETRIES), 1);
    assert_eq!(receiver.seen(|s| s.trace_calls), 3);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_partial_success_counts_rejected() {
    let receiver = Receiver::scripted(&[Reply::Partial(2)]);
    let addr = grpc_receiver(&receiver).await;
    let pipeline = Pipeline::start(addr, OtlpProtocol::Grpc, Duration::from_secs(10));
    send_all(&pipeline.handle, 5);
    eventually("partial delivery", || pipeline.metric(TRACES_OTLP) == 3).await;
    assert_eq!(pipeline.metric(&dropped("export_failed")), 2);
    assert_eq!(
        receiver.seen(|s| s.trace_calls),
        1,
        "partial success is not retried"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_retries_exhausted_are_counted() {
    let receiver = Receiver::scripted(&[Reply::Grpc(Code::Unavailable); 1000]);
    let addr = grpc_receiver(&receiver).await;
    let pipeline = Pipeline::start(addr, OtlpProtocol::Grpc, Duration::from_millis(300));
    send_all(&pipeline.handle, 3);
    eventually("giving up", || {
        pipeline.metric(&dropped("retries_exhausted")) == 3
    })
    .await;
    assert_eq!(pipeline.metric(FAILURES), 1);
    assert!(pipeline.metric(RETRIES) >= 1);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delivers_gzipped_protobuf_with_headers() {
    let receiver = Receiver::default();
    let addr = http_receiver(&receiver).await;
    let pipeline = Pipeline::start(addr, OtlpProtocol::HttpProtobuf, Duration::from_secs(10));
    send_all(&pipeline.handle, 6);
    eventually("spans and metrics", || {
        pipeline.metric(TRACES_OTLP) == 6 && pipeline.metric(METRICS_OTLP) == 1
    })
    .await;
    check_delivered_content(&receiver, 6);
    receiver.seen(|seen| {
        assert_eq!(seen.encodings.len(), 2, "a trace and a metric request");
        assert!(
            seen.encodings.iter().all(|e| e == "gzip"),
            "{:?}",
            seen.encodings
        );
        assert!(
            seen.content_types
                .iter()
                .all(|c| c == "application/x-protobuf"),
            "{:?}",
            seen.content_types
        );
        assert_eq!(seen.test_header, vec!["yes"]);
    });
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_retried_then_400_dropped() {
    let receiver = Receiver::scripted(&[
        Reply::Http(503),
        Reply::Http(503),
        Reply::Ok,
        Reply::Http(400),
    ]);
    let addr = http_receiver(&receiver).await;
    let pipeline = Pipeline::start(addr, OtlpProtocol::HttpProtobuf, Duration::from_secs(10));
    send_all(&pipeline.handle, 4);
    eventually("delivery after 503s", || pipeline.metric(TRACES_OTLP) == 4).await;
    assert_eq!(pipeline.metric(RETRIES), 2);
    assert_eq!(
        received_ids(&receiver.seen(|s| s.traces.clone())),
        sent_ids(4)
    );

    send_all(&pipeline.handle, 2);
    eventually("the drop", || {
        pipeline.metric(&dropped("export_failed")) == 2
    })
    .await;
    assert_eq!(pipeline.metric(FAILURES), 1);
    assert_eq!(pipeline.metric(RETRIES), 2, "400 is not retried");
    assert_eq!(receiver.seen(|s| s.trace_calls), 4);
    pipeline.stop().await;
}

// ---- the real agent against delays no clock can hold ------------------------------

/// The largest `Retry-After` a header can carry as seconds.
const HUGE_RETRY_AFTER: &str = "18446744073709551615";

/// Runs the agent binary exporting to `addr`, while this process keeps
/// making HTTP requests of its own (to the agent's /metrics), which the
/// agent traces: a steady stream of spans. Checks that batches answered with
/// huge delays are given up at once and counted, a retryable error is
/// retried and counted, later batches are delivered, and the agent stays up.
fn real_agent_survives_huge_delays(name: &str, addr: SocketAddr, protocol: &str) {
    let _one = one_agent_at_a_time();
    let mut agent = Agent::start(
        name,
        &format!(
            "export:\n  batch_timeout: 100ms\n  otlp:\n    endpoint: http://{addr}\n    protocol: {protocol}\n    retry_for: 2s\n"
        ),
    );
    let metric =
        |text: &str, name: &str, filters: &[&str]| selfops_tests::metric_value(text, name, filters);
    let start = Instant::now();
    let last = loop {
        let text = agent.get("/metrics");
        let given_up = metric(
            &text,
            "selfops_export_dropped_total",
            &["signal=\"traces\"", "reason=\"retries_exhausted\""],
        );
        let retried = metric(&text, "selfops_export_retries_total", &["sink=\"otlp\""]);
        let delivered = metric(
            &text,
            "selfops_export_signals_total",
            &["signal=\"traces\"", "sink=\"otlp\""],
        );
        if given_up >= 2.0 && retried >= 1.0 && delivered >= 1.0 {
            break text;
        }
        if let Some(status) = agent.exited() {
            panic!("agent exited ({status}):\n{}", agent.log());
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "given up {given_up}, retried {retried}, delivered {delivered}:\n{text}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        metric(&last, "selfops_export_failures_total", &["sink=\"otlp\""]) >= 2.0,
        "{last}"
    );
    // Still exporting: more spans keep arriving after the recovery.
    let delivered = |text: &str| {
        metric(
            text,
            "selfops_export_signals_total",
            &["signal=\"traces\"", "sink=\"otlp\""],
        )
    };
    let before = delivered(&last);
    let start = Instant::now();
    while delivered(&agent.get("/metrics")) <= before {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "export stalled:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.exited().is_none(), "{}", agent.log());
    assert_eq!(agent.status_of("/healthz").map(|r| r.0), Some(200));
    assert_eq!(agent.status_of("/readyz").map(|r| r.0), Some(200));
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    let log = agent.log();
    let (status, _) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}\n{log}");
}

#[test]
fn real_agent_http_retry_after_u64_max_is_clamped_and_export_goes_on() {
    if !privileged("real_agent_http_retry_after_u64_max_is_clamped_and_export_goes_on") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::scripted(&[
        Reply::HttpRetryAfter(429, HUGE_RETRY_AFTER),
        Reply::HttpRetryAfter(503, HUGE_RETRY_AFTER),
        // A plain 503 (Retry-After: 0) is retried, then the receiver recovers.
        Reply::Http(503),
    ]);
    let addr = runtime.block_on(http_receiver(&receiver));
    real_agent_survives_huge_delays("otlp-huge-retry-after", addr, "http_protobuf");
    assert!(receiver.seen(|s| !s.traces.is_empty()));
}

#[test]
fn real_agent_grpc_retry_info_i64_max_is_clamped_and_export_goes_on() {
    if !privileged("real_agent_grpc_retry_info_i64_max_is_clamped_and_export_goes_on") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::scripted(&[
        Reply::GrpcRetryDelay(Code::ResourceExhausted, i64::MAX),
        Reply::GrpcRetryDelay(Code::Unavailable, i64::MAX),
        Reply::Grpc(Code::Unavailable),
    ]);
    let addr = runtime.block_on(grpc_receiver(&receiver));
    real_agent_survives_huge_delays("otlp-huge-retry-info", addr, "grpc");
    assert!(receiver.seen(|s| !s.traces.is_empty()));
}
