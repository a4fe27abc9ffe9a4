//! Remote configs applied live, one section at a time, to running
//! components. Each config goes through what the client does with a
//! verified one (`policy::accept`, `Live::restart_key`, `Live::apply`); the
//! OpAMP side of it is in `tests`. The components are the real ones: the
//! actuation loop, the export pipeline against OTLP receivers on loopback,
//! the resource builder.

use std::{
    collections::BTreeSet,
    io::Read as _,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prometheus_client::registry::Registry;
use prost::Message as _;

use super::{Live, policy};
use crate::{
    act::{ActuationLoop, audit::AuditMetrics, runner::ServiceHook},
    config::Config,
    export::{
        DropReason, ExportHandle, ExportOptions, ExportPipeline,
        test_support::{resource, span},
    },
    process::{Process, ResourceBuilder, SharedTable, table::ProcessTable},
    series::ServiceStats,
    signal::{AttrValue, Signal},
};

const WITHIN: Duration = Duration::from_secs(10);

/// The running config, the local file it came from, and the channels.
struct Node {
    local: String,
    current: Config,
    live: Live,
}

impl Node {
    fn new(local: &str) -> Self {
        let current = Config::parse(local, Path::new("local.yaml")).unwrap();
        Self {
            live: Live::new(&current),
            local: local.to_owned(),
            current,
        }
    }

    /// Admits `yaml` as the client does a verified remote config.
    fn admit(&mut self, yaml: &str) -> Vec<&'static str> {
        let (config, keys) = policy::accept(yaml, &self.local, &self.current)
            .unwrap_or_else(|e| panic!("{e}: {yaml}"));
        if let Some(key) = self.live.restart_key(&config, &keys) {
            panic!("{key} needs a restart: {yaml}");
        }
        self.live.apply(&config, &keys);
        self.current = config;
        keys
    }

    fn refused(&self, yaml: &str) -> String {
        match policy::accept(yaml, &self.local, &self.current) {
            Ok((config, keys)) => match self.live.restart_key(&config, &keys) {
                None => panic!("accepted: {yaml}"),
                Some(key) => policy::Refused::NeedsRestart(key.to_owned()).to_string(),
            },
            Err(e) => e.to_string(),
        }
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WITHIN, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn attr<'a>(record: &'a Signal, key: &str) -> Option<&'a AttrValue> {
    let Signal::Log(record) = record else {
        return None;
    };
    record
        .attributes
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Audit records of `playbook` with `outcome`: (count, all dry-run).
fn audited(audit: &Mutex<Vec<Signal>>, playbook: &str, outcome: &str) -> (usize, bool) {
    let audit = audit.lock().unwrap();
    let found: Vec<&Signal> = audit
        .iter()
        .filter(|r| attr(r, "selfops.playbook") == Some(&AttrValue::from(playbook)))
        .filter(|r| attr(r, "selfops.outcome") == Some(&AttrValue::from(outcome)))
        .collect();
    let dry = found
        .iter()
        .all(|r| attr(r, "selfops.dry_run") == Some(&AttrValue::Bool(true)));
    (found.len(), dry)
}

const DRY_RUN_PLAYBOOK: &str = r#"
actuation:
  playbooks:
    - name: busy-web
      when: { signal: service.request.rate, service: web, above: 20 }
      do: { throttle: { port: 8080, per_second: 100 } }
      ttl: 30s
      mode: dry-run
"#;

#[tokio::test]
async fn a_dry_run_playbook_added_live_fires_and_is_withdrawn_when_removed() {
    let mut node = Node::new("actuation:\n  interval: 100ms\n");
    let hook = Arc::new(ServiceHook::new(Arc::new(ServiceStats::default())));
    let audit = Arc::new(Mutex::new(Vec::new()));
    let sink = audit.clone();
    let table = SharedTable::new(ProcessTable::new(16, Duration::from_secs(1)));
    let actuation = ActuationLoop::start(
        &node.current.actuation,
        table,
        hook.clone(),
        AuditMetrics::register(&mut Registry::default()),
        Box::new(move |signal| sink.lock().unwrap().push(signal)),
        Some(node.live.actuation.subscribe()),
    )
    .unwrap()
    .expect("with a control plane the loop runs without playbooks");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(actuation.run(stopping));
    assert!(!hook.is_on(), "no playbook reads a service series yet");

    assert_eq!(node.admit(DRY_RUN_PLAYBOOK), ["actuation.playbooks"]);
    eventually("the tracer's service hook to turn on", || hook.is_on()).await;
    // Drive the signal: server spans of `web`, far above 20 per second.
    let web = resource("web", 7);
    let start = Instant::now();
    while audited(&audit, "busy-web", "applied").0 == 0 {
        assert!(start.elapsed() < WITHIN, "the playbook never fired");
        for n in 0..20 {
            hook.observe(&Signal::Span(span(&web, n, None)));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (applied, dry) = audited(&audit, "busy-web", "applied");
    assert_eq!(applied, 1);
    assert!(dry, "audited with selfops.dry_run=true");

    // Removed: its booking is withdrawn (and audited), the hook goes off.
    assert_eq!(
        node.admit("actuation:\n  playbooks: []\n"),
        ["actuation.playbooks"]
    );
    eventually("the withdrawal to be audited", || {
        audited(&audit, "busy-web", "withdrawn").0 == 1
    })
    .await;
    assert!(!hook.is_on());
    let _ = stop.send(true);
    tokio::time::timeout(WITHIN, task).await.unwrap().unwrap();
}

#[test]
fn keys_that_cannot_change_live_are_named() {
    let node = Node::new("export: { queue_capacity: 100 }\n");
    assert_eq!(
        node.refused("export: { queue_capacity: 200 }\n"),
        "export.queue_capacity: changing it needs a restart"
    );
    assert_eq!(
        node.refused("actuation: { interfaces: [lo] }\n"),
        "actuation.interfaces: changing it needs a restart"
    );
    assert_eq!(
        node.refused("actuation: { persist: true }\n"),
        "actuation.persist: changing it needs a restart"
    );
    // What the exporters would refuse is refused before anything changes.
    let tls = node.refused(
        "export: { otlp: { endpoint: 'https://collector:4317', tls: { ca_file: /nonexistent/ca.pem } } }\n",
    );
    assert!(tls.contains("export.otlp.tls.ca_file: "), "{tls}");
}

#[tokio::test]
async fn service_rules_change_the_service_name_of_new_resources() {
    let mut node = Node::new("");
    let resources = Arc::new(ResourceBuilder::new(&node.current.service).unwrap());
    let follower = tokio::spawn(resources.clone().follow(node.live.service.subscribe()));
    let nginx = Process {
        pid: 10,
        ppid: 1,
        comm: "nginx".into(),
        executable_path: Some(Arc::from("/usr/sbin/nginx")),
        build_id: None,
        command_line: None,
        cgroup: None,
        container_id: None,
        start_time_unix_nano: 0,
    };
    assert_eq!(resources.service_name(&nginx), "nginx");
    let generation = resources.generation();
    assert_eq!(
        node.admit("service:\n  rules: [{ executable: nginx, name: web }]\n"),
        ["service"]
    );
    eventually("the rules to be replaced", || {
        resources.generation() != generation
    })
    .await;
    assert_eq!(resources.service_name(&nginx), "web");
    follower.abort();
}

/// An OTLP/HTTP traces receiver that records the ids of the spans it gets.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<u32>>>,
}

impl Receiver {
    fn ids(&self) -> BTreeSet<u32> {
        self.spans.lock().unwrap().iter().copied().collect()
    }
}

async fn traces(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Vec<u8> {
    let mut raw = Vec::new();
    if headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip")
    {
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .unwrap();
    } else {
        raw.extend_from_slice(&body);
    }
    let request = ExportTraceServiceRequest::decode(raw.as_slice()).unwrap();
    let mut spans = receiver.spans.lock().unwrap();
    for span in request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
    {
        let id: [u8; 4] = span.span_id[4..8].try_into().unwrap();
        spans.push(u32::from_be_bytes(id));
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

async fn receiver() -> (Receiver, SocketAddr) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, addr)
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn export_yaml(endpoint: &str) -> String {
    format!(
        "export:\n  file: false\n  queue_capacity: 10000\n  batch_size: 64\n  batch_timeout: 20ms\n  otlp: {{ endpoint: '{endpoint}', protocol: http_protobuf, retry_for: 60s, timeout: 2s }}\n"
    )
}

/// An OTLP-only pipeline following `node`'s export channel.
fn start_export(node: &Node) -> (ExportHandle, tokio::task::JoinHandle<()>) {
    let options = ExportOptions {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..ExportOptions::default()
    };
    let (handle, pipeline) = ExportPipeline::start_live(
        &node.current.export,
        Path::new("/nonexistent"),
        &mut Registry::default(),
        options,
        Some(node.live.export.subscribe()),
    )
    .unwrap();
    (handle, tokio::spawn(pipeline))
}

/// Span number `id` (its id carries the number).
fn numbered(id: u32) -> Signal {
    let mut span = span(&resource("web", 7), 0, None);
    span.span_id[4..8].copy_from_slice(&id.to_be_bytes());
    Signal::Span(span)
}

/// Sends spans `ids` in bursts, as a ring drain would.
async fn send(handle: &ExportHandle, ids: std::ops::Range<u32>) {
    for id in ids {
        handle.send(numbered(id));
        if id % 25 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn stop_export(handle: ExportHandle, task: tokio::task::JoinHandle<()>) {
    assert!(handle.shutdown(WITHIN).await);
    task.await.unwrap();
    let metrics = handle.metrics();
    for reason in [
        DropReason::QueueFull,
        DropReason::ExportFailed,
        DropReason::RetriesExhausted,
        DropReason::Shutdown,
    ] {
        assert_eq!(
            metrics.dropped_count(crate::export::metrics::TRACES, reason),
            0,
            "{reason:?}"
        );
    }
}

#[tokio::test]
async fn an_endpoint_change_sends_the_next_spans_to_the_new_receiver_and_loses_none() {
    let (a, a_addr) = receiver().await;
    let (b, b_addr) = receiver().await;
    let mut node = Node::new(&export_yaml(&format!("http://{a_addr}")));
    let (handle, task) = start_export(&node);
    send(&handle, 0..500).await;
    assert_eq!(
        node.admit(&format!(
            "export: {{ otlp: {{ endpoint: 'http://{b_addr}' }}, batch_size: 128 }}\n"
        )),
        ["export.otlp", "export.batch_size"]
    );
    // Once the pipeline has taken the change, every span sent goes to B.
    eventually("the exporters to be rebuilt", || {
        handle.metrics().reconfigured.get() == 1
    })
    .await;
    send(&handle, 500..1000).await;
    eventually("every span to arrive", || {
        a.ids().union(&b.ids()).count() == 1000
    })
    .await;
    let b_ids = b.ids();
    assert!(
        (500..1000).all(|id| b_ids.contains(&id)),
        "spans sent after the change go to the new receiver"
    );
    assert!(!a.ids().is_empty(), "the first ones went to the old one");
    assert!(a.ids().iter().all(|id| *id < 500));
    stop_export(handle, task).await;
}

#[tokio::test]
async fn spans_held_for_a_dead_endpoint_are_handed_to_the_next_one() {
    let (a, a_addr) = receiver().await;
    let mut node = Node::new(&export_yaml(&format!("http://{a_addr}")));
    let (handle, task) = start_export(&node);
    send(&handle, 0..100).await;
    eventually("the first spans", || a.ids().len() == 100).await;
    let dead = closed_port();
    node.admit(&format!(
        "export: {{ otlp: {{ endpoint: 'http://127.0.0.1:{dead}' }} }}\n"
    ));
    send(&handle, 100..300).await;
    let retries = || {
        handle
            .metrics()
            .retries
            .get_or_create(&crate::export::metrics::SinkLabels {
                sink: crate::export::metrics::SINK_OTLP,
            })
            .get()
    };
    eventually("retries against the dead endpoint", || retries() > 0).await;
    // Rolled back: what waited for the dead endpoint goes to the live one.
    node.admit(&format!(
        "export: {{ otlp: {{ endpoint: 'http://{a_addr}' }} }}\n"
    ));
    eventually("every span at the live receiver", || a.ids().len() == 300).await;
    stop_export(handle, task).await;
}

#[tokio::test]
async fn a_removed_otlp_exporter_gives_up_what_it_holds_at_once() {
    let mut node = Node::new(
        "export:\n  file: false\n  queue_capacity: 10000\n  batch_size: 64\n  batch_timeout: 20ms\n",
    );
    let local = node.current.clone();
    let (handle, task) = start_export(&node);
    let dead = closed_port();
    node.admit(&format!(
        "export: {{ otlp: {{ endpoint: 'http://127.0.0.1:{dead}', protocol: http_protobuf, retry_for: 60s }} }}\n"
    ));
    eventually("the OTLP exporter", || {
        handle.metrics().reconfigured.get() == 1
    })
    .await;
    send(&handle, 0..100).await;
    let metrics = handle.metrics().clone();
    let retries = || {
        metrics
            .retries
            .get_or_create(&crate::export::metrics::SinkLabels {
                sink: crate::export::metrics::SINK_OTLP,
            })
            .get()
    };
    eventually("retries against the dead endpoint", || retries() > 0).await;
    // Rolled back to the local config, as the client does: no exporter.
    let keys = policy::changed_keys(&node.current, &local);
    assert_eq!(keys, ["export.otlp"]);
    node.live.apply(&local, &keys);
    // Far sooner than its 60 s retry_for: every span counted as given up.
    eventually("the spans given up and counted", || {
        metrics.dropped_count(crate::export::metrics::TRACES, DropReason::RetriesExhausted) == 100
    })
    .await;
    assert!(handle.shutdown(WITHIN).await);
    task.await.unwrap();
}
