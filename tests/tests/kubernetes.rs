//! Pod metadata on every signal, against the test API server
//! (`kube_api`): real python3 HTTP servers placed in cgroups named as
//! containerd names them (systemd driver on cgroup v2, cgroupfs driver on
//! cgroup v1), whose spans must carry their pod's k8s.* attributes through
//! a pod restart (new pod, same name, new container id), a watch expiry
//! (410), a dropped connection and an API server outage — and a change made
//! during the outage must show once it is over. A second test measures what
//! 5,000 pods on the node add to the agent's memory.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use prost::Message as _;
use selfops_proto::pprof;
use selfops_tests::{
    Agent, fleet, free_port,
    kube_api::{KubeApi, PodSpec},
    one_agent_at_a_time, privileged, scratch_dir,
    spans::{FlatSpan, KIND_SERVER, read_spans},
    wait_for,
};

/// A dry-run playbook on the web pod's service, so an audit record names it.
const AUDITED_PLAYBOOK: &str = "actuation:\n  interval: 200ms\n  mode: dry-run\n  playbooks:\n    - name: storefront-busy\n      when: { signal: service.request.rate, service: storefront, above: 0.1 }\n      do: { throttle: { port: 9, per_second: 100 } }\n      ttl: 30s\n      cooldown: 600s\n";

const NODE: &str = "node-test-1";
const CGROUP_V2: &str = "/sys/fs/cgroup/unified";
const CGROUP_V1: &str = "/sys/fs/cgroup/pids";

/// Seconds the API server is away in the outage step (30 unless set).
fn outage_length() -> Duration {
    let secs = std::env::var("SELFOPS_K8S_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// A fresh 64-hex container id.
fn container_id() -> String {
    let mut bytes = [0u8; 32];
    let n = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes).map(|_| 32))
        .expect("urandom");
    assert_eq!(n, 32);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pod_uid() -> String {
    let id = container_id();
    format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    )
}

/// A cgroup as the kubelet and containerd create it, removed on drop.
struct ContainerCgroup {
    dirs: Vec<PathBuf>,
}

impl ContainerCgroup {
    /// systemd driver, cgroup v2:
    /// kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope
    fn systemd_v2(uid: &str, id: &str) -> Self {
        let pod = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
        Self::create(
            CGROUP_V2,
            &[
                "kubepods.slice",
                "kubepods-besteffort.slice",
                &pod,
                &format!("cri-containerd-{id}.scope"),
            ],
        )
    }

    /// cgroupfs driver, cgroup v1: kubepods/besteffort/pod<uid>/<id>
    fn cgroupfs_v1(uid: &str, id: &str) -> Self {
        Self::create(
            CGROUP_V1,
            &["kubepods", "besteffort", &format!("pod{uid}"), id],
        )
    }

    fn create(root: &str, parts: &[&str]) -> Self {
        let mut dirs = Vec::new();
        let mut path = PathBuf::from(root);
        for part in parts {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path)
                    .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
                dirs.push(path.clone());
            }
        }
        Self { dirs }
    }

    fn procs(&self) -> PathBuf {
        self.dirs.last().expect("a cgroup").join("cgroup.procs")
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            // Emptied first: a cgroup with processes cannot go.
            if let Ok(pids) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                let root = match dir.starts_with(CGROUP_V2) {
                    true => CGROUP_V2,
                    false => CGROUP_V1,
                };
                for pid in pids.lines() {
                    let _ = std::fs::write(Path::new(root).join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// python3's HTTP server, started inside `cgroup` (the shell moves itself
/// there, then execs python, so the exec is seen inside the container).
struct PodServer {
    child: Child,
    port: u16,
}

impl PodServer {
    fn start(cgroup: &ContainerCgroup, dir: &Path) -> Self {
        let port = free_port();
        let script = format!(
            "echo $$ > {procs} && exec python3 -m http.server {port} --bind 127.0.0.1 --directory {dir}",
            procs = cgroup.procs().display(),
            dir = dir.display(),
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server");
        let server = Self { child, port };
        let up = wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "python3 did not listen on {port}");
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CPU-bound python3 inside `cgroup`.
struct Burner(Child);

impl Burner {
    fn start(cgroup: &ContainerCgroup) -> Self {
        let script = format!(
            "echo $$ > {} && exec python3 -c 'while True: pass'",
            cgroup.procs().display()
        );
        Self(
            Command::new("sh")
                .args(["-c", &script])
                .spawn()
                .expect("python3 burner"),
        )
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The string labels of the first pprof sample of `pid` that has pod
/// labels, in any profile written so far.
fn pod_labels_of(dir: &Path, pid: u32) -> Option<BTreeMap<String, String>> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if !path.to_string_lossy().ends_with(".pb.gz") {
            continue;
        }
        let mut bytes = Vec::new();
        let file = std::fs::File::open(&path).ok()?;
        if std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut bytes).is_err()
        {
            continue; // still being written
        }
        let Ok(profile) = pprof::Profile::decode(bytes.as_slice()) else {
            continue;
        };
        let s = |i: i64| {
            profile
                .string_table
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .cloned()
                .unwrap_or_default()
        };
        for sample in &profile.sample {
            let of_pid = sample
                .label
                .iter()
                .any(|l| s(l.key) == "process.pid" && l.num == i64::from(pid));
            let labels: BTreeMap<String, String> = sample
                .label
                .iter()
                .filter(|l| l.str != 0)
                .map(|l| (s(l.key), s(l.str)))
                .collect();
            if of_pid && labels.contains_key("k8s.pod.name") {
                return Some(labels);
            }
        }
    }
    None
}

fn curl(port: u16, path: &str) {
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .status()
        .expect("curl");
    assert!(status.success(), "curl {port}{path}: {status}");
}

/// Requests `path` until a server span for it arrives whose resource passes
/// `check`; each request has a path of its own so old spans cannot answer.
fn span_where(
    agent: &Agent,
    server: &PodServer,
    what: &str,
    check: impl Fn(&FlatSpan) -> bool,
) -> FlatSpan {
    let traces = agent.dir.join("data/traces.jsonl");
    let mut n = 0u32;
    let found = wait_for(Duration::from_secs(60), || {
        n += 1;
        let path = format!("/{what}-{n}");
        curl(server.port, &path);
        wait_for(Duration::from_secs(3), || {
            read_spans(&traces).into_iter().find(|s| {
                s.kind == KIND_SERVER && s.attr_str("url.path") == Some(path.as_str()) && check(s)
            })
        })
    });
    found.unwrap_or_else(|| {
        let last: Vec<_> = read_spans(&traces)
            .into_iter()
            .filter(|s| s.kind == KIND_SERVER)
            .rev()
            .take(3)
            .map(|s| s.resource)
            .collect();
        panic!(
            "{what}: no span with the expected resource; last server spans' resources: {last:#?}\nk8s metrics:\n{}\nlog:\n{}",
            k8s_metrics(agent),
            agent.log()
        )
    })
}

/// The string resource attributes of every `http.server.request.duration`
/// series in the agent's metrics.jsonl.
fn red_resources(agent: &Agent) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(agent.dir.join("data/metrics.jsonl")).unwrap_or_default();
    let mut found = Vec::new();
    for line in text.lines() {
        let Ok(request) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for rm in request["resourceMetrics"].as_array().into_iter().flatten() {
            let red = rm["scopeMetrics"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|sm| sm["metrics"].as_array().into_iter().flatten())
                .any(|m| m["name"] == "http.server.request.duration");
            if !red {
                continue;
            }
            let attributes = rm["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten();
            found.push(
                attributes
                    .filter_map(|kv| {
                        Some((
                            kv["key"].as_str()?.to_owned(),
                            kv["value"]["stringValue"].as_str()?.to_owned(),
                        ))
                    })
                    .collect(),
            );
        }
    }
    found
}

fn k8s_metrics(agent: &Agent) -> String {
    agent
        .get("/metrics")
        .lines()
        .filter(|l| l.starts_with("selfops_k8s_"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn web_pod(uid: &str, name: &str, id: &str, service: &str) -> PodSpec {
    PodSpec {
        namespace: "shop".into(),
        name: name.into(),
        uid: uid.into(),
        node: NODE.into(),
        labels: BTreeMap::from([
            ("app.kubernetes.io/name".into(), "web".into()),
            ("pod-template-hash".into(), "6b8f9d7c4".into()),
        ]),
        annotations: BTreeMap::from([(
            "resource.opentelemetry.io/service.name".into(),
            service.into(),
        )]),
        owner: Some(("ReplicaSet".into(), "web-6b8f9d7c4".into())),
        containers: vec![
            ("web".into(), Some(format!("containerd://{id}"))),
            ("sidecar".into(), None),
        ],
    }
}

fn kubeconfig(api: &KubeApi, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(&path, api.kubeconfig()).expect("kubeconfig");
    path
}

fn needs_cgroups(test: &str) -> bool {
    for root in [CGROUP_V2, CGROUP_V1] {
        if !Path::new(root).join("cgroup.procs").exists() {
            let why = format!(
                "{test}: needs cgroup hierarchies at {CGROUP_V2} (v2) and {CGROUP_V1} (v1)"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why}; CI=true, so this is a failure, not a skip");
            }
            eprintln!("SKIP {why}");
            return false;
        }
    }
    true
}

#[test]
fn spans_carry_pod_metadata_through_restart_expiry_and_outage() {
    let test = "spans_carry_pod_metadata_through_restart_expiry_and_outage";
    if !privileged(test) || !needs_cgroups(test) {
        return;
    }
    let _one = one_agent_at_a_time();
    let dir = scratch_dir("kubernetes-meta-files");
    let api = KubeApi::start();

    // A Deployment's pod (systemd driver, v2) and a StatefulSet's pod
    // (cgroupfs driver, v1) on this node; one elsewhere that must not show.
    let web_uid = pod_uid();
    let web_id = container_id();
    api.apply(&web_pod(
        &web_uid,
        "web-6b8f9d7c4-x7k2p",
        &web_id,
        "storefront",
    ));
    let db_uid = pod_uid();
    let db_id = container_id();
    api.apply(&PodSpec {
        namespace: "data".into(),
        name: "db-0".into(),
        uid: db_uid.clone(),
        node: NODE.into(),
        labels: BTreeMap::from([("app.kubernetes.io/name".into(), "db".into())]),
        annotations: BTreeMap::new(),
        owner: Some(("StatefulSet".into(), "db".into())),
        containers: vec![("postgres".into(), Some(format!("containerd://{db_id}")))],
    });
    let other_id = container_id();
    api.apply(&PodSpec {
        node: "node-elsewhere".into(),
        ..web_pod(&pod_uid(), "web-6b8f9d7c4-other", &other_id, "elsewhere")
    });

    let web_cgroup = ContainerCgroup::systemd_v2(&web_uid, &web_id);
    let db_cgroup = ContainerCgroup::cgroupfs_v1(&db_uid, &db_id);
    let web = PodServer::start(&web_cgroup, &dir);
    let db = PodServer::start(&db_cgroup, &dir);

    let agent = Agent::start(
        "kubernetes-meta",
        &format!(
            "profile:\n  interval: 2s\nkubernetes:\n  kubeconfig: {}\n  node_name: {NODE}\n  cluster_name: test-cluster\n  max_backoff: 1s\n  page_size: 1\ntrace:\n  metrics_interval: 1s\n{AUDITED_PLAYBOOK}",
            kubeconfig(&api, &dir).display()
        ),
    );

    let s = |v: &str| Some(v.to_owned());
    let res = |span: &FlatSpan, k: &str| span.resource_str(k).map(str::to_owned);
    let span = span_where(&agent, &web, "first", |s| {
        s.resource.contains_key("k8s.pod.name")
    });
    assert_eq!(res(&span, "k8s.namespace.name"), s("shop"));
    assert_eq!(res(&span, "k8s.pod.name"), s("web-6b8f9d7c4-x7k2p"));
    assert_eq!(res(&span, "k8s.pod.uid"), s(&web_uid));
    assert_eq!(res(&span, "k8s.container.name"), s("web"));
    assert_eq!(res(&span, "k8s.node.name"), s(NODE));
    assert_eq!(res(&span, "k8s.replicaset.name"), s("web-6b8f9d7c4"));
    assert_eq!(res(&span, "k8s.deployment.name"), s("web"));
    assert_eq!(res(&span, "k8s.cluster.name"), s("test-cluster"));
    assert_eq!(res(&span, "container.id"), s(&web_id));
    assert_eq!(res(&span, "service.name"), s("storefront"), "annotation");
    let pid = span.resource.get("process.pid");
    let pid = pid.and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
    assert_eq!(pid, Some(i64::from(web.pid())));

    // RED metrics: a series per pod container, its resource naming the pod.
    let red = wait_for(Duration::from_secs(30), || {
        red_resources(&agent)
            .into_iter()
            .find(|r| r.get("k8s.pod.name").map(String::as_str) == Some("web-6b8f9d7c4-x7k2p"))
    });
    let red =
        red.unwrap_or_else(|| panic!("no RED series of the web pod: {:?}", red_resources(&agent)));
    for (key, value) in [
        ("service.name", "storefront"),
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.uid", web_uid.as_str()),
        ("k8s.container.name", "web"),
        ("k8s.deployment.name", "web"),
        ("k8s.cluster.name", "test-cluster"),
    ] {
        assert_eq!(
            red.get(key).map(String::as_str),
            Some(value),
            "{key}: {red:?}"
        );
    }

    // Audit records: the agent is their resource (the actor); the workload
    // whose series the playbook read rides on the record.
    let audited = selfops_tests::audit::wait_for_record(
        &agent,
        "selfops.action.applied",
        Duration::from_secs(30),
        |a| a.get("k8s.pod.name").and_then(|v| v.as_str()) == Some("web-6b8f9d7c4-x7k2p"),
    );
    for (key, value) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.uid", web_uid.as_str()),
        ("k8s.deployment.name", "web"),
        ("k8s.cluster.name", "test-cluster"),
        ("selfops.playbook", "storefront-busy"),
    ] {
        assert_eq!(
            audited.get(key).and_then(|v| v.as_str()),
            Some(value),
            "{key} on the audit record: {audited:?}"
        );
    }

    let span = span_where(&agent, &db, "db", |s| {
        s.resource.contains_key("k8s.pod.name")
    });
    assert_eq!(res(&span, "k8s.namespace.name"), s("data"));
    assert_eq!(res(&span, "k8s.pod.name"), s("db-0"));
    assert_eq!(res(&span, "k8s.container.name"), s("postgres"));
    assert_eq!(res(&span, "k8s.statefulset.name"), s("db"));
    assert_eq!(res(&span, "k8s.deployment.name"), None);
    assert_eq!(
        res(&span, "service.name"),
        s("db"),
        "app.kubernetes.io/name label"
    );
    assert_eq!(
        agent.metric("selfops_k8s_pods", &[]),
        2.0,
        "only this node's pods"
    );

    // Profiles: a CPU-bound process in the same pod; its samples carry the
    // pod's attributes.
    let burner = Burner::start(&db_cgroup);
    let labels = wait_for(Duration::from_secs(60), || {
        pod_labels_of(&agent.dir.join("data/profiles"), burner.0.id())
    })
    .unwrap_or_else(|| {
        panic!(
            "no profile samples of the burner with pod labels:\n{}",
            agent.log()
        )
    });
    assert_eq!(labels.get("k8s.pod.name").map(String::as_str), Some("db-0"));
    assert_eq!(
        labels.get("k8s.namespace.name").map(String::as_str),
        Some("data")
    );
    assert_eq!(
        labels.get("k8s.statefulset.name").map(String::as_str),
        Some("db")
    );
    assert_eq!(
        labels.get("k8s.container.name").map(String::as_str),
        Some("postgres")
    );
    assert_eq!(labels.get("service.name").map(String::as_str), Some("db"));
    drop(burner);
    drop(db);

    // Pod restart: the pod is replaced (same name, new uid), its container
    // gets a new id and a new cgroup; the process starts again there.
    drop(web);
    drop(web_cgroup);
    api.delete(&web_uid);
    let web_uid = pod_uid();
    let web_id = container_id();
    api.apply(&web_pod(
        &web_uid,
        "web-6b8f9d7c4-x7k2p",
        &web_id,
        "storefront",
    ));
    let web_cgroup = ContainerCgroup::systemd_v2(&web_uid, &web_id);
    let web = PodServer::start(&web_cgroup, &dir);
    let span = span_where(&agent, &web, "restarted", |s| {
        s.resource_str("k8s.pod.uid") == Some(web_uid.as_str())
    });
    assert_eq!(res(&span, "container.id"), s(&web_id));
    assert_eq!(res(&span, "k8s.pod.name"), s("web-6b8f9d7c4-x7k2p"));
    // The deleted pod's metadata stays for its grace period (the late
    // signals of its last moments), and is shown as held.
    assert_eq!(
        agent.metric("selfops_k8s_deleted_pods", &[]),
        1.0,
        "{}",
        k8s_metrics(&agent)
    );

    // Watch expiry: the agent lists again and keeps the metadata meanwhile;
    // a change after the re-list arrives through the new watch.
    let lists = api.served().lists;
    api.expire_watches();
    let relisted = wait_for(Duration::from_secs(30), || {
        (agent.metric("selfops_k8s_relists_total", &["reason=\"gone\""]) >= 1.0
            && api.served().lists > lists)
            .then_some(())
    });
    assert!(
        relisted.is_some(),
        "no re-list after 410:\n{}",
        k8s_metrics(&agent)
    );
    span_where(&agent, &web, "after-expiry", |s| {
        s.resource_str("k8s.pod.uid") == Some(web_uid.as_str())
    });
    api.apply(&web_pod(
        &web_uid,
        "web-6b8f9d7c4-x7k2p",
        &web_id,
        "storefront-v2",
    ));
    span_where(&agent, &web, "changed-after-expiry", |s| {
        s.resource_str("service.name") == Some("storefront-v2")
    });

    // A dropped connection: the watch resumes, and sees the next change.
    api.drop_connections();
    api.apply(&web_pod(
        &web_uid,
        "web-6b8f9d7c4-x7k2p",
        &web_id,
        "storefront-v3",
    ));
    span_where(&agent, &web, "after-drop", |s| {
        s.resource_str("service.name") == Some("storefront-v3")
    });

    // Outage: every connection refused. Metadata stays; a change made
    // during the outage shows once the server is back.
    let outage = outage_length();
    api.outage(outage);
    let span = span_where(&agent, &web, "during-outage", |s| {
        s.resource_str("k8s.pod.uid") == Some(web_uid.as_str())
    });
    assert!(
        api.in_outage(),
        "the outage must still be on: raise SELFOPS_K8S_OUTAGE_SECS"
    );
    assert_eq!(res(&span, "service.name"), s("storefront-v3"));
    api.apply(&web_pod(
        &web_uid,
        "web-6b8f9d7c4-x7k2p",
        &web_id,
        "storefront-v4",
    ));
    let refused_during = wait_for(outage, || (api.served().refused > 0).then_some(()));
    assert!(
        refused_during.is_some(),
        "the agent never tried during the outage"
    );
    let over = wait_for(outage + Duration::from_secs(5), || {
        (!api.in_outage()).then_some(())
    });
    assert!(over.is_some());
    span_where(&agent, &web, "after-outage", |s| {
        s.resource_str("service.name") == Some("storefront-v4")
    });
    let metrics = k8s_metrics(&agent);
    assert!(
        agent.metric("selfops_k8s_backoffs_total", &[]) >= 1.0,
        "{metrics}"
    );
    assert!(
        agent.metric(
            "selfops_k8s_requests_total",
            &["request=\"watch\"", "outcome=\"connect_error\""]
        ) + agent.metric(
            "selfops_k8s_requests_total",
            &["request=\"list\"", "outcome=\"connect_error\""]
        ) >= 1.0,
        "{metrics}"
    );
    // Web and db run; the pod deleted at the restart may still be held
    // for its grace period.
    assert_eq!(
        agent.metric("selfops_k8s_pods", &[]) - agent.metric("selfops_k8s_deleted_pods", &[]),
        2.0,
        "{metrics}"
    );
    assert!(
        agent.metric("selfops_k8s_metadata_bytes", &[]) > 0.0,
        "{metrics}"
    );
    // The unit the process model shows locally carries the pod too.
    let process = agent.process(web.pid()).expect("python in /processes");
    assert!(
        process.to_string().contains("web-6b8f9d7c4-x7k2p"),
        "{process}"
    );
    eprintln!("k8s metrics at the end:\n{metrics}");
    let _ = agent.stop(libc::SIGTERM);
}

/// The agent's anonymous resident memory in bytes: what its allocations
/// hold. File-backed pages (the binary's text) are left out: the kernel
/// drops and re-reads them under page-cache pressure from whatever else
/// runs, and they do not grow with pods.
fn anon_rss(pid: u32) -> u64 {
    fleet::status_kib(pid, "RssAnon") * 1024
}

/// Anonymous RSS once allocations are over: three readings in a row, half
/// a second apart, within 256 KiB of each other (or the last reading after
/// 30 s).
fn settled_rss(pid: u32) -> u64 {
    let mut readings = vec![anon_rss(pid)];
    let settled = wait_for(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(500));
        readings.push(anon_rss(pid));
        let last = &readings[readings.len().saturating_sub(3)..];
        let spread = last.iter().max()? - last.iter().min()?;
        (last.len() == 3 && spread <= 256 << 10).then_some(())
    });
    if settled.is_none() {
        eprintln!("RSS did not settle: {readings:?}");
    }
    let file = fleet::status_kib(pid, "RssFile");
    eprintln!("file-backed RSS beside it: {:.1} MiB", file as f64 / 1024.0);
    readings.last().copied().unwrap_or(0)
}

#[test]
fn five_thousand_pods_add_at_most_10_mib() {
    let test = "five_thousand_pods_add_at_most_10_mib";
    if !privileged(test) {
        return;
    }
    let _one = one_agent_at_a_time();
    let dir = scratch_dir("kubernetes-memory-files");
    let api = KubeApi::start();
    let agent = Agent::start(
        "kubernetes-memory",
        &format!(
            // Tracing and profiling off: their memory grows with what runs
            // on the host, not with pods, and would blur the figure.
            "trace:\n  enabled: false\nprofile:\n  enabled: false\nkubernetes:\n  kubeconfig: {}\n  node_name: {NODE}\n  max_backoff: 1s\n",
            kubeconfig(&api, &dir).display()
        ),
    );
    let listed = wait_for(Duration::from_secs(30), || {
        (agent.metric(
            "selfops_k8s_requests_total",
            &["request=\"list\"", "outcome=\"ok\""],
        ) >= 1.0)
            .then_some(())
    });
    assert!(listed.is_some(), "{}", k8s_metrics(&agent));
    let before = settled_rss(agent.pid());

    // Real-shaped pods of a busy node: several labels, an owner, two
    // containers each.
    for i in 0..5000 {
        let uid = pod_uid();
        let mut pod = web_pod(
            &uid,
            &format!("api-{i:05}-6b8f9d7c4-q{i:04}"),
            &container_id(),
            "api",
        );
        pod.namespace = format!("team-{}", i % 40);
        pod.labels.insert("team".into(), format!("team-{}", i % 40));
        pod.labels.insert("version".into(), "1.4.2".into());
        pod.containers[1].1 = Some(format!("containerd://{}", container_id()));
        api.apply(&pod);
    }
    let all = wait_for(Duration::from_secs(120), || {
        (agent.metric("selfops_k8s_pods", &[]) >= 5000.0).then_some(())
    });
    assert!(all.is_some(), "{}", k8s_metrics(&agent));
    let watched = settled_rss(agent.pid());
    // And once more through a full paged re-list.
    api.expire_watches();
    let relisted = wait_for(Duration::from_secs(60), || {
        (agent.metric("selfops_k8s_relists_total", &["reason=\"gone\""]) >= 1.0
            && agent.metric("selfops_k8s_pods", &[]) >= 5000.0
            && api.served().lists >= 2)
            .then_some(())
    });
    assert!(relisted.is_some(), "{}", k8s_metrics(&agent));
    let relisted = settled_rss(agent.pid());
    let bytes = agent.metric("selfops_k8s_metadata_bytes", &[]);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "anonymous RSS with 0 pods {:.1} MiB; 5000 pods by watch {:.1} MiB (+{:.1}); after re-list {:.1} MiB (+{:.1}); metadata gauge {:.1} MiB",
        mib(before),
        mib(watched),
        mib(watched.saturating_sub(before)),
        mib(relisted),
        mib(relisted.saturating_sub(before)),
        bytes / (1024.0 * 1024.0),
    );
    let added = watched.max(relisted).saturating_sub(before);
    assert!(
        added <= 10 << 20,
        "5000 pods added {:.1} MiB to the agent's anonymous RSS",
        mib(added)
    );
    let _ = agent.stop(libc::SIGTERM);
}
