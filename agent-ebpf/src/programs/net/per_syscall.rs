//! The socket sensor on one tracepoint per followed syscall
//! (`syscalls:sys_enter_read`, `sys_exit_read`, …): the kernel runs these
//! programs only on those syscalls, where raw_syscalls would run one on
//! every syscall of every process (epoll_wait, futex, …). Chosen with
//! `SELFOPS_SOCKET_HOOK=syscalls`. Each program is a thin wrapper over the
//! shared entry or exit function.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use selfops_ebpf::NetEventKind;

use super::syscalls::*;

/// An entry program remembering a data or connect call.
macro_rules! enter {
    ($name:ident, $syscall:expr, $buf:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = tracepoint_args(&ctx).and_then(|(fd, buf)| try_enter($syscall, $buf, fd, buf));
            0
        }
    };
}

/// An exit program emitting what a data call moved.
macro_rules! exit_io {
    ($name:ident, $kind:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = tracepoint_ret(&ctx).and_then(|ret| try_exit_io($kind, ret));
            0
        }
    };
}

enter!(net_enter_read, SYS_READ, BUF_PLAIN);
enter!(net_enter_readv, SYS_READV, BUF_IOVEC);
enter!(net_enter_recvfrom, SYS_RECVFROM, BUF_PLAIN);
enter!(net_enter_recvmsg, SYS_RECVMSG, BUF_MSGHDR);
enter!(net_enter_write, SYS_WRITE, BUF_PLAIN);
enter!(net_enter_writev, SYS_WRITEV, BUF_IOVEC);
enter!(net_enter_sendto, SYS_SENDTO, BUF_PLAIN);
enter!(net_enter_sendmsg, SYS_SENDMSG, BUF_MSGHDR);
enter!(net_enter_sendfile, SYS_SENDFILE, BUF_NONE);
enter!(net_enter_connect, SYS_CONNECT, BUF_NONE);

exit_io!(net_exit_read, NetEventKind::Ingress);
exit_io!(net_exit_readv, NetEventKind::Ingress);
exit_io!(net_exit_recvfrom, NetEventKind::Ingress);
exit_io!(net_exit_recvmsg, NetEventKind::Ingress);
exit_io!(net_exit_write, NetEventKind::Egress);
exit_io!(net_exit_writev, NetEventKind::Egress);
exit_io!(net_exit_sendto, NetEventKind::Egress);
exit_io!(net_exit_sendmsg, NetEventKind::Egress);
exit_io!(net_exit_sendfile, NetEventKind::Egress);

/// The entry of a write-family call, stamped for its return on the raw
/// sys_exit hook; attached to each write-family entry tracepoint.
#[tracepoint]
pub fn net_stamp_write(_ctx: TracePointContext) -> u32 {
    let _ = try_stamp_write();
    0
}

#[tracepoint]
pub fn net_enter_close(ctx: TracePointContext) -> u32 {
    let _ = tracepoint_args(&ctx).and_then(|(fd, _)| try_enter_close(fd));
    0
}

#[tracepoint]
pub fn net_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = tracepoint_ret(&ctx).and_then(try_exit_connect);
    0
}

#[tracepoint]
pub fn net_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = tracepoint_ret(&ctx).and_then(|ret| try_exit_accept(SYS_ACCEPT, ret));
    0
}

#[tracepoint]
pub fn net_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = tracepoint_ret(&ctx).and_then(|ret| try_exit_accept(SYS_ACCEPT4, ret));
    0
}
