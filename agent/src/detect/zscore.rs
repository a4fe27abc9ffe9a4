//! Rolling z-score: each point against the mean and standard deviation of
//! the last `window` points before it.

use serde::Deserialize;

use super::ring::Ring;
use super::stats::two_sided_score;
use super::{ConfigError, Detector};

/// Largest window accepted, so a config cannot ask for unbounded memory.
pub const MAX_WINDOW: u32 = 1 << 20;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZScoreConfig {
    /// Points in the rolling window (2 ..= 2^20).
    #[serde(default = "default_window")]
    pub window: u32,
    /// Points needed in the window before any score above 0.
    #[serde(default = "default_min_points")]
    pub min_points: u32,
}

fn default_window() -> u32 {
    1000
}
fn default_min_points() -> u32 {
    30
}

impl Default for ZScoreConfig {
    fn default() -> Self {
        Self {
            window: default_window(),
            min_points: default_min_points(),
        }
    }
}

impl ZScoreConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=MAX_WINDOW).contains(&self.window) {
            return Err(ConfigError::Invalid {
                field: "zscore.window",
                reason: format!("{} is outside 2..={MAX_WINDOW}", self.window),
            });
        }
        if self.min_points < 2 || self.min_points > self.window {
            return Err(ConfigError::Invalid {
                field: "zscore.min_points",
                reason: format!(
                    "{} is outside 2..=window ({})",
                    self.min_points, self.window
                ),
            });
        }
        Ok(())
    }
}

/// Score: the two-sided normal probability mass within the point's z-score.
#[derive(Debug, Clone)]
pub struct ZScore {
    min_points: usize,
    ring: Ring,
    /// Sliding-window mean and sum of squared deviations (Welford form with
    /// removal), O(1) per point and free of the cancellation of raw sums.
    mean: f64,
    m2: f64,
}

impl ZScore {
    pub fn new(cfg: ZScoreConfig) -> Self {
        Self {
            min_points: cfg.min_points as usize,
            ring: Ring::new(cfg.window as usize),
            mean: 0.0,
            m2: 0.0,
        }
    }

    pub(super) fn push(&mut self, x: f64) {
        if let Some(old) = self.ring.push(x) {
            // Replace `old` by `x` at constant count.
            let n = self.ring.len() as f64;
            let old_mean = self.mean;
            self.mean += (x - old) / n;
            self.m2 += (x - old) * (x - self.mean + old - old_mean);
        } else {
            let n = self.ring.len() as f64;
            let d = x - self.mean;
            self.mean += d / n;
            self.m2 += d * (x - self.mean);
        }
        self.m2 = self.m2.max(0.0);
    }

    #[cfg(test)]
    fn ring(&self) -> &Ring {
        &self.ring
    }
}

impl ZScore {
    /// Points in the window now.
    pub(super) fn len(&self) -> usize {
        self.ring.len()
    }

    /// Mean and standard deviation of the window (`None` below two points).
    pub(super) fn moments(&self) -> Option<(f64, f64)> {
        let n = self.ring.len();
        (n >= 2).then(|| (self.mean, (self.m2 / (n - 1) as f64).sqrt()))
    }
}

impl Detector for ZScore {
    fn name(&self) -> &'static str {
        "zscore"
    }

    fn update(&mut self, t: f64, value: f64) -> f64 {
        if !t.is_finite() || !value.is_finite() {
            return 0.0;
        }
        let n = self.ring.len();
        let score = if n < self.min_points {
            0.0
        } else {
            let std = (self.m2 / (n - 1) as f64).sqrt();
            let dev = (value - self.mean).abs();
            // A flat window has no spread: any departure from it is extreme.
            let floor = 1e-12 * (1.0 + self.mean.abs());
            if std > floor {
                two_sided_score(dev / std)
            } else if dev > floor {
                1.0
            } else {
                0.0
            }
        };
        self.push(value);
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::{noise, step_series};

    #[test]
    fn step_change_is_detected() {
        let mut d = ZScore::new(ZScoreConfig {
            window: 200,
            min_points: 30,
        });
        let scores: Vec<f64> = step_series(500, 10.0, 20.0, 1.0)
            .map(|(t, v)| d.update(t, v))
            .collect();
        assert!(scores[500] > 0.999_99, "score at the step {}", scores[500]);
        let before = scores[100..500].iter().cloned().fold(0.0, f64::max);
        assert!(before < 0.9999, "max before the step {before}");
    }

    #[test]
    fn constant_signal_scores_zero() {
        let mut d = ZScore::new(ZScoreConfig::default());
        for i in 0..3000 {
            assert_eq!(d.update(f64::from(i), 7.5), 0.0);
        }
    }

    #[test]
    fn rolling_moments_match_a_direct_computation() {
        let mut d = ZScore::new(ZScoreConfig {
            window: 50,
            min_points: 2,
        });
        let xs: Vec<f64> = noise(500).map(|n| 1000.0 + 3.0 * n).collect();
        for (i, &x) in xs.iter().enumerate() {
            d.update(i as f64, x);
        }
        let tail = &xs[450..];
        let mean = tail.iter().sum::<f64>() / 50.0;
        let m2: f64 = tail.iter().map(|x| (x - mean) * (x - mean)).sum();
        assert!((d.mean - mean).abs() < 1e-9);
        assert!((d.m2 - m2).abs() < 1e-6 * m2);
    }

    #[test]
    fn non_finite_input_is_ignored_and_storage_never_grows() {
        let mut d = ZScore::new(ZScoreConfig {
            window: 64,
            min_points: 8,
        });
        let ptr = d.ring().storage_ptr();
        for (i, n) in noise(10_000).enumerate() {
            let v = match i % 97 {
                0 => f64::NAN,
                1 => f64::INFINITY,
                2 => f64::NEG_INFINITY,
                _ => n,
            };
            let s = d.update(i as f64, v);
            assert!((0.0..=1.0).contains(&s));
        }
        assert_eq!(d.ring().capacity(), 64);
        assert_eq!(d.ring().storage_ptr(), ptr);
        assert!(d.mean.is_finite() && d.m2.is_finite());
    }
}
