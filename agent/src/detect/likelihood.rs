//! Anomaly likelihood: judges a stream of surprisals against its own past.
//!
//! How surprising a point looks to a forecaster means different things on
//! different signals: a noisy or spiky signal surprises it all the time. Each
//! surprisal is first squashed to [0, 1] (0 up to `raw_from` nats, rising
//! over `raw_width` nats), so that one extreme point does not dominate the
//! statistics. This stage keeps the mean and spread of those values
//! (exponentially weighted, so it keeps adapting) and measures, in spreads,
//! how far above usual the current value is, or the average of the last
//! `short` ones (a sustained change made of points each only mildly
//! surprising). That distance `u` becomes the score `u / (u + scale)`.

use serde::Deserialize;

use super::ConfigError;
use super::ring::Ring;
use super::stats::EwStats;

/// Largest short window accepted.
pub const MAX_SHORT: u32 = 4096;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LikelihoodConfig {
    /// Surprisal (nats) below which a point counts as not surprising at all.
    pub raw_from: f64,
    /// Nats over which the squashed surprisal rises from 0 to 1.
    pub raw_width: f64,
    /// Values averaged to catch a sustained change (1 ..= 4096).
    pub short: u32,
    /// Weight of the newest value in the long-run mean and spread, in (0, 1].
    pub long_alpha: f64,
    /// Floor on the long-run spread, so a long quiet stretch does not turn
    /// the smallest surprise into a certain anomaly.
    pub min_spread: f64,
    /// Values seen before any score above 0.
    pub warmup: u32,
    /// Distance above usual, in spreads, that scores 0.5.
    pub scale: f64,
}

impl Default for LikelihoodConfig {
    fn default() -> Self {
        Self {
            raw_from: 3.0,
            raw_width: 20.0,
            short: 10,
            long_alpha: 0.005,
            min_spread: 0.03,
            warmup: 150,
            scale: 10.0,
        }
    }
}

impl LikelihoodConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SHORT).contains(&self.short) {
            return Err(ConfigError::Invalid {
                field: "likelihood.short",
                reason: format!("{} is outside 1..={MAX_SHORT}", self.short),
            });
        }
        if !(self.raw_from >= 0.0 && self.raw_from.is_finite()) {
            return Err(ConfigError::Invalid {
                field: "likelihood.raw_from",
                reason: format!("{} is not a non-negative number", self.raw_from),
            });
        }
        super::check_positive("likelihood.raw_width", self.raw_width)?;
        super::check_rate("likelihood.long_alpha", self.long_alpha)?;
        super::check_positive("likelihood.min_spread", self.min_spread)?;
        super::check_positive("likelihood.scale", self.scale)
    }
}

#[derive(Debug, Clone)]
pub struct Likelihood {
    cfg: LikelihoodConfig,
    recent: Ring,
    recent_sum: f64,
    long: EwStats,
    sqrt_short: f64,
}

impl Likelihood {
    pub fn new(cfg: LikelihoodConfig) -> Self {
        Self {
            recent: Ring::new(cfg.short as usize),
            recent_sum: 0.0,
            long: EwStats::new(cfg.long_alpha),
            sqrt_short: f64::from(cfg.short).sqrt(),
            cfg,
        }
    }

    /// Feeds one surprisal (nats) and returns the score in [0, 1).
    pub fn update(&mut self, surprisal: f64) -> f64 {
        let s = if surprisal.is_finite() {
            surprisal
        } else {
            0.0
        };
        let raw = ((s - self.cfg.raw_from) / self.cfg.raw_width).clamp(0.0, 1.0);
        if let Some(old) = self.recent.push(raw) {
            self.recent_sum -= old;
        }
        // Rounding drift of the running sum cannot take it below zero.
        self.recent_sum = (self.recent_sum + raw).max(0.0);
        let score = if self.long.count() < u64::from(self.cfg.warmup) {
            0.0
        } else {
            let mean = self.long.mean();
            let spread = self.long.std().max(self.cfg.min_spread);
            let single = (raw - mean) / spread;
            let sustained = if self.recent.is_full() {
                let avg = self.recent_sum / self.recent.len() as f64;
                // The average of `short` usual values spreads √short times less.
                (avg - mean) / spread * self.sqrt_short
            } else {
                0.0
            };
            let u = single.max(sustained).max(0.0);
            u / (u + self.cfg.scale)
        };
        self.long.update(raw);
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::stats::surprisal;
    use crate::detect::testing::noise;

    #[test]
    fn usual_surprise_stays_low_and_a_burst_scores_high() {
        let mut l = Likelihood::new(LikelihoodConfig::default());
        let mut max_usual: f64 = 0.0;
        for (i, n) in noise(5000).enumerate() {
            let s = l.update(surprisal(1.5 * n));
            if i > 200 {
                max_usual = max_usual.max(s);
            }
        }
        assert!(max_usual < 0.3, "usual {max_usual}");
        let spike = l.update(surprisal(8.0));
        assert!(spike > 0.6, "spike {spike}");
    }

    #[test]
    fn a_spike_among_many_spikes_is_no_news() {
        let mut l = Likelihood::new(LikelihoodConfig::default());
        let mut last = 0.0;
        for (i, n) in noise(5000).enumerate() {
            let z = if i % 20 == 0 { 8.0 } else { n };
            last = l.update(surprisal(z));
        }
        assert!(last < 0.5, "a recurring spike scores {last}");
    }

    #[test]
    fn sustained_mild_surprise_scores_high() {
        let mut l = Likelihood::new(LikelihoodConfig::default());
        for n in noise(5000) {
            l.update(surprisal(n));
        }
        let sustained = (0..10)
            .map(|_| l.update(surprisal(3.5)))
            .fold(0.0, f64::max);
        assert!(sustained > 0.5, "sustained {sustained}");
    }

    #[test]
    fn constant_input_gives_zero() {
        let mut l = Likelihood::new(LikelihoodConfig::default());
        for _ in 0..2000 {
            assert_eq!(l.update(0.0), 0.0);
        }
    }
}
