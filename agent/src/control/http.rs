//! OpAMP over plain HTTP: each AgentToServer is a POST of
//! `application/x-protobuf`, the answer a ServerToAgent. The client polls
//! at the server's heartbeat interval (its own when the server sets none),
//! at once while it has news, and honours 503/429 with Retry-After.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Request, StatusCode, Uri,
    header::{CONTENT_TYPE, HOST, RETRY_AFTER},
};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use selfops_proto::opamp::AgentToServer;
use tokio::{net::TcpStream, sync::watch};

use super::{
    backoff,
    client::{Client, SessionEnd},
    frame,
};
use crate::tls;

const REQUEST_WITHIN: Duration = Duration::from_secs(30);
const DISCONNECT_WITHIN: Duration = Duration::from_millis(300);
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The answer to one POST.
enum Answer {
    Message(Bytes),
    /// 503 or 429: wait, at least this long.
    RetryAfter(&'static str, Option<Duration>),
    Failed(String),
}

struct Target {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
}

pub async fn session(
    client: &mut Client,
    tls: bool,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let target = match target(client, tls) {
        Ok(target) => target,
        Err(reason) => {
            return SessionEnd::Retry {
                reason,
                retry_after: None,
            };
        }
    };
    let mut status = tokio::time::interval(STATUS_EVERY);
    loop {
        let message = client.next_message();
        let answer = tokio::select! {
            answer = post(client, &target, &message) => answer,
            _ = stop.changed() => return disconnect(client, &target).await,
        };
        match answer {
            Answer::Message(body) => match frame::decode(&body, client.opamp.max_message_bytes) {
                Ok(reply) => {
                    if !client.answered() {
                        client.connected();
                    }
                    if let Err(end) = client.receive(reply) {
                        return end;
                    }
                }
                Err(err) => client.frame_error(&err),
            },
            Answer::RetryAfter(reason, after) => {
                client.metrics.retry(reason);
                return SessionEnd::Retry {
                    reason: reason.replace('_', " "),
                    retry_after: after,
                };
            }
            Answer::Failed(reason) => {
                if !client.answered() {
                    client.metrics.connection("failed");
                }
                return SessionEnd::Retry {
                    reason,
                    retry_after: None,
                };
            }
        }
        // Poll again at once while there is news, else at the heartbeat.
        let next_poll = tokio::time::Instant::now() + client.heartbeat();
        while !client.has_news() {
            tokio::select! {
                _ = tokio::time::sleep_until(next_poll) => break,
                _ = status.tick() => {}
                _ = stop.changed() => return disconnect(client, &target).await,
            }
        }
    }
}

fn target(client: &Client, tls: bool) -> Result<Target, String> {
    let uri: Uri = client
        .opamp
        .endpoint
        .parse()
        .map_err(|e| format!("endpoint: {e}"))?;
    let host = uri.host().ok_or("endpoint: no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tls = if tls {
        let describe = |e: tls::TlsError| e.describe("control.opamp.tls");
        let config = tls::client_config(&client.opamp.tls, &[b"http/1.1"]).map_err(describe)?;
        let name = tls::server_name(&client.opamp.tls, &host).map_err(describe)?;
        Some((tokio_rustls::TlsConnector::from(Arc::clone(&config)), name))
    } else {
        None
    };
    Ok(Target {
        uri,
        host,
        port,
        tls,
    })
}

async fn disconnect(client: &mut Client, target: &Target) -> SessionEnd {
    let last = client.state.disconnect_message();
    let _ = tokio::time::timeout(DISCONNECT_WITHIN, post(client, target, &last)).await;
    SessionEnd::Stopped
}

async fn post(client: &Client, target: &Target, message: &AgentToServer) -> Answer {
    match tokio::time::timeout(REQUEST_WITHIN, exchange(client, target, message)).await {
        Ok(answer) => answer,
        Err(_) => Answer::Failed("request timed out".into()),
    }
}

async fn exchange(client: &Client, target: &Target, message: &AgentToServer) -> Answer {
    let tcp = match TcpStream::connect((
        target.host.trim_start_matches('[').trim_end_matches(']'),
        target.port,
    ))
    .await
    {
        Ok(tcp) => tcp,
        Err(err) => return Answer::Failed(format!("connecting: {err}")),
    };
    let _ = tcp.set_nodelay(true);
    match &target.tls {
        Some((connector, name)) => match connector.connect(name.clone(), tcp).await {
            Ok(stream) => request(client, target, message, TokioIo::new(stream)).await,
            Err(err) => Answer::Failed(format!("TLS: {err}")),
        },
        None => request(client, target, message, TokioIo::new(tcp)).await,
    }
}

async fn request<IO>(client: &Client, target: &Target, message: &AgentToServer, io: IO) -> Answer
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(io).await {
        Ok(pair) => pair,
        Err(err) => return Answer::Failed(format!("HTTP: {err}")),
    };
    let connection = tokio::spawn(connection);
    let path = target
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = target
        .uri
        .authority()
        .map_or(target.host.clone(), |a| a.to_string());
    let mut builder = Request::post(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/x-protobuf");
    for (name, value) in &client.opamp.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = match builder.body(Full::new(Bytes::from(message.encode_to_vec()))) {
        Ok(request) => request,
        Err(err) => return Answer::Failed(format!("building the request: {err}")),
    };
    let answer = match sender.send_request(request).await {
        Ok(response) => {
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| backoff::parse_retry_after(v, std::time::SystemTime::now()));
            match status {
                StatusCode::OK => {
                    let limited =
                        Limited::new(response.into_body(), client.opamp.max_message_bytes);
                    match limited.collect().await {
                        Ok(body) => Answer::Message(body.to_bytes()),
                        Err(err) => {
                            client.metrics.reject("too_large");
                            Answer::Failed(format!("reading the answer: {err}"))
                        }
                    }
                }
                StatusCode::SERVICE_UNAVAILABLE => Answer::RetryAfter("http_503", retry_after),
                StatusCode::TOO_MANY_REQUESTS => Answer::RetryAfter("http_429", retry_after),
                other => Answer::Failed(format!("server answered {other}")),
            }
        }
        Err(err) => Answer::Failed(format!("HTTP: {err}")),
    };
    connection.abort();
    answer
}
