//! The socket sensor on the kernel's syscall functions themselves
//! (`__x64_sys_read`, …): fexit where BTF trampolines work, kprobes and
//! kretprobes otherwise. Unlike syscall tracepoints, these run only on the
//! followed syscalls and leave every other syscall of every task on its
//! fast path (an enabled syscall tracepoint sends all of them through the
//! slow path). fexit sees the arguments with the return value, so a read
//! costs one program run and no map update; a write's entry is stamped
//! (fentry) for its start; close is taken at its entry, while its
//! descriptor still names the socket. The agent attaches
//! each program to the architecture's wrapper of its syscall; each program
//! is a thin wrapper over the shared entry or exit function.
//!
//! A wrapper's only argument is the `struct pt_regs` the syscall was
//! entered with; the user's arguments are read from it.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_kernel,
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use selfops_ebpf::NetEventKind;

use super::{syscalls::*, user_regs::user_args};

/// The trampoline's saved words: the wrapper's `pt_regs` pointer, then
/// (fexit) its return value. Read through the helper rather than the typed
/// context: 5.10's BTF has `pt_regs` only as a forward declaration in some
/// units (net/socket.c), and its verifier refuses typed access to that.
#[inline(always)]
fn trampoline_words<const N: usize>(ctx: &impl EbpfContext) -> Result<[u64; N], i64> {
    // SAFETY: the trampoline's argument array holds at least N words.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const [u64; N]) }.map_err(i64::from)
}

/// The wrapper's `pt_regs` argument seen by a kprobe.
#[inline(always)]
fn kprobe_regs(ctx: &ProbeContext) -> Result<u64, i64> {
    ctx.arg::<u64>(0).ok_or(-1)
}

/// A write-family call's entry, stamped for its fexit.
macro_rules! stamp_write {
    ($fentry:ident) => {
        #[fentry]
        pub fn $fentry(_ctx: FEntryContext) -> u32 {
            let _ = try_stamp_write();
            0
        }
    };
}

stamp_write!(net_fentry_write);
stamp_write!(net_fentry_writev);
stamp_write!(net_fentry_sendto);
stamp_write!(net_fentry_sendmsg);
stamp_write!(net_fentry_sendfile);

/// A data call: fexit alone, or a kprobe and a kretprobe.
macro_rules! data_call {
    ($fexit:ident, $kprobe:ident, $kretprobe:ident, $syscall:expr, $buf:expr, $kind:expr) => {
        #[fexit]
        pub fn $fexit(ctx: FExitContext) -> u32 {
            let _ = trampoline_words::<2>(&ctx).and_then(|[regs, ret]| {
                let (fd, buf) = user_args(regs)?;
                try_returned_io($kind, $syscall, $buf, fd, buf, ret as i64)
            });
            0
        }

        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            let _ = kprobe_regs(&ctx)
                .and_then(user_args)
                .and_then(|(fd, buf)| try_enter($syscall, $buf, fd, buf));
            0
        }

        #[kretprobe]
        pub fn $kretprobe(ctx: RetProbeContext) -> u32 {
            let _ = try_exit_io($kind, ctx.ret::<i64>());
            0
        }
    };
}

use NetEventKind::{Egress, Ingress};

data_call!(
    net_fexit_read,
    net_kprobe_read,
    net_kretprobe_read,
    SYS_READ,
    BUF_PLAIN,
    Ingress
);
data_call!(
    net_fexit_readv,
    net_kprobe_readv,
    net_kretprobe_readv,
    SYS_READV,
    BUF_IOVEC,
    Ingress
);
data_call!(
    net_fexit_recvfrom,
    net_kprobe_recvfrom,
    net_kretprobe_recvfrom,
    SYS_RECVFROM,
    BUF_PLAIN,
    Ingress
);
data_call!(
    net_fexit_recvmsg,
    net_kprobe_recvmsg,
    net_kretprobe_recvmsg,
    SYS_RECVMSG,
    BUF_MSGHDR,
    Ingress
);
data_call!(
    net_fexit_write,
    net_kprobe_write,
    net_kretprobe_write,
    SYS_WRITE,
    BUF_PLAIN,
    Egress
);
data_call!(
    net_fexit_writev,
    net_kprobe_writev,
    net_kretprobe_writev,
    SYS_WRITEV,
    BUF_IOVEC,
    Egress
);
data_call!(
    net_fexit_sendto,
    net_kprobe_sendto,
    net_kretprobe_sendto,
    SYS_SENDTO,
    BUF_PLAIN,
    Egress
);
data_call!(
    net_fexit_sendmsg,
    net_kprobe_sendmsg,
    net_kretprobe_sendmsg,
    SYS_SENDMSG,
    BUF_MSGHDR,
    Egress
);
data_call!(
    net_fexit_sendfile,
    net_kprobe_sendfile,
    net_kretprobe_sendfile,
    SYS_SENDFILE,
    BUF_NONE,
    Egress
);

#[fexit]
pub fn net_fexit_connect(ctx: FExitContext) -> u32 {
    let _ = trampoline_words::<2>(&ctx)
        .and_then(|[regs, ret]| try_returned_connect(user_args(regs)?.0, ret as i64));
    0
}

#[kprobe]
pub fn net_kprobe_connect(ctx: ProbeContext) -> u32 {
    let _ = kprobe_regs(&ctx)
        .and_then(user_args)
        .and_then(|(fd, _)| try_enter(SYS_CONNECT, BUF_NONE, fd, 0));
    0
}

#[kretprobe]
pub fn net_kretprobe_connect(ctx: RetProbeContext) -> u32 {
    let _ = try_exit_connect(ctx.ret::<i64>());
    0
}

/// accept and accept4: the new descriptor is the return value.
macro_rules! accept {
    ($fexit:ident, $kretprobe:ident, $syscall:expr) => {
        #[fexit]
        pub fn $fexit(ctx: FExitContext) -> u32 {
            let _ = trampoline_words::<2>(&ctx)
                .and_then(|[_, ret]| try_exit_accept($syscall, ret as i64));
            0
        }

        #[kretprobe]
        pub fn $kretprobe(ctx: RetProbeContext) -> u32 {
            let _ = try_exit_accept($syscall, ctx.ret::<i64>());
            0
        }
    };
}

accept!(net_fexit_accept, net_kretprobe_accept, SYS_ACCEPT);
accept!(net_fexit_accept4, net_kretprobe_accept4, SYS_ACCEPT4);

#[fentry]
pub fn net_fentry_close(ctx: FEntryContext) -> u32 {
    let _ = trampoline_words::<1>(&ctx).and_then(|[regs]| try_enter_close(user_args(regs)?.0));
    0
}

#[kprobe]
pub fn net_kprobe_close(ctx: ProbeContext) -> u32 {
    let _ = kprobe_regs(&ctx)
        .and_then(user_args)
        .and_then(|(fd, _)| try_enter_close(fd));
    0
}
