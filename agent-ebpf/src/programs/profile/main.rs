//! CPU-clock sampler: stacks and register state per sample, loaded only when profiling is on.
//!
//! Per sample it records the kernel stack (bpf_get_stack) and copies a
//! bounded slice of the user stack with the user registers; the agent
//! unwinds that copy with the executables' CFI. Copying costs the same for
//! every binary, while in-kernel unwinding would need per-binary tables in
//! maps (see the profiler section of the README for the figures).
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task_btf, bpf_get_stack, bpf_probe_read_user, bpf_task_pt_regs,
        },
    },
    macros::{map, perf_event},
    maps::{PerCpuArray, RingBuf},
    programs::PerfEventContext,
};
// The panic handler comes from the library.
use selfops_ebpf::{
    profile::{
        KERNEL_STACK_DEPTH, PROFILE_COUNTER_COUNT, ProfileCounter, ProfilerSettings,
        SAMPLE_HAS_USER_REGS, STACK_PAGE_BYTES, SampleRecord, USER_STACK_PAGES,
    },
    ring::{ring_record_bytes, wakes_reader},
};

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Samples for the agent; its size is set at load time.
#[map]
static PROFILE_SAMPLES: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static PROFILE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROFILE_COUNTER_COUNT, 0);

#[unsafe(no_mangle)]
static PROFILER_SETTINGS: ProfilerSettings = ProfilerSettings::DEFAULT;

/// Unread bytes at which the agent is woken; below it the agent drains on
/// its own timer, so a sample costs no wake-up.
const WAKEUP_BYTES: u64 = 512 * 1024;

/// User-mode code segment selectors have privilege level 3.
const USER_MODE: u64 = 3;

#[inline(always)]
fn count(counter: ProfileCounter) {
    if let Some(slot) = PROFILE_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
}

#[perf_event]
pub fn profile_cpu_clock(ctx: PerfEventContext) -> u32 {
    let _ = try_profile_cpu_clock(&ctx);
    0
}

/// The user registers of the sampled thread: the sample's own when it
/// interrupted user mode, else the ones saved at kernel entry.
#[inline(always)]
fn user_regs(ctx: &PerfEventContext) -> Option<pt_regs> {
    // SAFETY: the context of a perf_event program is bpf_perf_event_data,
    // whose first member is the sample's pt_regs.
    let regs = unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const pt_regs) }.ok()?;
    if regs.cs & USER_MODE == USER_MODE {
        return Some(regs);
    }
    // SAFETY: BTF helpers on the current task; the result is only read
    // through bpf_probe_read_kernel.
    let saved = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if saved.is_null() {
        return None;
    }
    // SAFETY: probe read, fails cleanly on a bad pointer.
    let regs = unsafe { bpf_probe_read_kernel(saved) }.ok()?;
    (regs.cs & USER_MODE == USER_MODE).then_some(regs)
}

fn try_profile_cpu_clock(ctx: &PerfEventContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == 0 {
        count(ProfileCounter::Idle);
        return Ok(());
    }
    // SAFETY: read-only global filled by the loader.
    let settings = unsafe { core::ptr::read_volatile(&PROFILER_SETTINGS) };
    if tgid == settings.agent_tgid {
        return Ok(());
    }
    let Some(mut entry) = PROFILE_SAMPLES.reserve::<SampleRecord>(0) else {
        count(ProfileCounter::RingFull);
        return Err(-1);
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at reserved ring memory of SampleRecord size.
    let header = unsafe { core::ptr::addr_of_mut!((*record).header) };
    let stack = unsafe { core::ptr::addr_of_mut!((*record).user_stack) } as *mut u8;
    // SAFETY: every write below stays inside the reserved record.
    unsafe {
        (*header).pid = tgid;
        (*header).tid = pid_tgid as u32;
        (*header).cpu = bpf_get_smp_processor_id();
        (*header).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let written = bpf_get_stack(
            ctx.as_ptr(),
            core::ptr::addr_of_mut!((*header).kernel_stack) as *mut _,
            (KERNEL_STACK_DEPTH * 8) as u32,
            0,
        );
        (*header).kernel_frames = if written > 0 { (written / 8) as u32 } else { 0 };
        (*header).flags = 0;
        (*header).user_stack_len = 0;
        (*header).ip = 0;
        (*header).sp = 0;
        (*header).bp = 0;
        if let Some(regs) = user_regs(ctx) {
            (*header).flags = SAMPLE_HAS_USER_REGS;
            (*header).ip = regs.rip;
            (*header).sp = regs.rsp;
            (*header).bp = regs.rbp;
            let len = copy_user_stack(stack, regs.rsp);
            if len == 0 {
                count(ProfileCounter::UserStackUnreadable);
            }
            (*header).user_stack_len = len;
        }
    }
    let unread = PROFILE_SAMPLES.query(u64::from(BPF_RB_AVAIL_DATA));
    let flags = if wakes_reader(
        unread,
        ring_record_bytes(size_of::<SampleRecord>()),
        WAKEUP_BYTES,
    ) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
    count(ProfileCounter::Samples);
    Ok(())
}

/// Copies the stack from `sp` up: first to the end of sp's page, then whole
/// pages until one is unreadable (the top of the stack) or the area is
/// full. Returns the bytes copied.
#[inline(always)]
unsafe fn copy_user_stack(dst: *mut u8, sp: u64) -> u32 {
    let page = STACK_PAGE_BYTES as u64;
    let first = page - (sp & (page - 1));
    // SAFETY: `first` is 1..=4096 and the area holds USER_STACK_PAGES pages.
    if unsafe { bpf_probe_read_user(dst as *mut _, first as u32, sp as *const _) } != 0 {
        return 0;
    }
    let mut copied = first;
    let mut i = 1;
    while i < USER_STACK_PAGES {
        // `copied` is first + (i-1) pages: at most i pages, so the page
        // written here ends inside the area.
        let offset = copied & ((USER_STACK_PAGES as u64 * page) - 1);
        if offset + page > USER_STACK_PAGES as u64 * page {
            break;
        }
        // SAFETY: bounded just above.
        let read = unsafe {
            bpf_probe_read_user(
                dst.add(offset as usize) as *mut _,
                page as u32,
                (sp + copied) as *const _,
            )
        };
        if read != 0 {
            break;
        }
        copied += page;
        i += 1;
    }
    copied as u32
}
