//! What the socket sensor does at a syscall's entry and exit, shared by
//! every attachment: tracepoints (`per_syscall`: one per followed syscall;
//! `raw_syscalls`: one for every syscall, dispatching on its number) and
//! the syscall functions themselves (`syscall_functions`: fentry/fexit or
//! kprobes). Each attachment reads the arguments and return value its own
//! way and hands them here. Entry records the call for its exit.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_user},
    macros::map,
    maps::HashMap,
    programs::TracePointContext,
};
use selfops_ebpf::{KernelDrop, NetEventKind};

use crate::programs::counters::count_drop;

use super::{
    emit::{Call, emit_control, emit_data, settings},
    socket::{forget_fd, known_tcp_fd, tcp_sock_of_fd},
    tls::{claim_for_ssl, forget_ssl_call, in_ssl_call},
};

// Both kinds of syscall tracepoint record put the arguments at 16 + 8·i
// and the return value at 16; the agent checks this against tracefs
// before attaching.
const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;
const EINPROGRESS: i64 = 115;

/// Where a syscall's payload is.
pub const BUF_PLAIN: u8 = 0;
pub const BUF_IOVEC: u8 = 1;
pub const BUF_MSGHDR: u8 = 2;
pub const BUF_NONE: u8 = 3;

/// In-flight calls on TCP sockets, by thread. A plain hash, not an LRU: a
/// full map refuses the insert, which is counted, where an LRU would evict
/// another thread's call without a trace. A thread's entry goes at its
/// syscall's exit, or at the thread's exit (`forget_thread`).
#[map]
static CALLS: HashMap<u64, Call> = HashMap::with_max_entries(65_536, 0);

/// When each thread's write-family call began, for the hooks that see a
/// call only at its return (fexit, the raw sys_exit). Bytes leave when
/// their write starts: a local reader can return with them before the
/// writer's call returns, so a write stamped at its return could start
/// after the read it caused. Only the start is kept, with no walk from
/// descriptor to socket: that is done once, at the return. A plain hash
/// for the reason given at `CALLS`. A thread's entry is written in place
/// and zeroed when its write returns, and stays until the thread exits
/// (`forget_thread`): an insert and a delete per write cost more than
/// the lookups that replace them.
#[map]
static WRITE_STARTS: HashMap<u64, u64> = HashMap::with_max_entries(65_536, 0);

/// Called when a thread exits: whatever call it left behind goes with it,
/// so entries never outlive their threads.
#[inline(always)]
pub fn forget_thread(pid_tgid: u64) {
    let _ = CALLS.remove(pid_tgid);
    let _ = WRITE_STARTS.remove(pid_tgid);
    forget_ssl_call(pid_tgid);
}

/// Entry of a write-family call on a hook that emits at the return.
pub fn try_stamp_write() -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let at = now();
    if let Some(slot) = WRITE_STARTS.get_ptr_mut(pid_tgid) {
        // SAFETY: this thread's own entry; only it and its exit touch it.
        unsafe { *slot = at };
        return Ok(());
    }
    WRITE_STARTS.insert(pid_tgid, at, 0).map_err(|e| {
        count_drop(KernelDrop::SocketCallInsert);
        i64::from(e)
    })
}

/// The start stamped for this thread's write, or zero (consumed: a stamp
/// is zero once its write has returned). A plain number, not an `Option`:
/// the compiler may spill an `Option`'s unset payload, and the verifier
/// refuses a program that stores a register never written.
#[inline(always)]
fn take_write_start(pid_tgid: u64) -> u64 {
    match WRITE_STARTS.get_ptr_mut(pid_tgid) {
        // SAFETY: this thread's own entry, as in `try_stamp_write`.
        Some(slot) => unsafe { core::ptr::replace(slot, 0) },
        None => 0,
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
fn traced(pid_tgid: u64) -> bool {
    super::process_filter::traced(pid_tgid, settings().agent_tgid)
}

/// The first two arguments of a syscall tracepoint record.
#[inline(always)]
pub fn tracepoint_args(ctx: &TracePointContext) -> Result<(u64, u64), i64> {
    // SAFETY: offsets of the syscall tracepoint record (checked at start-up).
    let fd: u64 = unsafe { ctx.read_at(ARG0) }.map_err(i64::from)?;
    let buf: u64 = unsafe { ctx.read_at(ARG1) }.map_err(i64::from)?;
    Ok((fd, buf))
}

/// The return value of a syscall exit record.
#[inline(always)]
pub fn tracepoint_ret(ctx: &TracePointContext) -> Result<i64, i64> {
    // SAFETY: offset of `ret` in sys_exit records.
    unsafe { ctx.read_at(RET) }.map_err(i64::from)
}

/// Entry of a call on a file descriptor: remembered if it is a TCP socket.
pub fn try_enter(syscall: u8, buf_kind: u8, fd: u64, buf: u64) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = socket_call(pid_tgid, syscall, buf_kind, fd, buf)? else {
        return Ok(());
    };
    CALLS.insert(pid_tgid, call, 0).map_err(|e| {
        count_drop(KernelDrop::SocketCallInsert);
        i64::from(e)
    })
}

/// The call on `fd`, starting now, if it is a traced TCP socket whose
/// bytes the TLS uprobes do not report instead.
#[inline(always)]
fn socket_call(
    pid_tgid: u64,
    syscall: u8,
    buf_kind: u8,
    fd: u64,
    buf: u64,
) -> Result<Option<Call>, i64> {
    if !traced(pid_tgid) {
        return Ok(None);
    }
    let sock = tcp_sock_of_fd(fd)?;
    let at = now();
    // Inside SSL_read/SSL_write the bytes are ciphertext: the uprobes
    // report the plaintext instead.
    if syscall != SYS_CONNECT && claim_for_ssl(pid_tgid, sock, fd as u32, at) {
        return Ok(None);
    }
    Ok(Some(Call {
        start_ns: at,
        sock,
        buf,
        fd: fd as u32,
        syscall,
        buf_kind,
        _pad: 0,
    }))
}

#[inline(always)]
fn take_call(pid_tgid: u64) -> Option<Call> {
    // SAFETY: the value is copied out before the entry is removed.
    let call = unsafe { CALLS.get(pid_tgid) }.copied();
    if call.is_some() {
        let _ = CALLS.remove(pid_tgid);
    }
    call
}

/// Start and length of the first buffer of an iovec array.
#[inline(always)]
fn first_iovec(iov: u64) -> Result<(u64, u64), i64> {
    // SAFETY: user memory read through the helper.
    let iovec: [u64; 2] =
        unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.map_err(i64::from)?;
    Ok((iovec[0], iovec[1]))
}

/// Exit of a data call: emits what moved.
pub fn try_exit_io(kind: NetEventKind, ret: i64) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = take_call(pid_tgid) else {
        return Ok(());
    };
    emit_io(kind, &call, pid_tgid, ret, now())
}

/// A data call seen only at its return (fexit, the raw sys_exit: both
/// have the arguments too): no entry to remember, so one program run per
/// read and no map update. A read's start is its return, which for a
/// blocking read is when the bytes came rather than when the thread began
/// to wait; a write's is the stamp its entry left (`try_stamp_write`).
/// Inlined: six arguments are more than a BPF call can pass.
#[inline(always)]
pub fn try_returned_io(
    kind: NetEventKind,
    syscall: u8,
    buf_kind: u8,
    fd: u64,
    buf: u64,
    ret: i64,
) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let write_start = match kind {
        NetEventKind::Egress => take_write_start(pid_tgid),
        _ => 0,
    };
    // A failed call (EAGAIN) moved nothing, but inside SSL_read/SSL_write
    // it still teaches the SSL object its socket; elsewhere the walk from
    // descriptor to socket is skipped.
    if ret <= 0 && !in_ssl_call(pid_tgid) {
        return Ok(());
    }
    let Some(mut call) = socket_call(pid_tgid, syscall, buf_kind, fd, buf)? else {
        return Ok(());
    };
    // The call returned just now, when `socket_call` read the clock: one
    // clock read serves as the read's start and the event's end.
    let end = call.start_ns;
    if write_start != 0 {
        call.start_ns = write_start;
    }
    emit_io(kind, &call, pid_tgid, ret, end)
}

/// Emits what a data call that returned `ret` moved.
#[inline(always)]
fn emit_io(
    kind: NetEventKind,
    call: &Call,
    pid_tgid: u64,
    ret: i64,
    end_ns: u64,
) -> Result<(), i64> {
    if ret <= 0 {
        return Ok(());
    }
    let total = ret as u64;
    let (src, avail) = match call.buf_kind {
        BUF_PLAIN => (call.buf, total),
        BUF_IOVEC => first_iovec(call.buf)?,
        BUF_MSGHDR => {
            // struct user_msghdr: msg_iov is the pointer at offset 16.
            // SAFETY: user memory read through the helper.
            let iov: u64 =
                unsafe { bpf_probe_read_user((call.buf + 16) as *const u64) }.map_err(i64::from)?;
            first_iovec(iov)?
        }
        _ => (0, 0),
    };
    let avail = if avail < total { avail } else { total };
    emit_data(kind, call, pid_tgid, end_ns, total, src, avail);
    Ok(())
}

pub fn try_exit_connect(ret: i64) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = take_call(pid_tgid) else {
        return Ok(());
    };
    emit_connect(&call, pid_tgid, ret);
    Ok(())
}

/// A connect seen only at its return (fexit).
pub fn try_returned_connect(fd: u64, ret: i64) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(call) = socket_call(pid_tgid, SYS_CONNECT, BUF_NONE, fd, 0)? {
        emit_connect(&call, pid_tgid, ret);
    }
    Ok(())
}

#[inline(always)]
fn emit_connect(call: &Call, pid_tgid: u64, ret: i64) {
    if ret == 0 || ret == -EINPROGRESS {
        emit_control(NetEventKind::Connect, call, pid_tgid, now());
    }
}

pub fn try_exit_accept(syscall: u8, ret: i64) -> Result<(), i64> {
    if ret >= 0 {
        emit_for_fd(NetEventKind::Accept, ret as u64, syscall)?;
    }
    Ok(())
}

pub fn try_enter_close(fd: u64) -> Result<(), i64> {
    // Every socket the agent has heard of went through `tcp_sock_of_fd`
    // (accept, connect, data) and is known there, so a descriptor that is
    // not is closed with one lookup and no walk: a file, a pipe, or a
    // socket that never carried traced traffic. A socket whose entry was
    // evicted closes unreported, as one does when its process exits.
    if !known_tcp_fd(fd) {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        forget_fd(fd);
        return Ok(());
    }
    // The entry is checked (it may be left by a socket since replaced).
    let sock = tcp_sock_of_fd(fd)?;
    forget_fd(fd);
    emit_sock(NetEventKind::Close, pid_tgid, sock, fd, SYS_CLOSE);
    Ok(())
}

/// A control event (accept) for `fd` if it is a traced TCP socket.
fn emit_for_fd(kind: NetEventKind, fd: u64, syscall: u8) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return Ok(());
    }
    let sock = tcp_sock_of_fd(fd)?;
    emit_sock(kind, pid_tgid, sock, fd, syscall);
    Ok(())
}

#[inline(always)]
fn emit_sock(kind: NetEventKind, pid_tgid: u64, sock: u64, fd: u64, syscall: u8) {
    let at = now();
    let call = Call {
        start_ns: at,
        sock,
        buf: 0,
        fd: fd as u32,
        syscall,
        buf_kind: BUF_NONE,
        _pad: 0,
    };
    emit_control(kind, &call, pid_tgid, at);
}

// Syscall numbers of this table (not the kernel's), carried in events.
pub const SYS_READ: u8 = 1;
pub const SYS_READV: u8 = 2;
pub const SYS_RECVFROM: u8 = 3;
pub const SYS_RECVMSG: u8 = 4;
pub const SYS_WRITE: u8 = 5;
pub const SYS_WRITEV: u8 = 6;
pub const SYS_SENDTO: u8 = 7;
pub const SYS_SENDMSG: u8 = 8;
pub const SYS_SENDFILE: u8 = 9;
pub const SYS_ACCEPT: u8 = 10;
pub const SYS_ACCEPT4: u8 = 11;
pub const SYS_CONNECT: u8 = 12;
pub const SYS_CLOSE: u8 = 13;
