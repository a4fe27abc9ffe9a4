//! Putting the limiter in place at start: what earlier runs left (stale
//! pinned links, clsact filters, persisted keys) is cleaned up or adopted,
//! then each configured interface is hooked on its own — one that cannot
//! be hooked is audited and skipped, never a reason for the agent not to
//! start.

use std::{path::Path, sync::Arc, time::Instant};

use anyhow::Context as _;

use super::{
    audit::AuditMetrics,
    engine::{Adoption, Decision, Enforcer, Engine, Pinned},
    limiter::{
        DEFAULT_PIN_DIR, Entry, Key, Limiter, LimiterError, LimiterOptions, Rate, Scope, TcMode,
        UnmeteredStats, clock, found, link_pins, remove_stale_filters, remove_stale_links,
    },
    limiter_audit::{HookOutcome, hook_record, orphan_record},
    playbook::{ActuationConfig, Hook},
};
use crate::signal::{LogRecord, Resource};

impl Enforcer for Limiter {
    fn limit(
        &mut self,
        key: Key,
        rate: Rate,
        scope: Scope,
        ttl: std::time::Duration,
    ) -> Result<(), String> {
        self.set(key, rate, scope, ttl).map_err(|e| e.to_string())
    }

    fn lift(&mut self, key: Key) -> Result<(), String> {
        Limiter::lift(self, key)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn allow(&mut self, rules: &super::limiter::AllowRules) -> Result<(), String> {
        self.set_allowlist(rules).map_err(|e| e.to_string())
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

    fn unmetered(&self) -> Option<UnmeteredStats> {
        self.stats().ok()
    }
}

/// Stands in when no limiter enforces: every playbook is dry-run (the
/// engine never calls it), or no interface could be hooked (every
/// enforcing action fails, audited).
pub struct NoLimiter(pub &'static str);

impl Enforcer for NoLimiter {
    fn limit(&mut self, _: Key, _: Rate, _: Scope, _: std::time::Duration) -> Result<(), String> {
        Err(self.0.into())
    }

    fn lift(&mut self, _: Key) -> Result<(), String> {
        Err(self.0.into())
    }
}

/// What start-up produced: the enforcer, and what to audit.
pub struct Installed {
    pub enforcer: Box<dyn Enforcer + Send>,
    pub decisions: Vec<Decision>,
    pub records: Vec<LogRecord>,
}

/// Loads the limiter, cleans up after earlier runs, hooks every interface
/// it can and adopts the persisted keys `engine` accounts for.
pub fn install(
    config: &ActuationConfig,
    engine: &mut Engine,
    metrics: &AuditMetrics,
    resource: &Arc<Resource>,
) -> anyhow::Result<Installed> {
    let dir = Path::new(DEFAULT_PIN_DIR);
    // Keys a persistent run left, when this one does not persist: its
    // pins go (they would enforce with nobody watching), and what a
    // playbook accounts for moves into this run's maps below.
    let inherited = if config.persist {
        Vec::new()
    } else {
        found::take_pinned(dir).context("removing the limiter state an earlier run pinned")?
    };
    let mut limiter = Limiter::load(&LimiterOptions {
        max_keys: config.max_keys,
        pin_dir: config.persist.then(|| dir.into()),
        allow: config.allowlist.rules(),
    })
    .context("loading the limiter")?;
    if let Err(e) = limiter.check_kernel_support() {
        return Ok(switched_off(config, &e, resource));
    }
    if config.persist {
        let keep: Vec<String> = config
            .interfaces
            .iter()
            .flat_map(|i| link_pins(i))
            .collect();
        remove_stale_links(dir, &keep).context("unpinning stale limiter links")?;
    }
    let mut records = Vec::new();
    let mut hooked = 0;
    for interface in &config.interfaces {
        if let Err(e) = remove_stale_filters(interface) {
            tracing::warn!(interface, error = %e, "could not remove a stale limiter filter");
        }
        let outcome = hook(&mut limiter, interface, config.hook);
        match &outcome {
            HookOutcome::Failed(why) => tracing::error!(interface, %why, "limiter not attached"),
            HookOutcome::Fallback { how, why } => {
                tracing::warn!(interface, %how, %why, "limiter attached another way")
            }
            HookOutcome::Attached(_) => {}
        }
        hooked += usize::from(!matches!(outcome, HookOutcome::Failed(_)));
        records.push(hook_record(interface, &outcome, resource));
    }
    let mut found = limiter.entries().context("reading the limiter's keys")?;
    found.extend(inherited);
    let decisions = adopt(
        &mut limiter,
        engine,
        &found,
        metrics,
        resource,
        &mut records,
    );
    tracing::info!(
        hooked,
        interfaces = config.interfaces.len(),
        "limiter loaded"
    );
    let enforcer: Box<dyn Enforcer + Send> = if hooked == 0 {
        tracing::error!(
            "the limiter is hooked to no interface: enforcing actions will fail (audited)"
        );
        Box::new(NoLimiter("the limiter is hooked to no interface"))
    } else {
        Box::new(limiter)
    };
    Ok(Installed {
        enforcer,
        decisions,
        records,
    })
}

/// The kernel cannot carry the limiter: one warning, no hook, and every
/// enforcing action fails, audited (dry-run playbooks go on as before).
fn switched_off(
    config: &ActuationConfig,
    error: &LimiterError,
    resource: &Arc<Resource>,
) -> Installed {
    const WHY: &str = "limiter off: the kernel's verifier refuses the BPF compare-and-exchange it needs (Linux 5.12)";
    // The verifier's log follows the reason: only its first line here.
    let detail = error.to_string();
    let detail = detail.lines().next().unwrap_or_default();
    tracing::warn!(
        error = detail,
        "{WHY}; enforcing actions will fail (audited)"
    );
    let records = config
        .interfaces
        .iter()
        .map(|interface| hook_record(interface, &HookOutcome::Failed(WHY.to_owned()), resource))
        .collect();
    Installed {
        enforcer: Box::new(NoLimiter(WHY)),
        decisions: Vec::new(),
        records,
    }
}

fn hook(limiter: &mut Limiter, interface: &str, hook: Hook) -> HookOutcome {
    let tc = |limiter: &mut Limiter, mode| limiter.attach_tc_with(interface, mode);
    match hook {
        Hook::Xdp => match limiter.attach_xdp(interface) {
            Ok(how) => HookOutcome::Attached(how.to_string()),
            // Another program's XDP stays; tc runs after it.
            Err(occupied @ LimiterError::Occupied { .. }) => match tc(limiter, TcMode::Auto) {
                Ok(how) => HookOutcome::Fallback {
                    how: how.to_string(),
                    why: occupied.to_string(),
                },
                Err(e) => HookOutcome::Failed(format!("{occupied}; tc: {e}")),
            },
            Err(e) => HookOutcome::Failed(e.to_string()),
        },
        Hook::Tc => tc(limiter, TcMode::Auto).map_or_else(
            |e| HookOutcome::Failed(e.to_string()),
            |how| HookOutcome::Attached(how.to_string()),
        ),
        Hook::TcClsact => tc(limiter, TcMode::Clsact).map_or_else(
            |e| HookOutcome::Failed(e.to_string()),
            |how| HookOutcome::Attached(how.to_string()),
        ),
    }
}

/// Books the found keys a playbook accounts for (with the time they have
/// left, in the kernel too) and removes the rest.
fn adopt(
    limiter: &mut Limiter,
    engine: &mut Engine,
    found: &[Entry],
    metrics: &AuditMetrics,
    resource: &Arc<Resource>,
    records: &mut Vec<LogRecord>,
) -> Vec<Decision> {
    let now_ns = clock::boot_ns();
    let pinned: Vec<Pinned> = found
        .iter()
        .map(|e| Pinned {
            key: e.key,
            rate: e.rate,
            scope: e.scope,
            remaining: e.remaining(now_ns),
        })
        .collect();
    let mut decisions = Vec::new();
    for (adoption, pinned) in engine
        .adopt(&pinned, Instant::now())
        .into_iter()
        .zip(&pinned)
    {
        match adoption {
            Adoption::Adopted(mut decision) => {
                let left = match decision.outcome {
                    super::engine::Outcome::Adopted(left) => left,
                    _ => std::time::Duration::ZERO,
                };
                let deadline = u64::try_from(left.as_nanos())
                    .ok()
                    .and_then(|left| now_ns.checked_add(left))
                    .unwrap_or(now_ns);
                if let Err(e) = limiter.set_until(pinned.key, pinned.rate, pinned.scope, deadline) {
                    decision.outcome = super::engine::Outcome::Failed(format!("adopting: {e}"));
                }
                decisions.push(decision);
            }
            Adoption::Withdraw { key, reason } => {
                if let Err(e) = limiter.lift(key) {
                    tracing::warn!(%key, error = %e, "could not remove a key left by an earlier run");
                }
                tracing::info!(%key, %reason, "key left by an earlier run withdrawn");
                records.push(orphan_record(key, &reason, metrics, resource));
            }
        }
    }
    decisions
}
