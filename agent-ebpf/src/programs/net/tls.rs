//! TLS plaintext: uprobes on OpenSSL 3's SSL_read/SSL_write (and the _ex
//! variants). The socket of an SSL object is learned from the read or
//! write syscall OpenSSL makes on the same thread during the call, and
//! remembered per SSL object for calls served from OpenSSL's buffers.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use selfops_ebpf::{
    KernelDrop, NetEventKind, SYSCALL_SSL_HANDSHAKE, SYSCALL_SSL_READ, SYSCALL_SSL_WRITE,
};

use crate::programs::counters::count_drop;

use super::emit::{Call, emit_data, settings};

/// An SSL_read/SSL_write in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    pub buf: u64,
    pub ssl: u64,
    pub start_ns: u64,
    /// Socket the call touched (0 until known).
    pub sock: u64,
    /// For the _ex variants: where OpenSSL stores the byte count.
    pub count_ptr: u64,
    pub fd: u32,
    pub syscall: u8,
    pub _pad: [u8; 3],
}

/// A process's SSL object.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    pub tgid: u64,
    pub ssl: u64,
}

/// The socket an SSL object was last seen on.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslSocket {
    pub sock: u64,
    pub fd: u32,
    pub _pad: u32,
}

/// LRU: a thread killed inside SSL_read never runs its uretprobe, and its
/// entry must not live on.
#[map]
static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16_384, 0);

/// A thread's SSL call ends with the thread, whether or not its uretprobe
/// ran.
#[inline(always)]
pub fn forget_ssl_call(pid_tgid: u64) {
    let _ = SSL_CALLS.remove(pid_tgid);
}

/// An SSL call older than this is a leftover of a thread that died in it.
const STALE_NS: u64 = 10_000_000_000;

#[map]
static SSL_SOCKETS: LruHashMap<SslKey, SslSocket> = LruHashMap::with_max_entries(65_536, 0);

/// Whether this thread is inside an SSL call, so that a failed syscall
/// might still teach the SSL object its socket.
#[inline(always)]
pub fn in_ssl_call(pid_tgid: u64) -> bool {
    SSL_CALLS.get_ptr(pid_tgid).is_some()
}

/// Called by the syscall hooks for a TCP socket: if this thread is inside
/// SSL_read/SSL_write, the socket belongs to that SSL object and the raw
/// (encrypted) bytes are not reported. Returns true when so.
#[inline(always)]
pub fn claim_for_ssl(pid_tgid: u64, sock: u64, fd: u32, now: u64) -> bool {
    let Some(call) = SSL_CALLS.get_ptr_mut(pid_tgid) else {
        return false;
    };
    // SAFETY: the entry belongs to this thread, which is running us.
    unsafe {
        // A leftover of a thread that died in an SSL call is not this
        // syscall's. Otherwise the syscall is the truth about the socket:
        // an SSL object's address may be reused for a new connection.
        if now.saturating_sub((*call).start_ns) > STALE_NS {
            return false;
        }
        (*call).sock = sock;
        (*call).fd = fd;
    }
    true
}

fn try_enter(ctx: &ProbeContext, syscall: u8, ex: bool) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == settings().agent_tgid {
        return Ok(());
    }
    let ssl: u64 = ctx.arg(0).ok_or(0i64)?;
    let buf: u64 = ctx.arg(1).ok_or(0i64)?;
    let count_ptr: u64 = if ex { ctx.arg(3).ok_or(0i64)? } else { 0 };
    let known = SSL_SOCKETS.get_ptr(SslKey {
        tgid: pid_tgid >> 32,
        ssl,
    });
    // SAFETY: map value pointer, read at once.
    let (sock, fd) = known.map_or((0, 0), |s| unsafe { ((*s).sock, (*s).fd) });
    let call = SslCall {
        buf,
        ssl,
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_boot_ns() },
        sock,
        count_ptr,
        fd,
        syscall,
        _pad: [0; 3],
    };
    SSL_CALLS.insert(pid_tgid, call, 0).map_err(|e| {
        count_drop(KernelDrop::SslCallInsert);
        i64::from(e)
    })
}

fn try_exit(ctx: &RetProbeContext, ex: bool) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == settings().agent_tgid {
        return Ok(());
    }
    // SAFETY: copied out before removal.
    let Some(call) = (unsafe { SSL_CALLS.get(pid_tgid) }).copied() else {
        // Every return follows its entry on the same thread: the record
        // was evicted or never stored.
        count_drop(KernelDrop::SslCallMissing);
        return Ok(());
    };
    let _ = SSL_CALLS.remove(pid_tgid);
    // A handshake may read the first request into OpenSSL's buffer, so the
    // next SSL_read makes no syscall: learn the socket here.
    if call.syscall == SYSCALL_SSL_HANDSHAKE {
        if call.sock != 0 {
            remember_socket(pid_tgid, &call);
        }
        return Ok(());
    }
    let ret: i64 = ctx.ret::<i32>().into();
    let bytes = if ex {
        if ret != 1 || call.count_ptr == 0 {
            return Ok(());
        }
        // SAFETY: user memory through the helper.
        unsafe { bpf_probe_read_user(call.count_ptr as *const u64) }.map_err(i64::from)?
    } else if ret > 0 {
        ret as u64
    } else {
        return Ok(());
    };
    if bytes == 0 {
        return Ok(());
    }
    if call.sock == 0 {
        count_drop(KernelDrop::SslSocketUnknown);
        return Ok(());
    }
    remember_socket(pid_tgid, &call);
    let kind = if call.syscall == SYSCALL_SSL_READ {
        NetEventKind::Ingress
    } else {
        NetEventKind::Egress
    };
    let event = Call {
        start_ns: call.start_ns,
        sock: call.sock,
        buf: call.buf,
        fd: call.fd,
        syscall: call.syscall,
        buf_kind: 0,
        _pad: 0,
    };
    // SAFETY: helper without arguments.
    let end = unsafe { bpf_ktime_get_boot_ns() };
    emit_data(kind, &event, pid_tgid, end, bytes, call.buf, bytes);
    Ok(())
}

#[inline(always)]
fn remember_socket(pid_tgid: u64, call: &SslCall) {
    let stored = SSL_SOCKETS.insert(
        SslKey {
            tgid: pid_tgid >> 32,
            ssl: call.ssl,
        },
        SslSocket {
            sock: call.sock,
            fd: call.fd,
            _pad: 0,
        },
        0,
    );
    if stored.is_err() {
        count_drop(KernelDrop::SslSocketInsert);
    }
}

/// SSL_do_handshake (which SSL_connect and SSL_accept run).
#[uprobe]
pub fn ssl_handshake(ctx: ProbeContext) -> u32 {
    let _ = try_enter(&ctx, SYSCALL_SSL_HANDSHAKE, false);
    0
}

#[uretprobe]
pub fn ssl_handshake_ret(ctx: RetProbeContext) -> u32 {
    let _ = try_exit(&ctx, false);
    0
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    let _ = try_enter(&ctx, SYSCALL_SSL_READ, false);
    0
}

#[uretprobe]
pub fn ssl_read_ret(ctx: RetProbeContext) -> u32 {
    let _ = try_exit(&ctx, false);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    let _ = try_enter(&ctx, SYSCALL_SSL_READ, true);
    0
}

#[uretprobe]
pub fn ssl_read_ex_ret(ctx: RetProbeContext) -> u32 {
    let _ = try_exit(&ctx, true);
    0
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    let _ = try_enter(&ctx, SYSCALL_SSL_WRITE, false);
    0
}

#[uretprobe]
pub fn ssl_write_ret(ctx: RetProbeContext) -> u32 {
    let _ = try_exit(&ctx, false);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    let _ = try_enter(&ctx, SYSCALL_SSL_WRITE, true);
    0
}

#[uretprobe]
pub fn ssl_write_ex_ret(ctx: RetProbeContext) -> u32 {
    let _ = try_exit(&ctx, true);
    0
}
