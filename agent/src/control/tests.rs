//! The client against loopback servers: WebSocket and HTTP, signed and
//! refused configs, the health gate and rollback, the last-known-good config
//! after a restart, bad frames, server errors, goodbye on stop.
//!
//! The servers are written here, after the OpAMP specification's server
//! side: WebSocket at /v1/opamp with binary frames carrying the zero varint
//! header and a ServerToAgent protobuf, each reply addressed to the agent's
//! instance_uid and announcing the server's capabilities; HTTP polling
//! answered with `application/x-protobuf` bodies. None of the agent's own
//! server-side code is used to check the agent.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use selfops_proto::opamp::{
    AgentRemoteConfig, AgentToServer, ConnectionSettingsOffers, OpAmpConnectionSettings,
    RemoteConfigStatuses, ServerToAgent, ServerToAgentFlags,
};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_tungstenite::tungstenite::Message;

use super::{
    Live,
    client::Client,
    frame,
    metrics::ControlMetrics,
    signed::{self, SecretKey},
    state::{CAPABILITIES, ClientState},
};
use crate::{config::Config, signal::Signal, supervise::Health};

const WITHIN: Duration = Duration::from_secs(10);

struct Agent {
    audit: Arc<Mutex<Vec<Signal>>>,
    export: crate::export::ExportMetrics,
    health: Arc<Health>,
    metrics: ControlMetrics,
    trace: tokio::sync::watch::Receiver<crate::config::TraceConfig>,
    profile: tokio::sync::watch::Receiver<crate::config::ProfileConfig>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    dir: std::path::PathBuf,
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("selfops-control-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start_agent(endpoint: &str, key: &SecretKey, name: &str) -> Agent {
    start_agent_in(&fresh_dir(name), endpoint, key, "0s")
}

/// An agent whose data directory is `dir` and whose remote configs must
/// stay healthy for `window`.
fn start_agent_in(dir: &std::path::Path, endpoint: &str, key: &SecretKey, window: &str) -> Agent {
    let yaml = local_yaml(dir, endpoint, key, window, "");
    let config = Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
    start_agent_on(Arc::new(config), None)
}

/// The local file of a test agent; `extra` goes into `control`.
fn local_yaml(
    dir: &std::path::Path,
    endpoint: &str,
    key: &SecretKey,
    window: &str,
    extra: &str,
) -> String {
    format!(
        "data_dir: {}\ncontrol:\n  opamp: {{ endpoint: '{endpoint}', heartbeat_interval: 1s, max_message_bytes: 65536 }}\n  trusted_keys: ['{}']\n  labels: {{ zone: a }}\n  health_window: {window}\n  budget: {{ cpu: 1024, rss: 64GiB }}\n{extra}",
        dir.display(),
        key.public().to_base64()
    )
}

/// An agent running `config`; restarts it asks for go to `restart`.
fn start_agent_on(config: Arc<Config>, restart: Option<Arc<dyn Fn() + Send + Sync>>) -> Agent {
    let dir = config.data_dir.clone();
    let live = Live::new(&config);
    let trace = live.trace.subscribe();
    let profile = live.profile.subscribe();
    let health = Arc::new(Health::default());
    health.started();
    let audit = Arc::new(Mutex::new(Vec::new()));
    let sink = audit.clone();
    let uid = super::identity::load_or_create(&dir).unwrap();
    let state = ClientState::new(uid, super::description(&config.control));
    let export = crate::export::ExportMetrics::default();
    let metrics = ControlMetrics::default();
    let mut client = Client::new(
        config.control.opamp.clone().unwrap(),
        state,
        metrics.clone(),
        config.clone(),
        live,
        Box::new(move |signal| sink.lock().unwrap().push(signal)),
        Arc::new(crate::signal::Resource { attributes: vec![] }),
        super::gate::Watch::new(health.clone(), export.clone()),
    );
    if let Some(restart) = restart {
        client.on_restart(restart);
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(client.run(stopping));
    Agent {
        audit,
        export,
        health,
        metrics,
        trace,
        profile,
        stop,
        task,
        dir,
    }
}

fn signed_offer(key: &SecretKey, yaml: &str) -> AgentRemoteConfig {
    let sig = key.sign(yaml.as_bytes());
    signed::offer(
        &[
            (signed::CONFIG_FILE, yaml.as_bytes()),
            (signed::SIGNATURE_FILE, sig.as_bytes()),
        ],
        signed::sha256(yaml.as_bytes()).to_vec(),
    )
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn accept(listener: &TcpListener) -> Ws {
    let (tcp, _) = tokio::time::timeout(WITHIN, listener.accept())
        .await
        .expect("the agent connects")
        .unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

async fn next_agent_message(ws: &mut Ws) -> AgentToServer {
    loop {
        let message = tokio::time::timeout(WITHIN, ws.next())
            .await
            .expect("a message within the deadline")
            .expect("stream open")
            .unwrap();
        if let Message::Binary(bytes) = message {
            return frame::decode_agent_ws(&bytes, 1 << 20).expect("header 0 and protobuf");
        }
    }
}

/// Messages until one carries a remote config status.
async fn next_status(ws: &mut Ws) -> selfops_proto::opamp::RemoteConfigStatus {
    tokio::time::timeout(WITHIN, async {
        loop {
            if let Some(status) = next_agent_message(ws).await.remote_config_status {
                return status;
            }
        }
    })
    .await
    .expect("a remote config status within the deadline")
}

/// The next message that satisfies `wanted`, within the deadline.
async fn next_such(ws: &mut Ws, wanted: impl Fn(&AgentToServer) -> bool) -> AgentToServer {
    tokio::time::timeout(WITHIN, async {
        loop {
            let m = next_agent_message(ws).await;
            if wanted(&m) {
                return m;
            }
        }
    })
    .await
    .expect("the message within the deadline")
}

async fn send(ws: &mut Ws, message: ServerToAgent) {
    ws.send(Message::Binary(frame::encode_server_ws(&message).into()))
        .await
        .unwrap();
}

fn attribute<'a>(message: &'a AgentToServer, key: &str) -> Option<&'a str> {
    let d = message.agent_description.as_ref()?;
    d.identifying_attributes
        .iter()
        .chain(&d.non_identifying_attributes)
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            selfops_proto::opamp::any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

#[tokio::test]
async fn websocket_session_applies_signed_refuses_unsigned_and_says_goodbye() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let mut agent = start_agent(&endpoint, &key, "ws");
    let mut ws = accept(&listener).await;

    let first = next_agent_message(&mut ws).await;
    assert_eq!(first.sequence_num, 1);
    assert_eq!(first.capabilities, CAPABILITIES);
    assert_eq!(first.instance_uid.len(), 16);
    let uid = uuid::Uuid::from_slice(&first.instance_uid).unwrap();
    assert_eq!(uid.get_version_num(), 7);
    for key in [
        "service.name",
        "service.version",
        "host.name",
        "host.arch",
        "os.type",
    ] {
        assert!(attribute(&first, key).is_some(), "{key} missing");
    }
    assert_eq!(attribute(&first, "zone"), Some("a"));
    assert!(first.health.as_ref().is_some_and(|h| h.healthy));
    assert!(first.effective_config.is_some());

    // A signed config changing a live key: applied and published.
    let yaml = "trace:\n  exclude: [{ executable: curl }]\n";
    let good = signed_offer(&key, yaml);
    send(
        &mut ws,
        ServerToAgent {
            instance_uid: first.instance_uid.clone(),
            remote_config: Some(good.clone()),
            ..Default::default()
        },
    )
    .await;
    let status = next_status(&mut ws).await;
    assert_eq!(
        status.status,
        RemoteConfigStatuses::Applied as i32,
        "{}",
        status.error_message
    );
    assert_eq!(status.last_remote_config_hash, good.config_hash);
    tokio::time::timeout(WITHIN, agent.trace.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agent.trace.borrow().exclude.len(), 1);

    // Unsigned: failed with its reason, nothing published.
    let unsigned = signed::offer(
        &[(signed::CONFIG_FILE, b"trace: { exclude: [] }\n")],
        signed::sha256(b"trace: { exclude: [] }\n").to_vec(),
    );
    send(
        &mut ws,
        ServerToAgent {
            remote_config: Some(unsigned),
            ..Default::default()
        },
    )
    .await;
    let status = next_status(&mut ws).await;
    assert_eq!(status.status, RemoteConfigStatuses::Failed as i32);
    assert!(
        status.error_message.starts_with("unsigned"),
        "{}",
        status.error_message
    );
    // Signed by a key the agent does not trust.
    let stranger = SecretKey::generate();
    send(
        &mut ws,
        ServerToAgent {
            remote_config: Some(signed_offer(&stranger, "trace: { exclude: [] }\n")),
            ..Default::default()
        },
    )
    .await;
    let status = next_status(&mut ws).await;
    assert_eq!(status.status, RemoteConfigStatuses::Failed as i32);
    assert!(
        status.error_message.contains("trusted key"),
        "{}",
        status.error_message
    );
    assert!(!agent.trace.has_changed().unwrap());
    assert_eq!(agent.trace.borrow().exclude.len(), 1);

    // ReportFullState: everything again.
    send(
        &mut ws,
        ServerToAgent {
            flags: ServerToAgentFlags::ReportFullState as u64,
            ..Default::default()
        },
    )
    .await;
    let full = next_such(&mut ws, |m| m.agent_description.is_some()).await;
    assert!(full.health.is_some() && full.effective_config.is_some());
    let effective = full.effective_config.unwrap().config_map.unwrap();
    // The local file with the remote config laid over it.
    let body = String::from_utf8(effective.config_map[signed::CONFIG_FILE].body.clone()).unwrap();
    assert!(
        body.contains("curl") && body.contains("trusted_keys"),
        "{body}"
    );

    {
        let audit = agent.audit.lock().unwrap();
        let events: Vec<_> = audit
            .iter()
            .filter_map(|s| match s {
                Signal::Log(l) => Some(l.event_name),
                _ => None,
            })
            .collect();
        assert_eq!(
            events,
            [
                "selfops.config.accepted",
                "selfops.config.applied",
                "selfops.config.failed",
                "selfops.config.failed"
            ]
        );
    }

    // Stop: agent_disconnect, then a close frame.
    agent.stop.send(true).unwrap();
    let last = next_such(&mut ws, |m| m.agent_disconnect.is_some()).await;
    assert!(last.sequence_num > full.sequence_num);
    let closed = tokio::time::timeout(WITHIN, ws.next()).await.unwrap();
    assert!(matches!(closed, Some(Ok(Message::Close(_))) | None));
    tokio::time::timeout(WITHIN, agent.task)
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&agent.dir);
}

#[tokio::test]
async fn wrong_header_and_garbage_end_the_session_and_it_comes_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let agent = start_agent(&endpoint, &key, "header");
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;
    // Malformed protobuf: thrown away, the session goes on.
    ws.send(Message::Binary(vec![0, 0x0a, 100, 1].into()))
        .await
        .unwrap();
    // A wrong header: the session ends and the agent reconnects.
    let mut wrong = frame::encode_server_ws(&ServerToAgent::default());
    wrong[0] = 3;
    ws.send(Message::Binary(wrong.into())).await.unwrap();
    let mut again = accept(&listener).await;
    let second = next_agent_message(&mut again).await;
    assert_eq!(second.instance_uid, first.instance_uid);
    // A new session reports the full state.
    assert!(second.agent_description.is_some());
    assert!(second.sequence_num > first.sequence_num);
    agent.stop.send(true).unwrap();
    tokio::time::timeout(WITHIN, agent.task)
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&agent.dir);
}

/// One HTTP request as the server saw it.
struct Posted {
    content_type: String,
    message: AgentToServer,
}

#[tokio::test]
async fn http_polling_honours_503_and_the_heartbeat() {
    use axum::{
        body::Bytes,
        http::{HeaderMap, StatusCode, header},
        response::IntoResponse,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/opamp", listener.local_addr().unwrap());
    let (tx, mut rx) = mpsc::channel::<Posted>(64);
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/v1/opamp",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let count = count.clone();
            async move {
                let message = AgentToServer::decode(body).unwrap();
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let content_type = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx
                    .send(Posted {
                        content_type,
                        message,
                    })
                    .await;
                if n == 0 {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "1")],
                        Vec::new(),
                    )
                        .into_response();
                }
                let reply = ServerToAgent {
                    connection_settings: Some(ConnectionSettingsOffers {
                        opamp: Some(OpAmpConnectionSettings {
                            heartbeat_interval_seconds: 1,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                (StatusCode::OK, reply.encode_to_vec()).into_response()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let key = SecretKey::generate();
    let agent = start_agent(&endpoint, &key, "http");

    let first = tokio::time::timeout(WITHIN, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.content_type, "application/x-protobuf");
    assert_eq!(first.message.capabilities, CAPABILITIES);
    // After the 503 (Retry-After 1 s), the full state again.
    let started = tokio::time::Instant::now();
    let second = tokio::time::timeout(WITHIN, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(second.message.agent_description.is_some());
    // Then polls at the server's 1 s heartbeat, with only the uid and
    // capabilities when nothing changed.
    let third = tokio::time::timeout(WITHIN, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.message.capabilities, CAPABILITIES);
    assert!(third.message.agent_description.is_none());
    assert!(third.message.sequence_num > second.message.sequence_num);
    agent.stop.send(true).unwrap();
    let last = tokio::time::timeout(WITHIN, async {
        loop {
            let posted = rx.recv().await.unwrap();
            if posted.message.agent_disconnect.is_some() {
                return posted;
            }
        }
    })
    .await
    .expect("agent_disconnect within the deadline");
    assert_eq!(last.message.instance_uid, first.message.instance_uid);
    tokio::time::timeout(WITHIN, agent.task)
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&agent.dir);
}

/// What the test server offers: status, effective config and remote config.
const SERVER_CAPABILITIES: u64 = selfops_proto::opamp::ServerCapabilities::AcceptsStatus as u64
    | selfops_proto::opamp::ServerCapabilities::OffersRemoteConfig as u64
    | selfops_proto::opamp::ServerCapabilities::AcceptsEffectiveConfig as u64;

/// A server reply to the agent `uid`, offering `remote` if given.
fn to_agent(uid: &[u8], remote: Option<AgentRemoteConfig>) -> ServerToAgent {
    ServerToAgent {
        instance_uid: uid.to_vec(),
        capabilities: SERVER_CAPABILITIES,
        remote_config: remote,
        ..Default::default()
    }
}

fn audit_events(agent: &Agent) -> Vec<&'static str> {
    agent
        .audit
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| match s {
            Signal::Log(l) => Some(l.event_name),
            _ => None,
        })
        .collect()
}

fn effective_body(message: &AgentToServer) -> Option<String> {
    let map = message.effective_config.as_ref()?.config_map.as_ref()?;
    String::from_utf8(map.config_map.get(signed::CONFIG_FILE)?.body.clone()).ok()
}

fn applies(agent: &Agent, outcome: &'static str) -> u64 {
    agent
        .metrics
        .applies
        .get_or_create(&super::metrics::OutcomeLabel { outcome })
        .get()
}

async fn stop(agent: Agent) {
    agent.stop.send(true).unwrap();
    tokio::time::timeout(WITHIN, agent.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn applied_is_reported_only_after_the_health_window() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let dir = fresh_dir("window");
    let window = Duration::from_secs(2);
    let agent = start_agent_in(&dir, &endpoint, &key, "2s");
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;

    let good = signed_offer(&key, "trace:\n  exclude: [{ executable: curl }]\n");
    let offered = tokio::time::Instant::now();
    send(&mut ws, to_agent(&first.instance_uid, Some(good.clone()))).await;
    // Until the window has passed, at most APPLYING; however slow the
    // machine, APPLIED cannot come sooner than the window.
    let applied = tokio::time::timeout(WITHIN, async {
        loop {
            let status = next_status(&mut ws).await;
            assert_eq!(status.last_remote_config_hash, good.config_hash);
            match RemoteConfigStatuses::try_from(status.status) {
                Ok(RemoteConfigStatuses::Applying) => continue,
                Ok(RemoteConfigStatuses::Applied) => return offered.elapsed(),
                other => panic!("{other:?}: {}", status.error_message),
            }
        }
    })
    .await
    .expect("APPLIED within the deadline");
    assert!(applied >= window, "APPLIED after {applied:?}");
    // Kept as the last-known-good config, audited twice.
    let kept = super::last_good::load(&dir).unwrap().expect("stored");
    assert_eq!(kept, good);
    assert_eq!(
        audit_events(&agent),
        ["selfops.config.accepted", "selfops.config.applied"]
    );
    assert_eq!(applies(&agent, "applied"), 1);
    assert_eq!(agent.metrics.on_trial.get(), 0);
    stop(agent).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unhealthy_within_the_window_rolls_back_and_reports_failed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let dir = fresh_dir("rollback");
    // A window no test run outlasts: only ill health can end it.
    let mut agent = start_agent_in(&dir, &endpoint, &key, "1h");
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;
    let uid = first.instance_uid.clone();

    // 1. The pipeline stops delivering: a batch given up.
    let offer = signed_offer(&key, "trace:\n  exclude: [{ executable: curl }]\n");
    send(&mut ws, to_agent(&uid, Some(offer.clone()))).await;
    let status = next_status(&mut ws).await;
    assert_eq!(
        status.status,
        RemoteConfigStatuses::Applying as i32,
        "{}",
        status.error_message
    );
    tokio::time::timeout(WITHIN, agent.trace.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agent.trace.borrow_and_update().exclude.len(), 1);
    assert_eq!(agent.metrics.on_trial.get(), 1);
    // A batch of 4 spans given up, as the OTLP sink counts it.
    agent.export.failure(crate::export::metrics::SINK_OTLP);
    agent.export.drop_signals(
        crate::export::metrics::TRACES,
        crate::export::metrics::DropReason::ExportFailed,
        4,
    );

    let failed = next_such(&mut ws, |m| {
        m.remote_config_status
            .as_ref()
            .is_some_and(|s| s.status == RemoteConfigStatuses::Failed as i32)
    })
    .await;
    let status = failed.remote_config_status.clone().unwrap();
    assert_eq!(status.last_remote_config_hash, offer.config_hash);
    assert!(
        status.error_message.starts_with("rolled back")
            && status
                .error_message
                .contains("export failing: 4 of 4 signals")
            && !status.error_message.contains('\n'),
        "{}",
        status.error_message
    );
    // The effective config it returned to, and the trace section back.
    let body = effective_body(&failed).expect("effective config with the status");
    assert!(!body.contains("curl"), "{body}");
    tokio::time::timeout(WITHIN, agent.trace.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(agent.trace.borrow_and_update().exclude.is_empty());
    assert!(super::last_good::load(&dir).unwrap().is_none());

    // 2. A supervised task fails during another config's window.
    let offer = signed_offer(&key, "trace:\n  include: [{ executable: nginx }]\n");
    send(&mut ws, to_agent(&uid, Some(offer.clone()))).await;
    let status = next_status(&mut ws).await;
    assert_eq!(status.status, RemoteConfigStatuses::Applying as i32);
    assert_eq!(status.last_remote_config_hash, offer.config_hash);
    agent.health.failed(&crate::supervise::Failure {
        task: crate::supervise::Task::Tracer,
        cause: "ring gone".into(),
    });
    let status = next_status(&mut ws).await;
    assert_eq!(status.status, RemoteConfigStatuses::Failed as i32);
    assert!(
        status.error_message.contains("tracer") && status.error_message.contains("ring gone"),
        "{}",
        status.error_message
    );
    tokio::time::timeout(WITHIN, async {
        while !agent.trace.borrow_and_update().include.is_empty() {
            agent.trace.changed().await.unwrap();
        }
    })
    .await
    .expect("include back to the local value");

    assert_eq!(
        audit_events(&agent),
        [
            "selfops.config.accepted",
            "selfops.config.rolled_back",
            "selfops.config.accepted",
            "selfops.config.rolled_back",
        ]
    );
    assert_eq!(applies(&agent, "rolled_back"), 2);
    assert_eq!(applies(&agent, "applied"), 0);
    for (check, n) in [("export", 1), ("tasks", 1), ("cpu", 0), ("rss", 0)] {
        let label = super::metrics::CheckLabel { check };
        assert_eq!(agent.metrics.gate_failures.get_or_create(&label).get(), n);
    }
    assert_eq!(agent.metrics.on_trial.get(), 0);
    assert!(super::last_good::load(&dir).unwrap().is_none());
    stop(agent).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_restart_runs_the_last_known_good_config_if_it_still_verifies() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let dir = fresh_dir("restart");
    let agent = start_agent_in(&dir, &endpoint, &key, "0s");
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;
    let good = signed_offer(&key, "trace:\n  exclude: [{ executable: curl }]\n");
    send(&mut ws, to_agent(&first.instance_uid, Some(good.clone()))).await;
    let status = next_status(&mut ws).await;
    assert_eq!(
        status.status,
        RemoteConfigStatuses::Applied as i32,
        "{}",
        status.error_message
    );
    stop(agent).await;
    drop(ws);

    // The same node restarted: it runs the last-known-good config from the
    // start and says so in its first message, before any offer.
    let again = start_agent_in(&dir, &endpoint, &key, "0s");
    assert_eq!(again.trace.borrow().exclude.len(), 1);
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;
    let status = first.remote_config_status.clone().expect("status reported");
    assert_eq!(status.status, RemoteConfigStatuses::Applied as i32);
    assert_eq!(status.last_remote_config_hash, good.config_hash);
    assert!(effective_body(&first).unwrap().contains("curl"));
    // The same offer again is not redone (nothing audited); the full state
    // asked for next shows it still applied.
    send(&mut ws, to_agent(&first.instance_uid, Some(good.clone()))).await;
    let mut full = to_agent(&first.instance_uid, None);
    full.flags = ServerToAgentFlags::ReportFullState as u64;
    send(&mut ws, full).await;
    let full = next_such(&mut ws, |m| m.agent_description.is_some()).await;
    let status = full.remote_config_status.expect("full state");
    assert_eq!(status.status, RemoteConfigStatuses::Applied as i32);
    assert_eq!(status.last_remote_config_hash, good.config_hash);
    assert!(audit_events(&again).is_empty());
    stop(again).await;
    drop(ws);

    // Trusted keys changed locally: the stored config no longer verifies
    // and the agent runs its local file.
    let rotated = SecretKey::generate();
    let other = start_agent_in(&dir, &endpoint, &rotated, "0s");
    assert!(other.trace.borrow().exclude.is_empty());
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;
    assert!(first.remote_config_status.is_none());
    assert!(!effective_body(&first).unwrap().contains("curl"));
    stop(other).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_config_the_agent_dies_under_twice_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let dir = fresh_dir("crashes");
    let offer = signed_offer(&key, "trace:\n  exclude: [{ executable: curl }]\n");
    // Twice the agent takes the config and dies within its window (the
    // task aborted: no orderly stop), then restarts on its local config.
    for _ in 0..2 {
        let agent = start_agent_in(&dir, &endpoint, &key, "1h");
        assert!(agent.trace.borrow().exclude.is_empty());
        let mut ws = accept(&listener).await;
        let first = next_agent_message(&mut ws).await;
        send(&mut ws, to_agent(&first.instance_uid, Some(offer.clone()))).await;
        let status = next_status(&mut ws).await;
        assert_eq!(
            status.status,
            RemoteConfigStatuses::Applying as i32,
            "{}",
            status.error_message
        );
        agent.task.abort();
        let _ = agent.task.await;
    }
    // The third time the server offers it, it is refused.
    let agent = start_agent_in(&dir, &endpoint, &key, "1h");
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;
    send(&mut ws, to_agent(&first.instance_uid, Some(offer.clone()))).await;
    let status = next_status(&mut ws).await;
    assert_eq!(status.status, RemoteConfigStatuses::Failed as i32);
    assert!(
        status.error_message.contains("ended 2 times"),
        "{}",
        status.error_message
    );
    assert!(agent.trace.borrow().exclude.is_empty());
    assert_eq!(audit_events(&agent), ["selfops.config.failed"]);
    // Another config is still taken, and an orderly stop within its window
    // does not count against it.
    let other = signed_offer(&key, "trace:\n  include: [{ executable: nginx }]\n");
    send(&mut ws, to_agent(&first.instance_uid, Some(other))).await;
    let status = next_status(&mut ws).await;
    assert_eq!(status.status, RemoteConfigStatuses::Applying as i32);
    stop(agent).await;
    assert!(!dir.join(super::last_good::TRIAL_FILE).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stands in for the perf events: what it was asked to sample at.
#[derive(Default)]
struct PerfEvents {
    rates: Vec<Option<u32>>,
}

impl crate::profile::live::Sampling for PerfEvents {
    fn set_rate(
        &mut self,
        frequency_hz: Option<u32>,
    ) -> Result<(), crate::profile::sampler::SamplerError> {
        self.rates.push(frequency_hz);
        Ok(())
    }
    fn retune(&mut self, _: crate::profile::profiler::Retune) {}
}

#[tokio::test]
async fn a_remote_config_changes_the_profiling_frequency_and_turns_it_off() {
    use crate::{control::next_update, profile::live::Tuner};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let agent = start_agent(&endpoint, &key, "profile");
    // The profiler's side, as the agent's supervising task runs it.
    let started = agent.profile.borrow().clone();
    let gauge = prometheus_client::metrics::gauge::Gauge::default();
    let mut tuner = Tuner::new(&started, gauge.clone());
    let mut effective = tuner.effective();
    let perf = Arc::new(Mutex::new(PerfEvents::default()));
    let mut updates = Some(agent.profile.clone());
    let follower = tokio::spawn({
        let perf = perf.clone();
        async move {
            while let Some(config) = next_update(&mut updates).await {
                let mut perf = perf.lock().unwrap();
                tuner.apply(&mut *perf, &config).unwrap();
            }
        }
    });
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;
    let uid = first.instance_uid.clone();

    let wanted = started.frequency_hz + 30;
    let offer = signed_offer(&key, &format!("profile: {{ frequency_hz: {wanted} }}\n"));
    send(&mut ws, to_agent(&uid, Some(offer.clone()))).await;
    let status = next_status(&mut ws).await;
    assert_eq!(
        status.status,
        RemoteConfigStatuses::Applied as i32,
        "{}",
        status.error_message
    );
    assert_eq!(status.last_remote_config_hash, offer.config_hash);
    tokio::time::timeout(WITHIN, effective.wait_for(|e| e.frequency_hz == wanted))
        .await
        .expect("the profiler reports the new frequency")
        .unwrap();
    assert_eq!(gauge.get(), i64::from(wanted));
    assert_eq!(perf.lock().unwrap().rates, [Some(wanted)]);

    // Off: the perf events closed, nothing else restarted.
    let offer = signed_offer(&key, "profile: { enabled: false }\n");
    send(&mut ws, to_agent(&uid, Some(offer))).await;
    let status = next_status(&mut ws).await;
    assert_eq!(
        status.status,
        RemoteConfigStatuses::Applied as i32,
        "{}",
        status.error_message
    );
    tokio::time::timeout(WITHIN, effective.wait_for(|e| !e.enabled))
        .await
        .expect("the profiler reports sampling off")
        .unwrap();
    assert_eq!(gauge.get(), 0);
    // Laid over the local file, not the last offer: the frequency is the
    // local one again, and the events are closed once.
    assert_eq!(perf.lock().unwrap().rates, [Some(wanted), None]);
    assert_eq!(effective.borrow().frequency_hz, started.frequency_hz);
    // A key that is not live is still refused with its name.
    let offer = signed_offer(&key, "profile: { ring_bytes: 1048576 }\n");
    send(&mut ws, to_agent(&uid, Some(offer))).await;
    let status = next_status(&mut ws).await;
    assert_eq!(status.status, RemoteConfigStatuses::Failed as i32);
    assert_eq!(
        status.error_message,
        "profile.ring_bytes: changing it needs a restart"
    );
    let dir = agent.dir.clone();
    stop(agent).await;
    follower.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn profiling_the_agent_started_without_is_not_turned_on_live() {
    let dir = fresh_dir("profile-off");
    let yaml = format!(
        "data_dir: {}\nprofile: {{ enabled: false }}\n",
        dir.display()
    );
    let config = Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
    let live = Live::new(&config);
    let on = Config::parse(
        &format!("data_dir: {}\n", dir.display()),
        std::path::Path::new("r.yaml"),
    )
    .unwrap();
    let refused = live
        .restart_key(&on, &[])
        .map(|key| super::policy::Refused::NeedsRestart(key.to_owned()).to_string());
    assert_eq!(
        refused.as_deref(),
        Some("profile.enabled: changing it needs a restart")
    );
    assert!(live.restart_key(&config, &[]).is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn health_reports_each_component_and_only_when_it_changes() {
    use crate::supervise::{Failure, Task};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let agent = start_agent(&endpoint, &key, "components");
    for task in [Task::Process, Task::Tracer, Task::Export, Task::Telemetry] {
        agent.health.task_started(task);
    }
    let mut ws = accept(&listener).await;
    let components = |m: &AgentToServer| {
        m.health.as_ref().map(|h| {
            let mut names: Vec<(String, bool, String, String)> = h
                .component_health_map
                .iter()
                .map(|(name, c)| {
                    assert!(c.start_time_unix_nano > 0, "{name}: start time");
                    (
                        name.clone(),
                        c.healthy,
                        c.status.clone(),
                        c.last_error.clone(),
                    )
                })
                .collect();
            names.sort();
            names
        })
    };
    let running = |name: &str| (name.to_owned(), true, "running".to_owned(), String::new());
    let stopping = |name: &str| (name.to_owned(), true, "stopping".to_owned(), String::new());
    let first = next_such(&mut ws, |m| components(m).is_some_and(|c| c.len() == 3)).await;
    assert_eq!(
        components(&first).unwrap(),
        [running("exporters"), running("sensors"), running("tracer")]
    );
    assert!(first.health.as_ref().unwrap().healthy);

    agent.health.failed(&Failure {
        task: Task::Tracer,
        cause: "ring gone".into(),
    });
    let failed = next_such(&mut ws, |m| m.health.is_some()).await;
    let health = failed.health.as_ref().unwrap();
    assert!(!health.healthy);
    assert_eq!(
        components(&failed).unwrap(),
        [
            // The agent stops in order after a task failure.
            stopping("exporters"),
            stopping("sensors"),
            (
                "tracer".to_owned(),
                false,
                "failed".to_owned(),
                "the tracer task failed: ring gone".to_owned()
            ),
        ]
    );
    // Nothing changed since: the next heartbeat carries no health.
    let heartbeat = next_agent_message(&mut ws).await;
    assert!(heartbeat.health.is_none(), "{heartbeat:?}");
    stop(agent).await;
}

/// A restart hook that counts the restarts asked for.
fn restart_hook() -> (Arc<dyn Fn() + Send + Sync>, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(move || {
            let _ = tx.send(());
        }),
        rx,
    )
}

/// The previous run of an agent with `local` took `offer` and asked for a
/// restart; its trial is kept in the data directory.
async fn restarted_for(listener: &TcpListener, local: &Config, offer: &AgentRemoteConfig) {
    let (hook, mut restarts) = restart_hook();
    let agent = start_agent_on(Arc::new(super::restart::startup(local.clone())), Some(hook));
    let mut ws = accept(listener).await;
    let first = next_agent_message(&mut ws).await;
    send(&mut ws, to_agent(&first.instance_uid, Some(offer.clone()))).await;
    let status = next_status(&mut ws).await;
    assert_eq!(
        status.status,
        RemoteConfigStatuses::Applying as i32,
        "{}",
        status.error_message
    );
    assert_eq!(status.last_remote_config_hash, offer.config_hash);
    tokio::time::timeout(WITHIN, restarts.recv())
        .await
        .expect("a restart asked for")
        .unwrap();
    assert_eq!(audit_events(&agent), ["selfops.config.accepted"]);
    assert_eq!(applies(&agent, "accepted"), 1);
    assert_eq!(agent.metrics.on_trial.get(), 1);
    // Stopping for the restart keeps the trial.
    stop(agent).await;
    let mark = super::last_good::read_trial(&local.data_dir).expect("trial marked");
    assert!(mark.restart && mark.interrupted == 0, "{mark:?}");
    assert_eq!(
        super::last_good::load_trial_offer(&local.data_dir).as_ref(),
        Some(offer)
    );
}

#[tokio::test]
async fn a_restart_key_is_refused_unless_restarts_are_allowed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let dir = fresh_dir("no-restart");
    let (hook, mut restarts) = restart_hook();
    let yaml = local_yaml(&dir, &endpoint, &key, "0s", "");
    let config = Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
    let agent = start_agent_on(Arc::new(config), Some(hook));
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;
    let offer = signed_offer(&key, "sensors: { process_ring_bytes: 4194304 }\n");
    send(&mut ws, to_agent(&first.instance_uid, Some(offer))).await;
    let status = next_status(&mut ws).await;
    assert_eq!(status.status, RemoteConfigStatuses::Failed as i32);
    assert_eq!(status.error_message, "sensors: changing it needs a restart");
    assert!(restarts.try_recv().is_err());
    assert!(super::last_good::read_trial(&dir).is_none());
    stop(agent).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn allowed_restart_runs_the_config_on_trial_in_the_next_run_then_keeps_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let dir = fresh_dir("allow-restart");
    let yaml = local_yaml(&dir, &endpoint, &key, "0s", "  allow_restart: true\n");
    let local = Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
    let offer = signed_offer(
        &key,
        "telemetry: { listen: '127.0.0.1:19464' }\ntrace: { exclude: [{ executable: curl }] }\n",
    );
    restarted_for(&listener, &local, &offer).await;

    // The next run starts on the offer, verified again, and consumes the
    // restart: dying now would count.
    let config = super::restart::startup(local.clone());
    assert_eq!(config.telemetry.listen.to_string(), "127.0.0.1:19464");
    assert_eq!(config.trace.exclude.len(), 1);
    let startup = config.control.startup.clone().unwrap();
    assert_eq!(startup.trial.as_ref(), Some(&offer));
    assert_eq!(startup.local.as_ref(), yaml);
    assert!(!super::last_good::read_trial(&dir).unwrap().restart);
    let (hook, mut restarts) = restart_hook();
    let agent = start_agent_on(Arc::new(config), Some(hook));
    let mut ws = accept(&listener).await;
    // Its window (0s) passes at once: APPLIED, kept, trial forgotten.
    let applied = next_such(&mut ws, |m| {
        m.remote_config_status
            .as_ref()
            .is_some_and(|s| s.status == RemoteConfigStatuses::Applied as i32)
    })
    .await;
    assert_eq!(
        applied
            .remote_config_status
            .unwrap()
            .last_remote_config_hash,
        offer.config_hash
    );
    assert_eq!(audit_events(&agent), ["selfops.config.applied"]);
    assert_eq!(super::last_good::load(&dir).unwrap().as_ref(), Some(&offer));
    assert!(super::last_good::read_trial(&dir).is_none());
    assert!(super::last_good::load_trial_offer(&dir).is_none());
    // The same offer again is not redone.
    send(
        &mut ws,
        to_agent(&applied.instance_uid, Some(offer.clone())),
    )
    .await;
    let _ = next_agent_message(&mut ws).await;
    assert!(restarts.try_recv().is_err());
    stop(agent).await;

    // Every later run starts on it: the last-known-good config.
    let config = super::restart::startup(local);
    assert_eq!(config.telemetry.listen.to_string(), "127.0.0.1:19464");
    assert_eq!(config.control.startup.unwrap().trial, None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_restart_trial_that_dies_or_fails_goes_back_to_the_last_known_good_config() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let dir = fresh_dir("restart-rollback");
    let yaml = local_yaml(&dir, &endpoint, &key, "1h", "  allow_restart: true\n");
    let local = Config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
    let offer = signed_offer(&key, "sensors: { process_ring_bytes: 4194304 }\n");

    // 1. The run on trial dies (no orderly stop): the next run starts on
    // the local config and counts the interrupted trial.
    restarted_for(&listener, &local, &offer).await;
    let config = super::restart::startup(local.clone());
    assert_eq!(config.sensors.process_ring_bytes, 4 << 20);
    let agent = start_agent_on(Arc::new(config), None);
    let mut ws = accept(&listener).await;
    let status = next_status(&mut ws).await;
    assert_eq!(status.status, RemoteConfigStatuses::Applying as i32);
    agent.task.abort();
    drop(ws);
    let config = super::restart::startup(local.clone());
    assert_eq!(
        config.sensors.process_ring_bytes,
        local.sensors.process_ring_bytes
    );
    assert_eq!(config.control.startup.clone().unwrap().trial, None);
    let agent = start_agent_on(Arc::new(config), None);
    let _ws = accept(&listener).await;
    let mark = super::last_good::read_trial(&dir).unwrap();
    assert_eq!((mark.interrupted, mark.restart), (1, false));
    stop(agent).await;
    super::last_good::clear_trial(&dir);

    // 2. The run on trial turns unhealthy: rolled back by another restart,
    // which the run after it reports.
    restarted_for(&listener, &local, &offer).await;
    let (hook, mut restarts) = restart_hook();
    let agent = start_agent_on(Arc::new(super::restart::startup(local.clone())), Some(hook));
    let mut ws = accept(&listener).await;
    let status = next_status(&mut ws).await;
    assert_eq!(status.status, RemoteConfigStatuses::Applying as i32);
    agent.health.failed(&crate::supervise::Failure {
        task: crate::supervise::Task::Process,
        cause: "ring gone".into(),
    });
    tokio::time::timeout(WITHIN, restarts.recv())
        .await
        .expect("a restart asked for the rollback")
        .unwrap();
    assert_eq!(audit_events(&agent), ["selfops.config.rolled_back"]);
    let label = super::metrics::CheckLabel { check: "tasks" };
    assert_eq!(agent.metrics.gate_failures.get_or_create(&label).get(), 1);
    stop(agent).await;
    drop(ws);
    assert!(super::last_good::read_trial(&dir).is_none());

    let config = super::restart::startup(local.clone());
    assert_eq!(
        config.sensors.process_ring_bytes,
        local.sensors.process_ring_bytes
    );
    let (hook, mut restarts) = restart_hook();
    let agent = start_agent_on(Arc::new(config), Some(hook));
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;
    let status = first
        .remote_config_status
        .clone()
        .expect("the rollback reported");
    assert_eq!(status.status, RemoteConfigStatuses::Failed as i32);
    assert_eq!(status.last_remote_config_hash, offer.config_hash);
    assert!(
        status
            .error_message
            .starts_with("rolled back to the last-known-good config: ")
            && status.error_message.contains("ring gone"),
        "{}",
        status.error_message
    );
    // Offered again, it is not taken again.
    send(&mut ws, to_agent(&first.instance_uid, Some(offer))).await;
    let _ = next_agent_message(&mut ws).await;
    assert!(restarts.try_recv().is_err());
    assert!(audit_events(&agent).is_empty());
    stop(agent).await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn rejected(agent: &Agent, reason: &'static str) -> u64 {
    agent
        .metrics
        .rejected
        .get_or_create(&super::metrics::ReasonLabel { reason })
        .get()
}

#[tokio::test]
async fn a_server_that_hangs_up_after_every_answer_is_backed_off_exponentially() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let agent = start_agent(&endpoint, &key, "hangs-up");
    let mut connected = Vec::new();
    for _ in 0..4 {
        let mut ws = accept(&listener).await;
        connected.push(tokio::time::Instant::now());
        let message = next_agent_message(&mut ws).await;
        send(&mut ws, to_agent(&message.instance_uid, None)).await;
        let _ = ws.close(None).await;
    }
    // Delays of 0.5–1 s, 1–2 s, 2–4 s: without the backoff growing, the
    // third could not be 2 s.
    let third = connected[3] - connected[2];
    assert!(third >= Duration::from_secs(2), "{connected:?}");
    let closed = agent
        .metrics
        .connections
        .get_or_create(&super::metrics::OutcomeLabel { outcome: "closed" })
        .get();
    assert!(closed >= 3, "{closed}");
    stop(agent).await;
}

#[tokio::test]
async fn oversized_frames_end_the_session_without_harm() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let agent = start_agent(&endpoint, &key, "oversized");
    let mut ws = accept(&listener).await;
    let first = next_agent_message(&mut ws).await;
    // Within the 64 KiB limit but not protobuf: thrown away, session kept.
    let mut garbage = vec![0u8; 60 << 10];
    garbage[1] = 0xff;
    ws.send(Message::Binary(garbage.into())).await.unwrap();
    // Beyond it: refused before it is read whole; the session ends.
    let huge = to_agent(
        &first.instance_uid,
        Some(signed_offer(&key, &"#".repeat(100 << 10))),
    );
    let _ = ws
        .send(Message::Binary(frame::encode_server_ws(&huge).into()))
        .await;
    let mut again = accept(&listener).await;
    let next = next_agent_message(&mut again).await;
    assert_eq!(next.instance_uid, first.instance_uid);
    assert_eq!(rejected(&agent, "decode"), 1);
    assert_eq!(rejected(&agent, "too_large"), 1);
    // Still takes a config of ordinary size.
    let offer = signed_offer(&key, "trace:\n  exclude: [{ executable: curl }]\n");
    send(&mut again, to_agent(&first.instance_uid, Some(offer))).await;
    let status = next_status(&mut again).await;
    assert_eq!(status.status, RemoteConfigStatuses::Applied as i32);
    stop(agent).await;
}

#[tokio::test]
async fn a_flooding_server_is_read_one_message_at_a_time() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("ws://{}/v1/opamp", listener.local_addr().unwrap());
    let key = SecretKey::generate();
    let agent = start_agent(&endpoint, &key, "flood");
    let ws = accept(&listener).await;
    let (mut sink, mut source) = ws.split();
    let first = tokio::time::timeout(WITHIN, source.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let uid = frame::decode_agent_ws(&first.into_data(), 1 << 20)
        .unwrap()
        .instance_uid;
    // What the agent sends back is read (and counted) beside the flood.
    let replies = tokio::spawn(async move {
        let mut statuses = Vec::new();
        while let Some(Ok(message)) = source.next().await {
            if let Ok(m) = frame::decode_agent_ws(&message.into_data(), 1 << 20)
                && let Some(status) = m.remote_config_status
            {
                statuses.push(status.status);
            }
        }
        statuses
    });
    const FLOOD: u64 = 5000;
    let mut full = to_agent(&uid, None);
    full.flags = ServerToAgentFlags::ReportFullState as u64;
    let flood = frame::encode_server_ws(&full);
    for _ in 0..FLOOD {
        sink.send(Message::Binary(flood.clone().into()))
            .await
            .unwrap();
    }
    let offer = signed_offer(&key, "trace:\n  exclude: [{ executable: curl }]\n");
    sink.send(Message::Binary(
        frame::encode_server_ws(&to_agent(&uid, Some(offer))).into(),
    ))
    .await
    .unwrap();
    // Every message taken in, the offer last, and applied.
    let received = |agent: &Agent| {
        agent
            .metrics
            .messages
            .get_or_create(&super::metrics::DirectionLabel {
                direction: "received",
            })
            .get()
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while received(&agent) < FLOOD + 1 || applies(&agent, "applied") < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the flood and the offer taken in");
    assert_eq!(received(&agent), FLOOD + 1);
    assert!(!agent.task.is_finished());
    stop(agent).await;
    drop(sink);
    let statuses = tokio::time::timeout(WITHIN, replies)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        statuses.last(),
        Some(&(RemoteConfigStatuses::Applied as i32))
    );
}
