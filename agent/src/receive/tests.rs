//! The receiver against real clients on loopback: tonic OTLP clients, and
//! raw HTTP/1.1 over TCP or TLS so that every byte sent is under the test's
//! control.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use flate2::{Compression, write::GzEncoder};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
        metrics::v1::{ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient},
        trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prometheus_client::registry::Registry;
use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tonic::codec::CompressionEncoding;

use super::{
    ProtocolConfig, ReceiverConfig, ReceiverError, ReceiverMetrics, ResourceLookup,
    ServerTlsConfig, bind,
    decode::{self, DecodeError, Signal},
    rpc_status::{RetryInfo, RpcStatus},
    serve,
};
use crate::export::OtlpBatch;

const WAIT: Duration = Duration::from_secs(10);

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn get<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// What the agent would add: the process's pid and name from /proc.
fn resource_of() -> ResourceLookup {
    Arc::new(|pid: u32| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        Some(vec![
            KeyValue {
                key: "process.pid".into(),
                value: Some(AnyValue {
                    value: Some(Value::IntValue(i64::from(pid))),
                }),
                ..KeyValue::default()
            },
            string("process.executable.name", comm.trim()),
            string("service.name", comm.trim()),
        ])
    })
}

struct Running {
    grpc: SocketAddr,
    http: SocketAddr,
    rx: Option<mpsc::Receiver<OtlpBatch>>,
    registry: Registry,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ReceiverError>>,
}

impl Running {
    async fn start(config: ReceiverConfig, capacity: usize) -> Running {
        let config = ReceiverConfig {
            grpc: Some(ProtocolConfig {
                endpoint: "127.0.0.1:0".parse().unwrap(),
            }),
            http: Some(ProtocolConfig {
                endpoint: "127.0.0.1:0".parse().unwrap(),
            }),
            ..config
        };
        let mut registry = Registry::with_prefix("selfops");
        let metrics = ReceiverMetrics::register(&mut registry);
        let listeners = bind(&config).await.unwrap();
        let (grpc, http) = listeners.addresses();
        let (tx, rx) = mpsc::channel(capacity);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            config,
            listeners,
            tx,
            resource_of(),
            metrics,
            async {
                let _ = stopped.await;
            },
        ));
        Running {
            grpc: grpc.unwrap(),
            http: http.unwrap(),
            rx: Some(rx),
            registry,
            stop: Some(stop),
            task,
        }
    }

    async fn next(&mut self) -> OtlpBatch {
        let rx = self.rx.as_mut().unwrap();
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    /// The value of the sample whose line starts with `series`.
    fn metric(&self, series: &str) -> f64 {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn requests(transport: &str, signal: &str, outcome: &str) -> String {
    format!(
        "selfops_receiver_requests_total{{transport=\"{transport}\",signal=\"{signal}\",outcome=\"{outcome}\"}}"
    )
}

fn trace_request(spans: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", "checkout")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: vec![1; 16],
                        span_id: vec![i as u8 + 1; 8],
                        name: format!("span {i}"),
                        ..Span::default()
                    })
                    .collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn metrics_request() -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: None,
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "queue.depth".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint::default(), NumberDataPoint::default()],
                    })),
                    ..Metric::default()
                }],
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

fn logs_request() -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![string("service.name", "billing")],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    body: Some(AnyValue {
                        value: Some(Value::StringValue("paid".into())),
                    }),
                    ..LogRecord::default()
                }],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

fn assert_attributed(resource: Option<&Resource>, service: &str) {
    let attributes = &resource.unwrap().attributes;
    assert_eq!(
        get(attributes, "service.name"),
        Some(&Value::StringValue(service.into())),
        "the SDK's service.name is kept"
    );
    assert_eq!(
        get(attributes, "process.pid"),
        Some(&Value::IntValue(i64::from(std::process::id()))),
        "the peer (this test process) is attributed"
    );
    let names = attributes
        .iter()
        .filter(|a| a.key == "service.name")
        .count();
    assert_eq!(names, 1);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_grpc_each_signal_gzip_attributed() {
    let mut running = Running::start(ReceiverConfig::default(), 16).await;
    let endpoint = format!("http://{}", running.grpc);

    let mut traces = TraceServiceClient::connect(endpoint.clone())
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    let response = traces.export(trace_request(3)).await.unwrap().into_inner();
    assert_eq!(response.partial_success, None);
    let batch = running.next().await;
    assert_eq!(batch.span_count, 3);
    let request = batch.traces.unwrap();
    assert_attributed(request.resource_spans[0].resource.as_ref(), "checkout");

    let mut metrics = MetricsServiceClient::connect(endpoint.clone())
        .await
        .unwrap();
    metrics.export(metrics_request()).await.unwrap();
    let batch = running.next().await;
    assert_eq!(batch.point_count, 2);
    // No resource sent: it is created, with the process's name as service.
    let resource = batch.metrics.unwrap().resource_metrics[0]
        .resource
        .clone()
        .unwrap();
    assert!(get(&resource.attributes, "service.name").is_some());
    assert!(get(&resource.attributes, "process.pid").is_some());

    let mut logs = LogsServiceClient::connect(endpoint)
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    logs.export(logs_request()).await.unwrap();
    let batch = running.next().await;
    assert_eq!(batch.log_count, 1);
    assert_attributed(
        batch.logs.unwrap().resource_logs[0].resource.as_ref(),
        "billing",
    );

    // Spans without valid ids are rejected and reported.
    let mut bad = trace_request(2);
    bad.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![1; 3];
    let response = traces.export(bad).await.unwrap().into_inner();
    let partial = response.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 1);
    assert_eq!(running.next().await.span_count, 1);

    assert_eq!(running.metric(&requests("grpc", "traces", "accepted")), 2.0);
    assert_eq!(running.metric(&requests("grpc", "logs", "accepted")), 1.0);
    assert_eq!(
        running.metric("selfops_receiver_items_total{signal=\"traces\",outcome=\"accepted\"}"),
        4.0
    );
    assert_eq!(
        running.metric("selfops_receiver_items_total{signal=\"traces\",outcome=\"rejected\"}"),
        1.0
    );
    assert!(running.metric("selfops_receiver_attributions_total{outcome=\"attributed\"}") >= 1.0);
    running.stop().await;
}

/// A response read off a raw HTTP/1.1 connection.
#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body`, then reads the response until the server closes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    head: &str,
    body: &[u8],
) -> HttpResponse {
    let mut request = format!("{head}\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    // The server may answer and close before taking everything.
    let _ = stream.write_all(&request).await;
    read_response(stream).await
}

async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> HttpResponse {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn post(addr: SocketAddr, path: &str, extra: &str, body: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}{extra}",
        body.len()
    );
    exchange(&mut stream, &head, body).await
}

const PROTOBUF: &str = "\r\nContent-Type: application/x-protobuf";
const JSON: &str = "\r\nContent-Type: application/json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_http_protobuf_json_gzip() {
    let mut running = Running::start(ReceiverConfig::default(), 16).await;
    let addr = running.http;

    // Protobuf, as the Python SDK's HTTP exporter sends it (gzip or not).
    let response = post(
        addr,
        "/v1/traces",
        PROTOBUF,
        &trace_request(2).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/x-protobuf")
    );
    let batch = running.next().await;
    assert_eq!(batch.span_count, 2);
    assert_attributed(
        batch.traces.unwrap().resource_spans[0].resource.as_ref(),
        "checkout",
    );

    let body = gzip(&metrics_request().encode_to_vec());
    let extra = format!("{PROTOBUF}\r\nContent-Encoding: gzip");
    let response = post(addr, "/v1/metrics", &extra, &body).await;
    assert_eq!(response.status, 200);
    assert_eq!(running.next().await.point_count, 2);

    let response = post(addr, "/v1/logs", PROTOBUF, &logs_request().encode_to_vec()).await;
    assert_eq!(response.status, 200);
    assert_eq!(running.next().await.log_count, 1);

    // JSON in, JSON out.
    let extra = format!("{JSON}\r\nContent-Encoding: gzip");
    let response = post(addr, "/v1/traces", &extra, &gzip(TRACES_JSON.as_bytes())).await;
    assert_eq!(
        response.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    let _: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    let batch = running.next().await;
    assert_eq!(batch.span_count, 1);
    assert_attributed(
        batch.traces.unwrap().resource_spans[0].resource.as_ref(),
        "my.service",
    );
    for (path, json) in [("/v1/metrics", METRICS_JSON), ("/v1/logs", LOGS_JSON)] {
        let response = post(addr, path, JSON, json.as_bytes()).await;
        assert_eq!(
            response.status,
            200,
            "{path}: {:?}",
            String::from_utf8_lossy(&response.body)
        );
        running.next().await;
    }

    // Partial success in JSON.
    let mut bad = trace_request(1);
    bad.resource_spans[0].scope_spans[0].spans[0]
        .span_id
        .clear();
    let response = post(addr, "/v1/traces", PROTOBUF, &bad.encode_to_vec()).await;
    assert_eq!(response.status, 200);
    let decoded =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(
            &response.body[..],
        )
        .unwrap();
    assert_eq!(decoded.partial_success.unwrap().rejected_spans, 1);

    assert_eq!(running.metric(&requests("http", "traces", "accepted")), 3.0);
    assert_eq!(
        running.metric(&requests("http", "metrics", "accepted")),
        2.0
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_http_bad_requests() {
    let config = ReceiverConfig {
        max_request_bytes: 64 << 10,
        ..ReceiverConfig::default()
    };
    let running = Running::start(config, 16).await;
    let addr = running.http;

    let response = post(addr, "/v1/spans", PROTOBUF, b"").await;
    assert_eq!(response.status, 404);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let response = exchange(
        &mut stream,
        &format!("GET /v1/traces HTTP/1.1\r\nHost: {addr}"),
        b"",
    )
    .await;
    assert_eq!(response.status, 405);
    let response = post(addr, "/v1/traces", "\r\nContent-Type: text/plain", b"x").await;
    assert_eq!(response.status, 415);
    let extra = format!("{PROTOBUF}\r\nContent-Encoding: br");
    let response = post(addr, "/v1/traces", &extra, b"x").await;
    assert_eq!(response.status, 415);

    // Truncated protobuf and broken JSON.
    let body = trace_request(3).encode_to_vec();
    let response = post(addr, "/v1/traces", PROTOBUF, &body[..body.len() - 5]).await;
    assert_eq!(response.status, 400);
    let status = RpcStatus::decode(&response.body[..]).unwrap();
    assert!(status.message.contains("protobuf"), "{status:?}");
    let response = post(addr, "/v1/logs", JSON, b"{\"resourceLogs\": [").await;
    assert_eq!(response.status, 400);
    let response = post(
        addr,
        "/v1/logs",
        &format!("{JSON}\r\nContent-Encoding: gzip"),
        b"not gzip",
    )
    .await;
    assert_eq!(response.status, 400);

    // 100 MB announced: refused from the headers, the body never sent.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: 100000000\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 413);

    // A chunked body that keeps coming: refused once past the limit,
    // while the body is still unfinished (its last chunk never sent).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = [0x0a_u8; 16 << 10];
    for _ in 0..8 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 413);

    // A gzip bomb: small on the wire, far over the limit inflated.
    let bomb = {
        use std::io::Write as _;
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&vec![0u8; 16 << 20]).unwrap();
        encoder.finish().unwrap()
    };
    assert!(bomb.len() < 64 << 10);
    let extra = format!("{PROTOBUF}\r\nContent-Encoding: gzip");
    let response = post(addr, "/v1/traces", &extra, &bomb).await;
    assert_eq!(response.status, 413);

    assert_eq!(
        running.metric(&requests("http", "traces", "too_large")),
        3.0
    );
    assert_eq!(running.metric(&requests("http", "traces", "invalid")), 1.0);
    assert_eq!(running.metric(&requests("http", "logs", "invalid")), 2.0);
    assert_eq!(
        running.metric(&requests("http", "traces", "unsupported")),
        3.0
    );
    assert_eq!(
        running.metric(&requests("http", "unknown", "unsupported")),
        1.0
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_grpc_bad_requests() {
    let config = ReceiverConfig {
        max_request_bytes: 64 << 10,
        ..ReceiverConfig::default()
    };
    let running = Running::start(config, 16).await;
    let endpoint = format!("http://{}", running.grpc);
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Truncated: sent as raw bytes.
    let body = trace_request(3).encode_to_vec();
    let status = raw_grpc(channel.clone(), body[..body.len() - 5].to_vec()).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Over the limit, as sent and as inflated.
    let mut client = TraceServiceClient::new(channel.clone());
    let status = client.export(trace_request(4000)).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
        ),
        "{status:?}"
    );
    let mut client = TraceServiceClient::new(channel).send_compressed(CompressionEncoding::Gzip);
    let mut big = trace_request(1);
    big.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(1 << 20);
    let status = client.export(big).await.unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok, "{status:?}");

    assert_eq!(running.metric(&requests("grpc", "traces", "invalid")), 1.0);
    assert_eq!(
        running.metric(&requests("grpc", "traces", "too_large")),
        2.0
    );
    running.stop().await;
}

/// Bytes sent as a `TraceService/Export` message, whatever they hold.
async fn raw_grpc(channel: tonic::transport::Channel, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    grpc.unary::<_, opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse, _>(
        tonic::Request::new(body),
        path,
        RawCodec,
    )
    .await
    .unwrap_err()
}

#[derive(Default)]
struct RawCodec;
struct RawEncoder;
struct ResponseDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, tonic::Status> {
        prost::Message::decode(buf)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_backpressure_and_shutdown() {
    let mut running = Running::start(ReceiverConfig::default(), 1).await;
    let endpoint = format!("http://{}", running.grpc);
    let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
    client.export(trace_request(1)).await.unwrap();
    // Nobody reads: the second request finds the channel full.
    let status = client.export(trace_request(2)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let details = RpcStatus::decode(status.details()).unwrap();
    assert_eq!(details.code, tonic::Code::ResourceExhausted as i32);
    assert_eq!(
        details.details[0].type_url,
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    let info = RetryInfo::decode(&details.details[0].value[..]).unwrap();
    assert_eq!(info.retry_delay.unwrap().seconds, 1);

    let response = post(
        running.http,
        "/v1/traces",
        PROTOBUF,
        &trace_request(1).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status, 429);
    assert_eq!(response.header("retry-after"), Some("1"));

    assert_eq!(
        running.metric(&requests("grpc", "traces", "refused_backpressure")),
        1.0
    );
    assert_eq!(
        running.metric(&requests("http", "traces", "refused_backpressure")),
        1.0
    );
    assert_eq!(
        running.metric(
            "selfops_receiver_items_total{signal=\"traces\",outcome=\"refused_backpressure\"}"
        ),
        3.0
    );

    // The pipeline closes: the agent is stopping.
    running.rx = None;
    let status = client.export(trace_request(1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let response = post(
        running.http,
        "/v1/traces",
        PROTOBUF,
        &trace_request(1).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status, 503);
    assert_eq!(running.metric(&requests("http", "traces", "shutdown")), 1.0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_decoded_at_once_are_bounded() {
    let running = Running::start(ReceiverConfig::default(), 16).await;
    let body = trace_request(1).encode_to_vec();
    let half = body.len() / 2;
    // One sender more than there are turns, each announcing a body and
    // sending half of it: each that gets a turn holds it while the
    // receiver waits for the rest, and exactly one finds none left.
    let mut readers = tokio::task::JoinSet::new();
    let mut writers = Vec::new();
    for i in 0..=super::intake::DECODING_AT_ONCE {
        let mut stream = TcpStream::connect(running.http).await.unwrap();
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}{PROTOBUF}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body[..half]).await.unwrap();
        let (mut reader, writer) = stream.into_split();
        readers.spawn(async move { (i, read_response(&mut reader).await) });
        writers.push(writer);
    }
    // Told to retry later without its body being read.
    let (refused, response) = tokio::time::timeout(WAIT, readers.join_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status, 429);
    assert_eq!(response.header("retry-after"), Some("1"));
    // Every turn is held: gRPC is told the same.
    let endpoint = format!("http://{}", running.grpc);
    let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
    let status = client.export(trace_request(1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        running.metric(&requests("grpc", "traces", "refused_backpressure")),
        1.0
    );
    assert_eq!(
        running.metric(&requests("http", "traces", "refused_backpressure")),
        1.0
    );
    // The others finish: their requests are taken, the turns free.
    for (i, writer) in writers.iter_mut().enumerate() {
        if i != refused {
            writer.write_all(&body[half..]).await.unwrap();
        }
    }
    while let Some(done) = readers.join_next().await {
        let (_, response) = done.unwrap();
        assert_eq!(response.status, 200);
    }
    client.export(trace_request(1)).await.unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_bind_error_names_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = taken.local_addr().unwrap();
    let config = ReceiverConfig {
        http: Some(ProtocolConfig { endpoint }),
        grpc: None,
        ..ReceiverConfig::default()
    };
    let err = bind(&config).await.err().unwrap().to_string();
    assert!(
        err.starts_with(&format!("receivers.otlp.http.endpoint {endpoint}: ")),
        "{err}"
    );
    // Disabled: nothing bound, and run returns at once.
    let config = ReceiverConfig {
        enabled: false,
        ..ReceiverConfig::default()
    };
    let (tx, _rx) = mpsc::channel(1);
    super::run(
        config,
        tx,
        resource_of(),
        ReceiverMetrics::default(),
        std::future::pending::<()>(),
    )
    .await
    .unwrap();
}

/// Test certificates made with the openssl command: a CA, a server
/// certificate for 127.0.0.1, a client certificate.
fn make_certs(dir: &Path) -> bool {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=receiver test CA",
        ],
    ]
    .concat())
        && ["server", "client"].iter().all(|name| {
            run(&[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat())
                && run(&[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &format!("{name}.pem"),
                    "-extfile",
                    &format!("{name}.ext"),
                ])
        })
}

fn tls_client(dir: &Path, with_cert: bool, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if with_cert {
        let chain = CertificateDer::pem_file_iter(dir.join("client.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects tonic's channel through TLS to the receiver.
#[derive(Clone)]
struct TlsConnect {
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for TlsConnect {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<TlsIo, std::io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.addr).await?;
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1")
                .map_err(std::io::Error::other)?;
            let tls = this.connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_tls_and_mtls() {
    let dir = std::env::temp_dir().join(format!("selfops-receive-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    if !make_certs(&dir) {
        eprintln!("skipped: the openssl command could not make test certificates");
        return;
    }
    let server_name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let body = trace_request(1).encode_to_vec();
    let head = |addr: SocketAddr| {
        format!(
            "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\n\
             Content-Length: {}",
            body.len()
        )
    };

    for mutual in [false, true] {
        let tls = ServerTlsConfig {
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            client_ca_file: mutual.then(|| dir.join("ca.pem")),
        };
        let config = ReceiverConfig {
            tls: Some(tls),
            ..ReceiverConfig::default()
        };
        let mut running = Running::start(config, 16).await;
        let tcp = TcpStream::connect(running.http).await.unwrap();
        let mut stream = tls_client(&dir, mutual, b"http/1.1")
            .connect(server_name.clone(), tcp)
            .await
            .unwrap();
        let response = exchange(&mut stream, &head(running.http), &body).await;
        assert_eq!(response.status, 200, "mutual: {mutual}");
        let batch = running.next().await;
        assert_attributed(
            batch.traces.unwrap().resource_spans[0].resource.as_ref(),
            "checkout",
        );

        // gRPC over TLS (with the client certificate when mutual).
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1")
            .connect_with_connector(TlsConnect {
                connector: tls_client(&dir, mutual, b"h2"),
                addr: running.grpc,
            })
            .await
            .unwrap();
        TraceServiceClient::new(channel)
            .send_compressed(CompressionEncoding::Gzip)
            .export(trace_request(2))
            .await
            .unwrap();
        assert_eq!(running.next().await.span_count, 2);

        // Plain HTTP on a TLS port gets nothing useful.
        let mut plain = TcpStream::connect(running.http).await.unwrap();
        let _ = plain.write_all(head(running.http).as_bytes()).await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut raw)).await;
        assert!(!raw.starts_with(b"HTTP/1.1 200"));

        if mutual {
            // Without a client certificate: refused in the handshake (TLS
            // 1.3 reports it on the first read).
            let tcp = TcpStream::connect(running.http).await.unwrap();
            let refused = match tls_client(&dir, false, b"http/1.1")
                .connect(server_name.clone(), tcp)
                .await
            {
                Err(_) => true,
                Ok(mut stream) => {
                    let _ = stream.write_all(b"POST /v1/traces HTTP/1.1\r\n\r\n").await;
                    let mut raw = Vec::new();
                    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
                        .await
                        .unwrap();
                    read.is_err() || raw.is_empty()
                }
            };
            assert!(refused);
        }
        running.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// OTLP/JSON as the specification's examples write it: lowerCamelCase
// names, hex ids (any case), enums as integers, 64-bit integers as strings.
const TRACES_JSON: &str = r#"{"resourceSpans":[{"resource":{"attributes":[
 {"key":"service.name","value":{"stringValue":"my.service"}}]},
 "scopeSpans":[{"scope":{"name":"my.library","version":"1.0.0",
  "attributes":[{"key":"my.scope.attribute","value":{"stringValue":"some scope attribute"}}]},
 "spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
  "parentSpanId":"eee19b7ec3c1b173","name":"I'm a server span",
  "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
  "kind":2,"flags":257,"droppedAttributesCount":0,
  "attributes":[{"key":"my.span.attr","value":{"stringValue":"some value"}},
   {"key":"count","value":{"intValue":"42"}},{"key":"n","value":{"intValue":7}},
   {"key":"ratio","value":{"doubleValue":0.5}},{"key":"ok","value":{"boolValue":true}},
   {"key":"list","value":{"arrayValue":{"values":[{"stringValue":"a"},{"intValue":"1"}]}}},
   {"key":"map","value":{"kvlistValue":{"values":[{"key":"k","value":{"stringValue":"v"}}]}}},
   {"key":"raw","value":{"bytesValue":"aGVsbG8="}}],
  "events":[{"timeUnixNano":"1544712660500000000","name":"ev","attributes":[]}],
  "links":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b170"}],
  "status":{"code":2,"message":"boom"},
  "unknownField":{"ignored":true}}]}]}]}"#;

const METRICS_JSON: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[
 {"key":"service.name","value":{"stringValue":"my.service"}}]},
 "scopeMetrics":[{"scope":{"name":"my.library","version":"1.0.0"},"metrics":[
 {"name":"my.counter","unit":"1","description":"I am a Counter","sum":{"aggregationTemporality":1,
  "isMonotonic":true,"dataPoints":[{"asDouble":5,"startTimeUnixNano":"1544712660300000000",
  "timeUnixNano":"1544712660300000000","attributes":[{"key":"my.counter.attr","value":{"stringValue":"some value"}}]}]}},
 {"name":"my.gauge","gauge":{"dataPoints":[{"asInt":"10","timeUnixNano":"1544712660300000000"}]}},
 {"name":"my.histogram","histogram":{"aggregationTemporality":1,"dataPoints":[{"startTimeUnixNano":"1544712660300000000",
  "timeUnixNano":"1544712660300000000","count":"2","sum":2,"bucketCounts":["1","1"],"explicitBounds":[1],
  "min":0,"max":2}]}},
 {"name":"my.exponential.histogram","exponentialHistogram":{"aggregationTemporality":1,"dataPoints":[
  {"timeUnixNano":"1544712660300000000","count":"3","sum":10,"scale":0,"zeroCount":"1",
  "positive":{"offset":1,"bucketCounts":["0","2"]},"min":0,"max":5}]}}]}]}]}"#;

const LOGS_JSON: &str = r#"{"resourceLogs":[{"resource":{"attributes":[
 {"key":"service.name","value":{"stringValue":"my.service"}}]},
 "scopeLogs":[{"scope":{"name":"my.library","version":"1.0.0"},"logRecords":[
 {"timeUnixNano":"1544712660300000000","observedTimeUnixNano":"1544712660300000000",
  "severityNumber":10,"severityText":"Information","traceId":"5B8EFFF798038103D269B633813FC60C",
  "spanId":"EEE19B7EC3C1B174","body":{"stringValue":"Example log record"},
  "attributes":[{"key":"string.attribute","value":{"stringValue":"some string"}},
   {"key":"int.attribute","value":{"intValue":"10"}}]}]}]}]}"#;

fn json(signal: Signal, text: &str) -> Result<OtlpBatch, DecodeError> {
    decode::decode_http(
        signal,
        "application/json; charset=utf-8",
        None,
        text.as_bytes(),
        1 << 20,
    )
}

#[test]
fn receive_decode_otlp_json() {
    let batch = json(Signal::Traces, TRACES_JSON).unwrap();
    assert_eq!(batch.span_count, 1);
    let span = &batch.traces.as_ref().unwrap().resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.trace_id, hex(b"5b8efff798038103d269b633813fc60c"));
    assert_eq!(span.span_id, hex(b"eee19b7ec3c1b174"));
    assert_eq!(span.parent_span_id, hex(b"eee19b7ec3c1b173"));
    assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
    assert_eq!(span.kind, 2);
    assert_eq!(span.flags, 257);
    assert_eq!(span.status.as_ref().unwrap().code, 2);
    assert_eq!(get(&span.attributes, "count"), Some(&Value::IntValue(42)));
    assert_eq!(get(&span.attributes, "n"), Some(&Value::IntValue(7)));
    assert_eq!(
        get(&span.attributes, "ratio"),
        Some(&Value::DoubleValue(0.5))
    );
    assert_eq!(
        get(&span.attributes, "raw"),
        Some(&Value::BytesValue(b"hello".to_vec()))
    );
    assert!(
        matches!(get(&span.attributes, "list"), Some(Value::ArrayValue(a)) if a.values.len() == 2)
    );
    assert!(
        matches!(get(&span.attributes, "map"), Some(Value::KvlistValue(m)) if m.values.len() == 1)
    );
    assert_eq!(span.links[0].span_id, hex(b"eee19b7ec3c1b170"));
    assert_eq!(span.events[0].time_unix_nano, 1_544_712_660_500_000_000);

    let batch = json(Signal::Metrics, METRICS_JSON).unwrap();
    assert_eq!(batch.point_count, 4);
    let metrics = &batch.metrics.as_ref().unwrap().resource_metrics[0].scope_metrics[0].metrics;
    match &metrics[2].data {
        Some(Data::Histogram(h)) => {
            assert_eq!(h.data_points[0].count, 2);
            assert_eq!(h.data_points[0].bucket_counts, vec![1, 1]);
        }
        other => panic!("{other:?}"),
    }
    match &metrics[1].data {
        Some(Data::Gauge(g)) => assert_eq!(
            g.data_points[0].value,
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(10))
        ),
        other => panic!("{other:?}"),
    }

    let batch = json(Signal::Logs, LOGS_JSON).unwrap();
    assert_eq!(batch.log_count, 1);
    let record = &batch.logs.as_ref().unwrap().resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(record.severity_number, 10);
    assert_eq!(record.trace_id.len(), 16);
    assert_eq!(
        get(&record.attributes, "int.attribute"),
        Some(&Value::IntValue(10))
    );

    // Broken shapes are errors, never panics.
    for bad in [
        r#"{"resourceSpans":{}}"#,
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#,
        "[",
        "",
    ] {
        assert!(json(Signal::Traces, bad).is_err(), "{bad}");
    }
}

fn hex(text: &[u8]) -> Vec<u8> {
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

#[test]
fn receive_decode_limits() {
    let body = trace_request(2).encode_to_vec();
    let limit = body.len();
    let ok = decode::decode_http(
        Signal::Traces,
        "application/x-protobuf",
        Some("gzip"),
        &gzip(&body),
        limit,
    );
    assert_eq!(ok.unwrap().span_count, 2);
    let over = decode::decode_http(
        Signal::Traces,
        "application/x-protobuf",
        Some("gzip"),
        &gzip(&body),
        limit - 1,
    );
    assert!(matches!(over, Err(DecodeError::TooLarge { .. })));
    let over = decode::decode_http(
        Signal::Traces,
        "application/x-protobuf",
        None,
        &body,
        limit - 1,
    );
    assert!(matches!(over, Err(DecodeError::TooLarge { .. })));
    let bad = decode::decode_http(
        Signal::Logs,
        "application/x-protobuf",
        Some("GZIP"),
        b"\x1f\x8b garbage",
        limit,
    );
    assert!(matches!(bad, Err(DecodeError::Gzip(_))));
    let other = decode::decode_http(Signal::Logs, "text/json", None, b"{}", limit);
    assert!(matches!(other, Err(DecodeError::UnsupportedContentType(_))));
}
