//! The fleet server against the agent's own OpAMP client (no sensors):
//! many agents over WebSocket and one over HTTP polling are listed, a
//! signed config offered through the API is APPLIED by all of them, an
//! unsigned one FAILED by the selected ones only; malformed frames end a
//! session without taking the server down; a rollout advances step by
//! step and stops at the first step that fails.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::{
    api::OfferRequest,
    opamp::Fleet,
    rollout::{self, Plan, RolloutError},
    server::{self, App, Limits},
    status,
    store::{AgentRow, Store},
};
use crate::{
    config::Config,
    control::{
        ControlMetrics, Live, client::Client, gate, identity, signed::SecretKey, state::ClientState,
    },
    supervise::Health,
};

const AGENTS: usize = 50;
pub(super) const WITHIN: Duration = Duration::from_secs(60);

pub(super) struct Agent {
    pub(super) stop: tokio::sync::watch::Sender<bool>,
    pub(super) task: tokio::task::JoinHandle<()>,
    /// What its health gate watches, and the trace section it runs.
    pub(super) export: crate::export::ExportMetrics,
    pub(super) trace: tokio::sync::watch::Receiver<crate::config::TraceConfig>,
}

/// An in-process agent: the control client alone, as `control::start`
/// builds it, with `zone` among its labels.
fn start_agent(dir: &std::path::Path, endpoint: &str, key: &SecretKey, zone: &str) -> Agent {
    start_agent_with(dir, endpoint, key, zone, "0s")
}

/// The same with a health window.
pub(super) fn start_agent_with(
    dir: &std::path::Path,
    endpoint: &str,
    key: &SecretKey,
    zone: &str,
    window: &str,
) -> Agent {
    std::fs::create_dir_all(dir).unwrap();
    let yaml = format!(
        "data_dir: {}\ncontrol:\n  opamp: {{ endpoint: '{endpoint}', heartbeat_interval: 1s }}\n  trusted_keys: ['{}']\n  labels: {{ zone: {zone} }}\n  health_window: {window}\n",
        dir.display(),
        key.public().to_base64()
    );
    let config = Arc::new(Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap());
    let health = Arc::new(Health::default());
    health.started();
    let uid = identity::load_or_create(dir).unwrap();
    let state = ClientState::new(uid, crate::control::description(&config.control));
    let export = crate::export::ExportMetrics::default();
    let live = Live::new(&config);
    let trace = live.trace.subscribe();
    let client = Client::new(
        config.control.opamp.clone().unwrap(),
        state,
        ControlMetrics::default(),
        config.clone(),
        live,
        Box::new(|_| {}),
        Arc::new(crate::signal::Resource { attributes: vec![] }),
        gate::Watch::new(health, export.clone()),
    );
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(client.run(stopping));
    Agent {
        stop,
        task,
        export,
        trace,
    }
}

async fn start_server(limits: Limits) -> (SocketAddr, oneshot::Sender<()>) {
    start_server_on(
        Store::open_in_memory().unwrap(),
        limits,
        Duration::from_secs(1),
    )
    .await
}

pub(super) async fn start_server_on(
    store: Store,
    limits: Limits,
    heartbeat: Duration,
) -> (SocketAddr, oneshot::Sender<()>) {
    let fleet = Fleet::new(store, heartbeat);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(server::serve(listener, App { fleet, limits }, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Polls the inventory until `done` holds for it.
pub(super) async fn wait_for(
    server: &str,
    what: &str,
    done: impl Fn(&[AgentRow]) -> bool,
) -> Vec<AgentRow> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let agents = status::agents(server).await.unwrap();
        if done(&agents) {
            return agents;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {agents:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_listed_apply_signed_and_fail_unsigned() {
    let (addr, stop_server) = start_server(Limits::default()).await;
    let server = format!("http://{addr}");
    let key = SecretKey::generate();
    let base = std::env::temp_dir().join(format!("selfops-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let agents: Vec<Agent> = (0..AGENTS)
        .map(|i| {
            // One agent polls over HTTP, the rest hold a WebSocket.
            let scheme = if i == 0 { "http" } else { "ws" };
            let zone = if i % 2 == 0 { "a" } else { "b" };
            let endpoint = format!("{scheme}://{addr}/v1/opamp");
            start_agent(&base.join(i.to_string()), &endpoint, &key, zone)
        })
        .collect();

    let listed = wait_for(&server, "every agent listed", |a| {
        a.len() == AGENTS && a.iter().all(|a| a.labels.contains_key("zone"))
    })
    .await;
    assert!(listed.iter().all(|a| !a.host_name.is_empty()));
    assert!(listed.iter().all(|a| a.labels["service.name"] == "selfops"));

    let yaml = "trace:\n  exclude: [{ executable: curl }]\n";
    let signed = status::offer(
        &server,
        &OfferRequest {
            yaml: yaml.into(),
            signature: Some(key.sign(yaml.as_bytes())),
            select: BTreeMap::new(),
            uids: vec![],
            step: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(signed.agents.len(), AGENTS);
    wait_for(&server, "signed config APPLIED by all", |a| {
        a.len() == AGENTS
            && a.iter()
                .all(|a| a.remote_hash == signed.hash && a.remote_status == "APPLIED")
    })
    .await;

    let unsigned_yaml = "trace:\n  exclude: [{ executable: wget }]\n";
    let unsigned = status::offer(
        &server,
        &OfferRequest {
            yaml: unsigned_yaml.into(),
            signature: None,
            select: [("zone".to_owned(), "b".to_owned())].into(),
            uids: vec![],
            step: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(unsigned.agents.len(), AGENTS / 2);
    let after = wait_for(&server, "unsigned config FAILED by zone b", |a| {
        a.iter()
            .filter(|a| a.labels["zone"] == "b")
            .all(|a| a.remote_hash == unsigned.hash && a.remote_status == "FAILED")
    })
    .await;
    for agent in after.iter().filter(|a| a.labels["zone"] == "b") {
        assert!(agent.remote_error.contains("unsigned"), "{agent:?}");
    }
    // Zone a was not selected: still on the signed config.
    assert!(
        after
            .iter()
            .filter(|a| a.labels["zone"] == "a")
            .all(|a| a.remote_hash == signed.hash && a.remote_status == "APPLIED")
    );

    for agent in agents {
        let _ = agent.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), agent.task).await;
    }
    let _ = stop_server.send(());
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn malformed_frames_end_the_session_not_the_server() {
    let (addr, stop_server) = start_server(Limits {
        max_message_bytes: 1024,
        max_connections: 8,
    })
    .await;
    let endpoint = format!("ws://{addr}/v1/opamp");
    let frames: [Vec<u8>; 4] = [
        vec![1, 2, 3],             // header not 0
        vec![0, 0x0a, 100, 1],     // truncated protobuf
        vec![0; 4096],             // over the limit
        vec![0, 0x0a, 3, 1, 2, 3], // instance_uid not 16 bytes
    ];
    for frame in frames {
        let (mut ws, _) = tokio_tungstenite::connect_async(&endpoint).await.unwrap();
        let _ = ws.send(Message::Binary(frame.into())).await;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the session ends");
    }
    // Still serving.
    assert!(
        status::agents(&format!("http://{addr}"))
            .await
            .unwrap()
            .is_empty()
    );
    let _ = stop_server.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_advances_step_by_step_and_stops_on_failures() {
    let (addr, stop_server) = start_server(Limits::default()).await;
    let server = format!("http://{addr}");
    let key = SecretKey::generate();
    let base = std::env::temp_dir().join(format!("selfops-fleet-rollout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let endpoint = format!("ws://{addr}/v1/opamp");
    let agents: Vec<Agent> = (0..10)
        .map(|i| start_agent(&base.join(i.to_string()), &endpoint, &key, "a"))
        .collect();
    wait_for(&server, "every agent listed", |a| a.len() == 10).await;
    let plan = Plan {
        steps: vec![10, 50, 100],
        health_window: Duration::from_millis(200),
        max_failures_percent: 0,
        step_timeout: WITHIN,
        poll: Duration::from_millis(100),
    };
    let zone_a: BTreeMap<String, String> = [("zone".to_owned(), "a".to_owned())].into();

    let yaml = "trace:\n  exclude: [{ executable: curl }]\n";
    let hash = rollout::run(&server, yaml, &key, &zone_a, &plan)
        .await
        .unwrap();
    let all = status::agents(&server).await.unwrap();
    assert!(
        all.iter()
            .all(|a| a.remote_hash == hash && a.remote_status == "APPLIED"),
        "{all:#?}"
    );

    // Signed by a key the agents do not trust: the first step's one agent
    // fails it and is returned to the config before; no other agent is
    // offered it.
    let untrusted = SecretKey::generate();
    let bad = "trace:\n  exclude: [{ executable: wget }]\n";
    let err = rollout::run(&server, bad, &untrusted, &zone_a, &plan)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RolloutError::Stopped {
                step: 10,
                failed: 1,
                of: 1,
                ..
            }
        ),
        "{err}"
    );
    let RolloutError::Stopped { returned, .. } = err else {
        unreachable!()
    };
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0].hash, hash);
    wait_for(&server, "the canary back on the config before", |all| {
        all.iter().all(|a| {
            a.remote_hash == hash && a.remote_status == "APPLIED" && a.desired_hash == hash
        })
    })
    .await;

    let nowhere: BTreeMap<String, String> = [("zone".to_owned(), "z".to_owned())].into();
    assert!(matches!(
        rollout::run(&server, yaml, &key, &nowhere, &plan).await,
        Err(RolloutError::NoAgents)
    ));

    for agent in agents {
        let _ = agent.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), agent.task).await;
    }
    let _ = stop_server.send(());
    let _ = std::fs::remove_dir_all(&base);
}
