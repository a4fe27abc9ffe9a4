//! Socket sensor types: the kernel struct offsets it needs and the events
//! it sends through the `NET_EVENTS` ring buffer.

/// Most payload bytes captured per syscall (the configured capture is at
/// most this).
pub const PAYLOAD_MAX: usize = 512;

/// Byte offsets of kernel struct members, resolved by the agent from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    pub sock_family: u32,
    pub sock_num: u32,
    pub sock_dport: u32,
    pub sock_daddr: u32,
    pub sock_rcv_saddr: u32,
    pub sock_v6_daddr: u32,
    pub sock_v6_rcv_saddr: u32,
    pub sock_protocol: u32,
    pub sock_type: u32,
    /// `sock_common.skc_net`: a `possible_net_t`, whose only member is the
    /// `struct net *`.
    pub sock_net: u32,
    /// `net.ns.inum`: the namespace's inode number, as `ip netns` and
    /// /proc/PID/ns/net show it.
    pub net_ns_inum: u32,
    pub _pad: u32,
}

/// Runtime settings of the socket sensor, set by the agent at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetSettings {
    /// The agent's own process, never traced.
    pub agent_tgid: u32,
    /// Payload bytes captured per syscall, at most [`PAYLOAD_MAX`].
    pub payload_bytes: u32,
}

impl NetSettings {
    pub const DEFAULT: Self = Self {
        agent_tgid: 0,
        payload_bytes: PAYLOAD_MAX as u32,
    };
}

/// `NetEventHeader::syscall` of plaintext captured in OpenSSL (TLS
/// connections) rather than at a syscall.
pub const SYSCALL_SSL_READ: u8 = 20;
pub const SYSCALL_SSL_WRITE: u8 = 21;
/// A TLS handshake call: it only teaches the probes the SSL object's socket.
pub const SYSCALL_SSL_HANDSHAKE: u8 = 22;

/// What a socket event reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetEventKind {
    /// Bytes read from the socket.
    Ingress = 1,
    /// Bytes written to the socket.
    Egress = 2,
    /// accept/accept4 returned this socket: the process is its server.
    Accept = 3,
    /// connect on this socket succeeded or is in progress: the process is
    /// its client.
    Connect = 4,
    /// The process closes this socket.
    Close = 5,
}

impl NetEventKind {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Ingress),
            2 => Some(Self::Egress),
            3 => Some(Self::Accept),
            4 => Some(Self::Connect),
            5 => Some(Self::Close),
            _ => None,
        }
    }
}

/// A TCP connection as one endpoint sees it. Addresses are in network
/// order; IPv4 uses the first four bytes. Ports are host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockTuple {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub _pad: u16,
    /// Inode number of the socket's network namespace: two pods' loopback
    /// connections can have the same addresses and ports.
    pub netns: u32,
    pub _pad2: u32,
}

/// Header of every socket event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEventHeader {
    /// A [`NetEventKind`] value.
    pub kind: u8,
    /// Which syscall (see the agent's table), for diagnostics.
    pub syscall: u8,
    pub _pad: u16,
    pub fd: u32,
    pub pid: u32,
    pub tid: u32,
    /// CLOCK_BOOTTIME at syscall entry and exit.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Kernel address of the `struct sock`: identifies the connection.
    pub sock: u64,
    /// Bytes the syscall moved (data events), else 0.
    pub total_len: u64,
    pub tuple: SockTuple,
}

/// A data event: the header and the first bytes of the payload.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEvent {
    pub header: NetEventHeader,
    pub captured_len: u32,
    pub _pad: u32,
    pub payload: [u8; PAYLOAD_MAX],
}

/// Leading bytes of a connection the kernel needs to tell HTTP/1 from
/// other protocols: the longest start token ("CONNECT ", "OPTIONS ").
pub const HTTP_SNIFF_BYTES: usize = 8;

/// A start token as a little-endian word and its length.
const fn token(bytes: &[u8]) -> (u64, usize) {
    let mut word = [0u8; HTTP_SNIFF_BYTES];
    let mut i = 0;
    while i < bytes.len() {
        word[i] = bytes[i];
        i += 1;
    }
    (u64::from_le_bytes(word), bytes.len())
}

/// How a stream can begin if it carries HTTP/1: a request method the agent
/// parses followed by a space, or a status line's version. Kept to what the
/// agent's parser accepts, so that nothing it would parse is turned away.
const HTTP_STARTS: [(u64, usize); 10] = [
    token(b"GET "),
    token(b"HEAD "),
    token(b"POST "),
    token(b"PUT "),
    token(b"DELETE "),
    token(b"CONNECT "),
    token(b"OPTIONS "),
    token(b"TRACE "),
    token(b"PATCH "),
    token(b"HTTP/1."),
];

/// What the first bytes of a stream say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpPrefix {
    /// A whole HTTP/1 start token.
    Http,
    /// No HTTP/1 start token begins this way.
    NotHttp,
    /// Too few bytes: they begin some start token.
    NeedMore,
}

/// A mask of the low `n` bytes of a word.
#[inline(always)]
pub const fn low_bytes(n: usize) -> u64 {
    if n >= HTTP_SNIFF_BYTES {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

/// Classifies the first `len` bytes of a stream, held little-endian in
/// `prefix` (bytes beyond `len` are ignored). Word compares without
/// branches per token: eBPF programs call it, and every branch there is
/// a path the verifier walks at load.
#[inline(always)]
pub fn classify_http_prefix(prefix: u64, len: usize) -> HttpPrefix {
    let mut http = false;
    let mut need_more = false;
    for (word, token_len) in HTTP_STARTS {
        let n = if len < token_len { len } else { token_len };
        let same = (prefix ^ word) & low_bytes(n) == 0;
        http |= same & (len >= token_len);
        need_more |= same & (len < token_len);
    }
    if http {
        HttpPrefix::Http
    } else if need_more {
        HttpPrefix::NeedMore
    } else {
        HttpPrefix::NotHttp
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data structs of integers and byte arrays, no padding.
    unsafe impl aya::Pod for super::SocketOffsets {}
    unsafe impl aya::Pod for super::NetSettings {}
}

const _: () = assert!(core::mem::size_of::<SockTuple>() == 48);
const _: () = assert!(core::mem::size_of::<NetEventHeader>() == 4 + 4 * 3 + 8 * 4 + 48);
const _: () = assert!(core::mem::size_of::<NetEvent>() == 96 + 8 + PAYLOAD_MAX);
const _: () = assert!(core::mem::size_of::<SocketOffsets>() == 20 * 4);
