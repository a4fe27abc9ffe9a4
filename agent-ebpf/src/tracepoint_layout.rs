//! Offsets of tracepoint fields, read by the agent from tracefs format files
//! at start-up and handed to the kernel programs as a global, because the
//! layout of a tracepoint record changes between kernel versions.

/// Marks a field the running kernel's tracepoint does not have.
pub const FIELD_ABSENT: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointLayout {
    /// sched:sched_process_exec `filename` (a `__data_loc` word).
    pub exec_filename: u32,
    /// task:task_newtask `pid` (the new task's id).
    pub newtask_pid: u32,
    /// task:task_newtask `clone_flags` (u64).
    pub newtask_clone_flags: u32,
    /// sched:sched_process_exit `group_dead` (bool), or [`FIELD_ABSENT`] on
    /// kernels without it.
    pub exit_group_dead: u32,
}

impl TracepointLayout {
    /// The layout of Linux 6.x, used only until the agent overrides it.
    pub const DEFAULT: Self = Self {
        exec_filename: 8,
        newtask_pid: 8,
        newtask_clone_flags: 32,
        exit_group_dead: FIELD_ABSENT,
    };
}

#[cfg(feature = "user")]
// SAFETY: four u32 fields, no padding.
unsafe impl aya::Pod for TracepointLayout {}

const _: () = assert!(core::mem::size_of::<TracepointLayout>() == 16);
