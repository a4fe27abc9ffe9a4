//! Feeds arbitrary bytes to the agent's OpAMP receive path as a WebSocket
//! frame and as an HTTP body: framing, protobuf decoding, the client state
//! and, for any remote config, signature checks and the config policy.
//! Nothing may panic, and nothing may grow past the size limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use selfops_agent::{
    config::Config,
    control::{frame, policy, signed, state::ClientState},
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
    // The YAML policy on its own (signature aside).
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = policy::accept(text, "", &current);
    }
});
