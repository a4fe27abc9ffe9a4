//! One traced TCP connection of one process: which side it is, its two
//! HTTP/1 parsers, and the requests still waiting for a response.

use std::collections::VecDeque;

use selfops_ebpf::NetEventKind;

use super::{
    context::{SpanContext, SpanId, TraceId},
    event::{Endpoints, LinkKey, SocketEvent},
    http1::{Detected, Http1Parser, Message, Request, Role},
};

/// Which end of the connection the process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// It accepted the connection: it reads requests, writes responses.
    Server,
    /// It connected: it writes requests, reads responses.
    Client,
}

/// A request waiting for its response.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub request: Request,
    pub span_id: SpanId,
    /// Unknown until resolved: a server request may be read before the
    /// agent has processed the client's write of it.
    pub trace_id: Option<TraceId>,
    pub parent: Option<SpanId>,
    /// Thread that read (server) or wrote (client) the request.
    pub tid: u32,
    pub traceparent: Option<SpanContext>,
}

/// Requests kept waiting per connection (pipelining depth).
const MAX_IN_FLIGHT: usize = 64;

/// The request headers spans and trace context read; responses keep none.
const REQUEST_HEADERS: &[&str] = &["host", "user-agent", "traceparent"];
/// Data events on a connection of unknown side before it is given up.
const MAX_UNKNOWN_EVENTS: u32 = 8;

pub struct Connection {
    pub endpoints: Endpoints,
    /// What the rendezvous and the client registry know it by: a client's
    /// view translated through NAT to what its server sees.
    pub link: LinkKey,
    pub side: Option<Side>,
    requests: Http1Parser,
    responses: Http1Parser,
    pub in_flight: VecDeque<InFlight>,
    unknown_events: u32,
    /// A client whose requests the agent does not see although its server
    /// reads them (a TLS library without probes): server spans stop
    /// waiting for its events.
    pub silent: bool,
    /// The connection carries TLS: only plaintext from the OpenSSL probes
    /// is parsed, never the bytes seen at syscalls.
    pub tls: bool,
    /// Left out by `trace.include` / `trace.exclude`.
    pub excluded: bool,
}

/// What a data event produced on a connection: the parsers' messages.
pub type Parsed = Message;

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

fn starts_request(payload: &[u8]) -> bool {
    METHODS.iter().any(|m| payload.starts_with(m))
}

impl Connection {
    pub fn new(endpoints: Endpoints, link: LinkKey, side: Option<Side>) -> Self {
        Self {
            endpoints,
            link,
            side,
            requests: Http1Parser::keeping_only(Role::Request, REQUEST_HEADERS),
            responses: Http1Parser::keeping_only(Role::Response, &[]),
            in_flight: VecDeque::new(),
            unknown_events: 0,
            silent: false,
            tls: false,
            excluded: false,
        }
    }

    /// Whether the syscall bytes of `event` are TLS records (handshake or
    /// application data), which only the OpenSSL probes can read.
    fn looks_like_tls(payload: &[u8]) -> bool {
        matches!(payload, [0x14..=0x17, 0x03, 0x00..=0x04, ..])
    }

    /// True once both directions are known not to carry HTTP/1 or the
    /// side could not be learned: further events are skipped cheaply.
    pub fn ignored(&self) -> bool {
        self.excluded
            || self.unknown_events > MAX_UNKNOWN_EVENTS
            || (self.requests.detected() == Detected::NotHttp
                && self.responses.detected() == Detected::NotHttp)
    }

    /// Learns the side from the first bytes when accept/connect was not
    /// seen (the connection predates the agent).
    fn infer_side(&mut self, event: &SocketEvent<'_>) {
        let ingress = event.kind == NetEventKind::Ingress;
        self.side = if event.payload.starts_with(b"HTTP/") {
            Some(if ingress { Side::Client } else { Side::Server })
        } else if starts_request(event.payload) {
            Some(if ingress { Side::Server } else { Side::Client })
        } else {
            self.unknown_events += 1;
            None
        };
    }

    /// Whether either direction has parsed HTTP (a body's bytes may look
    /// like a TLS record).
    fn seen_http(&self) -> bool {
        self.requests.detected() == Detected::Http || self.responses.detected() == Detected::Http
    }

    /// Feeds a data event to the parser of its direction.
    pub fn feed(&mut self, event: &SocketEvent<'_>, out: &mut Vec<Parsed>) {
        if event.tls && !self.tls {
            // First plaintext: whatever the syscall bytes taught the parsers
            // (the handshake) is void.
            self.tls = true;
            self.requests = Http1Parser::keeping_only(Role::Request, REQUEST_HEADERS);
            self.responses = Http1Parser::keeping_only(Role::Response, &[]);
            self.unknown_events = 0;
        } else if !event.tls
            && (self.tls || (!self.seen_http() && Self::looks_like_tls(event.payload)))
        {
            self.tls = true;
            return;
        }
        if self.side.is_none() {
            self.infer_side(event);
        }
        let Some(side) = self.side else { return };
        let ingress = event.kind == NetEventKind::Ingress;
        let carries_requests = matches!(
            (side, ingress),
            (Side::Server, true) | (Side::Client, false)
        );
        // Bytes leave when their write starts and arrive when their read
        // returns: with these stamps a receiver's times always fall inside
        // the sender's, whatever the scheduler did between the two.
        let ts = if ingress {
            event.end_boot_ns
        } else {
            event.start_boot_ns
        };
        let from = out.len();
        if carries_requests {
            self.requests.feed(event.payload, event.total_len, ts, out);
        } else {
            self.responses.feed(event.payload, event.total_len, ts, out);
        }
        self.collect(from, out);
    }

    /// The connection closed: messages delimited by the close complete.
    pub fn finish(&mut self, ts: u64, out: &mut Vec<Parsed>) {
        let from = out.len();
        self.requests.finish(ts, out);
        self.responses.finish(ts, out);
        self.collect(from, out);
    }

    /// The messages parsed into `out` from `from` on.
    fn collect(&mut self, from: usize, out: &[Parsed]) {
        for message in out.get(from..).unwrap_or_default() {
            if let Message::Request(request) = message {
                // The response parser needs to know which answers HEAD.
                self.responses.push_request_method(request.method);
            }
        }
    }

    /// Queues `entry`; when MAX_IN_FLIGHT already wait, the oldest is
    /// evicted and returned, so the caller can count it and release what
    /// it held (its thread's serving count).
    #[must_use]
    pub fn push_in_flight(&mut self, entry: InFlight) -> Option<InFlight> {
        let evicted = if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.in_flight.pop_front()
        } else {
            None
        };
        self.in_flight.push_back(entry);
        evicted
    }
}
