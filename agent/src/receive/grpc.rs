//! OTLP/gRPC: `TraceService`, `MetricsService` and `LogsService` `Export`,
//! gzip accepted, served by tonic over the receiver's own connections.
//! The services are written here rather than taken from the generated
//! servers so that a malformed message is `INVALID_ARGUMENT` (not
//! `INTERNAL`) and every refusal is counted.

use std::{
    convert::Infallible,
    io,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{
    logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse},
    metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    },
    trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse},
};
use prost::Message as _;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tonic::{
    Code, Status,
    body::Body,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{BoxFuture, EnabledCompressionEncodings, StdError, http},
    server::{NamedService, UnaryService},
};

use super::{
    accept::{self, Acceptor, Conn, ConnInfo},
    decode::{self, Rejected, Signal},
    intake::{Intake, Refusal},
    metrics::{Outcome, Transport},
    rpc_status,
};
use crate::export::OtlpBatch;

/// How long a client is asked to wait before retrying a refused export.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);
/// One export may take this long (it never waits on the pipeline).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams at once on one HTTP/2 connection.
const MAX_STREAMS: u32 = 64;
/// Largest header block a client may send.
const MAX_HEADER_LIST: u32 = 64 << 10;

/// One OTLP service: its request and response types and names.
pub trait Kind: Send + Sync + 'static {
    const SIGNAL: Signal;
    const SERVICE: &'static str;
    const PATH: &'static str;
    type Request: prost::Message + Default + Send + 'static;
    type Response: prost::Message + Default + Send + 'static;
    fn batch(request: Self::Request) -> OtlpBatch;
    fn response(rejected: Rejected) -> Self::Response;
}

pub struct Traces;
pub struct Metrics;
pub struct Logs;

impl Kind for Traces {
    const SIGNAL: Signal = Signal::Traces;
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    fn batch(request: Self::Request) -> OtlpBatch {
        decode::traces(request)
    }
    fn response(rejected: Rejected) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (rejected.count > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: i64::try_from(rejected.count).unwrap_or(i64::MAX),
                error_message: rejected.message,
            }),
        }
    }
}

impl Kind for Metrics {
    const SIGNAL: Signal = Signal::Metrics;
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    fn batch(request: Self::Request) -> OtlpBatch {
        decode::metrics(request)
    }
    fn response(rejected: Rejected) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: (rejected.count > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: i64::try_from(rejected.count).unwrap_or(i64::MAX),
                error_message: rejected.message,
            }),
        }
    }
}

impl Kind for Logs {
    const SIGNAL: Signal = Signal::Logs;
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    fn batch(request: Self::Request) -> OtlpBatch {
        decode::logs(request)
    }
    fn response(rejected: Rejected) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (rejected.count > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: i64::try_from(rejected.count).unwrap_or(i64::MAX),
                error_message: rejected.message,
            }),
        }
    }
}

/// Serves the three services on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    acceptor: Arc<Acceptor>,
    intake: Intake,
    limit: usize,
    shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let (conns, mut ready) = mpsc::channel::<Conn>(accept::MAX_CONNECTIONS);
    tokio::spawn(accept::accept_loop(
        listener,
        acceptor,
        shutdown.clone(),
        move |conn| {
            // Never full: each connection holds one of as many slots.
            let _ = conns.try_send(conn);
        },
    ));
    let incoming = async_stream(move |cx| ready.poll_recv(cx).map(|c| c.map(Ok::<_, io::Error>)));
    let mut stop = shutdown;
    tonic::transport::Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .add_service(ExportServer::<Traces>::new(intake.clone(), limit))
        .add_service(ExportServer::<Metrics>::new(intake.clone(), limit))
        .add_service(ExportServer::<Logs>::new(intake, limit))
        .serve_with_incoming_shutdown(incoming, async move {
            accept::stopped(&mut stop).await;
        })
        .await
}

/// A stream from a poll function.
fn async_stream<T, F>(poll: F) -> futures_util::stream::PollFn<F>
where
    F: FnMut(&mut Context<'_>) -> Poll<Option<T>>,
{
    futures_util::stream::poll_fn(poll)
}

/// One service, `K`, as a tower service tonic routes to.
pub struct ExportServer<K> {
    intake: Intake,
    limit: usize,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for ExportServer<K> {
    fn clone(&self) -> Self {
        Self {
            intake: self.intake.clone(),
            limit: self.limit,
            kind: PhantomData,
        }
    }
}

impl<K: Kind> ExportServer<K> {
    pub fn new(intake: Intake, limit: usize) -> Self {
        Self {
            intake,
            limit,
            kind: PhantomData,
        }
    }
}

impl<K: Kind> NamedService for ExportServer<K> {
    const NAME: &'static str = K::SERVICE;
}

impl<K, B> tonic::codegen::Service<http::Request<B>> for ExportServer<K>
where
    K: Kind,
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let intake = self.intake.clone();
        let limit = self.limit;
        Box::pin(async move {
            if request.uri().path() != K::PATH {
                intake.refused(Transport::Grpc, K::SIGNAL, Outcome::Unsupported);
                return Ok(Status::unimplemented("no such method").into_http());
            }
            // Held until the batch is handed over (or refused).
            let Some(_turn) = intake.decoding_turn(Transport::Grpc, K::SIGNAL) else {
                return Ok(retry_later().into_http());
            };
            let counted = Arc::new(AtomicBool::new(false));
            let method = Export::<K> {
                intake: intake.clone(),
                counted: counted.clone(),
                kind: PhantomData,
            };
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(OtlpCodec::<K>::default())
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(limit), None);
            let response = grpc.unary(method, request).await;
            if !counted.load(Ordering::Relaxed) {
                // Refused before the method ran: by tonic (size, compression)
                // or by the codec (malformed).
                let outcome = match Status::from_header_map(response.headers()).map(|s| s.code()) {
                    Some(Code::InvalidArgument | Code::Internal) => Outcome::Invalid,
                    Some(Code::ResourceExhausted | Code::OutOfRange) => Outcome::TooLarge,
                    _ => Outcome::Unsupported,
                };
                intake.refused(Transport::Grpc, K::SIGNAL, outcome);
            }
            Ok(response)
        })
    }
}

/// The `Export` method of `K`.
struct Export<K> {
    intake: Intake,
    counted: Arc<AtomicBool>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Kind> UnaryService<K::Request> for Export<K> {
    type Response = K::Response;
    type Future = BoxFuture<tonic::Response<K::Response>, Status>;

    fn call(&mut self, request: tonic::Request<K::Request>) -> Self::Future {
        self.counted.store(true, Ordering::Relaxed);
        let intake = self.intake.clone();
        Box::pin(async move {
            let resource = request
                .extensions()
                .get::<ConnInfo>()
                .and_then(|info| info.resource.clone());
            let batch = K::batch(request.into_inner());
            match intake.submit(
                Transport::Grpc,
                K::SIGNAL,
                batch,
                resource.as_deref().map(|r| &r[..]),
            ) {
                Ok(rejected) => Ok(tonic::Response::new(K::response(rejected))),
                Err(Refusal::Backpressure) => Err(retry_later()),
                Err(Refusal::Shutdown) => Err(Status::unavailable("the agent is shutting down")),
            }
        })
    }
}

/// `RESOURCE_EXHAUSTED` with a `RetryInfo`: the OTLP way to ask for a
/// retry after `RETRY_DELAY`.
fn retry_later() -> Status {
    let message = "the agent's pipeline is full; retry later";
    let details = rpc_status::with_retry_info(Code::ResourceExhausted as i32, message, RETRY_DELAY);
    Status::with_details(
        Code::ResourceExhausted,
        message,
        Bytes::from(details.encode_to_vec()),
    )
}

/// Prost messages, with decoding errors as `INVALID_ARGUMENT`.
struct OtlpCodec<K>(PhantomData<fn() -> K>);

impl<K> Default for OtlpCodec<K> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<K: Kind> Codec for OtlpCodec<K> {
    type Encode = K::Response;
    type Decode = K::Request;
    type Encoder = MessageEncoder<K::Response>;
    type Decoder = MessageDecoder<K::Request>;

    fn encoder(&mut self) -> Self::Encoder {
        MessageEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

struct MessageEncoder<T>(PhantomData<fn(T)>);

impl<T: prost::Message> Encoder for MessageEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer grows as needed; an error would be a bug in prost.
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

struct MessageDecoder<T>(PhantomData<fn() -> T>);

impl<T: prost::Message + Default> Decoder for MessageDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed OTLP message: {e}")))
    }
}
