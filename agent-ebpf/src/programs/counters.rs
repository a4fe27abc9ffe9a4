//! Kernel-side counters the agent reads for /metrics.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use selfops_ebpf::{
    KERNEL_DROP_COUNT, KERNEL_FILTER_COUNT, KernelDrop, KernelFilter, SENSOR_COUNT, Sensor,
};

/// Ring-buffer reservations that failed, per sensor and CPU: events lost
/// because userspace did not drain the buffer fast enough.
#[map]
static LOST_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SENSOR_COUNT, 0);

#[inline(always)]
pub fn count_lost(sensor: Sensor) {
    if let Some(count) = LOST_EVENTS.get_ptr_mut(sensor as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *count += 1 };
    }
}

/// Events dropped for reasons other than a full ring, per reason and CPU.
#[map]
static KERNEL_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_DROP_COUNT, 0);

#[inline(always)]
pub fn count_drop(reason: KernelDrop) {
    if let Some(count) = KERNEL_DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *count += 1 };
    }
}

/// Socket-sensor work skipped on purpose, per reason and CPU.
#[map]
static KERNEL_FILTERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_FILTER_COUNT, 0);

#[inline(always)]
pub fn count_filtered(reason: KernelFilter) {
    if let Some(count) = KERNEL_FILTERED.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *count += 1 };
    }
}
