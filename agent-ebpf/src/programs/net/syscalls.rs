//! What the socket sensor does at a syscall's entry and exit, shared by
//! both attachments (`per_syscall`: one tracepoint per followed syscall;
//! `raw_syscalls`: one tracepoint for every syscall, dispatching on its
//! number). Entry records the call for its exit.
//!
//! Both kinds of record put the arguments at 16 + 8·i and the return
//! value at 16; the agent checks this against tracefs before attaching.

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
    socket::{forget_fd, tcp_sock_of_fd},
    tls::{claim_for_ssl, forget_ssl_call},
};

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

/// Called when a thread exits: whatever call it left behind goes with it,
/// so entries never outlive their threads.
#[inline(always)]
pub fn forget_thread(pid_tgid: u64) {
    let _ = CALLS.remove(pid_tgid);
    forget_ssl_call(pid_tgid);
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

/// Entry of a call on a file descriptor: remembered if it is a TCP socket.
pub fn try_enter(ctx: &TracePointContext, syscall: u8, buf_kind: u8) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return Ok(());
    }
    // SAFETY: offsets of the syscall tracepoint record (checked at start-up).
    let fd: u64 = unsafe { ctx.read_at(ARG0) }.map_err(i64::from)?;
    let buf: u64 = unsafe { ctx.read_at(ARG1) }.map_err(i64::from)?;
    let sock = tcp_sock_of_fd(fd)?;
    // Inside SSL_read/SSL_write the bytes are ciphertext: the uprobes
    // report the plaintext instead.
    if syscall != SYS_CONNECT && claim_for_ssl(pid_tgid, sock, fd as u32, now()) {
        return Ok(());
    }
    let call = Call {
        start_ns: now(),
        sock,
        buf,
        fd: fd as u32,
        syscall,
        buf_kind,
        _pad: 0,
    };
    CALLS.insert(pid_tgid, call, 0).map_err(|e| {
        count_drop(KernelDrop::SocketCallInsert);
        i64::from(e)
    })
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
pub fn try_exit_io(ctx: &TracePointContext, kind: NetEventKind) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = take_call(pid_tgid) else {
        return Ok(());
    };
    // SAFETY: offset of `ret` in sys_exit records.
    let ret: i64 = unsafe { ctx.read_at(RET) }.map_err(i64::from)?;
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
    emit_data(kind, &call, pid_tgid, now(), total, src, avail);
    Ok(())
}

pub fn try_exit_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = take_call(pid_tgid) else {
        return Ok(());
    };
    // SAFETY: offset of `ret` in sys_exit records.
    let ret: i64 = unsafe { ctx.read_at(RET) }.map_err(i64::from)?;
    if ret == 0 || ret == -EINPROGRESS {
        emit_control(NetEventKind::Connect, &call, pid_tgid, now());
    }
    Ok(())
}

pub fn try_exit_accept(ctx: &TracePointContext, syscall: u8) -> Result<(), i64> {
    // SAFETY: offset of `ret` in sys_exit records.
    let ret: i64 = unsafe { ctx.read_at(RET) }.map_err(i64::from)?;
    if ret >= 0 {
        emit_for_fd(NetEventKind::Accept, ret as u64, syscall)?;
    }
    Ok(())
}

pub fn try_enter_close(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offset of the first argument.
    let fd: u64 = unsafe { ctx.read_at(ARG0) }.map_err(i64::from)?;
    let result = emit_for_fd(NetEventKind::Close, fd, SYS_CLOSE);
    forget_fd(fd);
    result
}

/// A control event (accept, close) for `fd` if it is a traced TCP socket.
fn emit_for_fd(kind: NetEventKind, fd: u64, syscall: u8) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return Ok(());
    }
    let sock = tcp_sock_of_fd(fd)?;
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
    Ok(())
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
