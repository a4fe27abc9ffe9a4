//! Process lifecycle sensors: exec, new process, exit.
//!
//! New processes are seen at task:task_newtask rather than
//! sched:sched_process_fork, because only task_newtask carries clone_flags,
//! which tell a new process from a new thread without reading task_struct.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
        generated::{bpf_get_current_cgroup_id, bpf_probe_read_kernel_str},
    },
    macros::{map, tracepoint},
    maps::RingBuf,
    programs::TracePointContext,
};
use selfops_ebpf::{
    CLONE_THREAD, COMM_LEN, ExecEvent, ExitEvent, FIELD_ABSENT, FILENAME_LEN, ForkEvent,
    ProcessEventHeader, ProcessEventKind, Sensor, TracepointLayout,
};

use super::counters::count_lost;

/// Process events for the agent; its size is set by the agent at load time.
#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Field offsets of this kernel's tracepoints, written by the agent at load.
#[unsafe(no_mangle)]
static TRACEPOINT_LAYOUT: TracepointLayout = TracepointLayout::DEFAULT;

#[inline(always)]
fn layout() -> TracepointLayout {
    // SAFETY: a read-only global the loader fills before the program runs;
    // the volatile read keeps the compiler from folding in the default.
    unsafe { core::ptr::read_volatile(&TRACEPOINT_LAYOUT) }
}

#[inline(always)]
fn header(kind: ProcessEventKind, pid: u32, tid: u32, ppid: u32) -> ProcessEventHeader {
    ProcessEventHeader {
        kind: kind as u32,
        pid,
        tid,
        ppid,
        // SAFETY: helpers without arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

#[inline(always)]
fn current_comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_process_exec(&ctx);
    0
}

fn try_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    super::net::forget_excluded_process((pid_tgid >> 32) as u32);
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ExecEvent>(0) else {
        count_lost(Sensor::ProcessExec);
        return Err(0);
    };
    let event = entry.as_mut_ptr();
    // `__data_loc` word: low 16 bits are the string's offset in the record.
    // SAFETY: the offset comes from this kernel's format file.
    let data_loc: u32 = unsafe { ctx.read_at(layout().exec_filename as usize) }.unwrap_or(0);
    // SAFETY: `event` points at reserved ring-buffer memory of the right size;
    // fields are written through raw pointers, never read before written.
    unsafe {
        (*event).header = header(
            ProcessEventKind::Exec,
            (pid_tgid >> 32) as u32,
            pid_tgid as u32,
            0,
        );
        (*event).comm = current_comm();
        let filename = core::ptr::addr_of_mut!((*event).filename).cast::<u8>();
        let src = ctx.as_ptr().cast::<u8>().add((data_loc & 0xffff) as usize);
        if data_loc == 0
            || bpf_probe_read_kernel_str(filename.cast(), FILENAME_LEN as u32, src.cast()) < 0
        {
            *filename = 0;
        }
    }
    entry.submit(0);
    Ok(())
}

#[tracepoint(category = "task", name = "task_newtask")]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    let _ = try_process_fork(&ctx);
    0
}

fn try_process_fork(ctx: &TracePointContext) -> Result<(), i64> {
    let layout = layout();
    // SAFETY: offsets come from this kernel's format file.
    let clone_flags: u64 = unsafe { ctx.read_at(layout.newtask_clone_flags as usize) }?;
    if clone_flags & CLONE_THREAD != 0 {
        return Ok(());
    }
    let child: i32 = unsafe { ctx.read_at(layout.newtask_pid as usize) }?;
    super::net::forget_excluded_process(child as u32);
    // The tracepoint runs in the parent, so the current task is the parent.
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let event = ForkEvent {
        header: header(ProcessEventKind::Fork, child as u32, child as u32, parent),
        clone_flags,
        comm: current_comm(),
    };
    PROCESS_EVENTS
        .output::<ForkEvent>(&event, 0)
        .map_err(|err| {
            count_lost(Sensor::ProcessFork);
            i64::from(err)
        })
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_process_exit(&ctx);
    0
}

fn try_process_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // Every thread's exit, not only the process's.
    super::net::forget_thread(pid_tgid);
    let group_dead_offset = layout().exit_group_dead;
    let process_ends = if group_dead_offset == FIELD_ABSENT {
        // Older kernels: take the leader's exit as the process's.
        pid == tid
    } else {
        // SAFETY: offset comes from this kernel's format file.
        unsafe { ctx.read_at::<u8>(group_dead_offset as usize) }? != 0
    };
    if !process_ends {
        return Ok(());
    }
    let event = ExitEvent {
        header: header(ProcessEventKind::Exit, pid, tid, 0),
        comm: current_comm(),
    };
    PROCESS_EVENTS
        .output::<ExitEvent>(&event, 0)
        .map_err(|err| {
            count_lost(Sensor::ProcessExit);
            i64::from(err)
        })
}
