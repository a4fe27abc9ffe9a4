//! The socket sensor: accept, connect, the read and write families,
//! sendfile and close, followed on the syscall functions (fentry/fexit or
//! kprobes, `syscall_functions`) or on syscall tracepoints (raw_syscalls,
//! or one tracepoint per syscall, `per_syscall`; or a raw tracepoint at
//! syscall exit alone, `syscall_exit`), and uprobes on OpenSSL
//! for TLS plaintext. Only TCP sockets are reported; the connection's
//! 4-tuple is read from its `struct sock` with offsets the agent resolved
//! from BTF.

mod classify;
mod emit;
mod per_syscall;
mod process_filter;
mod raw_syscalls;
mod socket;
// The user's `pt_regs` layout is known for these architectures.
#[cfg(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64"))]
mod syscall_exit;
#[cfg(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64"))]
mod syscall_functions;
mod syscall_numbers;
mod syscalls;
#[cfg(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64"))]
mod user_regs;

pub use process_filter::forget as forget_excluded_process;
pub use syscalls::forget_thread;
mod tls;
