//! One agent's WebSocket session: every binary frame is an AgentToServer
//! answered at once; offers made through the API (or announced by another
//! server) wake the session, which sends the agent's offer in between.
//! Anything malformed, a second agent on the same session, or silence
//! past the idle limit ends the session (the agent reconnects).
//!
//! A fleet server holds one session per connected agent, most of them
//! resting between heartbeats, so what a resting session holds is what the
//! server costs per agent: the stream, its read in progress (no buffer) and
//! this future, kept small by boxing the store calls while they run. At
//! most `Fleet::turn`'s number of sessions run those calls at once, so a
//! rollout that wakes every session does not allocate for all at once.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Notify,
};

use super::{
    opamp::Fleet,
    ws::{self, Incoming, Reader},
};
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

/// Runs the session on an upgraded connection until either side ends it.
pub async fn run<S>(io: S, fleet: Arc<Fleet>, max_message_bytes: usize)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(io);
    let wake = Arc::new(Notify::new());
    let idle = idle_limit(fleet.heartbeat());
    let mut agent: Option<String> = None;
    // The read in progress lives across pushes: a frame is never cut.
    let mut reading = Box::pin(Reader::new(read, max_message_bytes).next_owned());
    let mut close: Option<Vec<u8>> = None;
    loop {
        let (answer, last) = tokio::select! {
            incoming = tokio::time::timeout(idle, &mut reading) => {
                let Ok((reader, incoming)) = incoming else {
                    tracing::debug!(?agent, "agent silent: session ended");
                    break;
                };
                reading = Box::pin(reader.next_owned());
                let bytes = match incoming {
                    Ok(Incoming::Binary(bytes)) => bytes,
                    Ok(Incoming::Ping(payload)) => {
                        if let Err(err) = ws::send_pong(&mut write, &payload).await {
                            tracing::debug!(%err, ?agent, "answering a ping: session ended");
                            break;
                        }
                        continue;
                    }
                    Ok(Incoming::Close(payload)) => {
                        close = payload;
                        break;
                    }
                    Err(err) => {
                        match err.label() {
                            Some(label) => {
                                fleet.metrics.reject(label);
                                tracing::warn!(%err, ?agent, "agent frame refused: session ended");
                            }
                            None => tracing::debug!(%err, ?agent, "session ended"),
                        }
                        break;
                    }
                };
                let _turn = fleet.turn().await;
                match Box::pin(respond(&fleet, &bytes, max_message_bytes, &mut agent, &wake)).await {
                    Step::Answer(answer) => (answer, false),
                    Step::Last(answer) => (answer, true),
                    Step::End => break,
                }
            }
            () = wake.notified() => {
                let pushed = match &agent {
                    Some(uid) => {
                        let _turn = fleet.turn().await;
                        Box::pin(fleet.pushed(uid)).await
                    }
                    None => None,
                };
                match pushed {
                    Some(pushed) => (frame::encode_server_ws(&pushed), false),
                    None => continue,
                }
            }
        };
        if let Err(err) = ws::send_binary(&mut write, &answer).await {
            tracing::debug!(%err, ?agent, "sending to the agent: session ended");
            break;
        }
        fleet.metrics.message("sent");
        if last {
            break;
        }
    }
    drop(reading);
    if let Some(uid) = &agent {
        let _turn = fleet.turn().await;
        Box::pin(fleet.unregister(uid, &wake)).await;
    }
    let _ = ws::send_close(&mut write, close.as_deref().unwrap_or_default()).await;
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
        let session = run(io, fleet, 1 << 20);
        let size = std::mem::size_of_val(&session);
        assert!(size <= 1024, "a session's future takes {size} bytes");
    }
}
