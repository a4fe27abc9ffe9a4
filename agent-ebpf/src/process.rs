//! Process lifecycle events (exec, fork, exit) sent through the
//! `PROCESS_EVENTS` ring buffer.

/// Length of a task's `comm` in the kernel (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;
/// Bytes of the exec'd file name kept in an exec event.
pub const FILENAME_LEN: usize = 256;

/// `clone_flags` bit that makes a new task a thread of its parent.
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// Which lifecycle step an event reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEventKind {
    Exec = 1,
    Fork = 2,
    Exit = 3,
}

impl ProcessEventKind {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Exec),
            2 => Some(Self::Fork),
            3 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// First bytes of every process event; `kind` says which struct follows.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessEventHeader {
    /// A [`ProcessEventKind`] value.
    pub kind: u32,
    /// Thread-group id (the process id users see).
    pub pid: u32,
    /// Id of the task that triggered the event.
    pub tid: u32,
    /// For fork: the parent's thread-group id. Zero where the kernel side
    /// does not know it.
    pub ppid: u32,
    /// CLOCK_BOOTTIME of the event, nanoseconds.
    pub boot_ns: u64,
    /// cgroup v2 id of the task (0 when the task sits in no v2 hierarchy).
    pub cgroup_id: u64,
}

/// A successful execve: the process now runs `filename`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: ProcessEventHeader,
    pub comm: [u8; COMM_LEN],
    /// NUL-terminated, possibly truncated, as passed to execve.
    pub filename: [u8; FILENAME_LEN],
}

/// A new process (not a thread) was created by fork/clone.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub header: ProcessEventHeader,
    pub clone_flags: u64,
    /// The parent's comm, which the child inherits.
    pub comm: [u8; COMM_LEN],
}

/// The last thread of a process exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: ProcessEventHeader,
    pub comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data structs of integers and byte arrays with no padding.
    unsafe impl aya::Pod for super::ProcessEventHeader {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::ForkEvent {}
    unsafe impl aya::Pod for super::ExitEvent {}
}

// No implicit padding: each size is the sum of its fields.
const _: () = assert!(core::mem::size_of::<ProcessEventHeader>() == 32);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 32 + COMM_LEN + FILENAME_LEN);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 32 + 8 + COMM_LEN);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 32 + COMM_LEN);
