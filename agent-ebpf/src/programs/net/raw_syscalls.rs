//! The socket sensor on raw_syscalls:sys_enter and sys_exit: one program
//! each, run on every syscall of every process, dispatching on the syscall
//! number. The agent's default: two attachments detach in a fraction of
//! the time `per_syscall`'s 23 take (see the agent's `SyscallHook`).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use selfops_ebpf::NetEventKind;

use super::{syscall_numbers as nr, syscalls::*};

/// Offset of the syscall number in raw_syscalls records.
const ID: usize = 8;

/// raw_syscalls:sys_enter.
#[tracepoint]
pub fn net_sys_enter(ctx: TracePointContext) -> u32 {
    let _ = try_sys_enter(&ctx);
    0
}

fn try_sys_enter(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offset of `id` in raw_syscalls:sys_enter (checked at start-up).
    let id: i64 = unsafe { ctx.read_at(ID) }.map_err(i64::from)?;
    let (syscall, buf_kind) = match id {
        nr::READ => (SYS_READ, BUF_PLAIN),
        nr::READV => (SYS_READV, BUF_IOVEC),
        nr::RECVFROM => (SYS_RECVFROM, BUF_PLAIN),
        nr::RECVMSG => (SYS_RECVMSG, BUF_MSGHDR),
        nr::WRITE => (SYS_WRITE, BUF_PLAIN),
        nr::WRITEV => (SYS_WRITEV, BUF_IOVEC),
        nr::SENDTO => (SYS_SENDTO, BUF_PLAIN),
        nr::SENDMSG => (SYS_SENDMSG, BUF_MSGHDR),
        nr::SENDFILE => (SYS_SENDFILE, BUF_NONE),
        nr::CONNECT => (SYS_CONNECT, BUF_NONE),
        nr::CLOSE => return try_enter_close(tracepoint_args(ctx)?.0),
        _ => return Ok(()),
    };
    let (fd, buf) = tracepoint_args(ctx)?;
    try_enter(syscall, buf_kind, fd, buf)
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
            try_exit_io(NetEventKind::Ingress, tracepoint_ret(ctx)?)
        }
        nr::WRITE | nr::WRITEV | nr::SENDTO | nr::SENDMSG | nr::SENDFILE => {
            try_exit_io(NetEventKind::Egress, tracepoint_ret(ctx)?)
        }
        nr::CONNECT => try_exit_connect(tracepoint_ret(ctx)?),
        nr::ACCEPT => try_exit_accept(SYS_ACCEPT, tracepoint_ret(ctx)?),
        nr::ACCEPT4 => try_exit_accept(SYS_ACCEPT4, tracepoint_ret(ctx)?),
        _ => Ok(()),
    }
}
