//! A Kubernetes API server for the pod watch, faithful where the agent
//! depends on it: HTTPS with its own CA, bearer-token auth, Pod JSON shaped
//! like the real thing, `fieldSelector=spec.nodeName=…`, paged lists
//! (`limit`, `continue`), and watches streaming JSON lines from a resource
//! version, with bookmarks-off-by-default, `ERROR` 410 once the history is
//! compacted, dropped connections, and outages that refuse every
//! connection for a while.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::watch,
};
use tokio_rustls::rustls::{
    self, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};

/// What the test tells about one pod.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// (kind, name) of the controller.
    pub owner: Option<(String, String)>,
    /// (container name, `containerd://<id>` once created).
    pub containers: Vec<(String, Option<String>)>,
}

/// Counts of what the server answered, for the test to check.
#[derive(Debug, Clone, Copy, Default)]
pub struct Served {
    pub lists: u64,
    pub list_pages: u64,
    pub watches: u64,
    pub gone: u64,
    pub refused: u64,
    pub unauthorized: u64,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// uid → (resource version, object).
    pods: BTreeMap<String, (u64, Value)>,
    /// Every change: (resource version, type, object).
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a version below this get 410.
    compacted_below: u64,
    outage_until: Option<Instant>,
    served: Served,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change, to wake watches.
    changed: watch::Sender<u64>,
    /// Bumped to cut every open connection without a word.
    cut: watch::Sender<u64>,
    /// Bumped to send open watches ERROR 410.
    expired: watch::Sender<u64>,
    token: String,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct KubeApi {
    pub addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KubeApi {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("fixture runtime");
        let (ca_pem, config) = tls_config();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1000,
                ..State::default()
            }),
            changed: watch::channel(0).0,
            cut: watch::channel(0).0,
            expired: watch::channel(0).0,
            token: format!("token-{}", std::process::id()),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the test API server");
        let addr = listener.local_addr().expect("address");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let serving = shared.clone();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let in_outage = {
                    let mut state = serving.state();
                    let out = state.outage_until.is_some_and(|t| Instant::now() < t);
                    if out {
                        state.served.refused += 1;
                    }
                    out
                };
                if in_outage {
                    // Refused: closed before any TLS byte.
                    drop(tcp);
                    continue;
                }
                let acceptor = acceptor.clone();
                let shared = serving.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = serve(stream, shared).await;
                    }
                });
            }
        });
        Self {
            addr,
            ca_pem,
            shared,
            runtime: Some(runtime),
        }
    }

    /// A kubeconfig naming this server, its CA and a token.
    pub fn kubeconfig(&self) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: https://{addr}\n    certificate-authority-data: {ca}\nusers:\n- name: agent\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: agent\n",
            addr = self.addr,
            token = self.shared.token,
        )
    }

    pub fn served(&self) -> Served {
        self.shared.state().served
    }

    /// Adds or replaces a pod (ADDED or MODIFIED to watchers).
    pub fn apply(&self, pod: &PodSpec) {
        let mut state = self.shared.state();
        state.rv += 1;
        let rv = state.rv;
        let object = pod_json(pod, rv);
        let kind = match state.pods.insert(pod.uid.clone(), (rv, object.clone())) {
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        state.history.push((rv, kind, object));
        drop(state);
        self.shared.changed.send_replace(rv);
    }

    pub fn delete(&self, uid: &str) {
        let mut state = self.shared.state();
        let Some((_, object)) = state.pods.remove(uid) else {
            return;
        };
        state.rv += 1;
        let rv = state.rv;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.history.push((rv, "DELETED", object));
        drop(state);
        self.shared.changed.send_replace(rv);
    }

    /// Compacts the history: open watches get ERROR 410, and so does any
    /// watch from an older version.
    pub fn expire_watches(&self) {
        let mut state = self.shared.state();
        state.compacted_below = state.rv;
        state.history.clear();
        drop(state);
        self.shared.expired.send_modify(|n| *n += 1);
    }

    /// Cuts every open connection without ending its response.
    pub fn drop_connections(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// Cuts every connection and refuses new ones for `length`.
    pub fn outage(&self, length: Duration) {
        self.shared.state().outage_until = Some(Instant::now() + length);
        self.drop_connections();
    }

    pub fn in_outage(&self) -> bool {
        self.shared
            .state()
            .outage_until
            .is_some_and(|t| Instant::now() < t)
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A Pod as the API server renders it (the fields a kubelet and the
/// controllers fill in, abridged but in their real places).
pub fn pod_json(pod: &PodSpec, rv: u64) -> Value {
    let owner_refs: Vec<Value> = pod
        .owner
        .iter()
        .map(|(kind, name)| {
            json!({
                "apiVersion": if kind == "Job" { "batch/v1" } else { "apps/v1" },
                "kind": kind, "name": name,
                "uid": format!("{:08x}-0000-4000-8000-{:012x}", name.len(), rv),
                "controller": true, "blockOwnerDeletion": true
            })
        })
        .collect();
    let containers: Vec<Value> = pod
        .containers
        .iter()
        .map(|(name, _)| {
            json!({
                "name": name, "image": "registry.example/app:1.4.2",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "volumeMounts": [{"name": "kube-api-access", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "imagePullPolicy": "IfNotPresent"
            })
        })
        .collect();
    let statuses: Vec<Value> = pod
        .containers
        .iter()
        .map(|(name, id)| {
            let mut status = json!({
                "name": name, "ready": id.is_some(), "restartCount": 0,
                "image": "registry.example/app:1.4.2",
                "imageID": "registry.example/app@sha256:8f2b6a1c0d9e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a",
                "started": id.is_some(),
                "state": if id.is_some() {
                    json!({"running": {"startedAt": "2026-12-06T21:00:00Z"}})
                } else {
                    json!({"waiting": {"reason": "ContainerCreating"}})
                }
            });
            if let Some(id) = id {
                status["containerID"] = json!(id);
            }
            status
        })
        .collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": pod.name,
            "generateName": pod.name.rsplit_once('-').map_or("", |(p, _)| p),
            "namespace": pod.namespace,
            "uid": pod.uid,
            "resourceVersion": rv.to_string(),
            "creationTimestamp": "2026-12-06T21:00:00Z",
            "labels": pod.labels,
            "annotations": pod.annotations,
            "ownerReferences": owner_refs,
            "managedFields": [{
                "manager": "kube-controller-manager", "operation": "Update",
                "apiVersion": "v1", "time": "2026-12-06T21:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}}}}
            }]
        },
        "spec": {
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420,
                "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "containers": containers,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": pod.node,
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-12-06T21:00:00Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-06T21:00:01Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-06T21:00:00Z"}
            ],
            "hostIP": "10.0.0.11",
            "podIP": "10.244.1.17",
            "podIPs": [{"ip": "10.244.1.17"}],
            "startTime": "2026-12-06T21:00:00Z",
            "containerStatuses": statuses,
            "qosClass": "BestEffort"
        }
    })
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One request per connection, as the agent's client makes them.
async fn serve(mut stream: impl Io, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut cut = shared.cut.subscribe();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("")
        .to_owned();
    let authorized = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("authorization")
                && value.trim() == format!("Bearer {}", shared.token)
        })
    });
    if !authorized {
        shared.state().served.unauthorized += 1;
        return respond(
            &mut stream,
            "401 Unauthorized",
            &status_json(401, "Unauthorized"),
        )
        .await;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), decode(v)))
        .collect();
    if path != "/api/v1/pods" {
        return respond(&mut stream, "404 Not Found", &status_json(404, "NotFound")).await;
    }
    let node = query
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_owned);
    if query.get("watch").is_some_and(|w| w == "1" || w == "true") {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(1800), Duration::from_secs);
        tokio::select! {
            result = stream_watch(&mut stream, &shared, node, from, timeout) => result,
            // Cut: no terminating chunk, the connection just ends.
            _ = cut.changed() => Ok(()),
        }
    } else {
        let body = list_page(&shared, node.as_deref(), &query);
        match body {
            Ok(body) => respond(&mut stream, "200 OK", &body).await,
            Err(status) => respond(&mut stream, "410 Gone", &status).await,
        }
    }
}

fn list_page(
    shared: &Shared,
    node: Option<&str>,
    query: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut state = shared.state();
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // continue = base64("<list rv>:<offset>")
    let (list_rv, offset) = match query.get("continue") {
        Some(token) => {
            let text = base64::engine::general_purpose::STANDARD
                .decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let parsed = text
                .split_once(':')
                .and_then(|(rv, off)| Some((rv.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            match parsed {
                Some((rv, off)) if rv >= state.compacted_below => (rv, off),
                _ => {
                    state.served.gone += 1;
                    return Err(status_json(410, "Expired"));
                }
            }
        }
        None => {
            state.served.lists += 1;
            (state.rv, 0)
        }
    };
    state.served.list_pages += 1;
    let matching: Vec<&Value> = state
        .pods
        .values()
        .map(|(_, object)| object)
        .filter(|object| node.is_none_or(|n| object["spec"]["nodeName"] == n))
        .collect();
    let page: Vec<&Value> = matching.iter().skip(offset).take(limit).copied().collect();
    let next = offset.saturating_add(page.len());
    let continue_token = (next < matching.len())
        .then(|| base64::engine::general_purpose::STANDARD.encode(format!("{list_rv}:{next}")));
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(matching.len() - next);
    }
    Ok(
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": page})
            .to_string(),
    )
}

async fn stream_watch(
    stream: &mut (impl Io + ?Sized),
    shared: &Shared,
    node: Option<String>,
    from: u64,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut changed = shared.changed.subscribe();
    let mut expired = shared.expired.subscribe();
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await?;
    let too_old = {
        let mut state = shared.state();
        state.served.watches += 1;
        let too_old = from < state.compacted_below;
        if too_old {
            state.served.gone += 1;
        }
        too_old
    };
    if too_old {
        return end_with_gone(stream).await;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut sent = from;
    loop {
        let lines: Vec<(u64, String)> = {
            let state = shared.state();
            state
                .history
                .iter()
                .filter(|(rv, _, object)| {
                    *rv > sent
                        && node
                            .as_deref()
                            .is_none_or(|n| object["spec"]["nodeName"] == n)
                })
                .map(|(rv, kind, object)| {
                    (*rv, json!({"type": kind, "object": object}).to_string())
                })
                .collect()
        };
        for (rv, line) in lines {
            chunk(stream, &format!("{line}\n")).await?;
            sent = rv;
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = expired.changed() => {
                shared.state().served.gone += 1;
                return end_with_gone(stream).await;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return stream.write_all(b"0\r\n\r\n").await;
            }
        }
    }
}

async fn end_with_gone(stream: &mut (impl Io + ?Sized)) -> std::io::Result<()> {
    let event = json!({"type": "ERROR", "object": serde_json::from_str::<Value>(&status_json(410, "Expired")).unwrap_or_default()});
    chunk(stream, &format!("{event}\n")).await?;
    stream.write_all(b"0\r\n\r\n").await?;
    stream.shutdown().await
}

async fn chunk(stream: &mut (impl Io + ?Sized), data: &str) -> std::io::Result<()> {
    stream
        .write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await?;
    stream.flush().await
}

async fn respond(stream: &mut (impl Io + ?Sized), status: &str, body: &str) -> std::io::Result<()> {
    stream
        .write_all(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    stream.shutdown().await
}

fn status_json(code: u16, reason: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{reason}"), "reason": reason, "code": code})
    .to_string()
}

fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                match u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn tls_config() -> (String, Arc<ServerConfig>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test kubernetes CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server TLS config");
    (ca.pem(), Arc::new(config))
}
