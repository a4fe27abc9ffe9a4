//! The tracer: socket events in, HTTP spans out. It keeps the traced
//! connections, parents spans across processes (W3C traceparent, both ends
//! of a connection, thread-per-request servers) and hands finished spans to
//! the export pipeline.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use selfops_ebpf::{NetEventKind, Sensor};
use tokio::sync::watch;

use super::{
    FastMap,
    connection::{Connection, InFlight, Parsed, Side},
    conntrack::NatTranslator,
    context::{
        Rendezvous, SpanContext, SpanId, TraceId, new_span_id, new_trace_id, parse_traceparent,
    },
    event::{Endpoints, LinkKey, SocketEvent, decode},
    filter::TraceFilter,
    http1::Response,
    kernel_filter::{KernelExclusions, KernelFilterMetrics},
    red::{Observation, RedMetrics},
    spans::{Exchange, build},
};
use crate::{
    config::TraceConfig,
    control::next_update,
    kernel::ring_reader::RingReader,
    process::{Process, ResourceBuilder, SharedTable, caught_up::CaughtUp, clock::BootClock},
    signal::{AttrValue, Resource, Signal, Span},
    telemetry::{
        Metrics,
        metrics::{ReasonLabel, SensorLabel},
    },
};

/// A connection: the process and the kernel's socket. Both are unique
/// across network namespaces (the pid is the root namespace's, the socket
/// a kernel address); what is keyed by addresses carries the namespace
/// (see [`LinkKey`]).
type ConnKey = (u32, u64);

const MAX_RECORDS_PER_WAKEUP: usize = 4096;
/// How long after the process model's tick the socket ring is drained when
/// the kernel did not wake us (every `caught_up::TICK`): long enough for
/// the model's tick to have run first, short enough that few spans of the
/// drain wait for the table.
const DRAIN_LAG: Duration = Duration::from_millis(2);
/// How long a finished server span waits for its client's event when no
/// traced connection on this host is that client (a remote peer).
const PARK_FOR: Duration = Duration::from_millis(250);
/// How long it waits when its client is a connection the agent traces:
/// that client's event is sure to come (its process may be descheduled
/// between its write and the probe's return), so the wait ends when it
/// comes or the connection closes; this bound only caps memory and the
/// delay for clients whose requests cannot be seen.
const CLIENT_WAIT_MAX: Duration = Duration::from_secs(5);
/// How often the kernel's map of excluded processes is brought in line
/// with the process table (new processes, execs, exits).
const KERNEL_EXCLUSIONS_EVERY: Duration = Duration::from_secs(1);
/// Server spans waiting at most; beyond it they are decided at once.
const MAX_PARKED: usize = 4096;
/// Spans waiting for the process table at most, and for how long: beyond
/// either they go with what the table knows, counted.
const MAX_AWAITING_TABLE: usize = 8192;
const TABLE_WAIT_MAX: Duration = Duration::from_secs(1);

/// A finished span whose process's exec (or fork) may still be unread in
/// the process ring: its resource is looked up once the table has caught
/// up with the span's first byte.
struct AwaitingTable {
    since: Instant,
    pid: u32,
    first_byte_ns: u64,
    span: Span,
    method: &'static str,
    /// The request's target, moved from the request: its path is taken
    /// when the span goes, rather than copied for every span that waits.
    target: String,
    status: u16,
}

/// A finished server span whose client end was not seen yet.
struct Parked {
    since: Instant,
    pid: u32,
    endpoints: Endpoints,
    entry: InFlight,
    response: Response,
    tls: bool,
    /// Given a trace of its own while in flight (it called out before its
    /// client's event came): waits for that client to become its parent.
    awaiting_parent: bool,
}

/// Fixes `entry`'s trace from the client end (if its event was processed)
/// or the request's traceparent; with `decide`, else a new trace.
fn resolve_entry(rendezvous: &mut Rendezvous, link: LinkKey, entry: &mut InFlight, decide: bool) {
    // Resolved already (the usual response): no clock read.
    if entry.trace_id.is_some() {
        return;
    }
    resolve_entry_at(rendezvous, link, entry, decide, Instant::now());
}

/// [`resolve_entry`] at `now` (read once for many entries).
fn resolve_entry_at(
    rendezvous: &mut Rendezvous,
    link: LinkKey,
    entry: &mut InFlight,
    decide: bool,
    now: Instant,
) {
    if entry.trace_id.is_some() {
        return;
    }
    let (trace_id, parent) = match (rendezvous.claim(link, now), entry.traceparent) {
        (Some(client), _) => (client.trace_id, Some(client.span_id)),
        (None, _) if !decide => return,
        (None, Some(tp)) => (tp.trace_id, Some(tp.span_id)),
        (None, None) => (new_trace_id(), None),
    };
    entry.trace_id = Some(trace_id);
    entry.parent = parent;
}

#[derive(Clone)]
pub struct TraceMetrics {
    pub spans: Family<ReasonLabel, Counter>,
    pub connections: Gauge,
    pub connections_rejected: Counter,
    pub requests_unanswered: Counter,
    pub red_series: Gauge,
    pub red_routes_overflowed: Counter,
    pub red_series_overflowed: Counter,
    /// Spans sent before the process table had caught up with them.
    pub resource_unconfirmed: Counter,
    /// Things the tracer could not use, by reason.
    pub untraced: Family<ReasonLabel, Counter>,
    /// Conntrack lookups of client connections, by outcome.
    pub nat_lookups: Family<ReasonLabel, Counter>,
    pub kernel_filter: KernelFilterMetrics,
}

impl TraceMetrics {
    pub fn dropped(&self, reason: &'static str) {
        self.untraced.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            spans: Family::default(),
            connections: Gauge::default(),
            connections_rejected: Counter::default(),
            requests_unanswered: Counter::default(),
            red_series: Gauge::default(),
            red_routes_overflowed: Counter::default(),
            red_series_overflowed: Counter::default(),
            resource_unconfirmed: Counter::default(),
            untraced: Family::default(),
            nat_lookups: Family::default(),
            kernel_filter: KernelFilterMetrics::register(registry),
        };
        registry.register(
            "trace_nat_lookups",
            "Conntrack lookups of client connections to non-local addresses, by outcome \
             (translated, not_translated, not_found, failed, unavailable, \
             skipped_known_untranslated, untranslated_cache_cleared)",
            m.nat_lookups.clone(),
        );
        registry.register(
            "trace_spans_resource_unconfirmed",
            "Spans sent with the process resource known so far, the process table not \
             having caught up within 1 s (or too many spans waiting for it)",
            m.resource_unconfirmed.clone(),
        );
        registry.register(
            "trace_untraced",
            "Responses without a request, client requests the rendezvous could not hold, \
             server spans decided before their client was seen",
            m.untraced.clone(),
        );
        registry.register(
            "trace_red_series",
            "RED histogram series (service, method, route, status class)",
            m.red_series.clone(),
        );
        registry.register(
            "trace_red_routes_overflowed",
            "Requests counted under the overflow route (route cap per service reached)",
            m.red_routes_overflowed.clone(),
        );
        registry.register(
            "trace_red_series_overflowed",
            "Requests counted under an overflow series (trace.max_red_series reached)",
            m.red_series_overflowed.clone(),
        );
        registry.register(
            "trace_spans",
            "HTTP spans produced, by kind",
            m.spans.clone(),
        );
        registry.register(
            "trace_connections",
            "TCP connections being traced",
            m.connections.clone(),
        );
        registry.register(
            "trace_connections_rejected",
            "Connections not traced because the table was full",
            m.connections_rejected.clone(),
        );
        registry.register(
            "trace_requests_unanswered",
            "Requests dropped without a response (connection closed or too many in flight)",
            m.requests_unanswered.clone(),
        );
        m
    }
}

/// Counters touched per event, looked up once: a family lookup takes a
/// lock and a hash.
struct HotCounters {
    received: Counter,
    malformed: Counter,
    server_spans: Counter,
    client_spans: Counter,
}

pub struct Tracer {
    connections: FastMap<ConnKey, Connection>,
    max_connections: usize,
    rendezvous: Rendezvous,
    /// Thread → the server request it is handling now.
    active_server: FastMap<u32, (ConnKey, SpanId)>,
    /// Thread → server requests it has read and not yet answered.
    serving: FastMap<u32, u32>,
    /// Server spans in flight that were given a trace before their client's
    /// event was seen, by the server's endpoints.
    orphans: FastMap<LinkKey, (ConnKey, SpanId)>,
    /// Client-side connections by their endpoints, so a server span can
    /// tell whether its client is a connection the agent traces.
    clients: FastMap<LinkKey, ConnKey>,
    /// Translates clients' views of NATed connections.
    nat: NatTranslator,
    /// Pids whose /proc entry was missing at the last upkeep.
    dead_last_time: super::FastSet<u32>,
    table: SharedTable,
    resources: Arc<ResourceBuilder>,
    /// By pid, with the table entry it was built from: an exec replaces
    /// the entry, and with it the resource.
    resource_cache: FastMap<u32, (Arc<Process>, Arc<Resource>)>,
    /// The service rules the cached resources were built under.
    resource_generation: u64,
    caught_up: CaughtUp,
    awaiting_table: VecDeque<AwaitingTable>,
    /// Stands in for the resource of a span waiting for the table.
    no_resource: Arc<Resource>,
    clock: BootClock,
    sink: Box<dyn FnMut(Signal) + Send>,
    trace_metrics: TraceMetrics,
    counters: HotCounters,
    red: RedMetrics,
    red_interval: Duration,
    /// Parked server spans by their link: a client event or close
    /// concerns one link's spans only, so only those are looked at then.
    parked: FastMap<LinkKey, VecDeque<Parked>>,
    /// Server spans parked in all.
    parked_len: usize,
    filter: TraceFilter,
    /// Remote config: a new `trace` section (include/exclude applied to
    /// connections from then on; the sensor stays attached).
    updates: Option<watch::Receiver<TraceConfig>>,
    /// The processes `filter` leaves out, handed to the kernel.
    kernel_exclusions: Option<KernelExclusions>,
    /// Messages of the event being handled (kept for its allocation).
    parsed: Vec<Parsed>,
}

impl Tracer {
    pub fn with_updates(mut self, updates: watch::Receiver<TraceConfig>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Excluded processes are also skipped by the kernel, through `map`.
    pub fn with_kernel_exclusions(mut self, map: Box<dyn super::kernel_filter::TgidMap>) -> Self {
        let metrics = self.trace_metrics.kernel_filter.clone();
        self.kernel_exclusions = Some(KernelExclusions::new(map, metrics));
        self
    }

    /// Writes the processes the filter leaves out into the kernel's map;
    /// their connections the tracer still holds go, as the kernel will not
    /// report their close.
    fn sync_kernel_exclusions(&mut self) {
        let Some(exclusions) = &mut self.kernel_exclusions else {
            return;
        };
        // Without rules (the default) the table is not walked every second.
        if !self.filter.has_rules() && exclusions.is_empty() {
            return;
        }
        let processes = self.table.read().snapshot();
        exclusions.sync(&processes, &self.filter);
        let gone: Vec<ConnKey> = self
            .connections
            .iter()
            .filter(|((pid, _), conn)| conn.excluded && exclusions.contains(*pid))
            .map(|(key, _)| *key)
            .collect();
        for key in gone {
            self.discard(key);
        }
    }

    fn reconfigure(&mut self, config: &TraceConfig) {
        match TraceFilter::new(&config.include, &config.exclude) {
            Ok(filter) => {
                self.filter = filter;
                self.sync_kernel_exclusions();
                tracing::info!("trace include/exclude reconfigured");
            }
            // Validated with the config before it got here.
            Err(err) => tracing::warn!(%err, "trace include/exclude not reconfigured"),
        }
    }

    pub fn new(
        config: &TraceConfig,
        table: SharedTable,
        resources: Arc<ResourceBuilder>,
        metrics: Arc<Metrics>,
        trace_metrics: TraceMetrics,
        caught_up: CaughtUp,
        sink: Box<dyn FnMut(Signal) + Send>,
    ) -> Result<Self, globset::Error> {
        let filter = TraceFilter::new(&config.include, &config.exclude)?;
        let clock = BootClock::measure();
        let max_connections = config.max_connections;
        // One statement per lookup: a family's read guard lives to the end of
        // its statement, and creating the next series of that family needs
        // the write lock.
        let counter = |family: &Family<SensorLabel, Counter>| {
            family
                .get_or_create(&Metrics::sensor(Sensor::Socket))
                .clone()
        };
        let received = counter(&metrics.events_received);
        let malformed = counter(&metrics.events_malformed);
        let span_counter = |reason| {
            trace_metrics
                .spans
                .get_or_create(&ReasonLabel { reason })
                .clone()
        };
        let server_spans = span_counter("server");
        let client_spans = span_counter("client");
        let counters = HotCounters {
            received,
            malformed,
            server_spans,
            client_spans,
        };
        Ok(Self {
            red: RedMetrics::new(
                config.max_routes_per_service,
                config.max_red_series,
                unix_now_ns(),
            ),
            red_interval: config.metrics_interval,
            parked: FastMap::default(),
            parked_len: 0,
            filter,
            updates: None,
            kernel_exclusions: None,
            parsed: Vec::new(),
            connections: FastMap::default(),
            max_connections,
            rendezvous: Rendezvous::new(max_connections),
            active_server: FastMap::default(),
            serving: FastMap::default(),
            dead_last_time: super::FastSet::default(),
            orphans: FastMap::default(),
            clients: FastMap::default(),
            nat: NatTranslator::kernel(&trace_metrics.nat_lookups),
            table,
            resources,
            resource_cache: FastMap::default(),
            resource_generation: 0,
            caught_up,
            awaiting_table: VecDeque::new(),
            no_resource: Arc::new(Resource {
                attributes: Vec::new(),
            }),
            clock,
            sink,
            counters,
            trace_metrics,
        })
    }

    pub fn handle_record(&mut self, record: &[u8]) {
        match decode(record) {
            Ok(event) => {
                self.counters.received.inc();
                self.handle(event);
            }
            Err(err) => {
                tracing::debug!(%err, "malformed socket event");
                self.counters.malformed.inc();
            }
        }
    }

    pub fn handle(&mut self, event: SocketEvent<'_>) {
        let key = (event.pid, event.sock);
        match event.kind {
            NetEventKind::Accept | NetEventKind::Connect => {
                let side = if event.kind == NetEventKind::Accept {
                    Side::Server
                } else {
                    Side::Client
                };
                self.close(key, event.end_boot_ns);
                self.open(key, &event, Some(side));
            }
            NetEventKind::Close => self.close(key, event.end_boot_ns),
            NetEventKind::Ingress | NetEventKind::Egress => {
                if !self.connections.contains_key(&key) && !self.open(key, &event, None) {
                    return;
                }
                // One buffer for every event: most produce no message, and
                // the others one or two.
                let mut parsed = std::mem::take(&mut self.parsed);
                if let Some(conn) = self.connections.get_mut(&key) {
                    if conn.excluded || (conn.ignored() && !event.tls) {
                        self.parsed = parsed;
                        return;
                    }
                    conn.feed(&event, &mut parsed);
                }
                for message in parsed.drain(..) {
                    self.on_message(key, event.tid, message);
                }
                self.parsed = parsed;
            }
        }
        self.trace_metrics
            .connections
            .set(self.connections.len() as i64);
    }

    fn open(&mut self, key: ConnKey, event: &SocketEvent<'_>, side: Option<Side>) -> bool {
        if self.connections.len() >= self.max_connections {
            self.trace_metrics.connections_rejected.inc();
            return false;
        }
        let process = self.table.read().get(event.pid);
        let link = if side == Some(Side::Client) {
            self.nat
                .client_link(event.endpoints, event.netns, Instant::now())
        } else {
            LinkKey::new(event.endpoints, event.netns)
        };
        let mut conn = Connection::new(event.endpoints, link, side);
        // Filtered-out connections stay in the table, ignored, so the
        // decision is made once per connection.
        conn.excluded = !self.filter.allows(process.as_deref(), &event.endpoints);
        if side == Some(Side::Client) {
            // A new connection on a 4-tuple: contexts its predecessor left
            // unclaimed are not for this one's server.
            self.rendezvous.forget(link);
            self.clients.insert(link, key);
        }
        self.connections.insert(key, conn);
        true
    }

    fn close(&mut self, key: ConnKey, ts: u64) {
        let Some(mut conn) = self.connections.remove(&key) else {
            return;
        };
        let mut parsed = Vec::new();
        conn.finish(ts, &mut parsed);
        // Put it back for the close-delimited messages, then drop it.
        self.connections.insert(key, conn);
        for message in parsed {
            self.on_message(key, 0, message);
        }
        self.discard(key);
    }

    /// Forgets a connection, counting what it leaves unanswered.
    fn discard(&mut self, key: ConnKey) {
        let Some(conn) = self.connections.remove(&key) else {
            return;
        };
        let unanswered = conn.in_flight.len() as u64;
        self.trace_metrics.requests_unanswered.inc_by(unanswered);
        match conn.side {
            Some(Side::Server) => {
                for entry in &conn.in_flight {
                    self.finish_serving(entry.tid);
                }
                self.active_server.retain(|_, (k, _)| *k != key);
            }
            // What it sent but no server claimed yet stays in the rendezvous
            // (bounded, with its TTL): a server's probe may report its
            // request or response after this client has read the answer
            // and closed, when the server was descheduled between its
            // syscall and the probe's return. A later connection on the
            // same 4-tuple forgets it.
            Some(Side::Client) => {
                if self.clients.get(&conn.link) == Some(&key) {
                    self.clients.remove(&conn.link);
                }
                // Its events are all in: server spans waiting for it go.
                self.release_parked_link(conn.link.reversed(), Instant::now());
            }
            None => {}
        }
    }

    /// Whether the client of a server connection with `endpoints` is a
    /// connection the agent traces, so its request event is still to come.
    fn client_pending(&self, link: LinkKey) -> bool {
        self.clients
            .get(&link.reversed())
            .and_then(|key| self.connections.get(key))
            .is_some_and(|c| !c.excluded && !c.silent)
    }

    /// The client of `endpoints` never showed the request its server read.
    fn mark_client_silent(&mut self, link: LinkKey) {
        if let Some(key) = self.clients.get(&link.reversed())
            && let Some(conn) = self.connections.get_mut(key)
        {
            conn.silent = true;
        }
        self.trace_metrics.dropped("client_event_not_seen");
    }

    /// Queues a request on its connection; an evicted one (too many in
    /// flight) is counted and releases its thread.
    fn push_in_flight(&mut self, key: ConnKey, entry: InFlight) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let side = conn.side;
        let Some(evicted) = conn.push_in_flight(entry) else {
            return;
        };
        self.trace_metrics.requests_unanswered.inc();
        self.trace_metrics.dropped("in_flight_overflow");
        if side == Some(Side::Server) {
            self.finish_serving(evicted.tid);
            if self.active_server.get(&evicted.tid) == Some(&(key, evicted.span_id)) {
                self.active_server.remove(&evicted.tid);
            }
        }
    }

    fn on_message(&mut self, key: ConnKey, tid: u32, message: Parsed) {
        let Some(side) = self.connections.get(&key).and_then(|c| c.side) else {
            return;
        };
        match (side, message) {
            (Side::Server, Parsed::Request(request)) => self.server_request(key, tid, request),
            (Side::Client, Parsed::Request(request)) => self.client_request(key, tid, request),
            (side, Parsed::Response(response)) => self.response(key, side, response),
            // A response-side parser never yields requests and vice versa.
        }
    }

    fn server_request(&mut self, key: ConnKey, tid: u32, request: super::http1::Request) {
        let traceparent = request.header("traceparent").and_then(parse_traceparent);
        let span_id = new_span_id();
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let mut entry = InFlight {
            request,
            span_id,
            trace_id: None,
            parent: None,
            tid,
            traceparent,
        };
        // The client's write is usually processed already; if not, the
        // context is resolved again when it is first needed.
        resolve_entry(&mut self.rendezvous, conn.link, &mut entry, false);
        self.active_server.insert(tid, (key, span_id));
        *self.serving.entry(tid).or_insert(0) += 1;
        self.push_in_flight(key, entry);
    }

    /// The trace of a server request: the client end if seen, else the
    /// request's traceparent. With `decide`, a request with neither starts
    /// a new trace; without, it stays open (the client's event may still be
    /// on its way).
    fn resolve_server(
        &mut self,
        key: ConnKey,
        span_id: SpanId,
        decide: bool,
    ) -> Option<SpanContext> {
        let conn = self.connections.get_mut(&key)?;
        let link = conn.link;
        let entry = conn.in_flight.iter_mut().find(|e| e.span_id == span_id)?;
        let undecided = entry.trace_id.is_none();
        resolve_entry(&mut self.rendezvous, link, entry, decide);
        if undecided && entry.parent.is_none() {
            // Decided without its client: if the client's event turns up
            // while this span is in flight, the client joins this trace.
            if self.orphans.len() >= MAX_PARKED {
                self.trace_metrics
                    .untraced
                    .get_or_create(&ReasonLabel {
                        reason: "orphans_cleared",
                    })
                    .inc_by(self.orphans.len() as u64);
                self.orphans.clear();
            }
            self.orphans.insert(link, (key, span_id));
        }
        Some(SpanContext {
            trace_id: entry.trace_id?,
            span_id,
        })
    }

    /// A client request whose server span was already given a trace of its
    /// own (the client's event came late): the client span joins that trace
    /// and becomes the server span's parent. Returns the client's context.
    fn adopt_late_client(&mut self, client: LinkKey) -> Option<SpanContext> {
        let (server_key, server_span) = self.orphans.remove(&client.reversed())?;
        // In flight, or answered and parked waiting for this client.
        let in_flight = self
            .connections
            .get(&server_key)
            .is_some_and(|c| c.in_flight.iter().any(|e| e.span_id == server_span));
        let entry = if in_flight {
            self.connections
                .get_mut(&server_key)?
                .in_flight
                .iter_mut()
                .find(|e| e.span_id == server_span)?
        } else {
            &mut self
                .parked
                .get_mut(&client.reversed())?
                .iter_mut()
                .find(|p| p.entry.span_id == server_span)?
                .entry
        };
        let span_id = new_span_id();
        entry.parent = Some(span_id);
        Some(SpanContext {
            trace_id: entry.trace_id?,
            span_id,
        })
    }

    fn client_request(&mut self, key: ConnKey, tid: u32, request: super::http1::Request) {
        let traceparent = request.header("traceparent").and_then(parse_traceparent);
        // Only a thread serving exactly one request is thread-per-request;
        // an event loop (nginx) serving several cannot say which one this
        // call is for.
        let serving = self.serving.get(&tid).copied().unwrap_or(0);
        let server = self
            .active_server
            .get(&tid)
            .copied()
            .filter(|_| serving == 1)
            .and_then(|(server_key, span)| {
                let server = self.resolve_server(server_key, span, true)?;
                let forwarded = self
                    .connections
                    .get(&server_key)
                    .and_then(|c| c.in_flight.iter().find(|e| e.span_id == span))
                    .and_then(|e| e.traceparent);
                Some((server, forwarded))
            });
        let (trace_id, span_id, parent): (TraceId, SpanId, Option<SpanId>) =
            match (traceparent, server) {
                // A proxy passing on the header it received: the header
                // names the caller's span, not this one.
                (Some(tp), Some((server, Some(received)))) if received == tp => {
                    (server.trace_id, new_span_id(), Some(server.span_id))
                }
                // An instrumented sender: its header names this client span.
                (Some(tp), server) => {
                    let server = server.map(|(s, _)| s);
                    (
                        tp.trace_id,
                        tp.span_id,
                        server
                            .filter(|s| s.trace_id == tp.trace_id)
                            .map(|s| s.span_id),
                    )
                }
                (None, Some((server, _))) => (server.trace_id, new_span_id(), Some(server.span_id)),
                (None, None) => (new_trace_id(), new_span_id(), None),
            };
        let Some(link) = self.connections.get(&key).map(|c| c.link) else {
            return;
        };
        let now = Instant::now();
        let late = if traceparent.is_none() && parent.is_none() && !self.orphans.is_empty() {
            self.adopt_late_client(link)
        } else {
            None
        };
        let (trace_id, span_id) = match late {
            Some(adopted) => (adopted.trace_id, adopted.span_id),
            None => {
                if !self
                    .rendezvous
                    .offer(link, SpanContext { trace_id, span_id }, now)
                {
                    self.trace_metrics.dropped("rendezvous_full");
                }
                (trace_id, span_id)
            }
        };
        self.push_in_flight(
            key,
            InFlight {
                request,
                span_id,
                trace_id: Some(trace_id),
                parent,
                tid,
                traceparent,
            },
        );
        self.release_parked_link(link.reversed(), now);
    }

    fn finish_serving(&mut self, tid: u32) {
        if let Some(count) = self.serving.get_mut(&tid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.serving.remove(&tid);
            }
        }
    }

    fn response(&mut self, key: ConnKey, side: Side, response: Response) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        // A response whose request was not seen (agent started
        // mid-connection) gives no span: the request is unknown.
        let Some(mut entry) = conn.in_flight.pop_front() else {
            self.trace_metrics.dropped("response_without_request");
            return;
        };
        let endpoints = conn.endpoints;
        let link = conn.link;
        let tls = conn.tls;
        if side == Side::Server {
            if self
                .active_server
                .get(&entry.tid)
                .is_some_and(|(_, s)| *s == entry.span_id)
            {
                self.active_server.remove(&entry.tid);
            }
            self.finish_serving(entry.tid);
            resolve_entry(&mut self.rendezvous, link, &mut entry, false);
            let undecided = entry.trace_id.is_none();
            let orphan = !undecided
                && entry.parent.is_none()
                && self
                    .orphans
                    .get(&link)
                    .is_some_and(|(_, span)| *span == entry.span_id);
            // The server answered before the agent saw the client send (it
            // read the request before the client's call returned): wait for
            // the client's event.
            if undecided || (orphan && self.client_pending(link)) {
                if self.parked_len >= MAX_PARKED {
                    self.trace_metrics.dropped("parked_full_decided_early");
                    resolve_entry(&mut self.rendezvous, link, &mut entry, true);
                } else {
                    self.parked_len += 1;
                    self.parked.entry(link).or_default().push_back(Parked {
                        since: Instant::now(),
                        pid: key.0,
                        endpoints,
                        entry,
                        response,
                        tls,
                        awaiting_parent: !undecided,
                    });
                    return;
                }
            }
        }
        self.emit(key.0, side, endpoints, &mut entry, &response, tls);
    }

    /// Parked server spans whose client end has now been seen, or whose
    /// wait is over, are emitted.
    fn release_parked(&mut self, now: Instant) {
        let links: Vec<LinkKey> = self.parked.keys().copied().collect();
        for link in links {
            self.release_parked_link(link, now);
        }
    }

    /// As [`Tracer::release_parked`], for the server spans of one link.
    /// They share the link, so whether its client is pending is asked
    /// once; entries stay where they are unless some are released (a
    /// parked span is large, and most wait).
    fn release_parked_link(&mut self, link: LinkKey, now: Instant) {
        let Some(mut queue) = self.parked.remove(&link) else {
            return;
        };
        let pending = self.client_pending(link);
        let wait_max = if pending { CLIENT_WAIT_MAX } else { PARK_FOR };
        let mut any_ready = false;
        let mut ready = Vec::with_capacity(queue.len());
        for parked in queue.iter_mut() {
            let expired = now.saturating_duration_since(parked.since) >= wait_max;
            let is_ready = if parked.awaiting_parent {
                parked.entry.parent.is_some() || expired
            } else {
                resolve_entry_at(&mut self.rendezvous, link, &mut parked.entry, expired, now);
                parked.entry.trace_id.is_some()
            };
            if expired && pending && parked.entry.parent.is_none() {
                self.mark_client_silent(link);
            }
            any_ready |= is_ready;
            ready.push(is_ready);
        }
        if any_ready {
            let before = queue.len();
            for (parked, _) in queue.iter_mut().zip(&ready).filter(|(_, r)| **r) {
                if self
                    .orphans
                    .get(&link)
                    .is_some_and(|(_, span)| *span == parked.entry.span_id)
                {
                    self.orphans.remove(&link);
                }
                self.emit(
                    parked.pid,
                    Side::Server,
                    parked.endpoints,
                    &mut parked.entry,
                    &parked.response,
                    parked.tls,
                );
            }
            // Released spans are mostly the oldest: popped off the front;
            // the others are kept in place.
            let front = ready.iter().take_while(|r| **r).count();
            queue.drain(..front);
            if ready[front..].iter().any(|r| *r) {
                let mut flags = ready[front..].iter();
                queue.retain(|_| !flags.next().copied().unwrap_or(false));
            }
            self.parked_len = self.parked_len.saturating_sub(before - queue.len());
        }
        if !queue.is_empty() {
            self.parked.insert(link, queue);
        }
    }

    /// Builds and hands on the span of `entry`, which gives the span some of
    /// its strings: it is not used afterwards.
    fn emit(
        &mut self,
        pid: u32,
        side: Side,
        endpoints: Endpoints,
        entry: &mut InFlight,
        response: &Response,
        tls: bool,
    ) {
        let Some(trace_id) = entry.trace_id else {
            return;
        };
        // The process's exec precedes its first byte on this connection.
        let first_byte_ns = entry.request.start_ns;
        let mut waits = self.caught_up.get() < first_byte_ns;
        if waits && self.awaiting_table.len() >= MAX_AWAITING_TABLE {
            self.trace_metrics.resource_unconfirmed.inc();
            waits = false;
        }
        let resource = if waits {
            self.no_resource.clone()
        } else {
            self.resource_of(pid)
        };
        let clock = self.clock;
        let parent = entry.parent;
        let span = build(Exchange {
            side,
            endpoints,
            in_flight: entry,
            trace_id,
            parent,
            response,
            resource,
            to_unix_ns: &|ns| clock.to_unix_ns(ns),
            tls,
        });
        match side {
            Side::Server => self.counters.server_spans.inc(),
            Side::Client => self.counters.client_spans.inc(),
        };
        if waits {
            self.awaiting_table.push_back(AwaitingTable {
                since: Instant::now(),
                pid,
                first_byte_ns,
                span,
                method: entry.request.method,
                target: std::mem::take(&mut entry.request.target),
                status: response.status,
            });
        } else {
            self.send(
                span,
                entry.request.method,
                &entry.request.target,
                response.status,
            );
        }
    }

    /// Spans whose process the table now knows (or that waited long
    /// enough) get their resource and go.
    fn release_awaiting_table(&mut self, now: Instant) {
        let caught_up = self.caught_up.get();
        while let Some(front) = self.awaiting_table.front() {
            let overdue = now.saturating_duration_since(front.since) >= TABLE_WAIT_MAX;
            if front.first_byte_ns > caught_up && !overdue {
                break;
            }
            let Some(mut waiting) = self.awaiting_table.pop_front() else {
                break;
            };
            if waiting.first_byte_ns > caught_up {
                self.trace_metrics.resource_unconfirmed.inc();
            }
            waiting.span.resource = self.resource_of(waiting.pid);
            self.send(
                waiting.span,
                waiting.method,
                &waiting.target,
                waiting.status,
            );
        }
    }

    /// Records the span in the RED series (by its request target's path)
    /// and hands it to the sink.
    fn send(&mut self, span: Span, method: &str, target: &str, status: u16) {
        let path = super::spans::url_path(target);
        let seconds = span.end_unix_nano.saturating_sub(span.start_unix_nano) as f64 / 1e9;
        self.red.record(Observation {
            kind: span.kind,
            resource: &span.resource,
            method,
            path,
            status,
            seconds,
        });
        (self.sink)(Signal::Span(span));
    }

    fn resource_of(&mut self, pid: u32) -> Arc<Resource> {
        // New service rules: every cached resource may name the old service.
        let generation = self.resources.generation();
        if generation != self.resource_generation {
            self.resource_cache.clear();
            self.resource_generation = generation;
        }
        let Some(process) = self.table.read().get(pid) else {
            return Arc::new(Resource {
                attributes: vec![("process.pid", AttrValue::Int(i64::from(pid)))],
            });
        };
        if let Some((built_from, cached)) = self.resource_cache.get(&pid)
            && Arc::ptr_eq(built_from, &process)
        {
            return cached.clone();
        }
        // Bounded: a full cache starts over (rebuilding is cheap).
        if self.resource_cache.len() >= 4096 {
            self.resource_cache.clear();
        }
        let resource = Arc::new(self.resources.resource(&process));
        self.resource_cache.insert(pid, (process, resource.clone()));
        resource
    }

    /// Periodic upkeep: cached resources of processes long gone go, and
    /// the connections of processes that exited without closing them (exit
    /// makes no close syscall) are dropped, so the table cannot silt up. A
    /// process must be gone at two upkeeps in a row, so its last events
    /// (still in the ring at the first) are handled before its connections
    /// go.
    pub fn maintain(&mut self) {
        self.resource_cache.clear();
        // An NTP step moves the Unix clock, not the boot clock: spans follow
        // it within one upkeep instead of being skewed until restart.
        self.clock = BootClock::measure();
        let pids: super::FastSet<u32> = self.connections.keys().map(|(pid, _)| *pid).collect();
        // /proc, not the process table: a process may trace before the
        // table has processed its fork.
        let dead: super::FastSet<u32> = pids
            .into_iter()
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        let gone: Vec<ConnKey> = self
            .connections
            .keys()
            .filter(|(pid, _)| dead.contains(pid) && self.dead_last_time.contains(pid))
            .copied()
            .collect();
        for key in gone {
            self.discard(key);
        }
        self.dead_last_time = dead;
        let connections = &self.connections;
        let parked = &self.parked;
        self.orphans.retain(|link, (key, span)| {
            connections
                .get(key)
                .is_some_and(|c| c.in_flight.iter().any(|e| e.span_id == *span))
                || parked
                    .get(link)
                    .is_some_and(|q| q.iter().any(|p| p.entry.span_id == *span))
        });
        self.trace_metrics
            .connections
            .set(self.connections.len() as i64);
    }

    /// Hands the RED histograms to the sink.
    pub fn export_red(&mut self) {
        let resources = self.resources.clone();
        // One resource per service and pod container, shared by its series.
        let mut cache: FastMap<(String, usize), Arc<Resource>> = FastMap::default();
        let points = self.red.collect(unix_now_ns(), &mut |service, workload| {
            let identity = workload.map_or(0, |w| Arc::as_ptr(w) as usize);
            cache
                .entry((service.to_owned(), identity))
                .or_insert_with(|| {
                    let mut resource = resources.service_resource(service);
                    if let Some(workload) = workload {
                        resource
                            .attributes
                            .extend(workload.attributes.iter().cloned());
                    }
                    Arc::new(resource)
                })
                .clone()
        });
        self.trace_metrics
            .red_series
            .set(self.red.series_count() as i64);
        self.trace_metrics.red_routes_overflowed.inc_by(
            self.red
                .overflowed
                .saturating_sub(self.trace_metrics.red_routes_overflowed.get()),
        );
        self.trace_metrics.red_series_overflowed.inc_by(
            self.red
                .series_overflowed
                .saturating_sub(self.trace_metrics.red_series_overflowed.get()),
        );
        for point in points {
            (self.sink)(Signal::Histogram(point));
        }
    }

    pub async fn run(mut self, mut ring: RingReader) -> std::io::Result<()> {
        let mut refresh = tokio::time::interval(Duration::from_secs(5));
        let mut red = tokio::time::interval(self.red_interval);
        let mut parked = tokio::time::interval(PARK_FOR / 2);
        let mut exclusions = tokio::time::interval(KERNEL_EXCLUSIONS_EVERY);
        // The socket sensor wakes the agent only when its ring fills;
        // otherwise the ring is drained on this tick.
        let mut drain = self.caught_up.ticks(DRAIN_LAG);
        loop {
            tokio::select! {
                ready = ring.ready() => {
                    ready?.drain(MAX_RECORDS_PER_WAKEUP, |record| self.handle_record(record));
                    self.release_awaiting_table(Instant::now());
                }
                _ = drain.tick() => {
                    // Bounded, so upkeep, parked spans and RED export still
                    // get their turn under sustained load; the kernel wakes
                    // us when the ring fills.
                    for _ in 0..8 {
                        let n = ring.drain_pending(MAX_RECORDS_PER_WAKEUP, |record| self.handle_record(record));
                        if n < MAX_RECORDS_PER_WAKEUP {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    // The process model read its ring on the shared grid
                    // just before this tick (`CaughtUp::ticks`).
                    self.release_awaiting_table(Instant::now());
                }
                _ = parked.tick() => {
                    if !self.parked.is_empty() {
                        // What the ring holds first: a client event may be
                        // waiting there while the agent itself was slow.
                        ring.drain_pending(MAX_RECORDS_PER_WAKEUP, |record| self.handle_record(record));
                        self.release_parked(Instant::now());
                    }
                }
                _ = refresh.tick() => self.maintain(),
                _ = exclusions.tick() => self.sync_kernel_exclusions(),
                _ = red.tick() => self.export_red(),
                Some(config) = next_update(&mut self.updates) => self.reconfigure(&config),
            }
        }
    }
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[path = "tracer_tests.rs"]
mod tests;
