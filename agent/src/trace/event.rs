//! Decoding socket events from the `NET_EVENTS` ring buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use selfops_ebpf::{
    NetEvent, NetEventHeader, NetEventKind, PAYLOAD_MAX, SYSCALL_SSL_READ, SYSCALL_SSL_WRITE,
    SockTuple,
};

/// One endpoint's view of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Endpoints {
    /// The same connection as the other end sees it.
    pub fn reversed(self) -> Self {
        Self {
            local: self.remote,
            remote: self.local,
        }
    }
}

/// A connection as the rendezvous matches its two ends: one end's view of
/// the addresses, with the network namespace when the addresses alone do
/// not tell one namespace's connection from another's (loopback, or a
/// namespace talking to its own address: every pod has its own
/// 127.0.0.1), else 0, so ends in different namespaces still meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: u32,
}

impl LinkKey {
    pub fn new(endpoints: Endpoints, netns: u32) -> Self {
        let (local, remote) = (endpoints.local.ip(), endpoints.remote.ip());
        let within = local.is_loopback() || remote.is_loopback() || local == remote;
        Self {
            local: endpoints.local,
            remote: endpoints.remote,
            netns: if within { netns } else { 0 },
        }
    }

    /// The same connection as the other end sees it.
    pub fn reversed(self) -> Self {
        Self {
            local: self.remote,
            remote: self.local,
            netns: self.netns,
        }
    }
}

/// A socket event, borrowing its payload from the ring buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEvent<'a> {
    pub kind: NetEventKind,
    pub pid: u32,
    pub tid: u32,
    pub fd: u32,
    /// Kernel address of the socket: with the pid, the connection's key.
    pub sock: u64,
    pub start_boot_ns: u64,
    pub end_boot_ns: u64,
    pub endpoints: Endpoints,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// Bytes the syscall moved.
    pub total_len: u64,
    /// The first of those bytes.
    pub payload: &'a [u8],
    /// Plaintext captured inside OpenSSL, not at a syscall.
    pub tls: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes fits neither a control nor a data event")]
    Size(usize),
    #[error("unknown socket event kind {0}")]
    Kind(u8),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("captured length {0} exceeds the payload area")]
    Captured(u32),
}

fn read<T: Copy>(bytes: &[u8]) -> T {
    // SAFETY: callers check `bytes.len() >= size_of::<T>()`; T is a
    // padding-free POD type valid for every bit pattern.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

fn endpoints(t: &SockTuple) -> Result<Endpoints, DecodeError> {
    let ip = |a: [u8; 16]| -> Result<IpAddr, DecodeError> {
        match t.family {
            2 => Ok(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            10 => {
                let v6 = Ipv6Addr::from(a);
                // Dual-stack sockets carry IPv4 peers as ::ffff:a.b.c.d.
                Ok(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
            }
            other => Err(DecodeError::Family(other)),
        }
    };
    Ok(Endpoints {
        local: SocketAddr::new(ip(t.local_addr)?, t.local_port),
        remote: SocketAddr::new(ip(t.remote_addr)?, t.remote_port),
    })
}

pub fn decode(bytes: &[u8]) -> Result<SocketEvent<'_>, DecodeError> {
    let (header, payload): (NetEventHeader, &[u8]) = if bytes.len() == size_of::<NetEvent>() {
        let event: NetEvent = read(bytes);
        if event.captured_len as usize > PAYLOAD_MAX {
            return Err(DecodeError::Captured(event.captured_len));
        }
        let start = size_of::<NetEvent>() - PAYLOAD_MAX;
        let captured = &bytes[start..start + event.captured_len as usize];
        (event.header, captured)
    } else if bytes.len() == size_of::<NetEventHeader>() {
        (read(bytes), &[])
    } else {
        return Err(DecodeError::Size(bytes.len()));
    };
    let kind = NetEventKind::from_u8(header.kind).ok_or(DecodeError::Kind(header.kind))?;
    Ok(SocketEvent {
        kind,
        pid: header.pid,
        tid: header.tid,
        fd: header.fd,
        sock: header.sock,
        start_boot_ns: header.start_ns,
        end_boot_ns: header.end_ns,
        endpoints: endpoints(&header.tuple)?,
        netns: header.tuple.netns,
        total_len: header.total_len,
        payload,
        tls: matches!(header.syscall, SYSCALL_SSL_READ | SYSCALL_SSL_WRITE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: NetEventKind, family: u16) -> NetEventHeader {
        let mut tuple = SockTuple {
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 8080,
            remote_port: 40000,
            family,
            _pad: 0,
            netns: 4026531840,
            _pad2: 0,
        };
        tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        NetEventHeader {
            kind: kind as u8,
            syscall: 1,
            _pad: 0,
            fd: 5,
            pid: 10,
            tid: 11,
            start_ns: 1,
            end_ns: 2,
            sock: 0xffff_8880_0000_1000,
            total_len: 5,
            tuple,
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test view of a padding-free repr(C) struct.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_data_and_control() {
        let mut event = NetEvent {
            header: header(NetEventKind::Ingress, 2),
            captured_len: 5,
            _pad: 0,
            payload: [0; PAYLOAD_MAX],
        };
        event.payload[..5].copy_from_slice(b"GET /");
        let bytes = bytes_of(&event);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.payload, b"GET /");
        assert_eq!(decoded.endpoints.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(decoded.endpoints.remote, "127.0.0.2:40000".parse().unwrap());
        assert_eq!(decoded.netns, 4026531840);
        let bytes = bytes_of(&header(NetEventKind::Close, 2));
        let control = decode(&bytes).unwrap();
        assert_eq!(control.kind, NetEventKind::Close);
        assert!(control.payload.is_empty());
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0; 7]), Err(DecodeError::Size(7)));
        assert_eq!(
            decode(&bytes_of(&header(NetEventKind::Close, 99))),
            Err(DecodeError::Family(99))
        );
        let mut h = header(NetEventKind::Close, 2);
        h.kind = 77;
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::Kind(77)));
        let event = NetEvent {
            header: header(NetEventKind::Ingress, 2),
            captured_len: 9999,
            _pad: 0,
            payload: [0; PAYLOAD_MAX],
        };
        assert_eq!(decode(&bytes_of(&event)), Err(DecodeError::Captured(9999)));
    }

    #[test]
    fn link_key_scopes_only_local_addresses_by_namespace() {
        let e = |l: &str, r: &str| Endpoints {
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
        };
        assert_eq!(LinkKey::new(e("127.0.0.1:1", "127.0.0.1:8080"), 7).netns, 7);
        assert_eq!(LinkKey::new(e("[::1]:1", "[::1]:8080"), 7).netns, 7);
        assert_eq!(LinkKey::new(e("10.0.0.5:1", "10.0.0.5:8080"), 7).netns, 7);
        let pods = LinkKey::new(e("10.0.0.5:1", "10.0.0.6:8080"), 7);
        assert_eq!(pods.netns, 0);
        assert_eq!(
            pods.reversed(),
            LinkKey::new(e("10.0.0.6:8080", "10.0.0.5:1"), 8)
        );
        assert_ne!(
            LinkKey::new(e("127.0.0.1:1", "127.0.0.1:8080"), 7),
            LinkKey::new(e("127.0.0.1:8080", "127.0.0.1:1"), 8).reversed()
        );
    }

    #[test]
    fn v4_mapped_v6_is_v4() {
        let mut h = header(NetEventKind::Close, 10);
        h.tuple.local_addr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        h.tuple.remote_addr = Ipv6Addr::LOCALHOST.octets();
        let bytes = bytes_of(&h);
        let e = decode(&bytes).unwrap();
        assert_eq!(e.endpoints.local.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(e.endpoints.remote.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}
