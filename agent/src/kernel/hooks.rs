//! Hook tiering: each sensor lists the hook kinds it can run on, cheapest
//! first; the agent takes the first the probe table says works, and logs it.

use super::features::{Feature, Features};

/// Kinds of kernel hook a sensor may be built on, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookTier {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl HookTier {
    pub const fn feature(self) -> Feature {
        match self {
            HookTier::Fentry => Feature::Fentry,
            HookTier::Kprobe => Feature::Kprobe,
            HookTier::Tracepoint => Feature::Tracepoint,
        }
    }
}

/// The first of `offered` (ordered cheapest first) that this kernel has.
pub fn choose(sensor: &str, features: &Features, offered: &[HookTier]) -> Option<HookTier> {
    let chosen = offered
        .iter()
        .copied()
        .find(|tier| features.has(tier.feature()));
    let skipped: Vec<_> = offered
        .iter()
        .take_while(|tier| Some(**tier) != chosen)
        .map(|tier| format!("{tier:?}"))
        .collect();
    match chosen {
        Some(tier) => tracing::info!(sensor, hook = ?tier, unavailable = ?skipped, "hook chosen"),
        None => tracing::warn!(sensor, unavailable = ?skipped, "no usable hook"),
    }
    chosen
}
