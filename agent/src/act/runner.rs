//! The loop on the node: sample the series, evaluate the playbooks, apply
//! or lift limits, audit — every `actuation.interval` — and on stop withdraw
//! what is in force unless it is persisted.

use std::{sync::Arc, time::Instant};

use anyhow::Context as _;
use tokio::sync::watch;

use super::{
    audit::{self, AuditMetrics},
    engine::{Enforcer, Engine},
    limiter::{DEFAULT_PIN_DIR, Key, Limiter, LimiterOptions, Rate, Scope},
    playbook::{ActuationConfig, Hook},
};
use crate::{
    process::SharedTable,
    series::{Sampler, ServiceStats},
    signal::{AttrValue, Resource, Signal},
};

impl Enforcer for Limiter {
    fn limit(&mut self, key: Key, rate: Rate, scope: Scope) -> Result<(), String> {
        self.set(key, rate, scope).map_err(|e| e.to_string())
    }

    fn lift(&mut self, key: Key) -> Result<(), String> {
        Limiter::lift(self, key)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn counters(&self) -> Vec<(Key, u64, u64)> {
        match self.entries() {
            Ok(entries) => entries
                .into_iter()
                .map(|e| (e.key, e.counters.passed, e.counters.dropped))
                .collect(),
            Err(err) => {
                tracing::debug!(%err, "reading the limiter's counters");
                Vec::new()
            }
        }
    }
}

/// Stands in when every playbook is dry-run: the engine never calls it.
struct NoLimiter;

impl Enforcer for NoLimiter {
    fn limit(&mut self, _: Key, _: Rate, _: Scope) -> Result<(), String> {
        Err("no limiter is loaded".into())
    }

    fn lift(&mut self, _: Key) -> Result<(), String> {
        Err("no limiter is loaded".into())
    }
}

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
        let engine = Engine::new(config, Instant::now()).context("actuation.playbooks")?;
        let enforcer: Box<dyn Enforcer + Send> = if engine.enforces() {
            let mut limiter = Limiter::load(&LimiterOptions {
                max_keys: config.max_keys,
                pin_dir: config.persist.then(|| DEFAULT_PIN_DIR.into()),
            })
            .context("loading the limiter")?;
            // The limiter logs which hook each interface got.
            for interface in &config.interfaces {
                match config.hook {
                    Hook::Xdp => limiter.attach_xdp(interface).map(drop),
                    Hook::Tc => limiter.attach_tc(interface).map(drop),
                }
                .with_context(|| format!("attaching the limiter to {interface}"))?;
            }
            Box::new(limiter)
        } else {
            tracing::info!("every playbook is dry-run: no limiter loaded");
            Box::new(NoLimiter)
        };
        let sampler = Sampler::new(&engine.series(), services, table);
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
        Ok(Some(Self {
            engine,
            sampler,
            enforcer,
            persist: config.persist,
            interval: config.interval,
            metrics,
            resource,
            sink,
        }))
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
            for (key, passed, dropped) in self.enforcer.counters() {
                self.metrics.record_packets(key, passed, dropped);
            }
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

    fn audit(&self, decisions: &[super::engine::Decision]) {
        for decision in decisions {
            let record = audit::record(decision, &self.metrics, &self.resource);
            tracing::info!(playbook = %decision.playbook, outcome = decision.outcome.label(), "{}", record.body);
            (self.sink)(Signal::Log(record));
        }
        self.metrics.active.set(self.engine.active_len() as i64);
    }
}
