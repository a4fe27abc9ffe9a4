//! `control.allow_restart` with the real agent: a signed remote config that
//! moves `telemetry.listen` is taken by re-executing the agent (same pid),
//! which comes back on the new port, runs its health window and reports
//! APPLIED. The OpAMP server is a minimal one written here (HTTP polling,
//! after the specification), not the agent's own fleet server.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message as _;
use selfops_agent::control::signed::{self, SecretKey};
use selfops_proto::opamp::{
    AgentConfigFile, AgentConfigMap, AgentRemoteConfig, AgentToServer, RemoteConfigStatuses,
    ServerCapabilities, ServerToAgent,
};
use selfops_tests::{Agent, free_port, one_agent_at_a_time, privileged, wait_for};

/// What the server saw, and what it offers every poll.
#[derive(Default)]
struct Server {
    seen: Mutex<Vec<AgentToServer>>,
    offer: Mutex<Option<AgentRemoteConfig>>,
}

impl Server {
    /// Serves POST /v1/opamp on a runtime of its own; returns the address.
    fn start(self: &Arc<Self>) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("address");
        let server = self.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().route(
                    "/v1/opamp",
                    axum::routing::post(move |body: axum::body::Bytes| {
                        let server = server.clone();
                        async move { server.answer(&body) }
                    }),
                );
                axum::serve(listener, app).await.expect("serving");
            });
        });
        addr
    }

    fn answer(&self, body: &[u8]) -> Vec<u8> {
        let Ok(message) = AgentToServer::decode(body) else {
            return Vec::new();
        };
        let reply = ServerToAgent {
            instance_uid: message.instance_uid.clone(),
            capabilities: ServerCapabilities::AcceptsStatus as u64
                | ServerCapabilities::OffersRemoteConfig as u64
                | ServerCapabilities::AcceptsEffectiveConfig as u64,
            remote_config: self.offer.lock().unwrap().clone(),
            ..Default::default()
        };
        self.seen.lock().unwrap().push(message);
        reply.encode_to_vec()
    }

    /// The latest remote config status reported for `hash`.
    fn status_of(&self, hash: &[u8]) -> Option<(i32, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter_map(|m| m.remote_config_status.as_ref())
            .find(|s| s.last_remote_config_hash == hash)
            .map(|s| (s.status, s.error_message.clone()))
    }

    fn disconnects(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.agent_disconnect.is_some())
            .count()
    }
}

fn signed_offer(key: &SecretKey, yaml: &str) -> AgentRemoteConfig {
    let file = |body: &[u8]| AgentConfigFile {
        body: body.to_vec(),
        content_type: String::new(),
    };
    AgentRemoteConfig {
        config: Some(AgentConfigMap {
            config_map: [
                (signed::CONFIG_FILE.to_owned(), file(yaml.as_bytes())),
                (
                    signed::SIGNATURE_FILE.to_owned(),
                    file(key.sign(yaml.as_bytes()).as_bytes()),
                ),
            ]
            .into(),
        }),
        config_hash: signed::sha256(yaml.as_bytes()).to_vec(),
    }
}

#[test]
fn a_config_moving_the_telemetry_port_is_applied_by_re_executing_in_place() {
    if !privileged("remote_restart") {
        return;
    }
    let _one = one_agent_at_a_time();
    let server = Arc::new(Server::default());
    let addr = server.start();
    let key = SecretKey::generate();
    let mut agent = Agent::start(
        "remote-restart",
        &format!(
            "control:\n  opamp: {{ endpoint: 'http://{addr}/v1/opamp', heartbeat_interval: 1s }}\n  trusted_keys: ['{}']\n  health_window: 2s\n  allow_restart: true\n  budget: {{ cpu: 64, rss: 4GiB, ring_losses: 1000000 }}\n",
            key.public().to_base64()
        ),
    );
    let pid = agent.pid();
    let old_port = agent.port;
    assert!(
        wait_for(Duration::from_secs(30), || {
            (!server.seen.lock().unwrap().is_empty()).then_some(())
        })
        .is_some(),
        "the agent polls its server:\n{}",
        agent.log()
    );

    let new_port = free_port();
    let offer = signed_offer(
        &key,
        &format!("telemetry: {{ listen: '127.0.0.1:{new_port}' }}\n"),
    );
    let offered = std::time::Instant::now();
    *server.offer.lock().unwrap() = Some(offer.clone());

    // APPLIED once the re-executed agent has run its 2 s window.
    let applied = wait_for(Duration::from_secs(60), || {
        match server.status_of(&offer.config_hash) {
            Some((status, _)) if status == RemoteConfigStatuses::Applied as i32 => Some(Ok(())),
            Some((status, error)) if status == RemoteConfigStatuses::Failed as i32 => {
                Some(Err(error))
            }
            _ => None,
        }
    });
    match applied {
        Some(Ok(())) => {}
        Some(Err(error)) => panic!("FAILED: {error}\n{}", agent.log()),
        None => panic!("not APPLIED within 60 s:\n{}", agent.log()),
    }
    let took = offered.elapsed();
    assert!(took >= Duration::from_secs(2), "APPLIED after {took:?}");
    eprintln!("restarted and APPLIED {took:?} after the offer");

    // The same process, on the new port only.
    assert!(agent.exited().is_none(), "agent exited:\n{}", agent.log());
    assert_eq!(agent.pid(), pid);
    agent.port = new_port;
    assert_eq!(
        agent.status_of("/readyz").map(|(code, _)| code),
        Some(200),
        "{}",
        agent.log()
    );
    assert_eq!(
        agent.metric("selfops_remote_config_applies_total", &["applied"]),
        1.0
    );
    assert_eq!(agent.metric("selfops_remote_config_on_trial", &[]), 0.0);
    for component in ["sensors", "tracer", "exporters"] {
        let healthy = format!("component=\"{component}\"");
        assert_eq!(
            agent.metric("selfops_component_healthy", &[&healthy]),
            1.0,
            "{component}"
        );
    }
    assert_eq!(agent.metric("selfops_health_gate_failures_total", &[]), 0.0);
    eprintln!(
        "resident memory after the restart: {:.0} MiB",
        agent.metric("selfops_agent_resident_memory_bytes", &[]) / f64::from(1u32 << 20)
    );
    let old = answers_on(old_port);
    assert!(old.is_none(), "the old port still answers: {old:?}");
    let log = agent.log();
    assert!(log.contains("re-executing"), "{log}");
    // The first run said goodbye before it re-executed itself.
    assert!(server.disconnects() >= 1);
    let data = agent.dir.join("data");
    assert!(data.join("remote_config_last_good.pb").exists());
    assert!(!data.join("remote_config_on_trial").exists());
    assert!(!data.join("remote_config_on_trial.pb").exists());

    let (status, _) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
}

/// Whether anything answers HTTP on `port` (a connection refused is None).
fn answers_on(port: u16) -> Option<u16> {
    match ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(2))
        .call()
    {
        Ok(response) => Some(response.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(_) => None,
    }
}
