//! HTTP spans with the OpenTelemetry semantic conventions for HTTP.

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    connection::{InFlight, Side},
    context::{SpanId, TraceId},
    event::Endpoints,
    http1::{Request, Response},
};
use crate::signal::{AttrValue, Attributes, Resource, Span, SpanKind, SpanStatus};

/// The path of a request target, without the query string (queries may
/// carry secrets, so they are left out).
pub fn url_path(target: &str) -> &str {
    let without_query = target.split(['?', '#']).next().unwrap_or(target);
    // Absolute form (proxies): http://host/path.
    match scheme_end(without_query).and_then(|at| without_query.get(at + 3..)) {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => without_query,
    }
}

/// Where the first `://` in `text` begins. Colons are rare in paths, so
/// they are looked for first, rather than building a substring searcher
/// for every span.
fn scheme_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = bytes
        .get(from..)
        .and_then(|rest| memchr::memchr(b':', rest))
    {
        let at = from + i;
        if bytes.get(at..).is_some_and(|rest| rest.starts_with(b"://")) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Host header without its port.
fn host_name(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// [`host_name`] of a Host header's value, in that value's own allocation
/// when the name is its beginning (anything but a bracketed IPv6 address).
fn into_host_name(mut host: String) -> String {
    let name = host_name(&host);
    if name.as_ptr() == host.as_ptr() {
        host.truncate(name.len());
        host
    } else {
        name.to_owned()
    }
}

/// An address as `Display` writes it; IPv4 (most spans) without the
/// formatting machinery, which took a tenth of the span's cost.
fn ip_string(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// `scheme://authority/path`, in one allocation of the right size: through
/// `format!` it took a third of a client span's cost.
fn full_url(tls: bool, authority: &str, path: &str) -> String {
    let scheme = scheme(tls);
    let mut url = String::with_capacity(scheme.len() + 3 + authority.len() + path.len());
    url.push_str(scheme);
    url.push_str("://");
    url.push_str(authority);
    url.push_str(path);
    url
}

fn protocol_version(minor: u8) -> &'static str {
    if minor == 0 { "1.0" } else { "1.1" }
}

fn peer(attrs: &mut Attributes, remote_ip: String, remote: SocketAddr) {
    attrs.push(("network.peer.address", remote_ip.into()));
    attrs.push(("network.peer.port", i64::from(remote.port()).into()));
}

/// Everything needed to turn a request/response pair into a span.
pub struct Exchange<'a> {
    pub side: Side,
    pub endpoints: Endpoints,
    /// Its Host and User-Agent values are moved into the span.
    pub in_flight: &'a mut InFlight,
    pub trace_id: TraceId,
    pub parent: Option<SpanId>,
    pub response: &'a Response,
    pub resource: Arc<Resource>,
    pub to_unix_ns: &'a dyn Fn(u64) -> u64,
    /// The connection is TLS (https).
    pub tls: bool,
}

pub fn build(exchange: Exchange<'_>) -> Span {
    let Exchange {
        side,
        endpoints,
        in_flight,
        trace_id,
        parent,
        response,
        resource,
        to_unix_ns,
        tls,
    } = exchange;
    let request: &mut Request = &mut in_flight.request;
    let status = response.status;
    let host_header = request.take_header("host");
    let user_agent = request.take_header("user-agent");
    // Room for every attribute a span can get: no regrowth per span.
    let mut attrs: Attributes = Vec::with_capacity(12);
    attrs.extend([
        (
            "http.request.method",
            AttrValue::from_static(request.method),
        ),
        ("http.response.status_code", i64::from(status).into()),
        (
            "network.protocol.version",
            AttrValue::from_static(protocol_version(request.version_minor)),
        ),
    ]);
    let path = url_path(&request.target);
    // Formatted once: two attributes name it.
    let remote_ip = ip_string(endpoints.remote.ip());
    let (kind, error) = match side {
        Side::Server => {
            attrs.push(("url.path", path.into()));
            attrs.push(("url.scheme", AttrValue::from_static(scheme(tls))));
            attrs.push((
                "server.address",
                host_header
                    .map_or_else(|| ip_string(endpoints.local.ip()), into_host_name)
                    .into(),
            ));
            attrs.push(("server.port", i64::from(endpoints.local.port()).into()));
            attrs.push(("client.address", remote_ip.clone().into()));
            (SpanKind::Server, status >= 500)
        }
        Side::Client => {
            let remote;
            let authority = match &host_header {
                Some(h) => h.as_str(),
                None => {
                    remote = endpoints.remote.to_string();
                    &remote
                }
            };
            attrs.push(("url.full", full_url(tls, authority, path).into()));
            let server = host_header.map_or_else(|| remote_ip.clone(), into_host_name);
            attrs.push(("server.address", server.into()));
            attrs.push(("server.port", i64::from(endpoints.remote.port()).into()));
            (SpanKind::Client, status >= 400)
        }
    };
    peer(&mut attrs, remote_ip, endpoints.remote);
    if let Some(agent) = user_agent {
        attrs.push(("user_agent.original", agent.into()));
    }
    let status = if error {
        attrs.push(("error.type", status.to_string().into()));
        SpanStatus::Error {
            message: format!("HTTP {status}"),
        }
    } else {
        SpanStatus::Unset
    };
    let start = request.start_ns.min(response.end_ns);
    Span {
        trace_id,
        span_id: in_flight.span_id,
        parent_span_id: parent,
        name: Cow::Borrowed(request.method),
        kind,
        start_unix_nano: to_unix_ns(start),
        end_unix_nano: to_unix_ns(response.end_ns),
        attributes: attrs,
        status,
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_drop_queries() {
        assert_eq!(url_path("/a/b?token=secret"), "/a/b");
        assert_eq!(url_path("/a#frag"), "/a");
        assert_eq!(url_path("http://h:8080/x?y"), "/x");
        assert_eq!(url_path("http://h"), "/");
        assert_eq!(url_path("*"), "*");
        assert_eq!(url_path("/a:b/c://d/e"), "/e");
        assert_eq!(url_path("/a:/b"), "/a:/b");
        assert_eq!(url_path("/x:"), "/x:");
        assert_eq!(url_path("h:/:://"), "/");
    }

    #[test]
    fn addresses_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.9.99",
            "100.64.10.255",
            "192.168.1.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "::ffff:10.1.2.3",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_string(ip), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = IpAddr::from([n, 255 - n, n / 3, n.wrapping_mul(7)]);
            assert_eq!(ip_string(ip), ip.to_string());
        }
    }

    #[test]
    fn host_name_moved_or_copied() {
        for host in [
            "example.com:8080",
            "example.com",
            "[::1]:80",
            "weird:port",
            "",
        ] {
            assert_eq!(into_host_name(host.to_owned()), host_name(host));
        }
    }

    #[test]
    fn host_without_port() {
        assert_eq!(host_name("example.com:8080"), "example.com");
        assert_eq!(host_name("example.com"), "example.com");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("weird:port"), "weird:port");
    }
}
