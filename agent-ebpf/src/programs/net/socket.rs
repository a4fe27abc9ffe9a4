//! From a file descriptor of the current task to its TCP `struct sock`,
//! with a cache of the descriptors found to be TCP sockets.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    macros::map,
    maps::LruHashMap,
};
use selfops_ebpf::{SockTuple, SocketOffsets};

/// A descriptor of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

/// A descriptor found to be a TCP socket: the open file it held then, and
/// that file's `struct sock`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpFd {
    pub file: u64,
    pub sk: u64,
}

/// Descriptors known to be TCP sockets. A hit still reads the descriptor's
/// `struct file` and its socket's `sk` and must find both unchanged, so an
/// entry can never outlive what it describes: dup2/dup3 onto the fd,
/// close_range, close-on-exec, a reused pid all install another file or
/// another sock. What a hit saves is the inode's mode and the sock's
/// family, protocol and type. Only TCP sockets are cached: for a file or a
/// pipe the walk ends at the inode's mode, no dearer than checking an
/// entry, and an unchecked entry would go stale at the first exec that
/// closes an fd and opens a socket at the same number. An LRU, since an
/// evicted entry only costs a walk; close removes its entry at once.
#[map]
static TCP_FDS: LruHashMap<FdKey, TcpFd> = LruHashMap::with_max_entries(65_536, 0);

#[inline(always)]
fn fd_key(fd: u64) -> FdKey {
    FdKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as u32,
    }
}

/// Whether `fd` of the current process has an entry: it was found to be a
/// TCP socket and has not been closed since.
#[inline(always)]
pub fn known_tcp_fd(fd: u64) -> bool {
    TCP_FDS.get_ptr(fd_key(fd)).is_some()
}

/// The process closes `fd`: its entry goes.
#[inline(always)]
pub fn forget_fd(fd: u64) {
    let _ = TCP_FDS.remove(fd_key(fd));
}

/// Offsets of kernel structs, written by the agent at load.
#[unsafe(no_mangle)]
static SOCKET_OFFSETS: SocketOffsets = SocketOffsets {
    task_files: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_inode: 0,
    file_private_data: 0,
    inode_mode: 0,
    socket_sk: 0,
    sock_family: 0,
    sock_num: 0,
    sock_dport: 0,
    sock_daddr: 0,
    sock_rcv_saddr: 0,
    sock_v6_daddr: 0,
    sock_v6_rcv_saddr: 0,
    sock_protocol: 0,
    sock_type: 0,
    sock_net: 0,
    net_ns_inum: 0,
    _pad: 0,
};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const SOCK_STREAM: u16 = 1;

#[inline(always)]
fn offsets() -> SocketOffsets {
    // SAFETY: read-only global filled by the loader; volatile so the
    // compiler does not fold in the zero default.
    unsafe { core::ptr::read_volatile(&SOCKET_OFFSETS) }
}

#[inline(always)]
unsafe fn read<T>(base: u64, offset: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel tolerates any address; a bad one is an
    // error, not a fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.map_err(i64::from)
}

/// The `struct sock` behind `fd` in the current task, if it is a TCP
/// socket over IPv4 or IPv6.
#[inline(always)]
pub fn tcp_sock_of_fd(fd: u64) -> Result<u64, i64> {
    let o = offsets();
    // SAFETY: every pointer is read through bpf_probe_read_kernel.
    unsafe {
        let task = bpf_get_current_task();
        let files: u64 = read(task, o.task_files)?;
        let fdt: u64 = read(files, o.files_fdt)?;
        // Every kernel puts the descriptor array right after the count:
        // one copy where the offsets say so (known to the verifier, which
        // walks only the branch taken).
        let (max_fds, fd_array) = if o.fdtable_fd == o.fdtable_max_fds + 8 {
            let head: FdtableHead = read(fdt, o.fdtable_max_fds)?;
            (head.max_fds, head.fd)
        } else {
            (read(fdt, o.fdtable_max_fds)?, read(fdt, o.fdtable_fd)?)
        };
        if fd >= u64::from(max_fds) {
            return Err(0);
        }
        let file: u64 = read(fd_array + fd * 8, 0)?;
        if file == 0 {
            return Err(0);
        }
        let key = fd_key(fd);
        if let Some(known) = TCP_FDS.get(key).copied()
            && known.file == file
        {
            let socket: u64 = read(file, o.file_private_data)?;
            let sk: u64 = read(socket, o.socket_sk)?;
            if sk == known.sk {
                return Ok(sk);
            }
        }
        let inode: u64 = read(file, o.file_inode)?;
        let mode: u16 = read(inode, o.inode_mode)?;
        if mode & S_IFMT != S_IFSOCK {
            return Err(0);
        }
        let socket: u64 = read(file, o.file_private_data)?;
        let sk: u64 = read(socket, o.socket_sk)?;
        if sk == 0 {
            return Err(0);
        }
        let family: u16 = read(sk, o.sock_family)?;
        let protocol: u16 = read(sk, o.sock_protocol)?;
        let sock_type: u16 = read(sk, o.sock_type)?;
        if (family != AF_INET && family != AF_INET6)
            || protocol != IPPROTO_TCP
            || sock_type != SOCK_STREAM
        {
            return Err(0);
        }
        // A failed insert only means the next call walks again.
        let _ = TCP_FDS.insert(key, TcpFd { file, sk }, 0);
        Ok(sk)
    }
}

/// The start of `struct fdtable`: the descriptor count, then the array.
#[repr(C)]
#[derive(Clone, Copy)]
struct FdtableHead {
    max_fds: u32,
    _pad: u32,
    fd: u64,
}

/// The start of `struct sock_common` as every kernel lays it out: the
/// address pair, the hash, the port pair and the family.
#[repr(C)]
#[derive(Clone, Copy)]
struct CommonHead {
    daddr: [u8; 4],
    rcv_saddr: [u8; 4],
    _hash: u32,
    dport: u16,
    num: u16,
    family: u16,
    _state: u16,
}

/// Whether the kernel's offsets (from its BTF) have the fields of
/// [`CommonHead`] where it has them, and the IPv6 pair side by side.
#[inline(always)]
fn common_head_fits(o: &SocketOffsets) -> bool {
    o.sock_rcv_saddr == o.sock_daddr + 4
        && o.sock_dport == o.sock_daddr + 12
        && o.sock_num == o.sock_daddr + 14
        && o.sock_family == o.sock_daddr + 16
        && o.sock_v6_rcv_saddr == o.sock_v6_daddr + 16
}

/// The connection's addresses and ports as this endpoint sees them.
/// Every data event pays for these reads, so where the layout allows the
/// head of `sock_common` is read in one copy (and the IPv6 pair in
/// another) instead of one helper call per field.
#[inline(always)]
pub fn tuple_of(sk: u64, tuple: *mut SockTuple) -> Result<(), i64> {
    let o = offsets();
    let fits = common_head_fits(&o);
    // SAFETY: reads go through bpf_probe_read_kernel; `tuple` points at
    // reserved ring-buffer memory of the right size.
    unsafe {
        // The IPv4 pair comes with the head when it fits.
        let (family, local_port, remote_port, v4_pair) = if fits {
            let head: CommonHead = read(sk, o.sock_daddr)?;
            (
                head.family,
                head.num,
                head.dport,
                Some((head.rcv_saddr, head.daddr)),
            )
        } else {
            (
                read(sk, o.sock_family)?,
                read(sk, o.sock_num)?,
                read(sk, o.sock_dport)?,
                None,
            )
        };
        (*tuple).family = family;
        (*tuple).local_port = local_port;
        (*tuple).remote_port = u16::from_be(remote_port);
        (*tuple)._pad = 0;
        (*tuple)._pad2 = 0;
        // Two reads: the namespace pointer, then its inode number.
        let net: u64 = read(sk, o.sock_net)?;
        (*tuple).netns = read(net, o.net_ns_inum)?;
        if family == AF_INET6 {
            if fits {
                let [remote, local]: [[u8; 16]; 2] = read(sk, o.sock_v6_daddr)?;
                (*tuple).remote_addr = remote;
                (*tuple).local_addr = local;
            } else {
                (*tuple).local_addr = read(sk, o.sock_v6_rcv_saddr)?;
                (*tuple).remote_addr = read(sk, o.sock_v6_daddr)?;
            }
        } else {
            let (local, remote) = match v4_pair {
                Some(pair) => pair,
                None => (read(sk, o.sock_rcv_saddr)?, read(sk, o.sock_daddr)?),
            };
            (*tuple).local_addr = v4(local);
            (*tuple).remote_addr = v4(remote);
        }
    }
    Ok(())
}

/// An IPv4 address in the first four bytes of a 16-byte field.
#[inline(always)]
fn v4(addr: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[0] = addr[0];
    out[1] = addr[1];
    out[2] = addr[2];
    out[3] = addr[3];
    out
}
