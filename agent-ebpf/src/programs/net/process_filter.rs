//! `trace.include` / `trace.exclude` in the kernel: processes the agent
//! decided are not traced (by executable, cgroup or pod; port rules stay
//! in userspace) have their syscalls skipped at entry.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use selfops_ebpf::KernelFilter;

use crate::programs::counters::count_filtered;

/// Tgids not traced, written by the agent. A plain hash: a full map
/// refuses the agent's insert, which the agent counts, and the process is
/// then filtered in userspace as before.
#[map]
static EXCLUDED_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(16_384, 0);

/// Non-zero while the agent has put tgids in `EXCLUDED_TGIDS`. Without
/// exclusion rules (the common case) every followed call then skips the
/// hash lookup: an array lookup is inlined by the verifier, nearly free.
#[map]
static EXCLUSIONS_IN_USE: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the socket sensor follows this thread's syscalls: neither the
/// agent's own nor an excluded process's.
#[inline(always)]
pub fn traced(pid_tgid: u64, agent_tgid: u32) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == agent_tgid {
        return false;
    }
    let in_use = EXCLUSIONS_IN_USE.get(0).is_some_and(|flag| *flag != 0);
    if in_use && EXCLUDED_TGIDS.get_ptr(tgid).is_some() {
        count_filtered(KernelFilter::ExcludedProcess);
        return false;
    }
    true
}

/// A new process (fork) or a new program (exec) under `tgid`: whatever the
/// agent decided for what was there before does not hold for it. The
/// agent decides again once its process table has seen the change.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = EXCLUDED_TGIDS.remove(tgid);
}
