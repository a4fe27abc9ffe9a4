//! The profiler's worker: drains the sample ring on a short timer, unwinds
//! each sample, counts it in the current interval and, at the end of each
//! interval, symbolizes the stacks and hands the profile to the outputs.
//!
//! It runs on its own thread: unwinding and table building are CPU work
//! that must not stall the tokio workers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use selfops_ebpf::profile::{ProfileCounter, SampleHeader};

use super::{
    aggregate::{Aggregator, Resolvers},
    filter::ProcessFilter,
    kallsyms::KernelSymbols,
    maps::MapsCache,
    metrics::{OutcomeLabel, ProfileMetrics},
    model::{IntervalProfile, ProcessLabels},
    record::{self, comm_str},
    sampler::KernelCounters,
    symbolize::UserSymbolizer,
    unwind::{self, UserState, cache::TableCache},
};
use crate::{
    config::ProfileConfig,
    process::{ResourceBuilder, SharedTable},
};

/// How often the ring is drained. The sampler wakes nobody per sample; at
/// 999 Hz on many CPUs the ring still holds far more than this period.
const DRAIN_PERIOD: Duration = Duration::from_millis(50);
/// Most records handled per drain, so a flood cannot starve the interval.
const MAX_RECORDS_PER_DRAIN: usize = 16_384;
/// Time an interval may spend symbolizing frames not seen before.
const SYMBOLIZE_BUDGET: Duration = Duration::from_millis(2_000);
/// The same at shutdown, which a user waits for.
const SHUTDOWN_SYMBOLIZE_BUDGET: Duration = Duration::from_millis(150);

/// What a live config changes in a running worker.
pub struct Retune {
    pub filter: ProcessFilter,
    pub frequency_hz: u32,
}

fn period_nanos(frequency_hz: u32) -> u64 {
    1_000_000_000 / u64::from(frequency_hz.max(1))
}

pub struct Worker {
    retune: std::sync::mpsc::Receiver<Retune>,
    ring: RingBuf<MapData>,
    counters: KernelCounters,
    kernel_seen: [u64; 4],
    filter: ProcessFilter,
    table: SharedTable,
    resources: Arc<ResourceBuilder>,
    metrics: ProfileMetrics,
    maps: MapsCache,
    tables: TableCache,
    symbols: UserSymbolizer,
    kernel: KernelSymbols,
    interval: Duration,
    period_nanos: u64,
    max_stacks: usize,
    frames: Vec<u64>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &ProfileConfig,
        ring: RingBuf<MapData>,
        counters: KernelCounters,
        filter: ProcessFilter,
        table: SharedTable,
        resources: Arc<ResourceBuilder>,
        metrics: ProfileMetrics,
        retune: std::sync::mpsc::Receiver<Retune>,
    ) -> Self {
        Self {
            retune,
            ring,
            counters,
            kernel_seen: [0; 4],
            filter,
            table,
            resources,
            metrics,
            maps: MapsCache::new(8192),
            tables: TableCache::new(config.unwind_table_bytes, 65_536),
            symbols: UserSymbolizer::new(65_536),
            kernel: KernelSymbols::new(65_536),
            interval: config.interval,
            period_nanos: period_nanos(config.frequency_hz),
            max_stacks: config.max_stacks,
            frames: Vec::with_capacity(unwind::MAX_USER_FRAMES),
        }
    }

    /// Runs until `stop`, handing each interval to `emit`; the last,
    /// partial interval is emitted too.
    pub fn run(mut self, stop: &AtomicBool, emit: &mut dyn FnMut(IntervalProfile)) {
        let mut start = SystemTime::now();
        let mut deadline = Instant::now() + self.interval;
        let mut aggregator = Aggregator::new(self.max_stacks, start);
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            self.tables.builds_paused = stopping;
            if !stopping {
                std::thread::sleep(
                    DRAIN_PERIOD.min(deadline.saturating_duration_since(Instant::now())),
                );
            }
            self.drain(&mut aggregator);
            self.copy_kernel_counters();
            // Only the latest retune matters.
            let retune = self.retune.try_iter().last();
            let now = Instant::now();
            // A new frequency closes the interval early: each profile's
            // samples then all weigh the same period.
            let new_period = retune
                .as_ref()
                .is_some_and(|r| period_nanos(r.frequency_hz) != self.period_nanos);
            if now >= deadline || stopping || new_period {
                let next_start = SystemTime::now();
                let finished = std::mem::replace(
                    &mut aggregator,
                    Aggregator::new(self.max_stacks, next_start),
                );
                let budget = if stopping {
                    SHUTDOWN_SYMBOLIZE_BUDGET
                } else {
                    SYMBOLIZE_BUDGET
                };
                let profile = self.finish(finished, next_start, Instant::now() + budget);
                if !profile.stacks.is_empty() {
                    self.metrics.intervals.inc();
                    emit(profile);
                }
                start = next_start;
                deadline = now + self.interval;
                self.maps.end_interval();
            }
            if let Some(retune) = retune {
                self.filter = retune.filter;
                self.period_nanos = period_nanos(retune.frequency_hz);
            }
            if stopping {
                break;
            }
        }
        let _ = start;
    }

    fn finish(
        &mut self,
        aggregator: Aggregator,
        end: SystemTime,
        deadline: Instant,
    ) -> IntervalProfile {
        if aggregator.dropped > 0 {
            self.metrics.dropped("too_many_stacks", aggregator.dropped);
        }
        let profile = aggregator.finish(
            end,
            self.period_nanos,
            Resolvers {
                maps: &mut self.maps,
                tables: &mut self.tables,
                symbols: &mut self.symbols,
                kernel: &mut self.kernel,
                deadline,
            },
        );
        self.metrics
            .symbol_cache_entries
            .set(self.symbols.len() as i64);
        self.copy_table_stats();
        profile
    }

    fn drain(&mut self, aggregator: &mut Aggregator) {
        let mut n = 0;
        let mut header = empty_header();
        while n < MAX_RECORDS_PER_DRAIN {
            let Some(item) = self.ring.next() else { break };
            n += 1;
            let sample = match record::decode(&item, &mut header) {
                Ok(sample) => sample,
                Err(err) => {
                    tracing::debug!(%err, "malformed profile sample");
                    self.metrics.dropped("malformed", 1);
                    continue;
                }
            };
            let process = self.table.read().get(sample.pid);
            if !self.filter.is_trivial() && !self.filter.allows(process.as_deref()) {
                self.metrics.dropped("excluded", 1);
                continue;
            }
            self.frames.clear();
            if let Some(regs) = sample.user {
                let began = Instant::now();
                let outcome = match self.maps.get(sample.pid, Some(regs.ip), began) {
                    Some(maps) => unwind::unwind(
                        sample.pid,
                        &UserState {
                            ip: regs.ip,
                            sp: regs.sp,
                            bp: regs.bp,
                            stack: sample.stack,
                        },
                        &maps,
                        &mut self.tables,
                        &mut self.frames,
                    ),
                    None => {
                        self.frames.push(regs.ip);
                        unwind::Outcome::NoMapping
                    }
                };
                self.metrics.unwind(outcome.label());
                self.metrics
                    .unwind_seconds
                    .inc_by(began.elapsed().as_secs_f64());
            }
            let resources = &self.resources;
            aggregator.add(sample.pid, sample.comm, sample.kernel, &self.frames, || {
                labels(sample.pid, &sample.comm, process.as_deref(), resources)
            });
        }
        if n > 0 {
            self.copy_table_stats();
        }
    }

    fn copy_table_stats(&mut self) {
        let stats = self.tables.stats();
        self.metrics.unwind_tables.set(stats.tables as i64);
        self.metrics.unwind_table_bytes.set(stats.bytes as i64);
        let advance = |counter: &prometheus_client::metrics::counter::Counter, total: u64| {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        };
        advance(&self.metrics.unwind_table_builds, stats.builds);
        advance(
            &self.metrics.unwind_table_build_failures,
            stats.build_failures,
        );
        advance(&self.metrics.unwind_table_evictions, stats.evictions);
        advance(
            &self.metrics.unwind_table_builds_deferred,
            stats.builds_deferred,
        );
        let seen = self.metrics.unwind_table_build_seconds.get();
        if stats.build_seconds > seen {
            self.metrics
                .unwind_table_build_seconds
                .inc_by(stats.build_seconds - seen);
        }
    }

    fn copy_kernel_counters(&mut self) {
        let Ok(totals) = self.counters.read() else {
            return;
        };
        for (counter, total) in totals {
            let seen = &mut self.kernel_seen[counter as usize];
            if total > *seen {
                self.metrics
                    .kernel_samples
                    .get_or_create(&OutcomeLabel {
                        outcome: counter.label(),
                    })
                    .inc_by(total - *seen);
                *seen = total;
            }
        }
        let _ = ProfileCounter::ALL;
    }
}

fn labels(
    pid: u32,
    comm: &[u8; 16],
    process: Option<&crate::process::Process>,
    resources: &ResourceBuilder,
) -> ProcessLabels {
    let thread_name = comm_str(comm);
    match process {
        Some(p) => ProcessLabels {
            pid,
            thread_name,
            executable_name: p.executable_name().to_owned(),
            container_id: p.container_id.as_deref().map(str::to_owned),
            service_name: resources.service_name(p),
            resource: resources
                .resource(p)
                .attributes
                .into_iter()
                .filter_map(|(key, value)| match value {
                    crate::signal::AttrValue::Str(text) => Some((key, text.into_owned())),
                    _ => None,
                })
                .collect(),
            k8s: resources.k8s_attributes(p),
        },
        // Not in the table yet (just started): what the sample itself says.
        None => ProcessLabels {
            pid,
            executable_name: thread_name.clone(),
            service_name: thread_name.clone(),
            thread_name,
            container_id: None,
            resource: Vec::new(),
            k8s: Vec::new(),
        },
    }
}

fn empty_header() -> SampleHeader {
    SampleHeader {
        pid: 0,
        tid: 0,
        cpu: 0,
        flags: 0,
        kernel_frames: 0,
        user_stack_len: 0,
        ip: 0,
        sp: 0,
        bp: 0,
        comm: [0; 16],
        kernel_stack: [0; selfops_ebpf::profile::KERNEL_STACK_DEPTH],
    }
}
