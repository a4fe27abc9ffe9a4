//! Kernel syscall numbers of the calls the socket sensor follows, for the
//! hooks that see every syscall and dispatch on its number.

#[cfg(bpf_target_arch = "x86_64")]
mod table {
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
mod table {
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

pub use table::*;
