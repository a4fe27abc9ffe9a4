//! Syscall tracepoints of the socket sensor: raw_syscalls:sys_enter and
//! sys_exit, each a thin wrapper that dispatches on the syscall number to
//! one `try_…` function; entry records the call for its exit.
//!
//! The records put the syscall number at offset 8, the arguments at
//! 16 + 8·i and the return value at 16; the agent checks this against
//! tracefs before attaching.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use selfops_ebpf::{KernelDrop, NetEventKind};

use crate::programs::counters::count_drop;

use super::{
    emit::{Call, emit_control, emit_data, settings},
    socket::tcp_sock_of_fd,
    tls::{claim_for_ssl, forget_ssl_call},
};

const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;
const EINPROGRESS: i64 = 115;

/// Where a syscall's payload is.
const BUF_PLAIN: u8 = 0;
const BUF_IOVEC: u8 = 1;
const BUF_MSGHDR: u8 = 2;
const BUF_NONE: u8 = 3;

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
    (pid_tgid >> 32) as u32 != settings().agent_tgid
}

/// Entry of a call on a file descriptor: remembered if it is a TCP socket.
fn try_enter(ctx: &TracePointContext, syscall: u8, buf_kind: u8) -> Result<(), i64> {
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
fn try_exit_io(ctx: &TracePointContext, kind: NetEventKind) -> Result<(), i64> {
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

fn try_exit_connect(ctx: &TracePointContext) -> Result<(), i64> {
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

fn try_exit_accept(ctx: &TracePointContext, syscall: u8) -> Result<(), i64> {
    // SAFETY: offset of `ret` in sys_exit records.
    let ret: i64 = unsafe { ctx.read_at(RET) }.map_err(i64::from)?;
    if ret >= 0 {
        emit_for_fd(NetEventKind::Accept, ret as u64, syscall)?;
    }
    Ok(())
}

fn try_enter_close(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offset of the first argument.
    let fd: u64 = unsafe { ctx.read_at(ARG0) }.map_err(i64::from)?;
    emit_for_fd(NetEventKind::Close, fd, SYS_CLOSE)
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
const SYS_READ: u8 = 1;
const SYS_READV: u8 = 2;
const SYS_RECVFROM: u8 = 3;
const SYS_RECVMSG: u8 = 4;
const SYS_WRITE: u8 = 5;
const SYS_WRITEV: u8 = 6;
const SYS_SENDTO: u8 = 7;
const SYS_SENDMSG: u8 = 8;
const SYS_SENDFILE: u8 = 9;
const SYS_ACCEPT: u8 = 10;
const SYS_ACCEPT4: u8 = 11;
const SYS_CONNECT: u8 = 12;
const SYS_CLOSE: u8 = 13;

/// Kernel syscall numbers of the calls the sensor follows.
#[cfg(bpf_target_arch = "x86_64")]
mod nr {
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const CLOSE: i64 = 3;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const SENDFILE: i64 = 40;
    pub const CONNECT: i64 = 42;
    pub const ACCEPT: i64 = 43;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
    pub const ACCEPT4: i64 = 288;
}

/// The generic syscall table.
#[cfg(any(
    bpf_target_arch = "aarch64",
    bpf_target_arch = "riscv64",
    bpf_target_arch = "loongarch64"
))]
mod nr {
    pub const READ: i64 = 63;
    pub const WRITE: i64 = 64;
    pub const CLOSE: i64 = 57;
    pub const READV: i64 = 65;
    pub const WRITEV: i64 = 66;
    pub const SENDFILE: i64 = 71;
    pub const CONNECT: i64 = 203;
    pub const ACCEPT: i64 = 202;
    pub const SENDTO: i64 = 206;
    pub const RECVFROM: i64 = 207;
    pub const SENDMSG: i64 = 211;
    pub const RECVMSG: i64 = 212;
    pub const ACCEPT4: i64 = 242;
}

#[cfg(not(any(
    bpf_target_arch = "x86_64",
    bpf_target_arch = "aarch64",
    bpf_target_arch = "riscv64",
    bpf_target_arch = "loongarch64"
)))]
compile_error!("the socket sensor has no syscall table for this architecture");

/// Offset of the syscall number in raw_syscalls records.
const ID: usize = 8;

/// raw_syscalls:sys_enter — one attachment for every call the sensor
/// follows. (One tracepoint per syscall would cost a kernel-wide
/// synchronisation each when the agent detaches: a second per 26.)
#[tracepoint]
pub fn net_sys_enter(ctx: TracePointContext) -> u32 {
    let _ = try_sys_enter(&ctx);
    0
}

fn try_sys_enter(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offset of `id` in raw_syscalls:sys_enter (checked at start-up).
    let id: i64 = unsafe { ctx.read_at(ID) }.map_err(i64::from)?;
    match id {
        nr::READ => try_enter(ctx, SYS_READ, BUF_PLAIN),
        nr::READV => try_enter(ctx, SYS_READV, BUF_IOVEC),
        nr::RECVFROM => try_enter(ctx, SYS_RECVFROM, BUF_PLAIN),
        nr::RECVMSG => try_enter(ctx, SYS_RECVMSG, BUF_MSGHDR),
        nr::WRITE => try_enter(ctx, SYS_WRITE, BUF_PLAIN),
        nr::WRITEV => try_enter(ctx, SYS_WRITEV, BUF_IOVEC),
        nr::SENDTO => try_enter(ctx, SYS_SENDTO, BUF_PLAIN),
        nr::SENDMSG => try_enter(ctx, SYS_SENDMSG, BUF_MSGHDR),
        nr::SENDFILE => try_enter(ctx, SYS_SENDFILE, BUF_NONE),
        nr::CONNECT => try_enter(ctx, SYS_CONNECT, BUF_NONE),
        nr::CLOSE => try_enter_close(ctx),
        _ => Ok(()),
    }
}

/// raw_syscalls:sys_exit.
#[tracepoint]
pub fn net_sys_exit(ctx: TracePointContext) -> u32 {
    let _ = try_sys_exit(&ctx);
    0
}

fn try_sys_exit(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offset of `id` in raw_syscalls:sys_exit (checked at start-up).
    let id: i64 = unsafe { ctx.read_at(ID) }.map_err(i64::from)?;
    match id {
        nr::READ | nr::READV | nr::RECVFROM | nr::RECVMSG => {
            try_exit_io(ctx, NetEventKind::Ingress)
        }
        nr::WRITE | nr::WRITEV | nr::SENDTO | nr::SENDMSG | nr::SENDFILE => {
            try_exit_io(ctx, NetEventKind::Egress)
        }
        nr::CONNECT => try_exit_connect(ctx),
        nr::ACCEPT => try_exit_accept(ctx, SYS_ACCEPT),
        nr::ACCEPT4 => try_exit_accept(ctx, SYS_ACCEPT4),
        _ => Ok(()),
    }
}
