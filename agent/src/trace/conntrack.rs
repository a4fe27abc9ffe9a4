//! The kernel's NAT state (conntrack), to match the two ends of a
//! connection made to a virtual address: a client dialling a Service's
//! cluster IP sees that address, its server sees the pod addresses. The
//! conntrack entry of the client's tuple holds the reply tuple, which is
//! the connection as the server sees it.
//!
//! Read over netlink (ctnetlink, one `IPCTNL_MSG_CT_GET` per lookup) in
//! the agent's network namespace, where a node's kube-proxy rules are. The
//! request and its reply are a few fixed attributes, encoded and parsed by
//! hand: the netlink crates cover routing, not ctnetlink's GET.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, family::Family};

use super::{
    FastMap,
    event::{Endpoints, LinkKey},
};
use crate::telemetry::metrics::ReasonLabel;

const NETLINK_NETFILTER: libc::c_int = 12;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET`.
const CT_GET: u16 = (1 << 8) | 1;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`: an entry.
const CT_NEW: u16 = 1 << 8;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_TCP: u8 = 6;

/// How long a lookup may wait for the kernel: it runs on the tracer's
/// task, and the kernel answers a GET at once.
const REPLY_TIMEOUT: Duration = Duration::from_millis(20);
/// Destinations remembered as not translated, at most, and for how long:
/// a client's connections to a plain address then cost no lookup.
const MAX_PLAIN_DESTINATIONS: usize = 4096;
const PLAIN_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("opening a netfilter netlink socket: {0}")]
    Open(std::io::Error),
    #[error("conntrack netlink request: {0}")]
    Io(std::io::Error),
    #[error("conntrack refused the request: errno {0}")]
    Kernel(i32),
    #[error("malformed conntrack reply: {0}")]
    Malformed(&'static str),
    #[error("no reply from conntrack within {0:?}")]
    Timeout(Duration),
}

impl ConntrackError {
    /// Whether lookups cannot work on this host at all (no conntrack
    /// netlink, no permission), so trying again is pointless.
    fn is_permanent(&self) -> bool {
        match self {
            Self::Open(_) => true,
            Self::Kernel(errno) => {
                matches!(
                    *errno,
                    libc::EPERM | libc::EACCES | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT
                )
            }
            _ => false,
        }
    }
}

/// Where NAT state comes from: the kernel, or a fake in tests.
pub trait NatTable: Send {
    /// The connection as its server sees it (the reply tuple reversed),
    /// for the client's view `client`; `None` if conntrack has no entry.
    fn server_view(&mut self, client: Endpoints) -> Result<Option<Endpoints>, ConntrackError>;
}

/// What a parsed netlink datagram said about request `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The entry's reply tuple: source is the server as it sees itself,
    /// destination the client after any source NAT.
    Entry {
        src: SocketAddr,
        dst: SocketAddr,
    },
    NotFound,
    /// Nothing about `seq` (a late answer to an earlier, timed-out one).
    Unrelated,
}

/// The ctnetlink GET for the entry whose original tuple is `client`
/// (source its local end, destination the address it dialled).
pub fn encode_get(seq: u32, client: Endpoints) -> Option<Vec<u8>> {
    let (family, src, dst): (u8, Vec<u8>, Vec<u8>) = match (client.local.ip(), client.remote.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            (libc::AF_INET as u8, s.octets().into(), d.octets().into())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            (libc::AF_INET6 as u8, s.octets().into(), d.octets().into())
        }
        _ => return None,
    };
    let (src_type, dst_type) = if family == libc::AF_INET as u8 {
        (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    } else {
        (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    };
    let ip = [attr(src_type, &src), attr(dst_type, &dst)].concat();
    let proto = [
        attr(CTA_PROTO_NUM, &[IPPROTO_TCP]),
        attr(CTA_PROTO_SRC_PORT, &client.local.port().to_be_bytes()),
        attr(CTA_PROTO_DST_PORT, &client.remote.port().to_be_bytes()),
    ]
    .concat();
    let tuple = [
        attr(CTA_TUPLE_IP | NLA_F_NESTED, &ip),
        attr(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
    ]
    .concat();
    let body = attr(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&u32::try_from(len).ok()?.to_ne_bytes());
    msg.extend_from_slice(&CT_GET.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, resource id 0.
    msg.extend_from_slice(&[family, 0, 0, 0]);
    msg.extend_from_slice(&body);
    Some(msg)
}

/// One netlink attribute, padded to four bytes.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = NLA_HDRLEN + payload.len();
    let mut out = Vec::with_capacity(align4(len));
    // Attributes here are a few dozen bytes: the length always fits.
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(len), 0);
    out
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The attributes in `bytes` as (type without flags, payload); stops at
/// the first malformed one.
fn attributes(bytes: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), &'static str>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= bytes.len() {
            return None;
        }
        let parsed = (|| {
            let len = usize::from(u16_at(bytes, at).ok_or("attribute header cut")?);
            let kind = u16_at(bytes, at + 2).ok_or("attribute header cut")? & NLA_TYPE_MASK;
            if len < NLA_HDRLEN {
                return Err("attribute shorter than its header");
            }
            let payload = bytes
                .get(at + NLA_HDRLEN..at + len)
                .ok_or("attribute overruns its message")?;
            Ok((kind, payload, align4(len)))
        })();
        match parsed {
            Ok((kind, payload, step)) => {
                at = at.saturating_add(step);
                Some(Ok((kind, payload)))
            }
            Err(e) => {
                at = bytes.len();
                Some(Err(e))
            }
        }
    })
}

fn find(bytes: &[u8], kind: u16) -> Result<Option<&[u8]>, &'static str> {
    for a in attributes(bytes) {
        let (k, payload) = a?;
        if k == kind {
            return Ok(Some(payload));
        }
    }
    Ok(None)
}

/// A `CTA_TUPLE_*` nest as (source, destination).
fn tuple(bytes: &[u8]) -> Result<(SocketAddr, SocketAddr), &'static str> {
    let ip = find(bytes, CTA_TUPLE_IP)?.ok_or("tuple without addresses")?;
    let proto = find(bytes, CTA_TUPLE_PROTO)?.ok_or("tuple without ports")?;
    let addr = |v4: u16, v6: u16| -> Result<IpAddr, &'static str> {
        if let Some(a) = find(ip, v4)? {
            let octets: [u8; 4] = a.try_into().map_err(|_| "IPv4 address not 4 bytes")?;
            Ok(IpAddr::V4(Ipv4Addr::from(octets)))
        } else if let Some(a) = find(ip, v6)? {
            let octets: [u8; 16] = a.try_into().map_err(|_| "IPv6 address not 16 bytes")?;
            Ok(IpAddr::V6(Ipv6Addr::from(octets)))
        } else {
            Err("tuple without an address")
        }
    };
    let port = |kind: u16| -> Result<u16, &'static str> {
        let p = find(proto, kind)?.ok_or("tuple without a port")?;
        let bytes: [u8; 2] = p.try_into().map_err(|_| "port not 2 bytes")?;
        Ok(u16::from_be_bytes(bytes))
    };
    Ok((
        SocketAddr::new(
            addr(CTA_IP_V4_SRC, CTA_IP_V6_SRC)?,
            port(CTA_PROTO_SRC_PORT)?,
        ),
        SocketAddr::new(
            addr(CTA_IP_V4_DST, CTA_IP_V6_DST)?,
            port(CTA_PROTO_DST_PORT)?,
        ),
    ))
}

/// Parses one received datagram (one or more netlink messages) for the
/// answer to request `seq`. Every length is checked against the bytes.
pub fn parse_reply(datagram: &[u8], seq: u32) -> Result<Reply, ConntrackError> {
    let malformed = ConntrackError::Malformed;
    let mut at = 0usize;
    while at < datagram.len() {
        let len = u32_at(datagram, at).ok_or(malformed("message header cut"))? as usize;
        let kind = u16_at(datagram, at + 4).ok_or(malformed("message header cut"))?;
        let msg_seq = u32_at(datagram, at + 8).ok_or(malformed("message header cut"))?;
        if len < NLMSG_HDRLEN {
            return Err(malformed("message shorter than its header"));
        }
        let end = at
            .checked_add(len)
            .ok_or(malformed("message length overflows"))?;
        let body = datagram
            .get(at + NLMSG_HDRLEN..end)
            .ok_or(malformed("message overruns the datagram"))?;
        at = align4(end);
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).ok_or(malformed("error message cut"))? as i32;
                return match errno {
                    0 => Ok(Reply::NotFound),
                    e if e == libc::ENOENT.wrapping_neg() => Ok(Reply::NotFound),
                    e => Err(ConntrackError::Kernel(e.saturating_neg())),
                };
            }
            NLMSG_DONE => return Ok(Reply::NotFound),
            CT_NEW => {
                let attrs = body
                    .get(NFGENMSG_LEN..)
                    .ok_or(malformed("entry without its netfilter header"))?;
                let reply = find(attrs, CTA_TUPLE_REPLY)
                    .map_err(malformed)?
                    .ok_or(malformed("entry without a reply tuple"))?;
                let (src, dst) = tuple(reply).map_err(malformed)?;
                return Ok(Reply::Entry { src, dst });
            }
            _ => {}
        }
    }
    Ok(Reply::Unrelated)
}

/// The kernel's conntrack table over a netlink socket.
pub struct NetlinkConntrack {
    fd: std::os::fd::OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NetlinkConntrack {
    pub fn open() -> Result<Self, ConntrackError> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the descriptor is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(ConntrackError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: REPLY_TIMEOUT.as_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid socket and a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ConntrackError::Open(std::io::Error::last_os_error()));
        }
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0; 8192],
        })
    }
}

impl NatTable for NetlinkConntrack {
    fn server_view(&mut self, client: Endpoints) -> Result<Option<Endpoints>, ConntrackError> {
        use std::os::fd::AsRawFd;
        self.seq = self.seq.wrapping_add(1);
        let Some(request) = encode_get(self.seq, client) else {
            return Ok(None);
        };
        // SAFETY: netlink socket; the kernel is the default destination
        // of an unconnected netlink socket's send.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(ConntrackError::Io(std::io::Error::last_os_error()));
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            // SAFETY: receives into our own buffer of the length given.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                return Err(match err.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        ConntrackError::Timeout(REPLY_TIMEOUT)
                    }
                    _ => ConntrackError::Io(err),
                });
            }
            let datagram = self.buf.get(..n as usize).unwrap_or_default();
            match parse_reply(datagram, self.seq)? {
                Reply::Entry { src, dst } => {
                    return Ok(Some(Endpoints {
                        local: src,
                        remote: dst,
                    }));
                }
                Reply::NotFound => return Ok(None),
                Reply::Unrelated if Instant::now() >= deadline => {
                    return Err(ConntrackError::Timeout(REPLY_TIMEOUT));
                }
                Reply::Unrelated => {}
            }
        }
    }
}

/// Outcomes of a client connection's NAT lookup, counted.
struct Outcomes {
    translated: Counter,
    not_translated: Counter,
    not_found: Counter,
    failed: Counter,
    unavailable: Counter,
    skipped_plain: Counter,
    plain_cleared: Counter,
}

/// Gives each client connection to a non-local address the key its
/// server's view will have: translated through conntrack when the address
/// it dialled was rewritten.
pub struct NatTranslator {
    table: Option<Box<dyn NatTable>>,
    /// Destinations a lookup found untranslated, with when.
    plain: FastMap<SocketAddr, Instant>,
    outcomes: Outcomes,
}

impl NatTranslator {
    /// `lookups` is the `trace_nat_lookups` family.
    pub fn new(table: Option<Box<dyn NatTable>>, lookups: &Family<ReasonLabel, Counter>) -> Self {
        let c = |reason| lookups.get_or_create(&ReasonLabel { reason }).clone();
        let outcomes = Outcomes {
            translated: c("translated"),
            not_translated: c("not_translated"),
            not_found: c("not_found"),
            failed: c("failed"),
            unavailable: c("unavailable"),
            skipped_plain: c("skipped_known_untranslated"),
            plain_cleared: c("untranslated_cache_cleared"),
        };
        if table.is_none() {
            outcomes.unavailable.inc();
        }
        Self {
            table,
            plain: FastMap::default(),
            outcomes,
        }
    }

    /// The kernel's conntrack, or none (counted as unavailable, logged).
    pub fn kernel(lookups: &Family<ReasonLabel, Counter>) -> Self {
        let table = match NetlinkConntrack::open() {
            Ok(t) => Some(Box::new(t) as Box<dyn NatTable>),
            Err(err) => {
                tracing::warn!(%err, "conntrack unavailable: connections to NATed addresses (Services) are not linked to their servers");
                None
            }
        };
        Self::new(table, lookups)
    }

    /// The rendezvous key of a client connection seen as `client` in
    /// network namespace `netns`.
    pub fn client_link(&mut self, client: Endpoints, netns: u32, now: Instant) -> LinkKey {
        let own = LinkKey::new(client, netns);
        let (local, remote) = (client.local.ip(), client.remote.ip());
        // Loopback and a namespace's own address are never translated by
        // a node's Service rules.
        if own.netns != 0 || local.is_unspecified() || remote.is_unspecified() {
            return own;
        }
        if let Some(at) = self.plain.get(&client.remote) {
            if now.saturating_duration_since(*at) < PLAIN_TTL {
                self.outcomes.skipped_plain.inc();
                return own;
            }
            self.plain.remove(&client.remote);
        }
        let Some(table) = self.table.as_mut() else {
            return own;
        };
        match table.server_view(client) {
            Ok(Some(server)) if server.reversed() == client => {
                self.outcomes.not_translated.inc();
                if self.plain.len() >= MAX_PLAIN_DESTINATIONS {
                    self.plain.clear();
                    self.outcomes.plain_cleared.inc();
                }
                self.plain.insert(client.remote, now);
                own
            }
            Ok(Some(server)) => {
                self.outcomes.translated.inc();
                LinkKey::new(server.reversed(), netns)
            }
            Ok(None) => {
                self.outcomes.not_found.inc();
                own
            }
            Err(err) if err.is_permanent() => {
                tracing::warn!(%err, "conntrack lookups stop: connections to NATed addresses are not linked to their servers");
                self.outcomes.unavailable.inc();
                self.table = None;
                own
            }
            Err(err) => {
                tracing::debug!(%err, "conntrack lookup failed");
                self.outcomes.failed.inc();
                own
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(local: &str, remote: &str) -> Endpoints {
        Endpoints {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    /// A kernel answer: one CT_NEW message with both tuples.
    fn entry(seq: u32, orig: Endpoints, reply_src: &str, reply_dst: &str) -> Vec<u8> {
        let request = encode_get(seq, orig).unwrap();
        let orig_attr = &request[NLMSG_HDRLEN + NFGENMSG_LEN..];
        let (src, dst): (SocketAddr, SocketAddr) =
            (reply_src.parse().unwrap(), reply_dst.parse().unwrap());
        let reply_get = encode_get(
            seq,
            Endpoints {
                local: src,
                remote: dst,
            },
        )
        .unwrap();
        let mut reply_attr = reply_get[NLMSG_HDRLEN + NFGENMSG_LEN..].to_vec();
        // Same nest, numbered as the reply tuple.
        reply_attr[2..4].copy_from_slice(&(CTA_TUPLE_REPLY | NLA_F_NESTED).to_ne_bytes());
        let body = [orig_attr, &reply_attr].concat();
        let len = (NLMSG_HDRLEN + NFGENMSG_LEN + body.len()) as u32;
        let mut msg = Vec::new();
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&CT_NEW.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        msg.extend_from_slice(&body);
        msg
    }

    fn error(seq: u32, errno: i32) -> Vec<u8> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&errno.wrapping_neg().to_ne_bytes());
        msg.extend_from_slice(&[0; 16]);
        msg
    }

    #[test]
    fn parses_an_entry_and_errors() {
        let orig = ends("10.1.0.2:40000", "10.96.0.10:80");
        let msg = entry(7, orig, "10.2.0.2:8080", "10.1.0.2:40000");
        assert_eq!(
            parse_reply(&msg, 7).unwrap(),
            Reply::Entry {
                src: "10.2.0.2:8080".parse().unwrap(),
                dst: "10.1.0.2:40000".parse().unwrap()
            }
        );
        assert_eq!(parse_reply(&msg, 8).unwrap(), Reply::Unrelated);
        // A stale answer then ours, in one datagram.
        let both = [error(6, libc::ENOENT), msg.clone()].concat();
        assert!(matches!(
            parse_reply(&both, 7).unwrap(),
            Reply::Entry { .. }
        ));
        assert_eq!(
            parse_reply(&error(3, libc::ENOENT), 3).unwrap(),
            Reply::NotFound
        );
        assert!(matches!(
            parse_reply(&error(3, libc::EPERM), 3),
            Err(ConntrackError::Kernel(libc::EPERM))
        ));
        // An errno no negation can hold (found by the fuzz target).
        assert!(matches!(
            parse_reply(&error(3, i32::MIN), 3),
            Err(ConntrackError::Kernel(_))
        ));
        let v6 = entry(
            1,
            ends("[fd00::2]:1", "[fd00::9]:80"),
            "[fd00::3]:8080",
            "[fd00::2]:1",
        );
        assert!(
            matches!(parse_reply(&v6, 1).unwrap(), Reply::Entry { src, .. } if src.port() == 8080)
        );
    }

    #[test]
    fn rejects_cut_and_lying_lengths() {
        let msg = entry(
            7,
            ends("10.1.0.2:40000", "10.96.0.10:80"),
            "10.2.0.2:8080",
            "10.1.0.2:40000",
        );
        for cut in 0..msg.len() {
            // Never a panic; a cut message is malformed or not ours.
            let _ = parse_reply(&msg[..cut], 7);
        }
        let mut lying = msg.clone();
        lying[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            parse_reply(&lying, 7),
            Err(ConntrackError::Malformed(_))
        ));
        let mut short = msg;
        short[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(
            parse_reply(&short, 7),
            Err(ConntrackError::Malformed(_))
        ));
        assert!(encode_get(1, ends("10.0.0.1:1", "[fd00::1]:2")).is_none());
    }

    /// The real kernel: a tuple no connection has is not found (the
    /// request is well formed: a malformed one gets EINVAL), and a lookup
    /// takes microseconds.
    #[test]
    fn kernel_answers_an_unknown_tuple_with_not_found() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let why = "conntrack netlink needs CAP_NET_ADMIN";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why}; CI=true"
            );
            eprintln!("SKIP {why}");
            return;
        }
        let mut table = NetlinkConntrack::open().unwrap();
        let unknown = ends("192.0.2.1:1", "192.0.2.2:2");
        const LOOKUPS: u32 = 1000;
        let start = Instant::now();
        for _ in 0..LOOKUPS {
            assert!(table.server_view(unknown).unwrap().is_none());
        }
        eprintln!("conntrack lookup: {:?} each", start.elapsed() / LOOKUPS);
        let unknown_v6 = ends("[2001:db8::1]:1", "[2001:db8::2]:2");
        assert!(table.server_view(unknown_v6).unwrap().is_none());
    }

    struct Fake {
        answers: Vec<Result<Option<Endpoints>, ConntrackError>>,
        asked: usize,
    }

    impl NatTable for Fake {
        fn server_view(&mut self, _: Endpoints) -> Result<Option<Endpoints>, ConntrackError> {
            self.asked += 1;
            if self.answers.is_empty() {
                Ok(None)
            } else {
                self.answers.remove(0)
            }
        }
    }

    #[test]
    fn translates_and_remembers_plain_destinations() {
        let family = Family::<ReasonLabel, Counter>::default();
        let server = ends("10.2.0.2:8080", "10.1.0.2:40000");
        let plain = ends("10.1.0.2:40001", "10.3.0.3:80");
        let fake = Fake {
            answers: vec![Ok(Some(server)), Ok(Some(plain.reversed()))],
            asked: 0,
        };
        let mut nat = NatTranslator::new(Some(Box::new(fake)), &family);
        let now = Instant::now();
        let link = nat.client_link(ends("10.1.0.2:40000", "10.96.0.10:80"), 5, now);
        assert_eq!(link, LinkKey::new(server.reversed(), 5));
        assert_eq!(link.netns, 0, "pod addresses meet across namespaces");
        assert_eq!(nat.client_link(plain, 5, now), LinkKey::new(plain, 5));
        // Known untranslated: no second lookup.
        assert_eq!(
            nat.client_link(ends("10.1.0.2:40002", "10.3.0.3:80"), 5, now)
                .remote,
            plain.remote
        );
        let count = |r| family.get_or_create(&ReasonLabel { reason: r }).get();
        assert_eq!(count("translated"), 1);
        assert_eq!(count("not_translated"), 1);
        assert_eq!(count("skipped_known_untranslated"), 1);
        // Loopback: no lookup at all, keyed by namespace.
        let lo = nat.client_link(ends("127.0.0.1:40000", "127.0.0.1:8080"), 9, now);
        assert_eq!(lo.netns, 9);
        assert_eq!(count("not_found"), 0);
    }

    #[test]
    fn permanent_failure_stops_lookups() {
        let family = Family::<ReasonLabel, Counter>::default();
        let fake = Fake {
            answers: vec![Err(ConntrackError::Kernel(libc::EPERM))],
            asked: 0,
        };
        let mut nat = NatTranslator::new(Some(Box::new(fake)), &family);
        let c = ends("10.1.0.2:40000", "10.96.0.10:80");
        assert_eq!(nat.client_link(c, 1, Instant::now()), LinkKey::new(c, 1));
        assert!(nat.table.is_none());
        assert_eq!(nat.client_link(c, 1, Instant::now()), LinkKey::new(c, 1));
        assert_eq!(
            family
                .get_or_create(&ReasonLabel {
                    reason: "unavailable"
                })
                .get(),
            1
        );
    }
}
