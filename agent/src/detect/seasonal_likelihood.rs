//! The default detector. Two forecasters predict each point: a short-memory
//! one (an exponentially weighted recent level) and a seasonal Holt-Winters
//! one. A point is as surprising as the *less* surprised of the two says, so
//! a daily jump the season explains, or a sudden move the recent level
//! explains, is not news. Part of the largest surprisal seen about one
//! season ago (give or take a few minutes) is taken off, so an event that
//! recurs each season, such as a nightly job's spike, counts for less than
//! one never seen before. That surprisal is judged against what this signal
//! usually shows (anomaly likelihood), and after each firing the detector is
//! quiet for a while, so one incident fires once.
//!
//! Parameters were chosen on the Numenta Anomaly Benchmark (one set for the
//! whole corpus; `cargo xtask bench nab`).

use std::time::Duration;

use serde::Deserialize;

use super::holt_winters::{HoltWinters, HoltWintersConfig};
use super::likelihood::{Likelihood, LikelihoodConfig};
use super::quiet::QuietAfterFiring;
use super::stats::{EwStats, surprisal};
use super::{ConfigError, Detector};

/// Most points either side of "one season ago" searched for an echo, so the
/// cost per point stays bounded however fine the sampling.
const MAX_ECHO_SLACK: usize = 32;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SeasonalLikelihoodConfig {
    /// Weight of the newest point in the short-memory forecast, in (0, 1]
    /// (1: the forecast is the previous point).
    pub fast_alpha: f64,
    /// Weight of the newest error in the short-memory error spread, in (0, 1].
    pub error_alpha: f64,
    /// Whether the seasonal forecaster takes part.
    pub seasonal: bool,
    pub holt_winters: HoltWintersConfig,
    pub likelihood: LikelihoodConfig,
    /// Share, in [0, 1], of the largest surprisal seen one season ago taken
    /// off the current one (0: off; needs the seasonal period to be known).
    pub echo: f64,
    /// How far either side of "one season ago" an echo is looked for; turned
    /// into points with the sampling interval inferred from the timestamps
    /// (at most 32 points).
    #[serde(with = "humantime_serde")]
    pub echo_slack: Duration,
    /// Score at which the detector counts itself as having fired.
    pub fire_level: f64,
    /// Points after a firing during which the score is held at 0.
    pub quiet: u32,
}

impl Default for SeasonalLikelihoodConfig {
    fn default() -> Self {
        Self {
            fast_alpha: 0.6,
            error_alpha: 0.02,
            seasonal: true,
            holt_winters: HoltWintersConfig {
                alpha: 0.1,
                gamma: 0.1,
                error_alpha: 0.005,
                ..HoltWintersConfig::default()
            },
            likelihood: LikelihoodConfig::default(),
            echo: 0.45,
            echo_slack: Duration::from_secs(600),
            fire_level: 0.5,
            quiet: 200,
        }
    }
}

impl SeasonalLikelihoodConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::check_rate("seasonal_likelihood.fast_alpha", self.fast_alpha)?;
        super::check_rate("seasonal_likelihood.error_alpha", self.error_alpha)?;
        super::check_unit("seasonal_likelihood.fire_level", self.fire_level)?;
        super::check_unit("seasonal_likelihood.echo", self.echo)?;
        self.holt_winters.validate()?;
        self.likelihood.validate()
    }
}

#[derive(Debug, Clone)]
pub struct SeasonalLikelihood {
    cfg: SeasonalLikelihoodConfig,
    fast: Option<f64>,
    fast_errors: EwStats,
    hw: HoltWinters,
    likelihood: Likelihood,
    quiet: QuietAfterFiring,
    /// Surprisal of the last points, one season and the slack either side
    /// (allocated once, for the longest season the profile can hold).
    history: Box<[f64]>,
    /// Points stored in `history` so far.
    seen: usize,
}

impl SeasonalLikelihood {
    pub fn new(cfg: SeasonalLikelihoodConfig) -> Self {
        Self {
            fast: None,
            fast_errors: EwStats::new(cfg.error_alpha),
            hw: HoltWinters::new(cfg.holt_winters.clone()),
            likelihood: Likelihood::new(cfg.likelihood.clone()),
            quiet: QuietAfterFiring::default(),
            history: history_for(&cfg),
            seen: 0,
            cfg,
        }
    }

    /// Surprisal of the point: the smaller of the two forecasters'.
    fn surprise(&mut self, t: f64, value: f64) -> f64 {
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
        // The seasonal model learns even when it does not take part.
        let seasonal = self
            .hw
            .residual(t, value)
            .map(|r| surprise_of(r.error, r.spread, r.forecast));
        match seasonal {
            Some(s) if self.cfg.seasonal => fast.min(s),
            _ => fast,
        }
    }

    /// Takes off `echo` times the largest surprisal seen one season ago,
    /// give or take the slack (at most `MAX_ECHO_SLACK` points each side).
    fn without_echo(&mut self, raw: f64) -> f64 {
        let cap = self.history.len();
        if cap == 0 {
            return raw;
        }
        let mut echo: f64 = 0.0;
        if let (Some(period), true) = (self.hw.period(), self.cfg.seasonal) {
            let step = self.cfg.holt_winters.season.as_secs_f64() / period as f64;
            let slack =
                ((self.cfg.echo_slack.as_secs_f64() / step).round() as usize).min(MAX_ECHO_SLACK);
            // The oldest point looked at must still be held.
            if self.seen >= period + slack && period + slack < cap {
                let centre = self.seen - period;
                let newest = (centre + slack).min(self.seen - 1);
                for i in centre - slack..=newest {
                    echo = echo.max(self.history[i % cap]);
                }
            }
        }
        self.history[self.seen % cap] = raw;
        self.seen = self.seen.wrapping_add(1);
        (raw - self.cfg.echo * echo).max(0.0)
    }
}

/// Room for one season and the slack either side, or none if the echo is off.
fn history_for(cfg: &SeasonalLikelihoodConfig) -> Box<[f64]> {
    let len = if cfg.echo > 0.0 {
        cfg.holt_winters.max_period as usize + MAX_ECHO_SLACK + 1
    } else {
        0
    };
    vec![0.0; len].into_boxed_slice()
}

/// Surprisal of `err` against `spread`; with no spread yet, any error at all
/// is a large surprise.
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

impl Detector for SeasonalLikelihood {
    fn name(&self) -> &'static str {
        "seasonal_likelihood"
    }

    fn update(&mut self, t: f64, value: f64) -> f64 {
        if !t.is_finite() || !value.is_finite() {
            return 0.0;
        }
        let raw = self.surprise(t, value);
        let raw = if self.cfg.echo > 0.0 {
            self.without_echo(raw)
        } else {
            raw
        };
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
        let mut d = SeasonalLikelihood::new(SeasonalLikelihoodConfig::default());
        let scores: Vec<f64> = step_series(2000, 10.0, 30.0, 1.0)
            .map(|(t, v)| d.update(t, v))
            .collect();
        let firings: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] >= 0.5).collect();
        assert_eq!(firings.len(), 1, "fires once: {firings:?}");
        assert!(
            (2000..2010).contains(&firings[0]),
            "fires at the step: {firings:?}"
        );
    }

    #[test]
    fn a_daily_jump_the_season_explains_does_not_fire() {
        let mut d = SeasonalLikelihood::new(SeasonalLikelihoodConfig::default());
        // Five-minute points, a square wave: 20 by day, 80 by night.
        let mut late_max: f64 = 0.0;
        for (i, n) in noise(288 * 10).enumerate() {
            let level = if (i % 288) < 144 { 20.0 } else { 80.0 };
            let s = d.update(i as f64 * 300.0, level + n);
            if i > 288 * 3 {
                late_max = late_max.max(s);
            }
        }
        assert!(
            late_max < 0.5,
            "max score on a learnt daily pattern {late_max}"
        );
    }

    /// Largest score on days 5.. of a signal with a spike of `height` each
    /// day at about the same time (the spike wanders over three points).
    fn late_daily_spike_max(cfg: SeasonalLikelihoodConfig, height: f64) -> f64 {
        let mut d = SeasonalLikelihood::new(cfg);
        let day = 288;
        let mut late_max: f64 = 0.0;
        for (i, n) in noise(day * 10).enumerate() {
            let spike = i % day == 40 + (i / day) % 3;
            let v = 50.0 + n + if spike { height } else { 0.0 };
            let s = d.update(i as f64 * 300.0, v);
            if i > day * 5 {
                late_max = late_max.max(s);
            }
        }
        late_max
    }

    #[test]
    fn a_spike_recurring_each_day_is_discounted() {
        let without_echo = SeasonalLikelihoodConfig {
            echo: 0.0,
            ..SeasonalLikelihoodConfig::default()
        };
        for height in [1.8, 2.5] {
            let with = late_daily_spike_max(SeasonalLikelihoodConfig::default(), height);
            let without = late_daily_spike_max(without_echo.clone(), height);
            assert!(with < without, "height {height}: {with} vs {without}");
        }
        // A spike that fires every day without the echo no longer does with it.
        let with = late_daily_spike_max(SeasonalLikelihoodConfig::default(), 1.8);
        let without = late_daily_spike_max(without_echo, 1.8);
        assert!(with < 0.5 && without >= 0.5, "{with} vs {without}");
    }

    #[test]
    fn constant_signal_scores_zero() {
        let mut d = SeasonalLikelihood::new(SeasonalLikelihoodConfig::default());
        for i in 0..3000 {
            assert_eq!(d.update(f64::from(i) * 60.0, 5.0), 0.0);
        }
    }

    #[test]
    fn non_finite_input_is_ignored_and_storage_never_grows() {
        let mut d = SeasonalLikelihood::new(SeasonalLikelihoodConfig::default());
        for (i, n) in noise(3000).enumerate() {
            let v = if i % 10 == 0 { f64::NAN } else { n };
            let t = if i % 33 == 0 {
                f64::NEG_INFINITY
            } else {
                i as f64 * 60.0
            };
            let s = d.update(t, v);
            assert!((0.0..=1.0).contains(&s), "{s}");
        }
        assert!(d.fast.is_some_and(f64::is_finite));
    }
}
