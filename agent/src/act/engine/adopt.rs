//! Taking back what an earlier run left in force (persisted keys): a key
//! that matches an enforcing playbook's limit exactly is booked again with
//! the time it has left; any other is to be withdrawn.

use std::time::{Duration, Instant};

use super::{Active, Decision, Engine, Outcome};
use crate::act::{
    limiter::{Key, Rate, Scope},
    playbook::Effect,
};

/// A key found in the kernel at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    pub key: Key,
    pub rate: Rate,
    pub scope: Scope,
    /// Time left before the kernel ignores it; `None` once expired.
    pub remaining: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Adoption {
    /// Back on the books; the decision is audited `adopted`.
    Adopted(Decision),
    /// To be removed from the kernel, and why.
    Withdraw { key: Key, reason: String },
}

impl Engine {
    /// Books each of `pinned` that an enforcing playbook accounts for.
    pub fn adopt(&mut self, pinned: &[Pinned], now: Instant) -> Vec<Adoption> {
        pinned
            .iter()
            .map(|p| match self.adopt_one(p, now) {
                Ok(decision) => Adoption::Adopted(decision),
                Err(reason) => Adoption::Withdraw { key: p.key, reason },
            })
            .collect()
    }

    fn adopt_one(&mut self, pinned: &Pinned, now: Instant) -> Result<Decision, String> {
        let Some(remaining) = pinned.remaining else {
            return Err("expired".into());
        };
        let wanted = Effect::Limit {
            key: pinned.key,
            rate: pinned.rate,
            scope: pinned.scope,
        };
        let index = self
            .playbooks
            .iter()
            .enumerate()
            .position(|(i, p)| {
                !p.dry_run && p.effect == wanted && !self.active.iter().any(|a| a.playbook == i)
            })
            .ok_or_else(|| "no configured playbook sets this limit".to_owned())?;
        // A key cannot have more left than its playbook's TTL allows now.
        let remaining = remaining.min(self.playbooks[index].config.ttl);
        let expires_at = now
            .checked_add(remaining)
            .ok_or_else(|| format!("{remaining:?} overflows the clock"))?;
        self.active.push(Active {
            playbook: index,
            key: pinned.key,
            expires_at,
            dry_run: false,
        });
        let state = &self.playbooks[index];
        Ok(Decision {
            playbook: state.config.name.clone(),
            outcome: Outcome::Adopted(remaining),
            effect: state.effect,
            dry_run: false,
            series: state.series.clone(),
            value: None,
            compared: None,
            latency: None,
            ttl: state.config.ttl,
        })
    }
}
