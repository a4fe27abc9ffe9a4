//! Plan and execute: playbook verdicts become actions on the kernel
//! limiter, each with a TTL, under a cool-down, a concurrency cap and the
//! allowlist; every decision comes back to be audited.
//!
//! Dry-run and enforcing playbooks share the books but not the kernel: an
//! enforcing action ignores dry-run bookings (they hold nothing in the
//! kernel), a dry-run action sees every booking (it shows what enforcing
//! would do), and a dry-run `lift` removes only dry-run bookings, so an
//! enforced limit never leaves the books while it stays in the kernel.

mod adopt;

pub use adopt::{Adoption, Pinned};

use std::time::{Duration, Instant};

use super::{
    condition::Condition,
    limiter::{Key, Rate, Scope},
    playbook::{ActuationConfig, Allowlist, Effect, Mode, Playbook},
};
use crate::{
    detect::{ConfigError, Verdict},
    series::{Sample, SeriesKey},
};

/// What carries an effect into the kernel. Errors are messages: the
/// engine only audits them (the limiter keeps the previous enforcement).
pub trait Enforcer {
    /// Limits `key` for `ttl`; the kernel ignores the key after that even
    /// if nothing lifts it.
    fn limit(&mut self, key: Key, rate: Rate, scope: Scope, ttl: Duration) -> Result<(), String>;
    fn lift(&mut self, key: Key) -> Result<(), String>;
    /// Packets passed and dropped per key in force, as the kernel counts them.
    fn counters(&self) -> Vec<(Key, u64, u64)> {
        Vec::new()
    }
    /// Puts `rules` in place of the allowlist the kernel passes first.
    fn allow(&mut self, _rules: &super::limiter::AllowRules) -> Result<(), String> {
        Ok(())
    }
    /// Packets the kernel saw that no key metered.
    fn unmetered(&self) -> Option<super::limiter::UnmeteredStats> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The limit is live in the kernel (or would be, in dry-run).
    Applied,
    /// Its TTL passed and it was lifted.
    Expired,
    /// A `lift` playbook removed it.
    Lifted,
    /// Not applied, and why (cool-down, concurrency cap, allowlist, …).
    Refused(String),
    /// The kernel refused the change; the previous enforcement stays.
    Failed(String),
    /// Lifted because the agent is stopping.
    Withdrawn,
    /// Found in force in the kernel at start (persisted by an earlier run)
    /// and taken back on the books, with the time it had left.
    Adopted(Duration),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Expired => "expired",
            Outcome::Lifted => "lifted",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
            Outcome::Withdrawn => "withdrawn",
            Outcome::Adopted(_) => "adopted",
        }
    }
}

/// One audited decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub playbook: String,
    pub outcome: Outcome,
    pub effect: Effect,
    pub dry_run: bool,
    pub series: SeriesKey,
    /// The signal's value at the decision (absent for expiries).
    pub value: Option<f64>,
    /// What the condition compared (smoothed value or anomaly score).
    pub compared: Option<f64>,
    /// From the signal crossing its level to the limit live in the kernel.
    pub latency: Option<Duration>,
    pub ttl: Duration,
}

/// How soon a failed expiry is tried again.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

struct PlaybookState {
    config: Playbook,
    effect: Effect,
    dry_run: bool,
    series: SeriesKey,
    condition: Condition,
    /// When its last action ended (for the cool-down).
    ended_at: Option<Instant>,
    /// A refusal is audited once per anomalous episode, not every tick.
    refusal_audited: bool,
}

struct Active {
    playbook: usize,
    key: Key,
    expires_at: Instant,
    /// Booked by a dry-run playbook: nothing of it is in the kernel.
    dry_run: bool,
}

pub struct Engine {
    playbooks: Vec<PlaybookState>,
    active: Vec<Active>,
    allowlist: Allowlist,
    max_concurrent: usize,
}

impl Engine {
    /// From a validated configuration.
    pub fn new(config: &ActuationConfig, epoch: Instant) -> Result<Self, ConfigError> {
        let mut playbooks = Vec::with_capacity(config.playbooks.len());
        for p in &config.playbooks {
            let effect = p
                .action
                .effect()
                .map_err(|(field, reason)| ConfigError::Invalid {
                    field: "do",
                    reason: format!("{field}: {reason}"),
                })?;
            playbooks.push(PlaybookState {
                config: p.clone(),
                effect,
                dry_run: p.mode.unwrap_or(config.mode) == Mode::DryRun,
                series: p.when.series(),
                condition: Condition::new(&p.when, epoch)?,
                ended_at: None,
                refusal_audited: false,
            });
        }
        Ok(Self {
            playbooks,
            active: Vec::new(),
            allowlist: config.allowlist.clone(),
            max_concurrent: config.max_concurrent,
        })
    }

    /// The series the playbooks read.
    pub fn series(&self) -> Vec<SeriesKey> {
        self.playbooks.iter().map(|p| p.series.clone()).collect()
    }

    /// Whether any playbook changes the kernel (else no limiter is needed).
    pub fn enforces(&self) -> bool {
        self.playbooks.iter().any(|p| !p.dry_run)
    }

    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Expires what is due, then evaluates every playbook on `sample`.
    pub fn step(&mut self, sample: &Sample, enforcer: &mut dyn Enforcer) -> Vec<Decision> {
        let now = sample.at;
        let mut decisions = self.expire(now, enforcer);
        for index in 0..self.playbooks.len() {
            let state = &mut self.playbooks[index];
            let Some(value) = sample.get(&state.series) else {
                continue;
            };
            let evaluation = state.condition.observe(now, value);
            if evaluation.verdict == Verdict::Normal {
                state.refusal_audited = false;
                continue;
            }
            if self.active.iter().any(|a| a.playbook == index) {
                continue;
            }
            let crossed_at = state.condition.crossed_at();
            let booked = self.active.len();
            let outcome = self.act(index, now, enforcer);
            let state = &mut self.playbooks[index];
            // Audited once per episode: a refusal, and a dry-run lift that
            // changed nothing (it would repeat every tick).
            let idle_dry_lift = state.dry_run
                && matches!(state.effect, Effect::Lift { .. })
                && self.active.len() == booked;
            let repeats = matches!(outcome, Outcome::Refused(_)) || idle_dry_lift;
            if repeats && state.refusal_audited {
                continue;
            }
            state.refusal_audited |= repeats;
            let applied = outcome == Outcome::Applied || outcome == Outcome::Lifted;
            decisions.push(Decision {
                playbook: state.config.name.clone(),
                effect: state.effect,
                dry_run: state.dry_run,
                series: state.series.clone(),
                value: Some(value),
                compared: Some(evaluation.compared),
                latency: applied
                    .then(|| crossed_at.map(|c| Instant::now().saturating_duration_since(c)))
                    .flatten(),
                ttl: state.config.ttl,
                outcome,
            });
        }
        decisions
    }

    fn act(&mut self, index: usize, now: Instant, enforcer: &mut dyn Enforcer) -> Outcome {
        let state = &self.playbooks[index];
        if let Some(ended) = state.ended_at
            && now.saturating_duration_since(ended) < state.config.cooldown
        {
            return Outcome::Refused(format!(
                "cooling down for {:?} after the last action",
                state.config.cooldown
            ));
        }
        let dry_run = state.dry_run;
        // What an action of this mode competes with (see the module docs).
        let relevant = |a: &&Active| dry_run || !a.dry_run;
        match state.effect {
            Effect::Limit { key, rate, scope } => {
                if let Some(why) = self.allowlist.protects(key) {
                    return Outcome::Refused(why);
                }
                if let Some(other) = self.active.iter().filter(relevant).find(|a| a.key == key) {
                    return Outcome::Refused(format!(
                        "{key} is already limited by playbook {:?}",
                        self.playbooks[other.playbook].config.name
                    ));
                }
                if self.active.iter().filter(relevant).count() >= self.max_concurrent {
                    return Outcome::Refused(format!(
                        "{} actions in force: the maximum",
                        self.max_concurrent
                    ));
                }
                let ttl = state.config.ttl;
                let Some(expires_at) = now.checked_add(ttl) else {
                    return Outcome::Refused(format!("ttl {ttl:?} overflows the clock"));
                };
                if !dry_run && let Err(err) = enforcer.limit(key, rate, scope, ttl) {
                    return Outcome::Failed(err);
                }
                self.active.push(Active {
                    playbook: index,
                    key,
                    expires_at,
                    dry_run,
                });
                Outcome::Applied
            }
            Effect::Lift { key } => {
                let on_key = |a: &Active| a.key == key && (!dry_run || a.dry_run);
                if !self.active.iter().any(|a| a.key == key) {
                    return Outcome::Refused(format!("nothing in force on {key}"));
                }
                let enforced = self.active.iter().any(|a| a.key == key && !a.dry_run);
                if !dry_run
                    && enforced
                    && let Err(err) = enforcer.lift(key)
                {
                    return Outcome::Failed(err);
                }
                // A dry-run lift of an enforced limit is audited as what
                // enforcing would do, and the limit stays on the books.
                let mut i = 0;
                while i < self.active.len() {
                    if on_key(&self.active[i]) {
                        let lifted = self.active.swap_remove(i);
                        self.playbooks[lifted.playbook].ended_at = Some(now);
                    } else {
                        i += 1;
                    }
                }
                Outcome::Lifted
            }
        }
    }

    /// Lifts every action whose TTL has passed.
    fn expire(&mut self, now: Instant, enforcer: &mut dyn Enforcer) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut retry = Vec::new();
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].expires_at > now {
                i += 1;
                continue;
            }
            let action = self.active.swap_remove(i);
            let (key, playbook, dry_run) = (action.key, action.playbook, action.dry_run);
            let decision = self.end(action, now, Outcome::Expired, enforcer);
            if matches!(decision.outcome, Outcome::Failed(_)) {
                // Still in the kernel (until its own deadline): keep it on
                // the books and try again.
                retry.push(Active {
                    playbook,
                    key,
                    expires_at: now.checked_add(EXPIRY_RETRY).unwrap_or(now),
                    dry_run,
                });
            }
            decisions.push(decision);
        }
        self.active.append(&mut retry);
        decisions
    }

    /// Lifts everything in force (the agent is stopping and nothing is
    /// persisted).
    pub fn withdraw_all(&mut self, enforcer: &mut dyn Enforcer) -> Vec<Decision> {
        let now = Instant::now();
        std::mem::take(&mut self.active)
            .into_iter()
            .map(|action| self.end(action, now, Outcome::Withdrawn, enforcer))
            .collect()
    }

    fn end(
        &mut self,
        action: Active,
        now: Instant,
        outcome: Outcome,
        enforcer: &mut dyn Enforcer,
    ) -> Decision {
        let state = &mut self.playbooks[action.playbook];
        state.ended_at = Some(now);
        let outcome = match action.dry_run {
            true => outcome,
            false => match enforcer.lift(action.key) {
                Ok(()) => outcome,
                Err(err) => Outcome::Failed(format!("lifting {}: {err}", action.key)),
            },
        };
        Decision {
            playbook: state.config.name.clone(),
            outcome,
            effect: state.effect,
            dry_run: action.dry_run,
            series: state.series.clone(),
            value: None,
            compared: None,
            latency: None,
            ttl: state.config.ttl,
        }
    }

    /// Takes `config`'s playbooks in place of the running ones. A playbook
    /// whose definition and mode are unchanged keeps its state (condition,
    /// cool-down) and what it has in force; a removed or changed one has its
    /// actions withdrawn (audited as withdrawals), and so has any action the
    /// new allowlist protects (the validator refuses playbooks naming an
    /// allowlisted key, so this is a guard). Nothing changes when `config`
    /// is invalid.
    pub fn reconfigure(
        &mut self,
        config: &ActuationConfig,
        enforcer: &mut dyn Enforcer,
    ) -> Result<Vec<Decision>, ConfigError> {
        let mut next = Engine::new(config, Instant::now())?;
        let same =
            |a: &PlaybookState, b: &PlaybookState| a.dry_run == b.dry_run && a.config == b.config;
        // Where each running playbook goes in the new list, if it stays.
        let kept: Vec<Option<usize>> = self
            .playbooks
            .iter()
            .map(|old| next.playbooks.iter().position(|new| same(old, new)))
            .collect();
        let now = Instant::now();
        let mut decisions = Vec::new();
        for action in std::mem::take(&mut self.active) {
            match kept[action.playbook] {
                Some(to) if next.allowlist.protects(action.key).is_none() => {
                    next.active.push(Active {
                        playbook: to,
                        ..action
                    });
                }
                _ => decisions.push(self.end(action, now, Outcome::Withdrawn, enforcer)),
            }
        }
        for (old, to) in std::mem::take(&mut self.playbooks).into_iter().zip(kept) {
            if let Some(to) = to {
                next.playbooks[to] = old;
            }
        }
        *self = next;
        Ok(decisions)
    }

    /// Whether a playbook reads a per-service series (fed by the tracer).
    pub fn reads_services(&self) -> bool {
        self.playbooks
            .iter()
            .any(|p| p.config.when.signal.subject() == Some("service"))
    }

    /// Keys of enforced actions on the books.
    pub fn enforced_keys(&self) -> Vec<Key> {
        self.active
            .iter()
            .filter(|a| !a.dry_run)
            .map(|a| a.key)
            .collect()
    }
}
