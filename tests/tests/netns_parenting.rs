//! Trace parenting across network namespaces, as pods on one node see it.
//!
//! (a) Two "pods" each serve 127.0.0.1:8080 in their own namespace and
//! curl it from inside, in lockstep and from the same client ports, so the
//! two namespaces' connections have identical 4-tuples at the same time.
//! The servers read each request a moment after accepting it (a slow
//! backend), so both pods' requests are sent before either is read: every
//! server span is its own pod's curl's child, never the other's.
//!
//! (b) A client pod calls a virtual address (a Service's cluster IP) that
//! a kube-proxy-style nftables rule in the host netns DNATs to a server
//! pod: the client sees the virtual address, the server the pod
//! addresses, and the agent (in the host netns, like a DaemonSet with
//! hostNetwork, where kube-proxy's NAT state lives) links them through
//! conntrack.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    process::{Child, Stdio},
    sync::{Arc, Barrier},
    time::Duration,
};

use selfops_tests::{
    Agent,
    netns::{Namespace, Pod, ServiceDnat, spawn_in},
    one_agent_at_a_time, privileged, scratch_dir,
    spans::{FlatSpan, KIND_CLIENT, KIND_SERVER, read_spans},
    wait_for,
};

const REQUESTS: usize = 20;
const SERVER_PORT: u16 = 8080;
/// Long beside curl's start-up jitter: both pods' requests are on the way
/// before either server reads.
const READ_DELAY: Duration = Duration::from_millis(300);

/// A process killed on drop.
struct Running(Child);

impl Running {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `nft` is installed; under CI its absence is a failure.
fn have_nft(test: &str) -> bool {
    let found = std::process::Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let why = format!("{test}: needs nft (nftables; `cargo xtask setup` installs it)");
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "{why}; CI=true, so this is a failure, not a skip");
        eprintln!("SKIP {why}");
    }
    found
}

/// python3's http.server on `bind`:8080 inside `ns`, listening on `probe`
/// when this returns. (Bound to a pod address it would look that address
/// up in DNS first, which a namespace without a resolver waits out.)
fn http_server(ns: &Namespace, bind: Ipv4Addr, probe: Ipv4Addr, dir: &std::path::Path) -> Running {
    let child = ns
        .command("python3")
        .args(["-m", "http.server", &SERVER_PORT.to_string(), "--bind"])
        .arg(bind.to_string())
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let server = Running(child);
    let up = spawn_in(&ns.name, move || {
        wait_for(Duration::from_secs(10), || {
            TcpStream::connect((probe, SERVER_PORT)).ok()
        })
        .is_some()
    })
    .join()
    .expect("probe thread");
    assert!(
        up,
        "http.server in {} not listening on {bind}:{SERVER_PORT}",
        ns.name
    );
    server
}

const SLOW_SERVER: &str = r"
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', PORT))
s.listen(64)
while True:
    c, _ = s.accept()
    time.sleep(DELAY)
    try:
        if c.recv(65536):
            c.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok')
    except OSError:
        pass
    c.close()
";

/// A slow HTTP/1.0 server on 127.0.0.1:8080 inside `ns`: it reads each
/// request `READ_DELAY` after accepting it, one connection at a time.
fn slow_loopback_server(ns: &Namespace) -> Running {
    let script = SLOW_SERVER
        .replace("PORT", &SERVER_PORT.to_string())
        .replace("DELAY", &READ_DELAY.as_secs_f64().to_string());
    let child = ns
        .command("python3")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 server");
    let server = Running(child);
    let up = spawn_in(&ns.name, || {
        wait_for(Duration::from_secs(10), || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, SERVER_PORT)).ok()
        })
        .is_some()
    })
    .join()
    .expect("probe thread");
    assert!(
        up,
        "server in {} not listening on 127.0.0.1:{SERVER_PORT}",
        ns.name
    );
    server
}

/// One curl inside `ns`; returns its pid (`ip netns exec` execs curl).
fn curl_in(ns: &Namespace, url: &str, local_port: Option<u16>) -> u32 {
    let mut command = ns.command("curl");
    command.args(["-s", "-o", "/dev/null", "--max-time", "10", "-f"]);
    if let Some(port) = local_port {
        command.args(["--local-port", &port.to_string()]);
    }
    let mut child = command.arg(url).spawn().expect("curl");
    let pid = child.id();
    let status = child.wait().expect("curl");
    assert!(status.success(), "curl {url} in {}: {status}", ns.name);
    pid
}

fn pid_of(span: &FlatSpan) -> Option<u32> {
    span.resource
        .get("process.pid")
        // OTLP JSON carries 64-bit integers as strings.
        .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
        .and_then(|p| u32::try_from(p).ok())
}

fn summary(spans: &[&FlatSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  kind {} pid {:?} trace {} span {} parent {} {:?}\n",
                s.kind,
                pid_of(s),
                s.trace_id,
                s.span_id,
                s.parent_span_id,
                s.attributes.get("network.peer.address"),
            )
        })
        .collect()
}

fn tracer_metrics(agent: &Agent) -> String {
    agent
        .get("/metrics")
        .lines()
        .filter(|l| l.starts_with("selfops_trace_") || l.starts_with("selfops_sensor_"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for `servers` × REQUESTS server spans of the server pids and the
/// client spans of `curls`; returns every span of those processes.
fn spans_of(agent: &Agent, servers: &[u32], curls: &BTreeSet<u32>) -> Vec<FlatSpan> {
    let traces_file = agent.dir.join("data/traces.jsonl");
    let ours = |spans: Vec<FlatSpan>| -> Vec<FlatSpan> {
        spans
            .into_iter()
            .filter(|s| pid_of(s).is_some_and(|p| servers.contains(&p) || curls.contains(&p)))
            .collect()
    };
    let wanted = servers.len() * REQUESTS;
    wait_for(Duration::from_secs(20), || {
        let spans = ours(read_spans(&traces_file));
        let server_spans = spans.iter().filter(|s| s.kind == KIND_SERVER).count();
        let client_spans = spans.iter().filter(|s| s.kind == KIND_CLIENT).count();
        (server_spans >= wanted && client_spans >= curls.len()).then_some(spans)
    })
    .unwrap_or_else(|| {
        let spans = ours(read_spans(&traces_file));
        panic!(
            "expected {wanted} server spans and {} client spans; got\n{}metrics:\n{}\nlog:\n{}",
            curls.len(),
            summary(&spans.iter().collect::<Vec<_>>()),
            tracer_metrics(agent),
            agent.log()
        )
    })
}

#[test]
fn loopback_servers_of_two_namespaces_are_never_cross_linked() {
    if !privileged("loopback_servers_of_two_namespaces_are_never_cross_linked") {
        return;
    }
    let _turn = one_agent_at_a_time();
    let agent = Agent::start("netns-loopback-agent", "export:\n  batch_timeout: 200ms\n");
    let pods = [
        Namespace::new("pod-a").expect("namespace"),
        Namespace::new("pod-b").expect("namespace"),
    ];
    let servers: Vec<Running> = pods.iter().map(slow_loopback_server).collect();
    // The i-th request of both pods at once, from the same client port:
    // the same 4-tuple is live in both namespaces.
    let barrier = Arc::new(Barrier::new(2));
    let base_port = 42_000 + (std::process::id() % 1_000) as u16 * 20;
    let curls: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .map(|ns| {
                let barrier = barrier.clone();
                scope.spawn(move || {
                    (0..REQUESTS)
                        .map(|i| {
                            barrier.wait();
                            let port = base_port + i as u16;
                            curl_in(ns, &format!("http://127.0.0.1:{SERVER_PORT}/"), Some(port))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("curl thread"))
            .collect()
    });
    let all_curls: BTreeSet<u32> = curls.iter().flatten().copied().collect();
    let server_pids: Vec<u32> = servers.iter().map(Running::pid).collect();
    let spans = spans_of(&agent, &server_pids, &all_curls);

    let by_span: BTreeMap<&str, &FlatSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let everything = summary(&spans.iter().collect::<Vec<_>>());
    for (pod, (server_pid, own_curls)) in server_pids.iter().zip(&curls).enumerate() {
        let own: BTreeSet<u32> = own_curls.iter().copied().collect();
        let server_spans: Vec<&FlatSpan> = spans
            .iter()
            .filter(|s| s.kind == KIND_SERVER && pid_of(s) == Some(*server_pid))
            .collect();
        assert_eq!(server_spans.len(), REQUESTS, "pod {pod}:\n{everything}");
        for server in server_spans {
            let parent = by_span
                .get(server.parent_span_id.as_str())
                .unwrap_or_else(|| {
                    panic!(
                        "pod {pod}: server span {} has no client parent\n{everything}",
                        server.span_id
                    )
                });
            assert_eq!(parent.kind, KIND_CLIENT, "{everything}");
            assert!(
                pid_of(parent).is_some_and(|p| own.contains(&p)),
                "pod {pod}: server span {} parented to another namespace's curl (pid {:?})\n{everything}",
                server.span_id,
                pid_of(parent)
            );
            assert_eq!(parent.trace_id, server.trace_id, "{everything}");
        }
    }
}

#[test]
fn a_service_virtual_address_links_client_and_server() {
    if !privileged("a_service_virtual_address_links_client_and_server")
        || !have_nft("a_service_virtual_address_links_client_and_server")
    {
        return;
    }
    let _turn = one_agent_at_a_time();
    let dir = scratch_dir("netns-service");
    let agent = Agent::start("netns-service-agent", "export:\n  batch_timeout: 200ms\n");
    let subnet = (std::process::id() % 250) as u8 + 1;
    let client = Pod::new("client", subnet, 0).expect("client pod");
    let server_pod = Pod::new("server", subnet, 1).expect("server pod");
    let virtual_ip = Ipv4Addr::new(10, 96, subnet, 10);
    let _service = ServiceDnat::new(
        virtual_ip,
        80,
        SocketAddrV4::new(server_pod.pod_v4, SERVER_PORT),
    )
    .expect("DNAT rule");
    let server = http_server(
        &server_pod.ns,
        Ipv4Addr::UNSPECIFIED,
        server_pod.pod_v4,
        &dir,
    );
    let curls: BTreeSet<u32> = (0..REQUESTS)
        .map(|_| curl_in(&client.ns, &format!("http://{virtual_ip}:80/"), None))
        .collect();
    let spans = spans_of(&agent, &[server.pid()], &curls);

    let by_span: BTreeMap<&str, &FlatSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let everything = format!(
        "{}metrics:\n{}",
        summary(&spans.iter().collect::<Vec<_>>()),
        tracer_metrics(&agent)
    );
    // The client saw the virtual address, the server the client pod's.
    let clients: Vec<&FlatSpan> = spans.iter().filter(|s| s.kind == KIND_CLIENT).collect();
    assert!(
        clients
            .iter()
            .all(|c| c.attr_str("network.peer.address") == Some(&virtual_ip.to_string())),
        "{everything}"
    );
    let server_spans: Vec<&FlatSpan> = spans.iter().filter(|s| s.kind == KIND_SERVER).collect();
    assert_eq!(server_spans.len(), REQUESTS, "{everything}");
    for s in &server_spans {
        assert_eq!(
            s.attr_str("network.peer.address"),
            Some(client.pod_v4.to_string().as_str()),
            "{everything}"
        );
        let parent = by_span.get(s.parent_span_id.as_str()).unwrap_or_else(|| {
            panic!(
                "server span {} is not the child of a client span\n{everything}",
                s.span_id
            )
        });
        assert_eq!(parent.kind, KIND_CLIENT, "{everything}");
        assert_eq!(parent.trace_id, s.trace_id, "{everything}");
    }
    let translated = agent.metric(
        "selfops_trace_nat_lookups_total",
        &["reason=\"translated\""],
    );
    assert!(translated >= REQUESTS as f64, "{everything}");
}
