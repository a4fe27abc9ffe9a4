//! Log records through the OTLP sink against real receivers on loopback: a
//! tonic gRPC server implementing the collector's LogsService and an axum
//! server taking `/v1/logs`. Each receiver answers from a script, so
//! retries, partial success and drops are driven by real responses.

use std::{
    collections::{BTreeMap, VecDeque},
    io::Read,
    net::SocketAddr,
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
use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    common::v1::any_value,
};
use prometheus_client::registry::Registry;
use prost::Message;
use tonic::{Code, codec::CompressionEncoding};

use super::{
    ExportHandle, ExportOptions, ExportPipeline,
    metrics::{DropReason, LOGS, SINK_OTLP, SinkLabels},
    test_support::{log_record, resource},
};
use crate::{
    config::{ExportConfig, OtlpConfig, OtlpProtocol},
    signal::Signal,
};

/// What the receiver answers, call by call; after the script, success.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Ok,
    /// Partial success rejecting this many log records.
    Partial(i64),
    Grpc(Code),
    Http(u16),
}

#[derive(Debug, Default)]
struct Seen {
    /// Every export call, failed ones included.
    calls: usize,
    /// Requests answered with success.
    requests: Vec<ExportLogsServiceRequest>,
    /// `grpc-encoding` or `content-encoding` of each call.
    encodings: Vec<String>,
    content_types: Vec<String>,
    test_header: Vec<String>,
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

    /// Counts the call and records its headers; returns the scripted reply.
    fn call(&self, headers: &HeaderMap, encoding_header: &str) -> Reply {
        let reply = self.script.lock().unwrap().pop_front().unwrap_or(Reply::Ok);
        let mut seen = self.seen.lock().unwrap();
        seen.calls += 1;
        seen.encodings.push(header_text(headers, encoding_header));
        seen.content_types
            .push(header_text(headers, "content-type"));
        seen.test_header
            .push(header_text(headers, "x-selfops-test"));
        reply
    }

    fn accept(&self, request: ExportLogsServiceRequest) {
        self.seen.lock().unwrap().requests.push(request);
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn partial(rejected: i64) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess {
            rejected_log_records: rejected,
            error_message: "record too old".to_owned(),
        }),
    }
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        match self.call(&headers, "grpc-encoding") {
            Reply::Ok => {
                self.accept(request.into_inner());
                Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
            }
            Reply::Partial(rejected) => {
                self.accept(request.into_inner());
                Ok(tonic::Response::new(partial(rejected)))
            }
            Reply::Grpc(code) => Err(tonic::Status::new(code, "scripted failure")),
            Reply::Http(_) => unreachable!("HTTP reply scripted for gRPC"),
        }
    }
}

async fn grpc_receiver(receiver: &Receiver) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_service(
        LogsServiceServer::new(receiver.clone()).accept_compressed(CompressionEncoding::Gzip),
    );
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        router.serve_with_incoming(incoming).await.unwrap();
    });
    addr
}

fn protobuf(status: StatusCode, message: &impl Message) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        message.encode_to_vec(),
    )
        .into_response()
}

async fn http_logs(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let decode = || {
        let mut raw = Vec::new();
        if header_text(&headers, "content-encoding") == "gzip" {
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut raw)
                .unwrap();
        } else {
            raw.extend_from_slice(&body);
        }
        ExportLogsServiceRequest::decode(raw.as_slice()).unwrap()
    };
    match receiver.call(&headers, "content-encoding") {
        Reply::Ok => {
            receiver.accept(decode());
            protobuf(StatusCode::OK, &ExportLogsServiceResponse::default())
        }
        Reply::Partial(rejected) => {
            receiver.accept(decode());
            protobuf(StatusCode::OK, &partial(rejected))
        }
        Reply::Http(code) => {
            let mut response = (StatusCode::from_u16(code).unwrap(), "scripted").into_response();
            if code == 503 {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, "0".parse().unwrap());
            }
            response
        }
        Reply::Grpc(_) => unreachable!("gRPC reply scripted for HTTP"),
    }
}

async fn http_receiver(receiver: &Receiver) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/v1/logs", post(http_logs))
        .with_state(receiver.clone());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

async fn receiver_for(protocol: OtlpProtocol, receiver: &Receiver) -> SocketAddr {
    match protocol {
        OtlpProtocol::Grpc => grpc_receiver(receiver).await,
        OtlpProtocol::HttpProtobuf => http_receiver(receiver).await,
    }
}

/// An OTLP-only pipeline (no file sink) with short backoffs.
fn start(
    addr: SocketAddr,
    protocol: OtlpProtocol,
    retry_for: Duration,
) -> (ExportHandle, tokio::task::JoinHandle<()>) {
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
        queue_capacity: 100,
        batch_size: 100,
        batch_timeout: Duration::from_millis(20),
    };
    let options = ExportOptions {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        ..ExportOptions::default()
    };
    let mut registry = Registry::default();
    let dir = std::env::temp_dir().join("selfops-export-logs-unused");
    let (handle, pipeline) =
        ExportPipeline::start_with(&config, &dir, &mut registry, options).unwrap();
    (handle, tokio::spawn(pipeline))
}

/// Three records, two resources: one batch.
fn send_three(handle: &ExportHandle) {
    let a = resource("checkout", 10);
    let b = resource("cart", 11);
    handle.send(Signal::Log(log_record(&a, 1)));
    handle.send(Signal::Log(log_record(&b, 2)));
    handle.send(Signal::Log(log_record(&a, 3)));
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stop(handle: ExportHandle, task: tokio::task::JoinHandle<()>) {
    assert!(handle.shutdown(Duration::from_secs(1)).await);
    task.await.unwrap();
}

const BOTH: [OtlpProtocol; 2] = [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf];

#[tokio::test]
async fn log_records_reach_the_collector() {
    for protocol in BOTH {
        let receiver = Receiver::default();
        let addr = receiver_for(protocol, &receiver).await;
        let (handle, task) = start(addr, protocol, Duration::from_secs(5));
        send_three(&handle);
        let m = handle.metrics().clone();
        eventually("3 records exported", || {
            m.exported_count(LOGS, SINK_OTLP) == 3
        })
        .await;
        stop(handle, task).await;

        receiver.seen(|seen| {
            assert_eq!(seen.calls, 1, "{protocol:?}: one batch, one request");
            assert_eq!(seen.encodings, ["gzip"], "{protocol:?}");
            assert_eq!(seen.test_header, ["yes"], "{protocol:?}");
            if protocol == OtlpProtocol::HttpProtobuf {
                assert_eq!(seen.content_types, ["application/x-protobuf"]);
            }
            let request = &seen.requests[0];
            assert_eq!(request.resource_logs.len(), 2, "{protocol:?}");
            let first = &request.resource_logs[0];
            let service = &first.resource.as_ref().unwrap().attributes[0];
            assert_eq!(service.key, "service.name");
            assert_eq!(
                service.value.as_ref().unwrap().value,
                Some(any_value::Value::StringValue("checkout".to_owned()))
            );
            let scope = &first.scope_logs[0];
            assert_eq!(scope.scope.as_ref().unwrap().name, "selfops");
            assert_eq!(scope.log_records.len(), 2, "{protocol:?}");
            let record = &scope.log_records[1];
            assert_eq!(record.time_unix_nano, 1_700_000_002_000_000_003);
            assert_eq!(record.severity_number, 13);
            assert_eq!(record.severity_text, "WARN");
            assert_eq!(record.event_name, "selfops.action.applied");
            assert_eq!(
                record.body.as_ref().unwrap().value,
                Some(any_value::Value::StringValue(
                    "rate limit applied to nginx (3)".to_owned()
                ))
            );
            assert_eq!(record.attributes[0].key, "selfops.action");
            assert_eq!(request.resource_logs[1].scope_logs[0].log_records.len(), 1);
        });
        assert_eq!(m.dropped_count(LOGS, DropReason::ExportFailed), 0);
    }
}

#[tokio::test]
async fn retryable_errors_are_retried_then_delivered() {
    for (protocol, failure) in [
        (OtlpProtocol::Grpc, Reply::Grpc(Code::Unavailable)),
        (OtlpProtocol::HttpProtobuf, Reply::Http(503)),
    ] {
        let receiver = Receiver::scripted(&[failure, failure]);
        let addr = receiver_for(protocol, &receiver).await;
        let (handle, task) = start(addr, protocol, Duration::from_secs(5));
        send_three(&handle);
        let m = handle.metrics().clone();
        eventually("3 records exported", || {
            m.exported_count(LOGS, SINK_OTLP) == 3
        })
        .await;
        stop(handle, task).await;
        assert_eq!(receiver.seen(|s| s.calls), 3, "{protocol:?}");
        assert_eq!(receiver.seen(|s| s.requests.len()), 1, "{protocol:?}");
        let retries = m
            .retries
            .get_or_create(&SinkLabels { sink: SINK_OTLP })
            .get();
        assert_eq!(retries, 2, "{protocol:?}");
        assert_eq!(m.dropped_count(LOGS, DropReason::RetriesExhausted), 0);
    }
}

#[tokio::test]
async fn lost_log_records_are_counted() {
    for (protocol, permanent, retryable) in [
        (
            OtlpProtocol::Grpc,
            Reply::Grpc(Code::InvalidArgument),
            Reply::Grpc(Code::Unavailable),
        ),
        (
            OtlpProtocol::HttpProtobuf,
            Reply::Http(400),
            Reply::Http(503),
        ),
    ] {
        // Rejected for good: the whole batch is dropped at once.
        let receiver = Receiver::scripted(&[permanent]);
        let addr = receiver_for(protocol, &receiver).await;
        let (handle, task) = start(addr, protocol, Duration::from_secs(5));
        send_three(&handle);
        let m = handle.metrics().clone();
        eventually("export_failed drop", || {
            m.dropped_count(LOGS, DropReason::ExportFailed) == 3
        })
        .await;
        // Partly rejected: the rest counts as exported.
        let partly = Receiver::scripted(&[Reply::Partial(1)]);
        let addr = receiver_for(protocol, &partly).await;
        let (handle2, task2) = start(addr, protocol, Duration::from_secs(5));
        send_three(&handle2);
        let m2 = handle2.metrics().clone();
        eventually("partial success", || {
            m2.exported_count(LOGS, SINK_OTLP) == 2
        })
        .await;
        assert_eq!(m2.dropped_count(LOGS, DropReason::ExportFailed), 1);
        stop(handle2, task2).await;
        stop(handle, task).await;
        assert_eq!(receiver.seen(|s| s.calls), 1, "{protocol:?}: not retried");
        assert_eq!(m.exported_count(LOGS, SINK_OTLP), 0);
        assert_eq!(
            m.failures
                .get_or_create(&SinkLabels { sink: SINK_OTLP })
                .get(),
            1
        );

        // Failing longer than retry_for: dropped as retries_exhausted.
        let down = Receiver::scripted(&[retryable; 1000]);
        let addr = receiver_for(protocol, &down).await;
        let (handle, task) = start(addr, protocol, Duration::from_millis(150));
        send_three(&handle);
        let m = handle.metrics().clone();
        eventually("retries_exhausted drop", || {
            m.dropped_count(LOGS, DropReason::RetriesExhausted) == 3
        })
        .await;
        stop(handle, task).await;
        assert!(down.seen(|s| s.calls) >= 2, "{protocol:?}: retried");
        assert!(down.seen(|s| s.requests.is_empty()));
        assert_eq!(m.exported_count(LOGS, SINK_OTLP), 0);
    }
}
