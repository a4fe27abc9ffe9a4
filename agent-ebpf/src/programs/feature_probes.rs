//! Tiny programs `selfops probe` loads and attaches to learn, for real, what
//! the running kernel offers. None of them does any work.

use aya_ebpf::{
    bindings::{TC_ACT_PIPE, xdp_action},
    helpers::bpf_probe_write_user,
    macros::{
        btf_tracepoint, classifier, fentry, kprobe, perf_event, raw_tracepoint, tracepoint, uprobe,
    },
    programs::{
        BtfTracePointContext, FEntryContext, PerfEventContext, ProbeContext, RawTracePointContext,
        TcContext, TracePointContext, XdpContext,
    },
};

#[tracepoint]
pub fn probe_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint]
pub fn probe_raw_tracepoint(_ctx: RawTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn probe_btf_tracepoint(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "tcp_sendmsg")]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[uprobe]
pub fn probe_uprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[perf_event]
pub fn probe_perf_event(_ctx: PerfEventContext) -> u32 {
    0
}

#[aya_ebpf::macros::xdp]
pub fn probe_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn probe_tc(_ctx: TcContext) -> i32 {
    TC_ACT_PIPE
}

/// Loads only where the kernel allows writing user memory (lockdown refuses).
#[tracepoint]
pub fn probe_write_user(_ctx: TracePointContext) -> u32 {
    let _ = try_probe_write_user();
    0
}

fn try_probe_write_user() -> Result<(), i32> {
    let value: u64 = 0;
    // SAFETY: never attached; the program exists so the verifier judges the helper.
    unsafe { bpf_probe_write_user(core::ptr::null_mut::<u64>(), &value) }
}
