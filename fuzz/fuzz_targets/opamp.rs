//! Feeds arbitrary bytes to the agent's OpAMP receive path as a WebSocket
//! frame and as an HTTP body: framing, protobuf decoding, the client state
//! and, for any remote config, signature checks and the config policy.
//! Then to the fleet server's: its WebSocket framing of an agent's stream
//! and the AgentToServer decoding of each message.
//! Nothing may panic, and nothing may grow past the size limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use selfops_agent::{
    config::Config,
    control::{frame, policy, signed, state::ClientState},
    fleet::ws::{Incoming, Reader},
};
use selfops_proto::opamp::AgentDescription;

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let key = signed::SecretKey::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .expect("a fixed key");
    let trusted = [key.public()];
    let current = Config::default();
    let mut state = ClientState::new(uuid::Uuid::nil(), AgentDescription::default());
    for message in [frame::decode_ws(data, LIMIT), frame::decode(data, LIMIT)]
        .into_iter()
        .flatten()
    {
        let reply = state.receive(message);
        if let Some(remote) = reply.remote_config
            && let Ok(yaml) = signed::verify(&remote, &trusted)
        {
            let _ = policy::accept(&yaml, "", &current);
        }
        let next = state.next_message();
        assert!(next.sequence_num > 0);
    }
    server_side(data);
    // The YAML policy on its own (signature aside).
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = policy::accept(text, "", &current);
    }
});

/// The server's reader over `data` as an agent's stream: a byte slice
/// never makes it wait, so each read completes on its first poll.
fn server_side(data: &[u8]) {
    let mut reader = Reader::new(data, LIMIT);
    let mut context = Context::from_waker(Waker::noop());
    // Every frame takes at least two bytes; past that the stream is done.
    for _ in 0..=data.len() / 2 {
        let next = pin!(reader.next()).poll(&mut context);
        let Poll::Ready(next) = next else {
            panic!("a read from a byte slice waited");
        };
        match next {
            Ok(Incoming::Binary(message)) => {
                assert!(message.len() <= LIMIT);
                let _ = frame::decode_agent_ws(&message, LIMIT);
            }
            Ok(Incoming::Ping(payload)) => assert!(payload.len() <= 125),
            Ok(Incoming::Close(_)) | Err(_) => return,
        }
    }
}
