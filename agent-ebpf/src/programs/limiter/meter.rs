//! The token buckets: which key meters a packet, and whether its bucket
//! admits it. Shared by the XDP and tc programs.
//!
//! Concurrency: CPUs receiving packets for the same key update one bucket.
//! The bucket's state is a single word (GCRA's theoretical arrival time),
//! advanced with compare-and-swap, so no admission is lost or doubled
//! between CPUs; the pass and drop counters are atomic adds. No
//! bpf_spin_lock: aya-ebpf 0.2.1 wraps neither bpf_spin_lock/unlock nor a way
//! to describe a lock field in the value's BTF, and with single-word state
//! a lock would only add cost.
//!
//! Expiry: a bucket whose deadline has passed is treated as absent, so the
//! next key (if any) decides, and it is counted; the agent removes it when
//! it sees it, but nothing depends on the agent being there.

use core::{
    intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg, atomic_xadd},
    ptr::addr_of_mut,
};

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use selfops_ebpf::limiter::{
    INTERVAL_BLOCK, LimiterBucket, LimiterKey, SCOPE_SYN, STAT_ALLOWLISTED, STAT_CONTENDED,
    STAT_EXPIRED, STAT_UNMATCHED,
};

use crate::{
    allow::allowed,
    maps::{LIMITER_BUCKETS, count, stats_slot},
    parse::Packet,
};

pub enum Verdict {
    Pass,
    Drop,
}

/// Compare-and-swap attempts before a packet is dropped as contended.
const CAS_ATTEMPTS: usize = 4;

/// The allowlist first; then the first existing, unexpired key whose scope
/// covers the packet decides: (port, source), then port, then source.
#[inline(always)]
pub fn meter(packet: &Packet) -> Verdict {
    if allowed(packet) {
        count(STAT_ALLOWLISTED);
        return Verdict::Pass;
    }
    if let Some(port) = packet.port {
        if let Some(verdict) = meter_key(&LimiterKey::port_source(port, packet.addr), packet.syn) {
            return verdict;
        }
        if let Some(verdict) = meter_key(&LimiterKey::port(port), packet.syn) {
            return verdict;
        }
    }
    if let Some(verdict) = meter_key(&LimiterKey::source(packet.addr), packet.syn) {
        return verdict;
    }
    count(STAT_UNMATCHED);
    Verdict::Pass
}

/// `None` when the key does not exist, has expired or its scope leaves
/// the packet out.
#[inline(always)]
fn meter_key(key: &LimiterKey, syn: bool) -> Option<Verdict> {
    let bucket = LIMITER_BUCKETS.get_ptr_mut(key)?;
    // Read only once a key exists: most packets match none.
    // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the pointer is a live map value for this program run;
    // concurrently written words are only accessed atomically below.
    let (scope, interval_ns, burst_ns, expires_ns) = unsafe {
        (
            (*bucket).scope,
            (*bucket).interval_ns,
            (*bucket).burst_ns,
            (*bucket).expires_ns,
        )
    };
    if now >= expires_ns {
        count(STAT_EXPIRED);
        return None;
    }
    if scope == SCOPE_SYN && !syn {
        return None;
    }
    let verdict = admit(bucket, interval_ns, burst_ns, now);
    // SAFETY: the counters are 8-byte aligned u64 fields of the value; every
    // writer in the kernel updates them atomically.
    unsafe {
        let counter = match verdict {
            Verdict::Pass => addr_of_mut!((*bucket).passed),
            Verdict::Drop => addr_of_mut!((*bucket).dropped),
        };
        atomic_xadd::<u64, u64, { Relaxed }>(counter, 1);
    }
    Some(verdict)
}

/// One compare-and-exchange on a stats slot that changes nothing (its
/// expected value is never there), for the probe program.
#[inline(always)]
pub fn probe_cmpxchg() {
    if let Some(slot) = stats_slot(STAT_CONTENDED) {
        // SAFETY: aligned u64 of a live map value.
        let _ = unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(slot, u64::MAX, u64::MAX) };
    }
}

/// GCRA: admit when the theoretical arrival time is at most `burst_ns`
/// ahead of now, and push it one interval further.
#[inline(always)]
fn admit(bucket: *mut LimiterBucket, interval_ns: u64, burst_ns: u64, now: u64) -> Verdict {
    if interval_ns == INTERVAL_BLOCK {
        return Verdict::Drop;
    }
    // SAFETY: as for the counters in `meter_key`.
    let tat = unsafe { addr_of_mut!((*bucket).tat_ns) };
    // An aligned 64-bit load is atomic on BPF; a volatile read keeps it one
    // load (the target's cpu has no atomic-load instruction LLVM selects).
    // SAFETY: aligned field of a live map value.
    let mut current = unsafe { tat.read_volatile() };
    for _ in 0..CAS_ATTEMPTS {
        let start = if current > now { current } else { now };
        if start - now > burst_ns {
            return Verdict::Drop;
        }
        // SAFETY: as above.
        let (seen, swapped) = unsafe {
            atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(tat, current, start + interval_ns)
        };
        if swapped {
            return Verdict::Pass;
        }
        current = seen;
    }
    count(STAT_CONTENDED);
    Verdict::Drop
}
