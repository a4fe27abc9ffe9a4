//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` with protobuf
//! or JSON bodies, optionally gzip, over HTTP/1.1 (hyper).

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message as _;
use tokio::{net::TcpListener, sync::watch};

use super::{
    accept::{self, Acceptor, Conn, ConnInfo},
    decode::{self, DecodeError, Encoding, Rejected, Signal},
    grpc::{self, Kind as _, RETRY_DELAY},
    intake::{Intake, Refusal},
    metrics::{Outcome, Transport},
    rpc_status::RpcStatus,
};

/// Time for a client to send a request's headers (and, between requests,
/// to start the next one).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a client to send a whole request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Buffered bytes per connection (bounds the header block too).
const MAX_BUF: usize = 64 << 10;
/// Time in-flight requests get to finish once the receiver stops.
pub const DRAIN: Duration = Duration::from_secs(2);

type Body = Full<Bytes>;

/// Serves OTLP/HTTP on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    acceptor: Arc<Acceptor>,
    intake: Intake,
    limit: usize,
    shutdown: watch::Receiver<bool>,
) {
    let stop = shutdown.clone();
    accept::accept_loop(listener, acceptor, shutdown, move |conn| {
        tokio::spawn(serve_conn(conn, intake.clone(), limit, stop.clone()));
    })
    .await;
}

async fn serve_conn(conn: Conn, intake: Intake, limit: usize, mut shutdown: watch::Receiver<bool>) {
    let info = conn.info.clone();
    let service = service_fn(move |request| {
        let intake = intake.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(handle(request, &info, &intake, limit).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF);
    let connection = builder.serve_connection(TokioIo::new(conn), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(%err, "receiver: HTTP connection ended");
            }
        }
        _ = accept::stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, connection).await;
        }
    }
}

/// One request to its response; every outcome counted.
async fn handle(
    request: Request<Incoming>,
    info: &ConnInfo,
    intake: &Intake,
    limit: usize,
) -> Response<Body> {
    let signal = match request.uri().path() {
        "/v1/traces" => Signal::Traces,
        "/v1/metrics" => Signal::Metrics,
        "/v1/logs" => Signal::Logs,
        _ => {
            intake
                .metrics
                .unknown_request(Transport::Http, Outcome::Unsupported);
            return plain(
                StatusCode::NOT_FOUND,
                "no such path: OTLP/HTTP takes /v1/traces, /v1/metrics and /v1/logs",
            );
        }
    };
    if request.method() != Method::POST {
        intake.refused(Transport::Http, signal, Outcome::Unsupported);
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "OTLP/HTTP takes POST");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let headers = request.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let Some(encoding) = Encoding::from_content_type(&content_type) else {
        intake.refused(Transport::Http, signal, Outcome::Unsupported);
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/x-protobuf or application/json",
        );
    };
    let content_encoding = match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v.to_owned()),
        Some(Err(_)) => {
            intake.refused(Transport::Http, signal, Outcome::Unsupported);
            return error(
                encoding,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unreadable Content-Encoding",
            );
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        intake.refused(Transport::Http, signal, Outcome::TooLarge);
        return too_large(encoding, limit);
    }
    // Held until the batch is handed over (or refused).
    let Some(_turn) = intake.decoding_turn(Transport::Http, signal) else {
        return retry_later(encoding);
    };
    let body = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(request.into_body(), limit).collect(),
    )
    .await;
    let body = match body {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
            intake.refused(Transport::Http, signal, Outcome::TooLarge);
            return too_large(encoding, limit);
        }
        Ok(Err(_)) | Err(_) => {
            // The client went away or was too slow: nothing to answer well.
            intake.refused(Transport::Http, signal, Outcome::Invalid);
            return error(
                encoding,
                StatusCode::BAD_REQUEST,
                "the request body could not be read in time",
            );
        }
    };
    let batch = match decode::decode_http(
        signal,
        &content_type,
        content_encoding.as_deref(),
        &body,
        limit,
    ) {
        Ok(batch) => batch,
        Err(err) => {
            let (outcome, status) = match err {
                DecodeError::TooLarge { .. } => (Outcome::TooLarge, StatusCode::PAYLOAD_TOO_LARGE),
                DecodeError::UnsupportedContentType(_) | DecodeError::UnsupportedEncoding(_) => {
                    (Outcome::Unsupported, StatusCode::UNSUPPORTED_MEDIA_TYPE)
                }
                DecodeError::Gzip(_) | DecodeError::Protobuf(_) | DecodeError::Json(_) => {
                    (Outcome::Invalid, StatusCode::BAD_REQUEST)
                }
            };
            intake.refused(Transport::Http, signal, outcome);
            return error(encoding, status, &err.to_string());
        }
    };
    let resource = info.resource.as_deref().map(|r| &r[..]);
    match intake.submit(Transport::Http, signal, batch, resource) {
        Ok(rejected) => success(signal, encoding, rejected),
        Err(Refusal::Backpressure) => retry_later(encoding),
        Err(Refusal::Shutdown) => error(
            encoding,
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        ),
    }
}

/// 429 with `Retry-After`: the OTLP/HTTP way to ask for a retry.
fn retry_later(encoding: Encoding) -> Response<Body> {
    let mut response = error(
        encoding,
        StatusCode::TOO_MANY_REQUESTS,
        "the agent's pipeline is full; retry later",
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(RETRY_DELAY.as_secs().max(1)),
    );
    response
}

fn too_large(encoding: Encoding, limit: usize) -> Response<Body> {
    let mut response = error(
        encoding,
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body over the limit of {limit} bytes"),
    );
    // The rest of the body is not read: the connection cannot be reused.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The `Export*ServiceResponse`, in the request's encoding.
fn success(signal: Signal, encoding: Encoding, rejected: Rejected) -> Response<Body> {
    let body = match signal {
        Signal::Traces => encode(encoding, &grpc::Traces::response(rejected)),
        Signal::Metrics => encode(encoding, &grpc::Metrics::response(rejected)),
        Signal::Logs => encode(encoding, &grpc::Logs::response(rejected)),
    };
    respond(StatusCode::OK, encoding.content_type(), body)
}

fn encode<M: prost::Message + serde::Serialize>(encoding: Encoding, message: &M) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        // Serializing these plain structs cannot fail; an empty object is
        // still a valid response.
        Encoding::Json => serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

/// An error as the OTLP/HTTP spec has it: a `google.rpc.Status` in the
/// request's encoding.
fn error(encoding: Encoding, status: StatusCode, message: &str) -> Response<Body> {
    let rpc = RpcStatus {
        code: grpc_code(status),
        message: message.to_owned(),
        details: Vec::new(),
    };
    let body = match encoding {
        Encoding::Protobuf => rpc.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&serde_json::json!({
            "code": rpc.code,
            "message": rpc.message,
        }))
        .unwrap_or_default(),
    };
    respond(status, encoding.content_type(), body)
}

/// The gRPC code matching an HTTP status, for the `Status` body.
fn grpc_code(status: StatusCode) -> i32 {
    let code = match status {
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => {
            tonic::Code::ResourceExhausted
        }
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => tonic::Code::InvalidArgument,
        _ => tonic::Code::Unknown,
    };
    code as i32
}

fn plain(status: StatusCode, message: &str) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        message.as_bytes().to_vec(),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
