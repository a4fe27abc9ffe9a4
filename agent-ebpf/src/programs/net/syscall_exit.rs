//! The socket sensor at syscall exit alone: one raw tracepoint on
//! `sys_exit`, whose arguments are the user's saved registers and the
//! return value. The syscall's number and arguments are still in those
//! registers at exit, so a read, write, connect or accept costs one
//! program run and no map update, as on fexit, where the perf-event
//! tracepoints need an entry run remembering the call in a map for its
//! exit. A raw tracepoint also skips building the perf record. Close is
//! taken at its entry (`syscalls:sys_enter_close`, `per_syscall`), while
//! its descriptor still names the socket. The call's start is its return,
//! as on fexit.
//!
//! The same tracepoint comes in two forms: typed by the kernel's BTF
//! (`tp_btf`), where the verifier knows the registers as `struct pt_regs`
//! and reads them with plain loads, and untyped, for kernels without BTF,
//! where each register costs a helper call. The agent tries the first.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use selfops_ebpf::NetEventKind::{Egress, Ingress};

use super::{
    syscall_numbers as nr,
    syscalls::*,
    user_regs::{TypedRegs, syscall_nr, user_args},
};

/// raw `sys_exit(struct pt_regs *regs, long ret)`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn net_raw_sys_exit(ctx: RawTracePointContext) -> u32 {
    let regs: u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let _ = syscall_nr(regs).and_then(|nr| on_exit(nr, ret, || user_args(regs)));
    0
}

/// `sys_exit` typed by BTF: the same, reading the registers directly.
#[btf_tracepoint(function = "sys_exit")]
pub fn net_btf_sys_exit(ctx: BtfTracePointContext) -> u32 {
    if let Some(regs) = TypedRegs::new(ctx.arg(0)) {
        let ret: i64 = ctx.arg(1);
        let _ = on_exit(regs.syscall_nr(), ret, || Ok(regs.user_args()));
    }
    0
}

/// A syscall returned `ret`: the followed ones are handed on with their
/// first two arguments (`args`, read only for those).
#[inline(always)]
fn on_exit(nr: i64, ret: i64, args: impl FnOnce() -> Result<(u64, u64), i64>) -> Result<(), i64> {
    let (kind, syscall, buf_kind) = match nr {
        nr::READ => (Ingress, SYS_READ, BUF_PLAIN),
        nr::READV => (Ingress, SYS_READV, BUF_IOVEC),
        nr::RECVFROM => (Ingress, SYS_RECVFROM, BUF_PLAIN),
        nr::RECVMSG => (Ingress, SYS_RECVMSG, BUF_MSGHDR),
        nr::WRITE => (Egress, SYS_WRITE, BUF_PLAIN),
        nr::WRITEV => (Egress, SYS_WRITEV, BUF_IOVEC),
        nr::SENDTO => (Egress, SYS_SENDTO, BUF_PLAIN),
        nr::SENDMSG => (Egress, SYS_SENDMSG, BUF_MSGHDR),
        nr::SENDFILE => (Egress, SYS_SENDFILE, BUF_NONE),
        nr::CONNECT => return try_returned_connect(args()?.0, ret),
        nr::ACCEPT => return try_exit_accept(SYS_ACCEPT, ret),
        nr::ACCEPT4 => return try_exit_accept(SYS_ACCEPT4, ret),
        _ => return Ok(()),
    };
    let (fd, buf) = args()?;
    try_returned_io(kind, syscall, buf_kind, fd, buf, ret)
}
