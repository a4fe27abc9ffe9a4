//! OpAMP over WebSocket: binary messages with the zero varint header,
//! a heartbeat while idle, agent_disconnect and a close frame on stop.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::watch;
use tokio_tungstenite::{
    Connector,
    tungstenite::{
        self, Message,
        client::IntoClientRequest as _,
        http::{HeaderName, HeaderValue},
        protocol::WebSocketConfig,
    },
};

use super::{
    client::{Client, SessionEnd},
    frame,
};
use crate::tls;

const CONNECT_WITHIN: Duration = Duration::from_secs(10);
const SEND_WITHIN: Duration = Duration::from_secs(10);
const CLOSE_WITHIN: Duration = Duration::from_millis(300);
/// How often the status is looked at for news to send.
const STATUS_EVERY: Duration = Duration::from_secs(1);

fn retry(reason: impl ToString) -> SessionEnd {
    SessionEnd::Retry {
        reason: reason.to_string(),
        retry_after: None,
    }
}

pub async fn session(
    client: &mut Client,
    tls: bool,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let mut request = match client.opamp.endpoint.as_str().into_client_request() {
        Ok(request) => request,
        Err(err) => return retry(format!("endpoint: {err}")),
    };
    for (name, value) in &client.opamp.headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(value)) => {
                request.headers_mut().insert(name, value);
            }
            _ => return retry(format!("header {name:?} is not a valid HTTP header")),
        }
    }
    let connector = if tls {
        match tls::client_config(&client.opamp.tls, &[b"http/1.1"]) {
            Ok(config) => Some(Connector::Rustls(config)),
            Err(err) => return retry(err.describe("control.opamp.tls")),
        }
    } else {
        Some(Connector::Plain)
    };
    let limit = client.opamp.max_message_bytes;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(ws_config),
        false,
        connector,
    );
    let stream = tokio::select! {
        connected = tokio::time::timeout(CONNECT_WITHIN, connect) => match connected {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(err)) => {
                client.metrics.connection("failed");
                return retry(format!("connecting: {err}"));
            }
            Err(_) => {
                client.metrics.connection("failed");
                return retry("connecting: timed out");
            }
        },
        _ = stop.changed() => return SessionEnd::Stopped,
    };
    let (mut sink, mut source) = stream.split();
    let mut status = tokio::time::interval(STATUS_EVERY);
    let mut heartbeat_at = tokio::time::Instant::now() + client.heartbeat();
    let mut send_now = true;
    loop {
        if send_now {
            let frame = frame::encode_ws(&client.next_message());
            match tokio::time::timeout(SEND_WITHIN, sink.send(Message::Binary(frame.into()))).await
            {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return retry(format!("sending: {err}")),
                Err(_) => return retry("sending: timed out"),
            }
            heartbeat_at = tokio::time::Instant::now() + client.heartbeat();
            send_now = false;
        }
        tokio::select! {
            _ = stop.changed() => {
                let last = frame::encode_ws(&client.state.disconnect_message());
                let _ = tokio::time::timeout(CLOSE_WITHIN, async {
                    sink.send(Message::Binary(last.into())).await?;
                    sink.close().await
                })
                .await;
                return SessionEnd::Stopped;
            }
            incoming = source.next() => match incoming {
                Some(Ok(Message::Binary(bytes))) => {
                    match frame::decode_ws(&bytes, limit) {
                        Ok(message) => {
                            if !client.answered() {
                                client.connected();
                            }
                            if let Err(end) = client.receive(message) {
                                return end;
                            }
                        }
                        // A wrong header means the peer speaks something
                        // else: the session is not worth keeping.
                        Err(err @ frame::FrameError::WrongHeader(_)) => {
                            client.frame_error(&err);
                            return retry(err);
                        }
                        Err(err) => client.frame_error(&err),
                    }
                    send_now = client.has_news();
                }
                Some(Ok(Message::Text(_))) => client.metrics.reject("text"),
                // Pings are answered by tungstenite on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    let _ = sink.flush().await;
                }
                Some(Ok(Message::Close(_))) | None => {
                    client.metrics.connection("closed");
                    return retry("closed by the server");
                }
                Some(Err(err)) => {
                    let too_large = matches!(err, tungstenite::Error::Capacity(_));
                    client.metrics.reject(if too_large { "too_large" } else { "decode" });
                    return retry(format!("receiving: {err}"));
                }
            },
            _ = status.tick() => send_now = client.has_news(),
            _ = tokio::time::sleep_until(heartbeat_at) => send_now = true,
        }
    }
}
