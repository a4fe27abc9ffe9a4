//! The socket sensor (tracepoint tier): syscall tracepoints following
//! accept, connect, the read and write families, sendfile and close —
//! raw_syscalls, or one tracepoint per syscall (`per_syscall`) — and uprobes on OpenSSL for TLS plaintext. Only TCP sockets are
//! reported; the connection's 4-tuple is read from its `struct sock` with
//! offsets the agent resolved from BTF.

mod classify;
mod emit;
mod per_syscall;
mod process_filter;
mod raw_syscalls;
mod socket;
mod syscalls;

pub use process_filter::forget as forget_excluded_process;
pub use syscalls::forget_thread;
mod tls;
