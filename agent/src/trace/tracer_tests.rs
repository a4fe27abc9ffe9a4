//! The tracer fed socket events in the orders the kernel can deliver them:
//! a local client and its server on one host must become one trace however
//! the two processes were scheduled between their syscalls and the probes'
//! returns.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::registry::Registry;
use selfops_ebpf::NetEventKind;

use super::{TraceMetrics, Tracer};
use crate::{
    config::{ServiceConfig, TraceConfig},
    process::{Process, ResourceBuilder, SharedTable, caught_up::CaughtUp, table::ProcessTable},
    signal::{AttrValue, Signal, Span, SpanKind},
    telemetry::Metrics,
    trace::event::{Endpoints, SocketEvent},
};

const REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: backend\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

const CLIENT_PID: u32 = 20;
const SERVER_PID: u32 = 10;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The client's view of its connection to the server.
fn client_view(client_port: u16) -> Endpoints {
    Endpoints {
        local: addr(client_port),
        remote: addr(8443),
    }
}

struct Harness {
    tracer: Tracer,
    spans: Arc<Mutex<Vec<Span>>>,
    clock_ns: u64,
    table: SharedTable,
    /// Network namespace of the events fed.
    netns: u32,
}

/// The client process as the table holds it: `executable` its image.
fn client_process(executable: &str) -> Process {
    Process {
        pid: CLIENT_PID,
        ppid: 1,
        comm: executable.to_owned(),
        executable_path: Some(format!("/usr/bin/{executable}").into()),
        build_id: None,
        command_line: None,
        cgroup: None,
        container_id: None,
        start_time_unix_nano: 0,
    }
}

impl Harness {
    fn new() -> Self {
        Self::with_process_model(CaughtUp::always())
    }

    /// A tracer waiting on `caught_up` for the process table.
    fn with_process_model(caught_up: CaughtUp) -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let spans = spans.clone();
            Box::new(move |signal| {
                if let Signal::Span(span) = signal {
                    spans.lock().unwrap().push(span);
                }
            })
        };
        let mut registry = Registry::default();
        let table = SharedTable::new(ProcessTable::new(64, Duration::from_secs(60)));
        let tracer = Tracer::new(
            &TraceConfig::default(),
            table.clone(),
            Arc::new(ResourceBuilder::new(&ServiceConfig::default()).unwrap()),
            Arc::new(Metrics::new()),
            TraceMetrics::register(&mut registry),
            caught_up,
            sink,
        )
        .unwrap();
        Self {
            tracer,
            spans,
            clock_ns: 1_000_000,
            table,
            netns: 4026531840,
        }
    }

    /// One event on the client's (`server == false`) or the server's end
    /// of the connection whose client port is `client_port`.
    fn event(&mut self, server: bool, kind: NetEventKind, client_port: u16, payload: &[u8]) {
        // Sockets of different namespaces are different kernel objects.
        let ns_bits = u64::from(self.netns) << 24;
        let (pid, sock, endpoints) = if server {
            (
                SERVER_PID,
                ns_bits + 0xb000 + u64::from(client_port),
                client_view(client_port).reversed(),
            )
        } else {
            (
                CLIENT_PID,
                ns_bits + 0xa000 + u64::from(client_port),
                client_view(client_port),
            )
        };
        self.raw(pid, sock, kind, endpoints, payload);
    }

    fn raw(
        &mut self,
        pid: u32,
        sock: u64,
        kind: NetEventKind,
        endpoints: Endpoints,
        payload: &[u8],
    ) {
        self.clock_ns += 1_000;
        self.tracer.handle(SocketEvent {
            kind,
            pid,
            tid: pid,
            fd: 5,
            sock,
            start_boot_ns: self.clock_ns - 500,
            end_boot_ns: self.clock_ns,
            endpoints,
            netns: self.netns,
            total_len: payload.len() as u64,
            payload,
            tls: !payload.is_empty(),
        });
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
    /// Feeds `steps` on the connection whose client port is `port`.
    fn run(&mut self, port: u16, steps: &[(End, NetEventKind)]) {
        for &(end, kind) in steps {
            let payload = match (end, kind) {
                (End::Client, NetEventKind::Egress) | (End::Server, NetEventKind::Ingress) => {
                    REQUEST
                }
                (_, NetEventKind::Egress | NetEventKind::Ingress) => RESPONSE,
                _ => b"",
            };
            self.event(end == End::Server, kind, port, payload);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Client,
    Server,
}

use NetEventKind::{Accept, Close, Connect, Egress, Ingress};

const CLIENT_CONNECTS: (End, NetEventKind) = (End::Client, Connect);
const CLIENT_SENDS: (End, NetEventKind) = (End::Client, Egress);
const CLIENT_READS: (End, NetEventKind) = (End::Client, Ingress);
const CLIENT_CLOSES: (End, NetEventKind) = (End::Client, Close);
const SERVER_ACCEPTS: (End, NetEventKind) = (End::Server, Accept);
const SERVER_READS: (End, NetEventKind) = (End::Server, Ingress);
const SERVER_ANSWERS: (End, NetEventKind) = (End::Server, Egress);
const SERVER_CLOSES: (End, NetEventKind) = (End::Server, Close);

/// The client's request event first: its context is waiting when the
/// server reads the request.
const USUAL_ORDER: [(End, NetEventKind); 8] = [
    CLIENT_CONNECTS,
    CLIENT_SENDS,
    SERVER_ACCEPTS,
    SERVER_READS,
    SERVER_ANSWERS,
    CLIENT_READS,
    CLIENT_CLOSES,
    SERVER_CLOSES,
];

/// The client and server spans of one exchange, checked to be one trace.
fn assert_one_trace(spans: &[Span]) {
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans.iter().find(|s| s.kind == SpanKind::Client).unwrap();
    let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    assert_eq!(server.trace_id, client.trace_id, "{spans:#?}");
    assert_eq!(server.parent_span_id, Some(client.span_id), "{spans:#?}");
}

/// Seen with TLS under load: the server's probe reported the request, the
/// client's came next, then the client read the answer and closed — all
/// before the server's SSL_write probe returned with the response.
#[test]
fn a_server_answering_after_its_client_closed_is_still_its_child() {
    let mut h = Harness::new();
    h.run(
        40_000,
        &[
            CLIENT_CONNECTS,
            SERVER_ACCEPTS,
            SERVER_READS,
            CLIENT_SENDS,
            CLIENT_READS,
            CLIENT_CLOSES,
            SERVER_ANSWERS,
            SERVER_CLOSES,
        ],
    );
    assert_one_trace(&h.spans());
}

/// The usual order, for comparison.
#[test]
fn a_server_whose_client_was_seen_first_is_its_child() {
    let mut h = Harness::new();
    h.run(40_001, &USUAL_ORDER);
    assert_one_trace(&h.spans());
}

/// What a closed client left unclaimed is not handed to the server of a
/// later connection on the same 4-tuple.
#[test]
fn a_reused_four_tuple_does_not_inherit_unclaimed_contexts() {
    let mut h = Harness::new();
    // A client whose server end is not traced: its context stays unclaimed.
    h.run(
        40_002,
        &[CLIENT_CONNECTS, CLIENT_SENDS, CLIENT_READS, CLIENT_CLOSES],
    );
    // The same 4-tuple again, now with both ends traced.
    h.run(40_002, &USUAL_ORDER[..7]);
    let spans = h.spans();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let second = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client)
        .nth(1)
        .unwrap();
    let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    assert_eq!(server.parent_span_id, Some(second.span_id), "{spans:#?}");
}

/// The process ring is read apart from the socket ring: curl's socket
/// events can be read before its exec, while the table still holds the
/// image it forked from. Its span waits for the table, then names curl.
#[test]
fn a_span_waits_for_the_exec_of_its_process() {
    let caught_up = CaughtUp::new();
    let mut h = Harness::with_process_model(caught_up.clone());
    let _ = h.table.write().insert(client_process("test-runner"));
    h.run(40_003, &USUAL_ORDER);
    assert!(h.spans().is_empty(), "{:#?}", h.spans());
    // The process model reads the exec, then finds its ring empty.
    let _ = h.table.write().insert(client_process("curl"));
    caught_up.reached(h.clock_ns);
    h.tracer.release_awaiting_table(std::time::Instant::now());
    let spans = h.spans();
    assert_one_trace(&spans);
    let client = spans.iter().find(|s| s.kind == SpanKind::Client).unwrap();
    assert_eq!(
        client.resource.get("process.executable.name"),
        Some(&AttrValue::Str("curl".into())),
        "{client:#?}"
    );
}

/// A process model that fell behind holds spans back for a bounded time
/// only; they go with what the table knows, and are counted.
#[test]
fn spans_do_not_wait_for_the_table_beyond_a_second() {
    let mut h = Harness::with_process_model(CaughtUp::new());
    h.run(40_004, &USUAL_ORDER);
    assert!(h.spans().is_empty());
    h.tracer
        .release_awaiting_table(std::time::Instant::now() + Duration::from_millis(1_001));
    assert_one_trace(&h.spans());
    assert_eq!(h.tracer.trace_metrics.resource_unconfirmed.get(), 2);
}

/// Two pods' loopback connections with the same addresses and ports: each
/// server span is its own client's child, never the other pod's.
#[test]
fn loopback_connections_of_two_namespaces_are_never_linked() {
    let mut h = Harness::new();
    let (pod_a, pod_b) = (4_026_532_001, 4_026_532_002);
    h.netns = pod_a;
    h.run(40_010, &[CLIENT_CONNECTS, CLIENT_SENDS]);
    h.netns = pod_b;
    h.run(40_010, &USUAL_ORDER);
    h.netns = pod_a;
    h.run(40_010, &USUAL_ORDER[2..]);
    let spans = h.spans();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let mut traces: std::collections::BTreeMap<_, Vec<Span>> = Default::default();
    for s in spans {
        traces.entry(s.trace_id).or_default().push(s);
    }
    assert_eq!(traces.len(), 2, "{traces:#?}");
    for pair in traces.values() {
        assert_one_trace(pair);
    }
}

/// Conntrack says what the server of a connection to a virtual address
/// sees: the server span is the client's child.
#[test]
fn a_client_of_a_nated_address_is_its_servers_parent() {
    use crate::trace::conntrack::{ConntrackError, NatTable, NatTranslator};
    struct Dnat;
    impl NatTable for Dnat {
        fn server_view(&mut self, client: Endpoints) -> Result<Option<Endpoints>, ConntrackError> {
            Ok(
                (client.remote == "10.96.0.10:80".parse().unwrap()).then(|| Endpoints {
                    local: "10.2.0.2:8080".parse().unwrap(),
                    remote: client.local,
                }),
            )
        }
    }
    let mut h = Harness::new();
    let family = prometheus_client::metrics::family::Family::default();
    h.tracer.nat = NatTranslator::new(Some(Box::new(Dnat)), &family);
    let client = Endpoints {
        local: "10.1.0.2:40000".parse().unwrap(),
        remote: "10.96.0.10:80".parse().unwrap(),
    };
    let server = Endpoints {
        local: "10.2.0.2:8080".parse().unwrap(),
        remote: "10.1.0.2:40000".parse().unwrap(),
    };
    h.netns = 4_026_532_010;
    h.raw(CLIENT_PID, 1, Connect, client, b"");
    h.raw(CLIENT_PID, 1, Egress, client, REQUEST);
    h.netns = 4_026_532_020;
    h.raw(SERVER_PID, 2, Accept, server, b"");
    h.raw(SERVER_PID, 2, Ingress, server, REQUEST);
    h.raw(SERVER_PID, 2, Egress, server, RESPONSE);
    h.netns = 4_026_532_010;
    h.raw(CLIENT_PID, 1, Ingress, client, RESPONSE);
    h.raw(CLIENT_PID, 1, Close, client, b"");
    assert_one_trace(&h.spans());
}
