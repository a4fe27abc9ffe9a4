//! Sensor identities shared by kernel and userspace: the index of each sensor
//! in the per-CPU `LOST_EVENTS` counter array.

/// A kernel sensor that emits events into a ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensor {
    ProcessExec = 0,
    ProcessFork = 1,
    ProcessExit = 2,
    Socket = 3,
}

impl Sensor {
    /// Every sensor, in index order.
    pub const ALL: [Sensor; SENSOR_COUNT as usize] = [
        Sensor::ProcessExec,
        Sensor::ProcessFork,
        Sensor::ProcessExit,
        Sensor::Socket,
    ];

    /// The sensor's label in metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Sensor::ProcessExec => "process_exec",
            Sensor::ProcessFork => "process_fork",
            Sensor::ProcessExit => "process_exit",
            Sensor::Socket => "socket",
        }
    }
}

/// Number of entries in the `LOST_EVENTS` per-CPU array.
pub const SENSOR_COUNT: u32 = 4;

/// Events a sensor had in hand and could not report, for a reason other
/// than a full ring buffer: the index of each reason in the per-CPU
/// `KERNEL_DROPS` counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelDrop {
    /// A socket event's header could not be filled (the socket's 4-tuple
    /// was unreadable): the reserved record was discarded.
    SocketHeader = 0,
    /// A socket call could not be remembered for its exit (map update
    /// failed).
    SocketCallInsert = 1,
    /// An SSL call could not be remembered for its return.
    SslCallInsert = 2,
    /// An SSL call returned without its entry record: evicted from the
    /// full LRU map, or never stored.
    SslCallMissing = 3,
    /// The socket of an SSL object could not be remembered.
    SslSocketInsert = 4,
    /// TLS plaintext whose socket is unknown (the call made no syscall and
    /// the SSL object's socket was never learned or was evicted).
    SslSocketUnknown = 5,
}

impl KernelDrop {
    /// Every reason, in index order.
    pub const ALL: [KernelDrop; KERNEL_DROP_COUNT as usize] = [
        KernelDrop::SocketHeader,
        KernelDrop::SocketCallInsert,
        KernelDrop::SslCallInsert,
        KernelDrop::SslCallMissing,
        KernelDrop::SslSocketInsert,
        KernelDrop::SslSocketUnknown,
    ];

    /// The reason's label in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            KernelDrop::SocketHeader => "socket_header_unreadable",
            KernelDrop::SocketCallInsert => "socket_call_not_stored",
            KernelDrop::SslCallInsert => "ssl_call_not_stored",
            KernelDrop::SslCallMissing => "ssl_call_evicted",
            KernelDrop::SslSocketInsert => "ssl_socket_not_stored",
            KernelDrop::SslSocketUnknown => "ssl_socket_unknown",
        }
    }
}

/// Number of entries in the `KERNEL_DROPS` per-CPU array.
pub const KERNEL_DROP_COUNT: u32 = 6;

/// Socket-sensor work the kernel skipped on purpose, so the agent never
/// saw it: the index of each reason in the per-CPU `KERNEL_FILTERED`
/// counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFilter {
    /// A data event on a connection whose first bytes were not HTTP/1.
    NotHttp = 0,
    /// A followed syscall (on any descriptor) of a process the agent put
    /// in the kernel's exclusion map (`trace.include` / `trace.exclude`).
    ExcludedProcess = 1,
}

impl KernelFilter {
    /// Every reason, in index order.
    pub const ALL: [KernelFilter; KERNEL_FILTER_COUNT as usize] =
        [KernelFilter::NotHttp, KernelFilter::ExcludedProcess];

    /// The reason's label in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            KernelFilter::NotHttp => "not_http",
            KernelFilter::ExcludedProcess => "excluded_process",
        }
    }
}

/// Number of entries in the `KERNEL_FILTERED` per-CPU array.
pub const KERNEL_FILTER_COUNT: u32 = 2;
