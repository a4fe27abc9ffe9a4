//! Writing socket events into the `NET_EVENTS` ring buffer.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_probe_read_user,
    macros::map,
    maps::RingBuf,
};
use selfops_ebpf::{
    KernelDrop, NetEvent, NetEventHeader, NetEventKind, NetSettings, PAYLOAD_MAX, SYSCALL_SSL_READ,
    Sensor,
    ring::{ring_record_bytes, wakes_reader},
};

use super::{classify, socket::tuple_of};
use crate::programs::counters::{count_drop, count_lost};

/// Socket events for the agent; its size is set by the agent at load time.
#[map]
static NET_EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Written by the agent at load.
#[unsafe(no_mangle)]
static NET_SETTINGS: NetSettings = NetSettings::DEFAULT;

#[inline(always)]
pub fn settings() -> NetSettings {
    // SAFETY: read-only global filled by the loader.
    unsafe { core::ptr::read_volatile(&NET_SETTINGS) }
}

// The capture size is bounded with a mask (see `emit_data`).
const _: () = assert!(PAYLOAD_MAX.is_power_of_two());

/// Unread bytes in the ring at which the agent is woken at once. Below
/// it the agent drains on its own timer: a wake-up per event would cost
/// the traced host a context switch per syscall.
const WAKEUP_BYTES: u64 = 256 * 1024;

/// Flags for submitting a record of type `T`.
#[inline(always)]
fn submit_flags<T>() -> u64 {
    let unread = NET_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if wakes_reader(unread, ring_record_bytes(size_of::<T>()), WAKEUP_BYTES) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// A syscall on a TCP socket, as recorded at entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Call {
    pub start_ns: u64,
    pub sock: u64,
    /// User pointer: the buffer, the iovec array or the msghdr.
    pub buf: u64,
    pub fd: u32,
    pub syscall: u8,
    pub buf_kind: u8,
    pub _pad: u16,
}

#[inline(always)]
fn fill_header(
    h: *mut NetEventHeader,
    kind: NetEventKind,
    call: &Call,
    pid_tgid: u64,
    end_ns: u64,
    total_len: u64,
) -> Result<(), i64> {
    // SAFETY: `h` points into reserved ring-buffer memory.
    unsafe {
        (*h).kind = kind as u8;
        (*h).syscall = call.syscall;
        (*h)._pad = 0;
        (*h).fd = call.fd;
        (*h).pid = (pid_tgid >> 32) as u32;
        (*h).tid = pid_tgid as u32;
        (*h).start_ns = call.start_ns;
        (*h).end_ns = end_ns;
        (*h).sock = call.sock;
        (*h).total_len = total_len;
        tuple_of(call.sock, core::ptr::addr_of_mut!((*h).tuple))
    }
}

/// Accept, connect or close: the header alone.
#[inline(always)]
pub fn emit_control(kind: NetEventKind, call: &Call, pid_tgid: u64, end_ns: u64) {
    if kind == NetEventKind::Close {
        classify::closed(call.sock);
    }
    let Some(mut entry) = NET_EVENTS.reserve::<NetEventHeader>(0) else {
        count_lost(Sensor::Socket);
        return;
    };
    let header = entry.as_mut_ptr();
    if fill_header(header, kind, call, pid_tgid, end_ns, 0).is_ok() {
        if matches!(kind, NetEventKind::Accept | NetEventKind::Connect) {
            // SAFETY: the header was just filled in reserved memory.
            classify::opened(call.sock, unsafe { &(*header).tuple });
        }
        entry.submit(submit_flags::<NetEventHeader>());
    } else {
        count_drop(KernelDrop::SocketHeader);
        entry.discard(0);
    }
}

/// Data moved by a syscall: the header and the first bytes at `src`
/// (user memory holding `avail` bytes of the payload).
#[inline(always)]
pub fn emit_data(
    kind: NetEventKind,
    call: &Call,
    pid_tgid: u64,
    end_ns: u64,
    total_len: u64,
    src: u64,
    avail: u64,
) {
    // Syscall bytes are judged; TLS plaintext from the OpenSSL probes is
    // not, whatever its socket's handshake looked like.
    let judged = call.syscall < SYSCALL_SSL_READ;
    let Some(mut entry) = NET_EVENTS.reserve::<NetEvent>(0) else {
        count_lost(Sensor::Socket);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points into reserved ring-buffer memory.
    let header = unsafe { core::ptr::addr_of_mut!((*event).header) };
    if fill_header(header, kind, call, pid_tgid, end_ns, total_len).is_err() {
        count_drop(KernelDrop::SocketHeader);
        entry.discard(0);
        return;
    }
    // Judged on the 4-tuple just read into the header, before the payload
    // is copied. Looked up for TLS plaintext too, and then ignored: with
    // the lookup only on one branch, the compiler leaves the value
    // undefined on the other, and the verifier refuses the program for
    // moving an unset register there.
    let verdict = classify::verdict_of(call.sock).filter(|_| judged);
    // SAFETY: the header was just filled in reserved memory.
    if classify::withheld(verdict, call.sock, unsafe { &(*header).tuple }) {
        entry.discard(0);
        return;
    }
    let limit = u64::from(settings().payload_bytes);
    let wanted = if avail < limit { avail } else { limit };
    let mut captured: u32 = 0;
    if src != 0 && wanted > 0 && wanted <= PAYLOAD_MAX as u64 {
        // Older verifiers (6.1) lose the check above when the compiler
        // reloads `wanted` from a stack slot spilled before it was
        // bounded. So the size is bounded again by arithmetic just before
        // the call (the same value for 1..=PAYLOAD_MAX), behind a volatile
        // read so that the optimiser, knowing the range, cannot drop it.
        // SAFETY: a read of a local.
        let n = unsafe { core::ptr::read_volatile(&wanted) };
        let n = ((n.wrapping_sub(1) & (PAYLOAD_MAX as u64 - 1)) + 1) as u32;
        // SAFETY: n is within the payload array; user memory is read
        // through the helper, which fails cleanly on bad addresses.
        let rc = unsafe {
            bpf_probe_read_user(
                core::ptr::addr_of_mut!((*event).payload).cast(),
                n,
                src as *const core::ffi::c_void,
            )
        };
        if rc == 0 {
            captured = n;
        }
    }
    // SAFETY: as above.
    unsafe {
        (*event).captured_len = captured;
        (*event)._pad = 0;
    }
    // SAFETY: header and payload were written above, in reserved memory.
    let not_http = judged
        && unsafe {
            classify::observe(
                verdict,
                call.sock,
                kind as u8,
                &(*header).tuple,
                &(*event).payload,
                captured,
                total_len,
            )
        };
    if not_http {
        entry.discard(0);
        return;
    }
    entry.submit(submit_flags::<NetEvent>());
}
