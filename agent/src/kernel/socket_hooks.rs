//! Where the socket sensor attaches, cheapest first: fentry/fexit on the
//! syscall functions where BTF trampolines work, else syscall tracepoints.
//! The same entry and exit code runs on every hook (agent-ebpf's
//! `net::syscalls`), so events, parser and tests are the same on each.

use aya::Btf;

use super::{
    features::Features,
    hooks::{HookTier, choose},
    object::{ObjectError, SensorObject},
    tracefs,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketHook {
    /// fentry/fexit on the syscall functions (`__x64_sys_read`, …): run
    /// only on the followed syscalls, and leave every other syscall of
    /// every task on its fast path.
    Fentry,
    /// kprobes/kretprobes on the same functions. Not chosen on its own:
    /// a kretprobe has a fixed pool of return instances (10, or twice the
    /// CPUs), so with more threads than that blocked in recv or accept
    /// their returns are missed, and with them the bytes read; syscall
    /// tracepoints lose nothing that way. Kept for measuring
    /// (`SELFOPS_SOCKET_HOOK=kprobe`).
    Kprobe,
    /// One tracepoint per followed syscall (`syscalls:sys_enter_read`, …).
    PerSyscall,
    /// raw_syscalls:sys_enter and sys_exit, run on every syscall of every
    /// process and dispatching on its number.
    RawSyscalls,
    /// A raw tracepoint on sys_exit, reading the syscall's number and
    /// arguments from the user's saved registers, so a read costs one run
    /// and no map update; close, and the write family's start, on their
    /// own entry tracepoints.
    RawExit,
}

/// Overrides the choice: `fentry`, `kprobe`, `syscalls` or `raw_syscalls`.
pub const SOCKET_HOOK_ENV: &str = "SELFOPS_SOCKET_HOOK";

/// Tracepoints, when the sensor runs on them, default to the raw sys_exit
/// hook where the user registers' layout is known, else to raw_syscalls.
/// Both keep the agent's exit deadline: detaching a perf tracepoint waits
/// for RCU grace periods under the kernel's event_mutex, so the detaches
/// of 23 per-syscall tracepoints run one after another whatever threads
/// drop them — here they made SIGTERM to exit 1.87–2.06 s against
/// 1.04–1.13 s with raw_syscalls, at the edge of the 2 s within which a
/// failed agent must be gone. The raw sys_exit hook holds six perf
/// tracepoints (close and the write family's entries) and one raw one.
fn tracepoint_default() -> SocketHook {
    if regs_layout_known() && raw_exit_tracepoints_present() {
        SocketHook::RawExit
    } else {
        SocketHook::RawSyscalls
    }
}

/// Whether the eBPF programs know where this architecture keeps a
/// syscall's number and arguments in `pt_regs`.
fn regs_layout_known() -> bool {
    matches!(std::env::consts::ARCH, "x86_64" | "aarch64")
}

impl SocketHook {
    pub const fn tier(self) -> HookTier {
        match self {
            Self::Fentry => HookTier::Fentry,
            Self::Kprobe => HookTier::Kprobe,
            Self::PerSyscall | Self::RawSyscalls | Self::RawExit => HookTier::Tracepoint,
        }
    }

    /// What [`SOCKET_HOOK_ENV`] asks for, if anything valid.
    fn requested() -> Option<Self> {
        let value = std::env::var(SOCKET_HOOK_ENV).ok()?;
        match value.as_str() {
            "fentry" => Some(Self::Fentry),
            "kprobe" => Some(Self::Kprobe),
            "syscalls" => Some(Self::PerSyscall),
            "raw_syscalls" => Some(Self::RawSyscalls),
            "raw_exit" => Some(Self::RawExit),
            other => {
                tracing::warn!(
                    value = other,
                    "{SOCKET_HOOK_ENV} is none of fentry, kprobe, syscalls, raw_syscalls, raw_exit; ignored"
                );
                None
            }
        }
    }

    /// The hook to try first on this kernel.
    fn preferred(features: &Features) -> Self {
        if let Some(hook) = Self::requested() {
            if features.has(hook.tier().feature()) {
                return hook;
            }
            tracing::warn!(?hook, "{SOCKET_HOOK_ENV}: this kernel lacks that hook");
        }
        match choose(
            "socket",
            features,
            &[HookTier::Fentry, HookTier::Tracepoint],
        ) {
            Some(HookTier::Fentry) => Self::Fentry,
            _ => tracepoint_default(),
        }
    }

    /// The tracefs category and (program, tracepoint) pairs of a tracepoint
    /// hook; none for the others.
    pub fn tracepoints(self) -> (&'static str, &'static [(&'static str, &'static str)]) {
        match self {
            Self::PerSyscall => (PER_SYSCALL_CATEGORY, &PER_SYSCALL_TRACEPOINTS),
            Self::RawSyscalls => ("raw_syscalls", &RAW_SYSCALL_TRACEPOINTS),
            Self::RawExit => (PER_SYSCALL_CATEGORY, &RAW_EXIT_TRACEPOINTS),
            Self::Fentry | Self::Kprobe => ("", &[]),
        }
    }

    /// The raw tracepoints of a hook; none for the others.
    pub fn raw_tracepoints(self) -> &'static [RawTracepoint] {
        match self {
            Self::RawExit => &[RawTracepoint {
                typed: "net_btf_sys_exit",
                untyped: "net_raw_sys_exit",
                tracepoint: "sys_exit",
            }],
            _ => &[],
        }
    }
}

/// A raw tracepoint and its two programs: one typed by the kernel's BTF
/// (`tp_btf`), which reads the tracepoint's arguments with plain loads
/// and is tried first, and one for kernels without BTF, which reads them
/// through a helper call each.
pub struct RawTracepoint {
    pub typed: &'static str,
    pub untyped: &'static str,
    pub tracepoint: &'static str,
}

/// Close at its entry, while the descriptor still names the socket.
const CLOSE_TRACEPOINT: (&str, &str) = ("net_enter_close", "sys_enter_close");

/// The raw sys_exit hook's entry tracepoints: close, and the write family
/// stamped for its start (one program on each).
const RAW_EXIT_TRACEPOINTS: [(&str, &str); 6] = [
    CLOSE_TRACEPOINT,
    ("net_stamp_write", "sys_enter_write"),
    ("net_stamp_write", "sys_enter_writev"),
    ("net_stamp_write", "sys_enter_sendto"),
    ("net_stamp_write", "sys_enter_sendmsg"),
    ("net_stamp_write", "sys_enter_sendfile64"),
];

fn raw_exit_tracepoints_present() -> bool {
    RAW_EXIT_TRACEPOINTS
        .iter()
        .all(|(_, tracepoint)| tracefs::tracepoint_exists(PER_SYSCALL_CATEGORY, tracepoint))
}

fn per_syscall_tracepoints_present() -> bool {
    PER_SYSCALL_TRACEPOINTS
        .iter()
        .all(|(_, tracepoint)| tracefs::tracepoint_exists(PER_SYSCALL_CATEGORY, tracepoint))
}

const RAW_SYSCALL_TRACEPOINTS: [(&str, &str); 2] =
    [("net_sys_enter", "sys_enter"), ("net_sys_exit", "sys_exit")];

pub const PER_SYSCALL_CATEGORY: &str = "syscalls";

/// (program, tracepoint in `syscalls`). Close needs only its entry, accept
/// only its exit. sendfile's tracepoint is named for the 64-bit call on
/// every 64-bit architecture.
pub const PER_SYSCALL_TRACEPOINTS: [(&str, &str); 23] = [
    ("net_enter_read", "sys_enter_read"),
    ("net_enter_readv", "sys_enter_readv"),
    ("net_enter_recvfrom", "sys_enter_recvfrom"),
    ("net_enter_recvmsg", "sys_enter_recvmsg"),
    ("net_enter_write", "sys_enter_write"),
    ("net_enter_writev", "sys_enter_writev"),
    ("net_enter_sendto", "sys_enter_sendto"),
    ("net_enter_sendmsg", "sys_enter_sendmsg"),
    ("net_enter_sendfile", "sys_enter_sendfile64"),
    ("net_enter_connect", "sys_enter_connect"),
    CLOSE_TRACEPOINT,
    ("net_exit_read", "sys_exit_read"),
    ("net_exit_readv", "sys_exit_readv"),
    ("net_exit_recvfrom", "sys_exit_recvfrom"),
    ("net_exit_recvmsg", "sys_exit_recvmsg"),
    ("net_exit_write", "sys_exit_write"),
    ("net_exit_writev", "sys_exit_writev"),
    ("net_exit_sendto", "sys_exit_sendto"),
    ("net_exit_sendmsg", "sys_exit_sendmsg"),
    ("net_exit_sendfile", "sys_exit_sendfile64"),
    ("net_exit_connect", "sys_exit_connect"),
    ("net_exit_accept", "sys_exit_accept"),
    ("net_exit_accept4", "sys_exit_accept4"),
];

/// Where a trampoline program runs.
#[derive(Clone, Copy)]
enum Trampoline {
    Entry,
    Exit,
}

/// A followed syscall: its function's name after the architecture's
/// wrapper prefix, its programs on the fentry tier, and its programs on
/// the kprobe tier (kprobe or kretprobe, as each program's section says).
struct SyscallFunction {
    name: &'static str,
    trampolines: &'static [(&'static str, Trampoline)],
    kprobes: &'static [&'static str],
}

/// A read-family call or connect: fexit alone, or a kprobe and a
/// kretprobe.
macro_rules! call {
    ($function:literal, $program:literal) => {
        SyscallFunction {
            name: $function,
            trampolines: &[(concat!("net_fexit_", $program), Trampoline::Exit)],
            kprobes: &[
                concat!("net_kprobe_", $program),
                concat!("net_kretprobe_", $program),
            ],
        }
    };
}

/// A write-family call: as [`call!`], with its entry stamped on the fentry
/// tier, since bytes leave when a write starts.
macro_rules! write_call {
    ($function:literal, $program:literal) => {
        SyscallFunction {
            name: $function,
            trampolines: &[
                (concat!("net_fentry_", $program), Trampoline::Entry),
                (concat!("net_fexit_", $program), Trampoline::Exit),
            ],
            kprobes: &[
                concat!("net_kprobe_", $program),
                concat!("net_kretprobe_", $program),
            ],
        }
    };
}

const SYSCALL_FUNCTIONS: [SyscallFunction; 13] = [
    call!("read", "read"),
    call!("readv", "readv"),
    call!("recvfrom", "recvfrom"),
    call!("recvmsg", "recvmsg"),
    write_call!("write", "write"),
    write_call!("writev", "writev"),
    write_call!("sendto", "sendto"),
    write_call!("sendmsg", "sendmsg"),
    // Named for the 64-bit call on 64-bit architectures.
    write_call!("sendfile64", "sendfile"),
    call!("connect", "connect"),
    // Close at its entry, while the descriptor still names the socket;
    // accept at its return, which is the new descriptor.
    SyscallFunction {
        name: "close",
        trampolines: &[("net_fentry_close", Trampoline::Entry)],
        kprobes: &["net_kprobe_close"],
    },
    SyscallFunction {
        name: "accept",
        trampolines: &[("net_fexit_accept", Trampoline::Exit)],
        kprobes: &["net_kretprobe_accept"],
    },
    SyscallFunction {
        name: "accept4",
        trampolines: &[("net_fexit_accept4", Trampoline::Exit)],
        kprobes: &["net_kretprobe_accept4"],
    },
];

/// The prefix of this architecture's syscall wrappers, which take the
/// user's `pt_regs` (the eBPF programs know its layout for these only).
fn wrapper_prefix() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("__x64_sys_"),
        "aarch64" => Some("__arm64_sys_"),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketHookError {
    #[error("this architecture's syscall wrappers are not known to the sensor")]
    Architecture,
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] aya::BtfError),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
}

/// Attaches the socket sensor on the cheapest hook that works here, and
/// says which and how many programs. A syscall-function hook that fails
/// (a function missing from this kernel's BTF, a verifier refusal) is
/// undone and the tracepoints are used instead, with one warning.
pub fn attach(
    object: &mut SensorObject,
    features: &Features,
) -> Result<(SocketHook, usize), SocketHookError> {
    let preferred = SocketHook::preferred(features);
    if matches!(preferred, SocketHook::Fentry | SocketHook::Kprobe) {
        let mark = object.link_count();
        match attach_functions(object, preferred) {
            Ok(count) => return Ok((preferred, count)),
            Err(e) => {
                object.detach_since(mark);
                tracing::warn!(hook = ?preferred, error = %e, "socket sensor falls back to syscall tracepoints");
            }
        }
    }
    let hook = match preferred {
        SocketHook::PerSyscall if per_syscall_tracepoints_present() => SocketHook::PerSyscall,
        SocketHook::PerSyscall => {
            tracing::warn!("per-syscall tracepoints missing; the socket sensor uses raw_syscalls");
            SocketHook::RawSyscalls
        }
        SocketHook::RawSyscalls => SocketHook::RawSyscalls,
        SocketHook::RawExit | SocketHook::Fentry | SocketHook::Kprobe => tracepoint_default(),
    };
    if hook == SocketHook::RawExit {
        let mark = object.link_count();
        match attach_tracepoints(object, hook) {
            Ok(count) => return Ok((hook, count)),
            Err(e) => {
                object.detach_since(mark);
                tracing::warn!(error = %e, "raw sys_exit hook refused; the socket sensor uses raw_syscalls");
            }
        }
        let count = attach_tracepoints(object, SocketHook::RawSyscalls)?;
        return Ok((SocketHook::RawSyscalls, count));
    }
    let count = attach_tracepoints(object, hook)?;
    Ok((hook, count))
}

/// The tracepoints of `hook`, once their records' layout is checked.
fn attach_tracepoints(
    object: &mut SensorObject,
    hook: SocketHook,
) -> Result<usize, SocketHookError> {
    tracefs::check_syscall_layout(hook)?;
    Ok(object.attach_syscall_tracepoints(hook)?)
}

fn attach_functions(object: &mut SensorObject, hook: SocketHook) -> Result<usize, SocketHookError> {
    let prefix = wrapper_prefix().ok_or(SocketHookError::Architecture)?;
    // Parsed once for every fentry/fexit load, and dropped after.
    let btf = match hook {
        SocketHook::Fentry => Some(Btf::from_sys_fs()?),
        _ => None,
    };
    let mut count = 0;
    for function in &SYSCALL_FUNCTIONS {
        let target = format!("{prefix}{}", function.name);
        match &btf {
            Some(btf) => {
                for &(program, trampoline) in function.trampolines {
                    match trampoline {
                        Trampoline::Entry => object.attach_fentry(program, &target, btf)?,
                        Trampoline::Exit => object.attach_fexit(program, &target, btf)?,
                    }
                    count += 1;
                }
            }
            None => {
                for program in function.kprobes {
                    object.attach_kprobe(program, &target)?;
                    count += 1;
                }
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw sys_exit hook's entry tracepoints are among the per-syscall
    /// ones, whose names and record layouts every matrix kernel checks.
    #[test]
    fn raw_exit_entries_are_per_syscall_tracepoints() {
        for (_, tracepoint) in RAW_EXIT_TRACEPOINTS {
            assert!(
                PER_SYSCALL_TRACEPOINTS
                    .iter()
                    .any(|(_, t)| *t == tracepoint),
                "{tracepoint}"
            );
        }
    }

    /// Every write-family function whose exit the fentry tier follows has
    /// its entry stamped too, and nothing else is stamped.
    #[test]
    fn write_family_entries_are_stamped() {
        let writes = ["write", "writev", "sendto", "sendmsg", "sendfile64"];
        for function in &SYSCALL_FUNCTIONS {
            let stamped = function.trampolines.iter().any(|(program, t)| {
                matches!(t, Trampoline::Entry)
                    && program.starts_with("net_fentry_")
                    && *program != "net_fentry_close"
            });
            assert_eq!(
                stamped,
                writes.contains(&function.name),
                "{}",
                function.name
            );
        }
    }
}
