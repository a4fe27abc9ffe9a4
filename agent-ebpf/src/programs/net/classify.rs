//! Per-connection protocol verdicts: a connection whose start the sensor
//! saw (accept or connect) is classified from its first bytes, and once
//! they are not HTTP/1 its later data events are not sent. Only syscall
//! bytes are classified and withheld; TLS plaintext from the OpenSSL
//! probes always goes out, as the handshake seen at syscalls says nothing
//! about it. The agent's parser stays the authority: anything the kernel
//! cannot judge from the stream's true start is sent.

use aya_ebpf::{macros::map, maps::LruHashMap};
use selfops_ebpf::{
    HTTP_SNIFF_BYTES, HttpPrefix, KernelFilter, PAYLOAD_MAX, SockTuple, classify_http_prefix,
    low_bytes,
};

use crate::programs::counters::count_filtered;

/// Collecting the first bytes.
const UNKNOWN: u8 = 0;
const HTTP: u8 = 1;
/// Not HTTP/1: data events are withheld.
const OTHER: u8 = 2;
/// The first bytes could not be seen whole (capture cut, unreadable
/// buffer): never judged, everything is sent.
const UNDECIDED: u8 = 3;

/// A connection's verdict and what it was drawn from.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Verdict {
    /// The connection's remote address and ports when it opened: a sock
    /// freed without a close the sensor saw (the process exited) may come
    /// back at the same address as another connection, which must not
    /// inherit this verdict.
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// The stream's first bytes as far as seen (`len`), little-endian.
    pub prefix: u64,
    pub verdict: u8,
    /// The `NetEventKind` of the first data (0 until then): only that
    /// direction's bytes are the stream start being classified.
    pub direction: u8,
    pub len: u8,
    pub _pad: u8,
}

/// By `struct sock` address. An LRU: a lost entry only means the
/// connection's events are all sent, as for one older than the agent.
#[map]
static VERDICTS: LruHashMap<u64, Verdict> = LruHashMap::with_max_entries(65_536, 0);

#[inline(always)]
fn same_connection(v: &Verdict, tuple: &SockTuple) -> bool {
    v.local_port == tuple.local_port
        && v.remote_port == tuple.remote_port
        && v.remote_addr == tuple.remote_addr
}

/// accept or connect returned `sock`: its stream starts now. A repeated
/// connect on a connection already moving data keeps what was learned.
#[inline(always)]
pub fn opened(sock: u64, tuple: &SockTuple) {
    if let Some(known) = VERDICTS.get_ptr(sock) {
        // SAFETY: map value pointer, read at once.
        let known = unsafe { &*known };
        if known.direction != 0 && same_connection(known, tuple) {
            return;
        }
    }
    let fresh = Verdict {
        remote_addr: tuple.remote_addr,
        local_port: tuple.local_port,
        remote_port: tuple.remote_port,
        prefix: 0,
        verdict: UNKNOWN,
        direction: 0,
        len: 0,
        _pad: 0,
    };
    // A failed insert leaves the connection unjudged: all of it is sent.
    let _ = VERDICTS.insert(sock, fresh, 0);
}

/// The process closes the socket.
#[inline(always)]
pub fn closed(sock: u64) {
    let _ = VERDICTS.remove(sock);
}

/// The verdict of a data event's connection, if the sensor saw it open:
/// looked up once per event, for [`withheld`] and then [`observe`].
#[inline(always)]
pub fn verdict_of(sock: u64) -> Option<*mut Verdict> {
    VERDICTS.get_ptr_mut(sock)
}

/// Whether a data event on `sock`, whose connection now has `tuple`, is
/// withheld (counted): the connection was found not to be HTTP/1 and is
/// still the one judged.
#[inline(always)]
pub fn withheld(verdict: Option<*mut Verdict>, sock: u64, tuple: &SockTuple) -> bool {
    let Some(known) = verdict else {
        return false;
    };
    // SAFETY: map value pointer, read at once.
    let known = unsafe { &*known };
    if known.verdict != OTHER {
        return false;
    }
    if !same_connection(known, tuple) {
        let _ = VERDICTS.remove(sock);
        return false;
    }
    count_filtered(KernelFilter::NotHttp);
    true
}

/// Learns from a data event being sent: `payload` holds its first
/// `captured` of `total` bytes. Returns true when these bytes decided the
/// connection is not HTTP/1, so this event is withheld too (counted).
#[inline(always)]
pub fn observe(
    verdict: Option<*mut Verdict>,
    sock: u64,
    kind: u8,
    tuple: &SockTuple,
    payload: &[u8; PAYLOAD_MAX],
    captured: u32,
    total: u64,
) -> bool {
    let Some(v) = verdict else {
        return false;
    };
    // SAFETY: map value pointer; a connection's events come from the
    // threads using it, one at a time for a stream that has a start.
    let v = unsafe { &mut *v };
    if v.verdict != UNKNOWN {
        return false;
    }
    if !same_connection(v, tuple) {
        let _ = VERDICTS.remove(sock);
        return false;
    }
    if v.direction == 0 {
        v.direction = kind;
    } else if v.direction != kind {
        return false;
    }
    // Straight-line merging of the new bytes after those already held.
    let have = v.len as usize;
    let room = HTTP_SNIFF_BYTES.saturating_sub(have);
    let take = if (captured as usize) < room {
        captured as usize
    } else {
        room
    };
    if take > 0 {
        let head = payload
            .first_chunk::<HTTP_SNIFF_BYTES>()
            .map_or(0, |b| u64::from_le_bytes(*b));
        // take > 0 means have < 8: the shift stays below 64.
        v.prefix |= (head & low_bytes(take)) << (8 * (have & 7));
    }
    let have = have + take;
    v.len = have as u8;
    match classify_http_prefix(v.prefix, have) {
        HttpPrefix::Http => v.verdict = HTTP,
        HttpPrefix::NotHttp => {
            v.verdict = OTHER;
            count_filtered(KernelFilter::NotHttp);
            return true;
        }
        // Bytes after the captured ones moved unseen: the next event does
        // not continue this prefix.
        HttpPrefix::NeedMore if u64::from(captured) < total => v.verdict = UNDECIDED,
        // A short read or write: the next one continues the stream.
        HttpPrefix::NeedMore => {}
    }
    false
}
