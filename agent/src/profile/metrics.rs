//! The profiler's self-metrics (prefix `selfops_profile_`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Default)]
pub struct ProfileMetrics {
    /// Kernel-side sample counts (recorded, ring_full, idle,
    /// user_stack_unreadable), copied from the sampler's per-CPU counters.
    pub kernel_samples: Family<OutcomeLabel, Counter>,
    /// Samples unwound in userspace, by how the unwind ended.
    pub unwinds: Family<OutcomeLabel, Counter>,
    /// Samples not profiled: excluded by config, malformed, or over the
    /// distinct-stack bound of an interval.
    pub samples_dropped: Family<OutcomeLabel, Counter>,
    /// CPU time spent unwinding in userspace.
    pub unwind_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub unwind_tables: Gauge,
    pub unwind_table_bytes: Gauge,
    pub unwind_table_builds: Counter,
    pub unwind_table_build_failures: Counter,
    pub unwind_table_evictions: Counter,
    pub unwind_table_builds_deferred: Counter,
    /// CPU time spent building unwind tables (part of `unwind_seconds`).
    pub unwind_table_build_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub symbol_cache_entries: Gauge,
    pub intervals: Counter,
    /// The sampling frequency in effect (a live config may change it); 0
    /// while sampling is off.
    pub frequency_hz: Gauge,
}

impl ProfileMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("profile");
        r.register(
            "kernel_samples",
            "CPU-clock samples seen by the kernel sampler, by outcome",
            m.kernel_samples.clone(),
        );
        r.register(
            "unwinds",
            "User stacks unwound, by how the unwind ended",
            m.unwinds.clone(),
        );
        r.register(
            "samples_dropped",
            "Samples not counted in a profile, by reason",
            m.samples_dropped.clone(),
        );
        r.register(
            "unwind_seconds",
            "Time spent unwinding user stacks",
            m.unwind_seconds.clone(),
        );
        r.register(
            "unwind_tables",
            "Unwind tables held (one per executable build-id)",
            m.unwind_tables.clone(),
        );
        r.register(
            "unwind_table_bytes",
            "Memory held by unwind tables",
            m.unwind_table_bytes.clone(),
        );
        r.register(
            "unwind_table_builds",
            "Unwind tables built from .eh_frame/.debug_frame",
            m.unwind_table_builds.clone(),
        );
        r.register(
            "unwind_table_build_failures",
            "Files without a usable unwind table (unreadable, no CFI, over budget)",
            m.unwind_table_build_failures.clone(),
        );
        r.register(
            "unwind_table_evictions",
            "Unwind tables evicted under the memory budget",
            m.unwind_table_evictions.clone(),
        );
        r.register(
            "unwind_table_builds_deferred",
            "Unwinds that fell back to frame pointers because the table build budget was spent",
            m.unwind_table_builds_deferred.clone(),
        );
        r.register(
            "unwind_table_build_seconds",
            "Time spent building unwind tables (included in unwind_seconds)",
            m.unwind_table_build_seconds.clone(),
        );
        r.register(
            "symbol_cache_entries",
            "Symbolized (file, offset) pairs cached",
            m.symbol_cache_entries.clone(),
        );
        r.register(
            "intervals",
            "Aggregated profile intervals emitted",
            m.intervals.clone(),
        );
        r.register(
            "frequency_hz",
            "Sampling frequency in effect per CPU (0: sampling off)",
            m.frequency_hz.clone(),
        );
        m
    }

    pub fn unwind(&self, outcome: &'static str) {
        self.unwinds.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn dropped(&self, outcome: &'static str, n: u64) {
        self.samples_dropped
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(n);
    }
}
