//! The process sensor task: applies exec/fork/exit events to the table,
//! enriching them from /proc, and periodically reconciles the table with
//! /proc so a lost event is repaired (and counted) rather than kept forever.

use std::{collections::HashSet, sync::Arc, time::Instant};

use prometheus_client::metrics::counter::Counter;
use selfops_ebpf::Sensor;

use super::{
    build_id::BuildIdCache,
    caught_up::{CaughtUp, boot_now_ns},
    clock::{BootClock, clock_ticks_per_second},
    container::container_id,
    event::{ProcessEvent, decode},
    procfs,
    table::{Inserted, Process, ProcessTable, SharedTable},
};
use crate::{
    config::ProcessConfig,
    kernel::ring_reader::RingReader,
    telemetry::{Metrics, metrics::ReasonLabel},
};

/// Records handled per wake-up before the task yields to its timers.
const MAX_RECORDS_PER_WAKEUP: usize = 4096;

pub struct ProcessModel {
    table: SharedTable,
    build_ids: BuildIdCache,
    clock: BootClock,
    ticks_per_second: u64,
    max_cmdline_bytes: usize,
    /// Per-sensor received counters, looked up once (index: `Sensor`).
    received: [Counter; 3],
    metrics: Arc<Metrics>,
    caught_up: CaughtUp,
}

impl ProcessModel {
    pub fn new(config: &ProcessConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            table: SharedTable::new(ProcessTable::new(
                config.max_processes,
                config.exited_retention,
            )),
            build_ids: BuildIdCache::new(config.build_id_cache_entries),
            clock: BootClock::measure(),
            ticks_per_second: clock_ticks_per_second(),
            max_cmdline_bytes: config.max_cmdline_bytes,
            received: [
                Sensor::ProcessExec,
                Sensor::ProcessFork,
                Sensor::ProcessExit,
            ]
            .map(|s| {
                metrics
                    .events_received
                    .get_or_create(&Metrics::sensor(s))
                    .clone()
            }),
            metrics,
            caught_up: CaughtUp::new(),
        }
    }

    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// How far this model has read its ring, for the tracer to wait on.
    pub fn caught_up(&self) -> CaughtUp {
        self.caught_up.clone()
    }

    fn failed(&self, reason: &'static str) {
        self.metrics
            .process_enrich_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    fn store(&self, process: Process) {
        if self.table.write().insert(process) == Inserted::Rejected {
            self.metrics.processes_rejected.inc();
        }
    }

    /// Everything /proc says about `pid`; `None` when it is already gone.
    fn read_procfs(&mut self, pid: u32) -> Option<Process> {
        let stat = procfs::stat(pid).ok()?;
        let mut process = Process {
            pid,
            ppid: stat.ppid,
            comm: stat.comm,
            executable_path: None,
            build_id: None,
            command_line: None,
            cgroup: None,
            container_id: None,
            start_time_unix_nano: self
                .clock
                .to_unix_ns(stat.start_ticks * 1_000_000_000 / self.ticks_per_second),
        };
        if !stat.kernel_thread {
            self.enrich(&mut process);
        }
        Some(process)
    }

    /// Fills executable, build-id, command line and cgroup from /proc. Each
    /// read may fail because the process exited; what was read is kept.
    fn enrich(&mut self, process: &mut Process) {
        let pid = process.pid;
        match procfs::exe(pid) {
            Ok(path) => process.executable_path = Some(Arc::from(path)),
            Err(_) => self.failed("exe"),
        }
        if process.executable_path.is_some() {
            match self.build_ids.for_pid(pid) {
                Ok(id) => process.build_id = id,
                Err(_) => self.failed("build_id"),
            }
        }
        match procfs::cmdline(pid, self.max_cmdline_bytes) {
            Ok(line) if !line.is_empty() => process.command_line = Some(Arc::from(line)),
            Ok(_) => {}
            Err(_) => self.failed("cmdline"),
        }
        match procfs::cgroups(pid) {
            Ok(hierarchies) => {
                process.cgroup = procfs::primary_cgroup(&hierarchies).map(Arc::from);
                process.container_id =
                    container_id(hierarchies.iter().map(|h| h.path.as_str())).map(Arc::from);
            }
            Err(_) => self.failed("cgroup"),
        }
    }

    /// Loads every process alive now, so processes older than the agent
    /// are known.
    pub fn seed(&mut self) -> std::io::Result<usize> {
        let mut count = 0;
        for pid in procfs::list_pids()? {
            if let Some(process) = self.read_procfs(pid) {
                self.store(process);
                count += 1;
            }
        }
        self.metrics
            .build_id_cache_entries
            .set(self.build_ids.len() as i64);
        Ok(count)
    }

    pub fn handle_record(&mut self, record: &[u8]) {
        match decode(record) {
            Ok(event) => self.apply(event),
            Err(err) => {
                // Without a valid kind the sensor is unknown; count it under exec,
                // the sensor with the variable-length payload.
                tracing::debug!(%err, "malformed process event");
                self.metrics
                    .events_malformed
                    .get_or_create(&Metrics::sensor(Sensor::ProcessExec))
                    .inc();
            }
        }
    }

    pub fn apply(&mut self, event: ProcessEvent) {
        let sensor = match &event {
            ProcessEvent::Exec { .. } => Sensor::ProcessExec,
            ProcessEvent::Fork { .. } => Sensor::ProcessFork,
            ProcessEvent::Exit { .. } => Sensor::ProcessExit,
        };
        self.received[sensor as usize].inc();
        match event {
            ProcessEvent::Fork { pid, ppid, boot_ns } => {
                // The child runs its parent's image until it execs.
                let parent = self.table.read().get(ppid);
                let process = match parent {
                    Some(parent) => Process {
                        pid,
                        ppid,
                        start_time_unix_nano: self.clock.to_unix_ns(boot_ns),
                        ..(*parent).clone()
                    },
                    None => match self.read_procfs(pid) {
                        Some(p) => p,
                        None => return,
                    },
                };
                self.store(process);
            }
            ProcessEvent::Exec {
                pid,
                boot_ns,
                comm,
                filename,
            } => {
                let known = self.table.read().get(pid);
                let mut process = match known {
                    Some(p) => Process {
                        comm,
                        ..(*p).clone()
                    },
                    None => {
                        let ppid = procfs::stat(pid).map(|s| s.ppid).unwrap_or(0);
                        Process {
                            pid,
                            ppid,
                            comm,
                            executable_path: None,
                            build_id: None,
                            command_line: None,
                            cgroup: None,
                            container_id: None,
                            start_time_unix_nano: self.clock.to_unix_ns(boot_ns),
                        }
                    }
                };
                // The new image: forget the old one's facts before re-reading.
                process.executable_path = filename
                    .starts_with('/')
                    .then(|| Arc::from(filename.as_str()));
                process.build_id = None;
                process.command_line = None;
                self.enrich(&mut process);
                self.store(process);
            }
            ProcessEvent::Exit { pid } => {
                self.table.write().remove(pid, Instant::now());
            }
        }
    }

    /// Expires exited entries and repairs the table from /proc.
    pub fn reconcile(&mut self) {
        // An NTP step moves the Unix clock, not the boot clock.
        self.clock = BootClock::measure();
        let scan_seq = self.table.read().last_seq();
        let Ok(pids) = procfs::list_pids() else {
            self.failed("proc_scan");
            return;
        };
        let present: HashSet<u32> = pids.iter().copied().collect();
        let now = Instant::now();
        let removed = {
            let mut table = self.table.write();
            table.expire(now);
            table.remove_absent(&present, scan_seq, now)
        };
        self.count_reconciled("exit_missed", removed.len());
        let missing: Vec<u32> = {
            let table = self.table.read();
            pids.into_iter()
                .filter(|p| !table.contains_live(*p))
                .collect()
        };
        let mut added = 0;
        for pid in missing {
            if let Some(process) = self.read_procfs(pid) {
                self.store(process);
                added += 1;
            }
        }
        self.count_reconciled("start_missed", added);
        self.metrics
            .build_id_cache_entries
            .set(self.build_ids.len() as i64);
    }

    fn count_reconciled(&self, reason: &'static str, n: usize) {
        if n > 0 {
            self.metrics
                .processes_reconciled
                .get_or_create(&ReasonLabel { reason })
                .inc_by(n as u64);
        }
    }

    /// Runs until the ring buffer fails: events as they come, expiry every
    /// second, a /proc reconciliation every `rescan_interval`.
    pub async fn run(
        mut self,
        mut ring: RingReader,
        rescan_interval: std::time::Duration,
    ) -> std::io::Result<()> {
        let mut expire = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut rescan = tokio::time::interval(rescan_interval);
        // Without process events the ring never wakes us; the tracer still
        // needs to know the table is current.
        // The ring is checked every `caught_up::TICK` when it did not wake
        // us: the delay a span may wait for the table.
        let mut catch_up = self.caught_up.ticks(std::time::Duration::ZERO);
        rescan.tick().await; // the first tick is immediate; seeding just ran
        loop {
            tokio::select! {
                ready = ring.ready() => {
                    let began = boot_now_ns();
                    let n = ready?.drain(MAX_RECORDS_PER_WAKEUP, |record| self.handle_record(record));
                    if n < MAX_RECORDS_PER_WAKEUP {
                        self.caught_up.reached(began);
                    }
                }
                _ = catch_up.tick() => {
                    let began = boot_now_ns();
                    let n = ring.drain_pending(MAX_RECORDS_PER_WAKEUP, |record| self.handle_record(record));
                    if n < MAX_RECORDS_PER_WAKEUP {
                        self.caught_up.reached(began);
                    }
                }
                _ = expire.tick() => self.table.write().expire(Instant::now()),
                _ = rescan.tick() => self.reconcile(),
            }
        }
    }
}
