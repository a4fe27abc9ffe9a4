//! The loop on the node: sample the series, evaluate the playbooks, apply
//! or lift limits, audit — every `actuation.interval` — and on stop withdraw
//! what is in force unless it is persisted.

use std::{collections::HashSet, sync::Arc, time::Instant};

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
    process::SharedTable,
    series::{Sampler, ServiceStats},
    signal::{AttrValue, Resource, Signal},
};

pub type Sink = Box<dyn Fn(Signal) + Send + Sync>;

pub struct ActuationLoop {
    engine: Engine,
    sampler: Sampler,
    enforcer: Box<dyn Enforcer + Send>,
    persist: bool,
    interval: std::time::Duration,
    metrics: AuditMetrics,
    resource: Arc<Resource>,
    sink: Sink,
    /// Keys with series at /metrics, to drop the series when a key goes.
    reported: HashSet<Key>,
    /// The kernel's unmetered counts at the last tick.
    unmetered: UnmeteredStats,
}

impl ActuationLoop {
    /// `None` without playbooks. Loads and attaches the limiter when a
    /// playbook enforces.
    pub fn start(
        config: &ActuationConfig,
        table: SharedTable,
        services: Arc<ServiceStats>,
        metrics: AuditMetrics,
        sink: Sink,
    ) -> anyhow::Result<Option<Self>> {
        if config.playbooks.is_empty() {
            return Ok(None);
        }
        let mut engine = Engine::new(config, Instant::now()).context("actuation.playbooks")?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let resource = Arc::new(Resource {
            attributes: vec![
                ("service.name", AttrValue::from("selfops")),
                (
                    "service.version",
                    AttrValue::from(env!("CARGO_PKG_VERSION")),
                ),
                ("host.name", AttrValue::from(host.trim())),
            ],
        });
        let (enforcer, decisions, records) = if engine.enforces() {
            let installed = enforcement::install(config, &mut engine, &metrics, &resource)?;
            (installed.enforcer, installed.decisions, installed.records)
        } else {
            tracing::info!("every playbook is dry-run: no limiter loaded");
            let none: Box<dyn Enforcer + Send> = Box::new(NoLimiter("no limiter is loaded"));
            (none, Vec::new(), Vec::new())
        };
        let sampler = Sampler::new(&engine.series(), services, table);
        let this = Self {
            engine,
            sampler,
            enforcer,
            persist: config.persist,
            interval: config.interval,
            metrics,
            resource,
            sink,
            reported: HashSet::new(),
            unmetered: UnmeteredStats::default(),
        };
        for record in records {
            (this.sink)(Signal::Log(record));
        }
        this.audit(&decisions);
        Ok(Some(this))
    }

    /// Runs until `stop` turns true, then withdraws (unless persisted).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
            let sample = self.sampler.tick();
            self.metrics.samples.inc();
            let decisions = self.engine.step(&sample, self.enforcer.as_mut());
            self.audit(&decisions);
            self.report_kernel_counts();
        }
        if self.persist {
            tracing::info!(
                active = self.engine.active_len(),
                "persist: limits stay in the kernel"
            );
        } else {
            let decisions = self.engine.withdraw_all(self.enforcer.as_mut());
            self.audit(&decisions);
        }
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
            let record = audit::record(decision, &self.metrics, &self.resource);
            tracing::info!(playbook = %decision.playbook, outcome = decision.outcome.label(), "{}", record.body);
            (self.sink)(Signal::Log(record));
        }
        self.metrics.active.set(self.engine.active_len() as i64);
    }
}
