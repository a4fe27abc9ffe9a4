//! Additive Holt-Winters: level, trend and one seasonal profile, learnt
//! online; a point is scored by its one-step forecast error.
//!
//! The seasonal period is given as a duration (e.g. one day); the sampling
//! interval is inferred from the first timestamps, and the period in points
//! follows. The seasonal profile is allocated once at construction with room
//! for `max_period` points; a period that does not fit, or a sampling interval
//! that cannot be inferred, leaves the model without its seasonal term.

use std::time::Duration;

use serde::Deserialize;

use super::stats::{EwStats, two_sided_score};
use super::{ConfigError, Detector};

/// Largest seasonal profile accepted, so a config cannot ask for unbounded memory.
pub const MAX_PERIOD: u32 = 1 << 20;

/// Timestamp gaps looked at to infer the sampling interval.
const INTERVAL_SAMPLES: usize = 9;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HoltWintersConfig {
    /// Level smoothing, in (0, 1].
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Trend smoothing, in [0, 1] (0: no trend).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Seasonal smoothing, in [0, 1].
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// Length of one season.
    #[serde(default = "default_season", with = "humantime_serde")]
    pub season: Duration,
    /// Most points one season may hold (memory bound of the profile).
    #[serde(default = "default_max_period")]
    pub max_period: u32,
    /// Weight of the newest forecast error in the error spread, in (0, 1].
    #[serde(default = "default_error_alpha")]
    pub error_alpha: f64,
    /// Points seen before any score above 0.
    #[serde(default = "default_warmup")]
    pub warmup: u32,
}

fn default_alpha() -> f64 {
    0.1
}
fn default_beta() -> f64 {
    0.0
}
fn default_gamma() -> f64 {
    0.1
}
fn default_season() -> Duration {
    Duration::from_secs(86_400)
}
fn default_max_period() -> u32 {
    4096
}
fn default_error_alpha() -> f64 {
    0.01
}
fn default_warmup() -> u32 {
    50
}

impl Default for HoltWintersConfig {
    fn default() -> Self {
        Self {
            alpha: default_alpha(),
            beta: default_beta(),
            gamma: default_gamma(),
            season: default_season(),
            max_period: default_max_period(),
            error_alpha: default_error_alpha(),
            warmup: default_warmup(),
        }
    }
}

impl HoltWintersConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::check_rate("holt_winters.alpha", self.alpha)?;
        super::check_unit("holt_winters.beta", self.beta)?;
        super::check_unit("holt_winters.gamma", self.gamma)?;
        super::check_rate("holt_winters.error_alpha", self.error_alpha)?;
        if self.season.is_zero() {
            return Err(ConfigError::Invalid {
                field: "holt_winters.season",
                reason: "must be positive".into(),
            });
        }
        if !(1..=MAX_PERIOD).contains(&self.max_period) {
            return Err(ConfigError::Invalid {
                field: "holt_winters.max_period",
                reason: format!("{} is outside 1..={MAX_PERIOD}", self.max_period),
            });
        }
        Ok(())
    }
}

/// Where the seasonal index of a timestamp comes from, once known.
#[derive(Debug, Clone, Copy)]
struct Phase {
    t0: f64,
    season: f64,
    /// `season / period`: the period divides the season exactly, so a
    /// slightly wrong interval estimate does not drift the phase.
    step: f64,
    period: usize,
}

impl Phase {
    fn index(&self, t: f64) -> usize {
        let within = (t - self.t0).rem_euclid(self.season);
        ((within / self.step) as usize).min(self.period - 1)
    }
}

#[derive(Debug, Clone)]
pub struct HoltWinters {
    cfg: HoltWintersConfig,
    level: f64,
    trend: f64,
    seasonal: Box<[f64]>,
    seen: Box<[bool]>,
    phase: Option<Phase>,
    seasonal_off: bool,
    gaps: [f64; INTERVAL_SAMPLES],
    n_gaps: usize,
    t_first: f64,
    t_last: Option<f64>,
    errors: EwStats,
    count: u64,
}

impl HoltWinters {
    pub fn new(cfg: HoltWintersConfig) -> Self {
        let cap = cfg.max_period as usize;
        let errors = EwStats::new(cfg.error_alpha);
        Self {
            cfg,
            level: 0.0,
            trend: 0.0,
            seasonal: vec![0.0; cap].into_boxed_slice(),
            seen: vec![false; cap].into_boxed_slice(),
            phase: None,
            seasonal_off: false,
            gaps: [0.0; INTERVAL_SAMPLES],
            n_gaps: 0,
            t_first: 0.0,
            t_last: None,
            errors,
            count: 0,
        }
    }

    /// Points per season, once inferred (`None` before, or without a seasonal term).
    pub fn period(&self) -> Option<usize> {
        self.phase.map(|p| p.period)
    }

    /// Infers the sampling interval from the first timestamp gaps, then the
    /// period in points.
    fn observe_time(&mut self, t: f64) {
        let Some(last) = self.t_last else {
            self.t_first = t;
            self.t_last = Some(t);
            return;
        };
        self.t_last = Some(t.max(last));
        if self.phase.is_some() || self.seasonal_off {
            return;
        }
        let gap = t - last;
        if gap > 0.0 {
            self.gaps[self.n_gaps] = gap;
            self.n_gaps += 1;
        }
        if self.n_gaps == INTERVAL_SAMPLES {
            // The median gap: robust to a missing row or a late timestamp.
            let mut g = self.gaps;
            g.sort_by(f64::total_cmp);
            let interval = g[INTERVAL_SAMPLES / 2];
            let season = self.cfg.season.as_secs_f64();
            let period = (season / interval).round();
            if period >= 2.0 && period <= self.seasonal.len() as f64 {
                let period = period as usize;
                self.phase = Some(Phase {
                    t0: self.t_first,
                    season,
                    step: season / period as f64,
                    period,
                });
            } else {
                self.seasonal_off = true;
            }
        }
    }
}

/// One point's forecast error and the spread of past errors it is judged by.
#[derive(Debug, Clone, Copy)]
pub struct Residual {
    pub forecast: f64,
    pub error: f64,
    /// Exponentially weighted standard deviation of the errors before this one.
    pub spread: f64,
}

impl HoltWinters {
    /// Learns from one point and returns its forecast error; `None` for a
    /// non-finite point (ignored) or the very first one (nothing to forecast from).
    pub fn residual(&mut self, t: f64, value: f64) -> Option<Residual> {
        if !t.is_finite() || !value.is_finite() {
            return None;
        }
        self.observe_time(t);
        self.count = self.count.saturating_add(1);
        if self.count == 1 {
            self.level = value;
            return None;
        }
        let idx = self.phase.map(|p| p.index(t));
        let season_term = match idx {
            Some(i) if self.seen[i] => self.seasonal[i],
            _ => 0.0,
        };
        let forecast = self.level + self.trend + season_term;
        let error = value - forecast;
        let spread = self.errors.std();
        self.errors.update(error);

        let c = &self.cfg;
        let level = c.alpha * (value - season_term) + (1.0 - c.alpha) * (self.level + self.trend);
        self.trend = c.beta * (level - self.level) + (1.0 - c.beta) * self.trend;
        self.level = level;
        if let Some(i) = idx {
            let target = value - level;
            self.seasonal[i] = if self.seen[i] {
                c.gamma * target + (1.0 - c.gamma) * self.seasonal[i]
            } else {
                target
            };
            self.seen[i] = true;
        }
        Some(Residual {
            forecast,
            error,
            spread,
        })
    }
}

impl Detector for HoltWinters {
    fn name(&self) -> &'static str {
        "holt_winters"
    }

    fn update(&mut self, t: f64, value: f64) -> f64 {
        let Some(r) = self.residual(t, value) else {
            return 0.0;
        };
        if self.count <= u64::from(self.cfg.warmup) {
            return 0.0;
        }
        let floor = 1e-12 * (1.0 + r.forecast.abs());
        if r.spread > floor {
            two_sided_score(r.error / r.spread)
        } else if r.error.abs() > floor {
            1.0
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::noise;

    const STEP: f64 = 300.0;

    fn daily(i: usize) -> f64 {
        let day = 86_400.0 / STEP;
        50.0 + 20.0 * (2.0 * std::f64::consts::PI * i as f64 / day).sin()
    }

    #[test]
    fn infers_the_period_from_timestamps() {
        let mut d = HoltWinters::new(HoltWintersConfig::default());
        for i in 0..20 {
            d.update(1_400_000_000.0 + i as f64 * STEP, daily(i));
        }
        assert_eq!(d.period(), Some(288));
    }

    #[test]
    fn learnt_season_is_not_anomalous_but_a_break_in_it_is() {
        let mut d = HoltWinters::new(HoltWintersConfig::default());
        let n = 288 * 6;
        let mut late_max: f64 = 0.0;
        for (i, e) in noise(n).enumerate() {
            let s = d.update(i as f64 * STEP, daily(i) + 0.5 * e);
            if i > 288 * 4 {
                late_max = late_max.max(s);
            }
        }
        assert!(late_max < 0.9999, "max score on a learnt season {late_max}");
        // The signal drops below anything the season has shown.
        let mut broke: f64 = 0.0;
        for i in n..n + 10 {
            broke = broke.max(d.update(i as f64 * STEP, daily(i) - 30.0));
        }
        assert!(broke > 0.9999, "score on a broken season {broke}");
    }

    #[test]
    fn constant_signal_scores_zero() {
        let mut d = HoltWinters::new(HoltWintersConfig::default());
        for i in 0..2000 {
            assert_eq!(d.update(i as f64 * 60.0, 3.0), 0.0);
        }
    }

    #[test]
    fn step_change_is_detected() {
        let mut d = HoltWinters::new(HoltWintersConfig::default());
        for (i, e) in noise(1000).enumerate() {
            d.update(i as f64 * 60.0, 10.0 + e);
        }
        assert!(d.update(1000.0 * 60.0, 25.0) > 0.9999);
    }

    #[test]
    fn period_too_long_for_the_profile_disables_the_season() {
        let cfg = HoltWintersConfig {
            max_period: 100,
            ..HoltWintersConfig::default()
        };
        let mut d = HoltWinters::new(cfg);
        for i in 0..50 {
            d.update(i as f64, 1.0);
        }
        assert_eq!(d.period(), None);
        assert_eq!(d.seasonal.len(), 100);
    }

    #[test]
    fn non_finite_input_is_ignored_and_storage_never_grows() {
        let mut d = HoltWinters::new(HoltWintersConfig::default());
        let ptr = d.seasonal.as_ptr();
        for (i, e) in noise(5000).enumerate() {
            let v = if i % 50 == 0 { f64::NAN } else { daily(i) + e };
            let t = if i % 77 == 0 {
                f64::INFINITY
            } else {
                i as f64 * STEP
            };
            let s = d.update(t, v);
            assert!((0.0..=1.0).contains(&s));
        }
        assert_eq!(d.seasonal.as_ptr(), ptr);
        assert_eq!(d.seasonal.len(), 4096);
        assert!(d.level.is_finite() && d.trend.is_finite());
    }
}
