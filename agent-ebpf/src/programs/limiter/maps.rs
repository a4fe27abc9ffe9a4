//! The limiter's maps, shared by the XDP and tc programs of the object.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use selfops_ebpf::limiter::{LimiterBucket, LimiterKey, STAT_COUNT};

/// Buckets by key. LRU so that a full map evicts the key used longest ago
/// instead of refusing a new one. Only the agent inserts (the programs look
/// up and update in place), so eviction happens only when the agent sets
/// more keys than it sized the map for at load (`map_max_entries`).
#[map]
pub static LIMITER_BUCKETS: LruHashMap<LimiterKey, LimiterBucket> =
    LruHashMap::with_max_entries(4096, 0);

/// Packets no bucket metered, by reason (`STAT_*`), per CPU.
#[map]
static LIMITER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[inline(always)]
pub fn count(stat: u32) {
    if let Some(count) = LIMITER_STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *count += 1 };
    }
}
