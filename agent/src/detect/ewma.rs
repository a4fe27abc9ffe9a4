//! EWMA control chart: a fast exponentially weighted mean of the signal
//! (the smoothed value a playbook compares with a level, e.g. CPU > 90%),
//! checked against control limits around a slow baseline of the raw signal.

use serde::Deserialize;

use super::stats::EwStats;
use super::{ConfigError, Detector};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EwmaConfig {
    /// Weight of the newest point in the smoothed value, in (0, 1].
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Weight of the newest point in the baseline mean and spread, in (0, 1];
    /// smaller than `alpha` so a shift shows before the baseline absorbs it.
    #[serde(default = "default_baseline_alpha")]
    pub baseline_alpha: f64,
    /// Control limit, in standard deviations of the smoothed value.
    #[serde(default = "default_limit")]
    pub limit: f64,
    /// Points seen before any score above 0.
    #[serde(default = "default_warmup")]
    pub warmup: u32,
}

fn default_alpha() -> f64 {
    0.3
}
fn default_baseline_alpha() -> f64 {
    0.01
}
fn default_limit() -> f64 {
    3.0
}
fn default_warmup() -> u32 {
    30
}

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            alpha: default_alpha(),
            baseline_alpha: default_baseline_alpha(),
            limit: default_limit(),
            warmup: default_warmup(),
        }
    }
}

impl EwmaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::check_rate("ewma.alpha", self.alpha)?;
        super::check_rate("ewma.baseline_alpha", self.baseline_alpha)?;
        super::check_positive("ewma.limit", self.limit)
    }
}

/// Score: how far the smoothed value sits from the baseline relative to the
/// control limit; 0.5 at the limit.
#[derive(Debug, Clone)]
pub struct Ewma {
    cfg: EwmaConfig,
    smoothed: Option<f64>,
    baseline: EwStats,
    /// Standard deviation of an EWMA of independent points relative to theirs.
    sigma_factor: f64,
}

impl Ewma {
    pub fn new(cfg: EwmaConfig) -> Self {
        let sigma_factor = (cfg.alpha / (2.0 - cfg.alpha)).sqrt();
        let baseline = EwStats::new(cfg.baseline_alpha);
        Self {
            cfg,
            smoothed: None,
            baseline,
            sigma_factor,
        }
    }

    /// The current smoothed value, `None` before the first finite point.
    pub fn smoothed(&self) -> Option<f64> {
        self.smoothed
    }
}

impl Detector for Ewma {
    fn name(&self) -> &'static str {
        "ewma"
    }

    fn update(&mut self, t: f64, value: f64) -> f64 {
        if !t.is_finite() || !value.is_finite() {
            return 0.0;
        }
        let smoothed = match self.smoothed {
            Some(s) => s + self.cfg.alpha * (value - s),
            None => value,
        };
        self.smoothed = Some(smoothed);
        // Judge against the baseline as it was before this point.
        let score = if self.baseline.count() < u64::from(self.cfg.warmup) {
            0.0
        } else {
            let spread = self.baseline.std() * self.sigma_factor;
            let dev = (smoothed - self.baseline.mean()).abs();
            limit_score(dev, spread, self.cfg.limit)
        };
        self.baseline.update(value);
        score
    }
}

/// With `r = dev / (limit · spread)`, the score `r / (1 + r)`: 0.5 exactly at
/// the control limit, still ordered beyond it (so one threshold can separate
/// large breaches from small ones). With no spread at all any deviation is
/// a full breach.
fn limit_score(dev: f64, spread: f64, limit: f64) -> f64 {
    if spread > 0.0 {
        let r = dev / (limit * spread);
        r / (1.0 + r)
    } else if dev > 0.0 {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::{noise, step_series};

    #[test]
    fn step_change_reaches_the_limit() {
        let mut d = Ewma::new(EwmaConfig::default());
        let scores: Vec<f64> = step_series(500, 50.0, 80.0, 1.0)
            .map(|(t, v)| d.update(t, v))
            .collect();
        // A 3σ chart on noise crosses its limit now and then, rarely.
        let early = scores[50..500].iter().filter(|&&s| s >= 0.5).count();
        assert!(early <= 4, "{early} alarms before the step");
        assert!(
            scores[500..510].iter().any(|&s| s >= 0.5),
            "the step reaches the limit"
        );
    }

    #[test]
    fn constant_signal_scores_zero_and_smooths_to_itself() {
        let mut d = Ewma::new(EwmaConfig::default());
        for i in 0..200 {
            assert_eq!(d.update(f64::from(i), 42.0), 0.0);
        }
        assert_eq!(d.smoothed(), Some(42.0));
    }

    #[test]
    fn smoothed_value_follows_a_noisy_level() {
        let mut d = Ewma::new(EwmaConfig::default());
        for (i, n) in noise(1000).enumerate() {
            d.update(i as f64, 90.0 + n);
        }
        let s = d.smoothed().unwrap_or_default();
        assert!((s - 90.0).abs() < 2.0, "smoothed {s}");
    }

    #[test]
    fn non_finite_input_is_ignored() {
        let mut d = Ewma::new(EwmaConfig::default());
        for i in 0..100 {
            d.update(f64::from(i), 1.0 + f64::from(i % 3));
        }
        let before = d.smoothed();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(d.update(100.0, bad), 0.0);
            assert_eq!(d.update(bad, 1.0), 0.0);
        }
        assert_eq!(d.smoothed(), before);
        let s = d.update(101.0, 2.0);
        assert!((0.0..=1.0).contains(&s));
    }
}
