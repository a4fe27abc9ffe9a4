//! The limiter's maps, shared by the XDP and tc programs of the object.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use selfops_ebpf::limiter::{
    ALLOW_PORTS_MAX, ALLOW_SOURCES_MAX, LimiterBucket, LimiterKey, STAT_COUNT,
};

/// Buckets by key. LRU so that a full map evicts the key used longest ago
/// instead of refusing a new one. Only the agent inserts (the programs look
/// up and update in place), so eviction happens only when the agent sets
/// more keys than it sized the map for at load (`map_max_entries`).
#[map]
pub static LIMITER_BUCKETS: LruHashMap<LimiterKey, LimiterBucket> =
    LruHashMap::with_max_entries(4096, 0);

/// Destination ports never limited (the value is unused).
#[map]
pub static LIMITER_ALLOW_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(ALLOW_PORTS_MAX, 0);

/// Source prefixes never limited, IPv6 or IPv4-mapped (the value is
/// unused). LPM tries must be created without preallocation.
#[map]
pub static LIMITER_ALLOW_SOURCES: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(ALLOW_SOURCES_MAX, BPF_F_NO_PREALLOC);

/// Packets no bucket metered, by reason (`STAT_*`), per CPU.
#[map]
static LIMITER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// A stats slot of this CPU.
#[inline(always)]
pub fn stats_slot(stat: u32) -> Option<*mut u64> {
    LIMITER_STATS.get_ptr_mut(stat)
}

#[inline(always)]
pub fn count(stat: u32) {
    if let Some(count) = LIMITER_STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *count += 1 };
    }
}
