//! The loop on the node: sample the series, evaluate the playbooks, apply
//! or lift limits, audit — every `actuation.interval` — and on stop withdraw
//! what is in force unless it is persisted.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::Context as _;
use tokio::sync::watch;

use super::{
    audit::{self, AuditMetrics, ReasonLabels},
    enforcement::{self, NoLimiter},
    engine::{Enforcer, Engine},
    limiter::{Key, UnmeteredStats},
    playbook::ActuationConfig,
};
use crate::{
    control::next_update,
    process::SharedTable,
    series::{Sampler, ServiceStats},
    signal::{Resource, Signal},
};

/// Why an enforcing action fails while no limiter is loaded.
const NOT_LOADED: &str = "no limiter is loaded";
const LOAD_FAILED: &str = "the limiter could not be loaded";

pub type Sink = Box<dyn Fn(Signal) + Send + Sync>;

/// The tracer's way into the per-service series the playbooks read. It
/// costs a lock per span, so it counts only while some playbook reads a
/// service series (which a remote config may change).
pub struct ServiceHook {
    stats: Arc<ServiceStats>,
    on: AtomicBool,
}

impl ServiceHook {
    pub fn new(stats: Arc<ServiceStats>) -> Self {
        Self {
            stats,
            on: AtomicBool::new(false),
        }
    }

    /// Counts a finished server span when a playbook needs it.
    pub fn observe(&self, signal: &Signal) {
        if self.on.load(Ordering::Relaxed) {
            self.stats.observe(signal);
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }
}

pub struct ActuationLoop {
    engine: Engine,
    sampler: Sampler,
    enforcer: Box<dyn Enforcer + Send>,
    /// Whether `enforcer` is the kernel limiter (loaded when the first
    /// enforcing playbook arrives, at start or live).
    limiter_loaded: bool,
    config: ActuationConfig,
    metrics: AuditMetrics,
    resource: Arc<Resource>,
    sink: Sink,
    hook: Arc<ServiceHook>,
    table: SharedTable,
    /// New `actuation` sections from a remote config.
    updates: Option<watch::Receiver<ActuationConfig>>,
    /// Keys with series at /metrics, to drop the series when a key goes.
    reported: HashSet<Key>,
    /// The kernel's unmetered counts at the last tick.
    unmetered: UnmeteredStats,
}

impl ActuationLoop {
    /// `None` without playbooks and without `updates` (no control plane
    /// could add one). Loads and attaches the limiter when a playbook
    /// enforces.
    pub fn start(
        config: &ActuationConfig,
        table: SharedTable,
        hook: Arc<ServiceHook>,
        metrics: AuditMetrics,
        sink: Sink,
        updates: Option<watch::Receiver<ActuationConfig>>,
    ) -> anyhow::Result<Option<Self>> {
        if config.playbooks.is_empty() && updates.is_none() {
            return Ok(None);
        }
        let engine = Engine::new(config, Instant::now()).context("actuation.playbooks")?;
        // The cluster's name is known once the pod watch is installed,
        // which happens before the loop starts.
        let cluster = crate::k8s::installed();
        let resource = Arc::new(crate::process::resource::own_resource(
            cluster.as_deref().and_then(|d| d.cluster_name()),
        ));
        let sampler = Sampler::new(&engine.series(), hook.stats.clone(), table.clone());
        hook.set(engine.reads_services());
        let mut this = Self {
            engine,
            sampler,
            enforcer: Box::new(NoLimiter(NOT_LOADED)),
            limiter_loaded: false,
            config: config.clone(),
            metrics,
            resource,
            sink,
            hook,
            table,
            updates,
            reported: HashSet::new(),
            unmetered: UnmeteredStats::default(),
        };
        if this.engine.enforces() {
            this.load_limiter()?;
        } else if !config.playbooks.is_empty() {
            tracing::info!("every playbook is dry-run: no limiter loaded");
        }
        Ok(Some(this))
    }

    /// Loads and hooks the kernel limiter, auditing what it found and did.
    fn load_limiter(&mut self) -> anyhow::Result<()> {
        let installed = enforcement::install(
            &self.config,
            &mut self.engine,
            &self.metrics,
            &self.resource,
        )?;
        self.enforcer = installed.enforcer;
        self.limiter_loaded = true;
        for record in installed.records {
            (self.sink)(Signal::Log(record));
        }
        self.audit(&installed.decisions);
        Ok(())
    }

    /// Runs until `stop` turns true, then withdraws (unless persisted).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let ticker = |interval| {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        };
        let mut ticks = ticker(self.config.interval);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stop| *stop) => break,
                Some(config) = next_update(&mut self.updates) => {
                    if config.interval != self.config.interval {
                        ticks = ticker(config.interval);
                    }
                    self.reconfigure(config);
                    continue;
                }
            }
            let sample = self.sampler.tick();
            self.metrics.samples.inc();
            let decisions = self.engine.step(&sample, self.enforcer.as_mut());
            self.audit(&decisions);
            self.report_kernel_counts();
        }
        if self.config.persist {
            tracing::info!(
                active = self.engine.active_len(),
                "persist: limits stay in the kernel"
            );
        } else {
            let decisions = self.engine.withdraw_all(self.enforcer.as_mut());
            self.audit(&decisions);
        }
    }

    /// Takes a new `actuation` section (its live keys only: the policy
    /// refuses the others): what removed or changed playbooks had in force
    /// is withdrawn, the kernel allowlist follows (it may only grow), and
    /// the limiter is loaded if an enforcing playbook is the first.
    pub fn reconfigure(&mut self, config: ActuationConfig) {
        let series = self.engine.series();
        let decisions = match self.engine.reconfigure(&config, self.enforcer.as_mut()) {
            Ok(decisions) => decisions,
            Err(err) => {
                tracing::error!(%err, "actuation.playbooks: not applied; the running ones stay");
                return;
            }
        };
        self.audit(&decisions);
        if self.limiter_loaded
            && let Err(err) = self.enforcer.allow(&config.allowlist.rules())
        {
            tracing::error!(%err, "actuation.allowlist: the kernel keeps the previous one");
        }
        self.config = config;
        if self.engine.series() != series {
            self.sampler = Sampler::new(
                &self.engine.series(),
                self.hook.stats.clone(),
                self.table.clone(),
            );
        }
        self.hook.set(self.engine.reads_services());
        if self.engine.enforces()
            && !self.limiter_loaded
            && let Err(err) = self.load_limiter()
        {
            // Enforcing actions fail, each audited, until a later config
            // with an enforcing playbook loads it (each tries again).
            tracing::error!(
                error = format!("{err:#}"),
                "the limiter could not be loaded"
            );
            self.enforcer = Box::new(NoLimiter(LOAD_FAILED));
        }
        tracing::info!(
            playbooks = self.config.playbooks.len(),
            enforcing = self.engine.enforces(),
            "actuation reconfigured"
        );
    }

    /// Copies the kernel's per-key and unmetered counts to /metrics; the
    /// series of a key that went (lifted, expired, cleared) go with it.
    fn report_kernel_counts(&mut self) {
        let mut present = HashSet::new();
        for (key, passed, dropped) in self.enforcer.counters() {
            self.metrics.record_packets(key, passed, dropped);
            present.insert(key);
        }
        for gone in self.reported.difference(&present) {
            self.metrics.forget_packets(*gone);
        }
        self.reported = present;
        if let Some(now) = self.enforcer.unmetered() {
            let before = self.unmetered.by_reason();
            for (i, (reason, count)) in now.by_reason().into_iter().enumerate() {
                // A count below the last one is a new map: all of it is new.
                let delta = count.checked_sub(before[i].1).unwrap_or(count);
                self.metrics
                    .unmetered
                    .get_or_create(&ReasonLabels { reason })
                    .inc_by(delta);
            }
            self.unmetered = now;
        }
    }

    fn audit(&self, decisions: &[super::engine::Decision]) {
        for decision in decisions {
            let mut record = audit::record(decision, &self.metrics, &self.resource);
            // The record's resource is the agent, the actor; the workload
            // whose series it read rides on the record.
            if let (Some("service"), Some(service)) =
                (decision.series.name.subject(), &decision.series.subject)
            {
                record.attributes.extend(self.hook.stats.workload(service));
            }
            tracing::info!(playbook = %decision.playbook, outcome = decision.outcome.label(), "{}", record.body);
            (self.sink)(Signal::Log(record));
        }
        self.metrics.active.set(self.engine.active_len() as i64);
    }
}
