//! Every place the agent can lose or refuse data has a counter here.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SensorLabel {
    pub sensor: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabel {
    pub component: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Records read from a sensor's ring buffer.
    pub events_received: Family<SensorLabel, Counter>,
    /// Records the kernel could not reserve ring space for (read from the
    /// kernel's per-CPU counters at scrape time).
    pub events_lost: Family<SensorLabel, Counter>,
    /// Events the kernel programs had and dropped for another reason (read
    /// from the kernel's per-CPU counters at scrape time).
    pub kernel_drops: Family<ReasonLabel, Counter>,
    /// Socket-sensor work the kernel skipped on purpose (read from the
    /// kernel's per-CPU counters at scrape time).
    pub socket_events_filtered: Family<ReasonLabel, Counter>,
    /// Records that failed to decode.
    pub events_malformed: Family<SensorLabel, Counter>,
    pub process_table_size: Gauge,
    pub process_table_exited: Gauge,
    /// Processes not stored because the table was full.
    pub processes_rejected: Counter,
    /// Table repairs from /proc scans (an exit or exec event was lost).
    pub processes_reconciled: Family<ReasonLabel, Counter>,
    /// /proc or ELF reads that failed (usually: the process already exited).
    pub process_enrich_failures: Family<ReasonLabel, Counter>,
    pub build_id_cache_entries: Gauge,
    pub resident_memory_bytes: Gauge,
    /// 1 while a component's tasks run, 0 once one has failed.
    pub component_healthy: Family<ComponentLabel, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("selfops");
        let metrics = Self {
            events_received: Family::default(),
            events_lost: Family::default(),
            kernel_drops: Family::default(),
            socket_events_filtered: Family::default(),
            events_malformed: Family::default(),
            process_table_size: Gauge::default(),
            process_table_exited: Gauge::default(),
            processes_rejected: Counter::default(),
            processes_reconciled: Family::default(),
            process_enrich_failures: Family::default(),
            build_id_cache_entries: Gauge::default(),
            resident_memory_bytes: Gauge::default(),
            component_healthy: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sensor_events_received",
            "Events read from a sensor's ring buffer",
            metrics.events_received.clone(),
        );
        registry.register(
            "sensor_events_lost",
            "Events dropped in the kernel because the ring buffer was full",
            metrics.events_lost.clone(),
        );
        registry.register(
            "sensor_kernel_drops",
            "Events the kernel programs dropped other than for a full ring, by reason",
            metrics.kernel_drops.clone(),
        );
        registry.register(
            "socket_events_filtered",
            "Socket-sensor work the kernel skipped on purpose, by reason: data events of \
             connections whose first bytes are not HTTP/1 (not_http), syscalls of processes \
             trace.include/exclude leave out (excluded_process)",
            metrics.socket_events_filtered.clone(),
        );
        registry.register(
            "sensor_events_malformed",
            "Ring-buffer records that failed to decode",
            metrics.events_malformed.clone(),
        );
        registry.register(
            "process_table_size",
            "Live processes in the process table",
            metrics.process_table_size.clone(),
        );
        registry.register(
            "process_table_exited",
            "Exited processes kept for late signals",
            metrics.process_table_exited.clone(),
        );
        registry.register(
            "processes_rejected",
            "Processes not stored because the table was full",
            metrics.processes_rejected.clone(),
        );
        registry.register(
            "processes_reconciled",
            "Process-table repairs made by /proc scans",
            metrics.processes_reconciled.clone(),
        );
        registry.register(
            "process_enrich_failures",
            "Reads of /proc or of an executable that failed",
            metrics.process_enrich_failures.clone(),
        );
        registry.register(
            "build_id_cache_entries",
            "Executables whose build-id is cached",
            metrics.build_id_cache_entries.clone(),
        );
        registry.register(
            "agent_resident_memory_bytes",
            "Resident set size of the agent",
            metrics.resident_memory_bytes.clone(),
        );
        registry.register(
            "component_healthy",
            "1 while a component (sensors, tracer, profiler, exporters, actuation) runs, 0 once it failed",
            metrics.component_healthy.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// For other modules' metrics (exporters, tracer), registered before
    /// the agent starts serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn sensor(sensor: selfops_ebpf::Sensor) -> SensorLabel {
        SensorLabel {
            sensor: sensor.name(),
        }
    }

    /// Raises a counter to a total kept elsewhere (the kernel's).
    pub fn raise_to(counter: &Counter, total: u64) {
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Resident set size of this process, from /proc/self/statm.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some(pages * page)
}

/// CPU time this process has used, all threads together.
pub fn process_cpu_time() -> Option<std::time::Duration> {
    // SAFETY: timespec is plain data that clock_gettime fills in.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return None;
    }
    Some(std::time::Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text() {
        let m = Metrics::new();
        m.events_received
            .get_or_create(&Metrics::sensor(selfops_ebpf::Sensor::ProcessExec))
            .inc();
        Metrics::raise_to(
            &m.events_lost
                .get_or_create(&Metrics::sensor(selfops_ebpf::Sensor::ProcessExit)),
            5,
        );
        let text = m.encode().unwrap();
        assert!(
            text.contains("selfops_sensor_events_received_total{sensor=\"process_exec\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("selfops_sensor_events_lost_total{sensor=\"process_exit\"} 5"),
            "{text}"
        );
        assert!(resident_memory_bytes().unwrap() > 0);
    }
}
