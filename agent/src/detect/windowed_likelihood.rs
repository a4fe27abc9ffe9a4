//! Windowed Gaussian with anomaly likelihood: each point is judged against
//! the mean and spread of the last `window` points (optionally also against
//! a short-memory level, the less surprised of the two counting), its
//! surprisal judged against what this signal usually shows
//! ([`Likelihood`]), and after each firing the detector is quiet for a
//! while, so one incident fires once.

use serde::Deserialize;

use super::likelihood::{Likelihood, LikelihoodConfig};
use super::quiet::QuietAfterFiring;
use super::stats::{EwStats, surprisal};
use super::zscore::{MAX_WINDOW, ZScore, ZScoreConfig};
use super::{ConfigError, Detector};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WindowedLikelihoodConfig {
    /// Points in the rolling window (2 ..= 2^20).
    pub window: u32,
    /// Points needed in the window before any surprise.
    pub min_points: u32,
    /// Weight of the newest point in a short-memory level also forecasting
    /// each point, in [0, 1] (0: off).
    pub fast_alpha: f64,
    /// Weight of the newest error in the short-memory error spread, in (0, 1].
    pub error_alpha: f64,
    pub likelihood: LikelihoodConfig,
    /// Score at which the detector counts itself as having fired.
    pub fire_level: f64,
    /// Points after a firing during which the score is held at 0.
    pub quiet: u32,
}

impl Default for WindowedLikelihoodConfig {
    fn default() -> Self {
        Self {
            window: 400,
            min_points: 30,
            fast_alpha: 0.0,
            error_alpha: 0.02,
            likelihood: LikelihoodConfig::default(),
            fire_level: 0.5,
            quiet: 200,
        }
    }
}

impl WindowedLikelihoodConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=MAX_WINDOW).contains(&self.window) {
            return Err(ConfigError::Invalid {
                field: "windowed_likelihood.window",
                reason: format!("{} is outside 2..={MAX_WINDOW}", self.window),
            });
        }
        if self.min_points < 2 || self.min_points > self.window {
            return Err(ConfigError::Invalid {
                field: "windowed_likelihood.min_points",
                reason: format!(
                    "{} is outside 2..=window ({})",
                    self.min_points, self.window
                ),
            });
        }
        super::check_unit("windowed_likelihood.fast_alpha", self.fast_alpha)?;
        super::check_rate("windowed_likelihood.error_alpha", self.error_alpha)?;
        super::check_unit("windowed_likelihood.fire_level", self.fire_level)?;
        self.likelihood.validate()
    }
}

#[derive(Debug, Clone)]
pub struct WindowedLikelihood {
    cfg: WindowedLikelihoodConfig,
    window: ZScore,
    fast: Option<f64>,
    fast_errors: EwStats,
    likelihood: Likelihood,
    quiet: QuietAfterFiring,
}

impl WindowedLikelihood {
    pub fn new(cfg: WindowedLikelihoodConfig) -> Self {
        Self {
            window: ZScore::new(ZScoreConfig {
                window: cfg.window,
                min_points: cfg.min_points,
            }),
            fast: None,
            fast_errors: EwStats::new(cfg.error_alpha),
            likelihood: Likelihood::new(cfg.likelihood.clone()),
            quiet: QuietAfterFiring::default(),
            cfg,
        }
    }

    fn surprise(&mut self, value: f64) -> f64 {
        let windowed = match self.window.moments() {
            Some((mean, std)) if self.window.len() >= self.cfg.min_points as usize => {
                surprise_of(value - mean, std, mean)
            }
            _ => 0.0,
        };
        self.window.push(value);
        if self.cfg.fast_alpha <= 0.0 {
            return windowed;
        }
        let fast = match self.fast {
            Some(f) => {
                let err = value - f;
                let s = surprise_of(err, self.fast_errors.std(), f);
                self.fast_errors.update(err);
                self.fast = Some(f + self.cfg.fast_alpha * err);
                s
            }
            None => {
                self.fast = Some(value);
                0.0
            }
        };
        windowed.min(fast)
    }
}

/// Surprisal of `err` against `spread`; with no spread, any error at all is
/// a large surprise.
fn surprise_of(err: f64, spread: f64, scale: f64) -> f64 {
    let floor = 1e-12 * (1.0 + scale.abs());
    if spread > floor {
        surprisal(err / spread)
    } else if err.abs() > floor {
        surprisal(10.0)
    } else {
        0.0
    }
}

impl Detector for WindowedLikelihood {
    fn name(&self) -> &'static str {
        "windowed_likelihood"
    }

    fn update(&mut self, t: f64, value: f64) -> f64 {
        if !t.is_finite() || !value.is_finite() {
            return 0.0;
        }
        let raw = self.surprise(value);
        let score = self.likelihood.update(raw);
        self.quiet.gate(score, self.cfg.fire_level, self.cfg.quiet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::{noise, step_series};

    #[test]
    fn step_change_fires_once() {
        let mut d = WindowedLikelihood::new(WindowedLikelihoodConfig::default());
        let scores: Vec<f64> = step_series(2000, 10.0, 30.0, 1.0)
            .map(|(t, v)| d.update(t, v))
            .collect();
        let firings: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] >= 0.5).collect();
        assert_eq!(firings.len(), 1, "fires once: {firings:?}");
        assert!((2000..2010).contains(&firings[0]), "{firings:?}");
    }

    #[test]
    fn noise_alone_does_not_fire_and_a_constant_scores_zero() {
        for fast_alpha in [0.0, 0.6] {
            let cfg = WindowedLikelihoodConfig {
                fast_alpha,
                ..WindowedLikelihoodConfig::default()
            };
            let mut d = WindowedLikelihood::new(cfg.clone());
            let max = noise(5000)
                .enumerate()
                .map(|(i, n)| d.update(i as f64, 50.0 + n))
                .fold(0.0, f64::max);
            assert!(max < 0.5, "fast_alpha {fast_alpha}: {max}");
            let mut d = WindowedLikelihood::new(cfg);
            for i in 0..3000 {
                assert_eq!(d.update(f64::from(i), 5.0), 0.0);
            }
        }
    }

    #[test]
    fn invalid_parameters_are_named_and_non_finite_input_ignored() {
        let cfg = WindowedLikelihoodConfig {
            window: 1,
            ..WindowedLikelihoodConfig::default()
        };
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("windowed_likelihood.window"), "{err}");
        let mut d = WindowedLikelihood::new(WindowedLikelihoodConfig::default());
        for (i, n) in noise(3000).enumerate() {
            let v = if i % 10 == 0 { f64::NAN } else { n };
            let s = d.update(i as f64, v);
            assert!((0.0..=1.0).contains(&s), "{s}");
        }
        assert!(
            d.window
                .moments()
                .is_some_and(|(m, s)| m.is_finite() && s.is_finite())
        );
    }
}
