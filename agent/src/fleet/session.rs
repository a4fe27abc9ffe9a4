//! One agent's WebSocket session: every binary frame is an AgentToServer
//! answered at once; offers made through the API are pushed in between.
//! Anything malformed, a second agent on the same session, or silence
//! past the idle limit ends the session (the agent reconnects).

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use selfops_proto::opamp::ServerToAgent;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message},
};

use super::opamp::{Fleet, PUSH_QUEUE};
use crate::control::frame;

/// Silence tolerated: a few missed heartbeats.
fn idle_limit(heartbeat: Duration) -> Duration {
    heartbeat
        .saturating_mul(3)
        .saturating_add(Duration::from_secs(10))
}

pub async fn run<S>(mut ws: WebSocketStream<S>, fleet: Arc<Fleet>, max_message_bytes: usize)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<ServerToAgent>(PUSH_QUEUE);
    let idle = idle_limit(fleet.heartbeat());
    let mut agent: Option<String> = None;
    loop {
        let answer = tokio::select! {
            incoming = tokio::time::timeout(idle, ws.next()) => {
                let bytes = match incoming {
                    Err(_) => {
                        tracing::debug!(?agent, "agent silent: session ended");
                        break;
                    }
                    Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
                    Ok(Some(Ok(Message::Text(_)))) => {
                        fleet.metrics.reject("text");
                        tracing::warn!(?agent, "text frame from an agent: session ended");
                        break;
                    }
                    Ok(Some(Ok(Message::Close(_))) | None) => break,
                    Ok(Some(Err(err))) => {
                        if matches!(err, tungstenite::Error::Capacity(_)) {
                            fleet.metrics.reject("too_large");
                        }
                        tracing::debug!(%err, ?agent, "WebSocket error: session ended");
                        break;
                    }
                };
                let message = match frame::decode_agent_ws(&bytes, max_message_bytes) {
                    Ok(message) => message,
                    Err(err) => {
                        fleet.metrics.reject(err.label());
                        tracing::warn!(%err, ?agent, "malformed agent message: session ended");
                        break;
                    }
                };
                let goodbye = message.agent_disconnect.is_some();
                let (key, answer) = fleet.handle(message, true).await;
                match (&agent, key) {
                    (_, None) => {
                        // The error answer, then the end: the session names no agent.
                        fleet.metrics.message("sent");
                        let _ = ws.send(Message::Binary(frame::encode_server_ws(&answer).into())).await;
                        break;
                    }
                    (None, Some(key)) => {
                        fleet.register(&key, tx.clone());
                        agent = Some(key);
                    }
                    (Some(current), Some(key)) if *current != key => {
                        fleet.metrics.reject("second_instance_uid");
                        tracing::warn!(%current, %key, "a second instance_uid on one session: ended");
                        break;
                    }
                    _ => {}
                }
                if goodbye {
                    break;
                }
                answer
            }
            Some(pushed) = rx.recv() => pushed,
        };
        if let Err(err) = ws
            .send(Message::Binary(frame::encode_server_ws(&answer).into()))
            .await
        {
            tracing::debug!(%err, ?agent, "sending to the agent: session ended");
            break;
        }
        fleet.metrics.message("sent");
    }
    if let Some(uid) = &agent {
        fleet.unregister(uid, &tx).await;
    }
    let _ = ws.close(None).await;
}
