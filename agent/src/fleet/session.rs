//! One agent's WebSocket session: every binary frame is an AgentToServer
//! answered at once; offers made through the API (or announced by another
//! server) wake the session, which sends the agent's offer in between.
//! Anything malformed, a second agent on the same session, or silence
//! past the idle limit ends the session (the agent reconnects).

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Notify,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message},
};

use super::opamp::Fleet;
use crate::control::frame;

/// Silence tolerated: a few missed heartbeats.
fn idle_limit(heartbeat: Duration) -> Duration {
    heartbeat
        .saturating_mul(3)
        .saturating_add(Duration::from_secs(10))
}

/// What a session does after an agent's message.
enum Step {
    /// Send the answer and go on.
    Answer(Vec<u8>),
    /// Send the answer, then end the session.
    Last(Vec<u8>),
    /// End the session.
    End,
}

pub async fn run<S>(mut ws: WebSocketStream<S>, fleet: Arc<Fleet>, max_message_bytes: usize)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let wake = Arc::new(Notify::new());
    let idle = idle_limit(fleet.heartbeat());
    let mut agent: Option<String> = None;
    // The store calls are boxed futures awaited one at a time: a session
    // rests between messages, and its own future would otherwise be sized
    // for them (several KiB per connected agent).
    loop {
        let (answer, last) = tokio::select! {
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
                match Box::pin(respond(&fleet, &bytes, max_message_bytes, &mut agent, &wake)).await {
                    Step::Answer(answer) => (answer, false),
                    Step::Last(answer) => (answer, true),
                    Step::End => break,
                }
            }
            () = wake.notified() => {
                let pushed = match &agent {
                    Some(uid) => Box::pin(fleet.pushed(uid)).await,
                    None => None,
                };
                match pushed {
                    Some(pushed) => (frame::encode_server_ws(&pushed), false),
                    None => continue,
                }
            }
        };
        if let Err(err) = ws.send(Message::Binary(answer.into())).await {
            tracing::debug!(%err, ?agent, "sending to the agent: session ended");
            break;
        }
        fleet.metrics.message("sent");
        if last {
            break;
        }
    }
    if let Some(uid) = &agent {
        Box::pin(fleet.unregister(uid, &wake)).await;
    }
    let _ = ws.close(None).await;
}

/// Takes in one agent frame: the session's agent is set by its first
/// message and may not change.
async fn respond(
    fleet: &Fleet,
    bytes: &[u8],
    max_message_bytes: usize,
    agent: &mut Option<String>,
    wake: &Arc<Notify>,
) -> Step {
    let message = match frame::decode_agent_ws(bytes, max_message_bytes) {
        Ok(message) => message,
        Err(err) => {
            fleet.metrics.reject(err.label());
            tracing::warn!(%err, ?agent, "malformed agent message: session ended");
            return Step::End;
        }
    };
    let goodbye = message.agent_disconnect.is_some();
    let (key, answer) = fleet.handle(message, true).await;
    let answer = frame::encode_server_ws(&answer);
    match (&*agent, key) {
        // The error answer, then the end: the session names no agent.
        (_, None) => return Step::Last(answer),
        (None, Some(key)) => {
            fleet.register(&key, wake.clone());
            *agent = Some(key);
        }
        (Some(current), Some(key)) if *current != key => {
            fleet.metrics.reject("second_instance_uid");
            tracing::warn!(%current, %key, "a second instance_uid on one session: ended");
            return Step::End;
        }
        _ => {}
    }
    if goodbye {
        Step::End
    } else {
        Step::Answer(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::store::Store;

    /// A connected agent costs the server its session's future while it
    /// rests: the store calls must stay out of it (boxed while they run).
    #[tokio::test]
    async fn a_resting_session_is_small() {
        let fleet = Fleet::new(Store::open_in_memory().unwrap(), Duration::from_secs(1));
        let (io, _peer) = tokio::io::duplex(64);
        let ws =
            WebSocketStream::from_raw_socket(io, tungstenite::protocol::Role::Server, None).await;
        let session = run(ws, fleet, 1 << 20);
        let size = std::mem::size_of_val(&session);
        assert!(size <= 1536, "a session's future takes {size} bytes");
    }
}
