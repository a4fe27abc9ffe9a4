//! Trace context: ids, W3C `traceparent`, and the rendezvous that parents a
//! server span under the client span of the same request when the agent
//! sees both ends of a connection.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::{FastMap, event::LinkKey};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// A span's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

// Drawn as one integer: an array is drawn byte by byte, a call into the
// generator for each, which cost more than the rest of the span's ids.
pub fn new_trace_id() -> TraceId {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id.to_le_bytes();
        }
    }
}

pub fn new_span_id() -> SpanId {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id.to_le_bytes();
        }
    }
}

/// Parses `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`; an
/// all-zero id or any other version-00 shape is invalid (W3C Trace Context).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id: TraceId = hex_bytes(trace)?;
    let span_id: SpanId = hex_bytes(parent)?;
    hex_bytes::<1>(flags)?;
    (trace_id != [0; 16] && span_id != [0; 8]).then_some(SpanContext { trace_id, span_id })
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Client requests waiting for the server end of their connection, in
/// send order per connection (requests on one TCP connection are ordered,
/// so the server's n-th unclaimed request is the client's n-th).
pub struct Rendezvous {
    by_connection: FastMap<LinkKey, VecDeque<(Instant, SpanContext)>>,
    max_connections: usize,
    max_per_connection: usize,
    ttl: Duration,
}

impl Rendezvous {
    pub fn new(max_connections: usize) -> Self {
        Self {
            by_connection: FastMap::default(),
            max_connections,
            max_per_connection: 64,
            ttl: Duration::from_secs(30),
        }
    }

    /// A client sent a request on `client` (its own view of the endpoints).
    /// Returns false if the registry is full (the server side then starts
    /// its own trace).
    pub fn offer(&mut self, client: LinkKey, context: SpanContext, now: Instant) -> bool {
        if !self.by_connection.contains_key(&client)
            && self.by_connection.len() >= self.max_connections
        {
            self.expire(now);
            if self.by_connection.len() >= self.max_connections {
                return false;
            }
        }
        let queue = self.by_connection.entry(client).or_default();
        if queue.len() >= self.max_per_connection {
            queue.pop_front();
        }
        queue.push_back((now, context));
        true
    }

    /// The server received a request on `server` (its own view): the
    /// client's context for it, if the client side was seen.
    pub fn claim(&mut self, server: LinkKey, now: Instant) -> Option<SpanContext> {
        let client = server.reversed();
        let queue = self.by_connection.get_mut(&client)?;
        let mut found = None;
        while let Some((at, context)) = queue.pop_front() {
            if now.duration_since(at) < self.ttl {
                found = Some(context);
                break;
            }
        }
        if queue.is_empty() {
            self.by_connection.remove(&client);
        }
        found
    }

    /// The client end closed: forget what no server claimed.
    pub fn forget(&mut self, client: LinkKey) {
        self.by_connection.remove(&client);
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.by_connection.retain(|_, q| {
            q.retain(|(at, _)| now.duration_since(*at) < ttl);
            !q.is_empty()
        });
    }

    pub fn is_empty(&self) -> bool {
        self.by_connection.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::event::Endpoints;

    fn key(local: &str, remote: &str) -> LinkKey {
        LinkKey::new(
            Endpoints {
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
            },
            4026531840,
        )
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn traceparent() {
        let ctx =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&ctx.span_id), "00f067aa0ba902b7");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "00-é4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        // A future version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn rendezvous_in_order_per_connection() {
        let mut r = Rendezvous::new(4);
        let now = Instant::now();
        let client = key("127.0.0.1:40000", "127.0.0.1:80");
        let a = SpanContext {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
        };
        let b = SpanContext {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
        };
        assert!(r.offer(client, a, now));
        assert!(r.offer(client, b, now));
        assert_eq!(r.claim(client.reversed(), now), Some(a));
        assert_eq!(r.claim(client.reversed(), now), Some(b));
        assert_eq!(r.claim(client.reversed(), now), None);
        assert!(r.is_empty());
        // The same loopback addresses in another namespace are another
        // connection.
        assert!(r.offer(client, a, now));
        let other_ns = LinkKey {
            netns: client.netns + 1,
            ..client
        };
        assert_eq!(r.claim(other_ns.reversed(), now), None);
        assert_eq!(r.claim(client.reversed(), now), Some(a));
    }

    #[test]
    fn rendezvous_is_bounded_and_expires() {
        let mut r = Rendezvous::new(1);
        let now = Instant::now();
        let ctx = SpanContext {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
        };
        let c1 = key("10.0.0.1:1", "10.0.0.2:80");
        let c2 = key("10.0.0.1:2", "10.0.0.2:80");
        assert!(r.offer(c1, ctx, now));
        assert!(!r.offer(c2, ctx, now));
        let later = now + Duration::from_secs(31);
        assert!(r.offer(c2, ctx, later), "expired entries make room");
        assert_eq!(r.claim(c1.reversed(), later), None);
    }
}
