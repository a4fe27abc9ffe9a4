//! Verdicts with hysteresis: a score must rise to `enter` and stay there for
//! `min_duration` to turn the verdict anomalous, and fall to `exit` and stay
//! there as long to turn it back, so a flapping score does not flap actions.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Normal,
    Anomalous,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HysteresisConfig {
    /// Score at or above which the verdict may turn anomalous.
    pub enter: f64,
    /// Score at or below which the verdict may turn normal again (≤ `enter`).
    pub exit: f64,
    /// How long a condition must hold before the verdict changes.
    #[serde(default, with = "humantime_serde")]
    pub min_duration: Duration,
}

impl HysteresisConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::check_unit("hysteresis.enter", self.enter)?;
        super::check_unit("hysteresis.exit", self.exit)?;
        if self.exit > self.enter {
            return Err(ConfigError::Invalid {
                field: "hysteresis.exit",
                reason: format!("{} is above enter ({})", self.exit, self.enter),
            });
        }
        Ok(())
    }
}

/// Turns a stream of scores into a verdict.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    enter: f64,
    exit: f64,
    min_duration: f64,
    verdict: Verdict,
    /// Since when the condition for the other verdict has held.
    pending_since: Option<f64>,
}

impl Hysteresis {
    /// Fails on levels outside [0, 1] or `exit` above `enter`.
    pub fn new(cfg: &HysteresisConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            enter: cfg.enter,
            exit: cfg.exit,
            min_duration: cfg.min_duration.as_secs_f64(),
            verdict: Verdict::Normal,
            pending_since: None,
        })
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Feeds the score at time `t` (seconds) and returns the verdict after it.
    /// A NaN score or time changes nothing.
    pub fn observe(&mut self, t: f64, score: f64) -> Verdict {
        if score.is_nan() || !t.is_finite() {
            return self.verdict;
        }
        let toward_other = match self.verdict {
            Verdict::Normal => score >= self.enter,
            Verdict::Anomalous => score <= self.exit,
        };
        if !toward_other {
            self.pending_since = None;
            return self.verdict;
        }
        let since = *self.pending_since.get_or_insert(t);
        if t - since >= self.min_duration {
            self.verdict = match self.verdict {
                Verdict::Normal => Verdict::Anomalous,
                Verdict::Anomalous => Verdict::Normal,
            };
            self.pending_since = None;
        }
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(enter: f64, exit: f64, secs: u64) -> Hysteresis {
        let cfg = HysteresisConfig {
            enter,
            exit,
            min_duration: Duration::from_secs(secs),
        };
        Hysteresis::new(&cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn flapping_score_does_not_flap_the_verdict() {
        let mut v = h(0.9, 0.5, 3);
        // Alternates above `enter` and between the levels, every second.
        for i in 0..20 {
            let score = if i % 2 == 0 { 0.95 } else { 0.7 };
            assert_eq!(v.observe(f64::from(i), score), Verdict::Normal);
        }
    }

    #[test]
    fn sustained_score_enters_after_min_duration_and_exits_below_exit_only() {
        let mut v = h(0.9, 0.5, 3);
        assert_eq!(v.observe(0.0, 0.95), Verdict::Normal);
        assert_eq!(v.observe(2.0, 0.95), Verdict::Normal);
        assert_eq!(v.observe(3.0, 0.95), Verdict::Anomalous);
        // Between the levels: stays anomalous however long.
        for t in 4..100 {
            assert_eq!(v.observe(f64::from(t), 0.7), Verdict::Anomalous);
        }
        assert_eq!(v.observe(100.0, 0.2), Verdict::Anomalous);
        assert_eq!(v.observe(103.0, 0.2), Verdict::Normal);
    }

    #[test]
    fn zero_duration_reacts_immediately() {
        let mut v = h(0.8, 0.8, 0);
        assert_eq!(v.observe(0.0, 0.8), Verdict::Anomalous);
        assert_eq!(v.observe(1.0, 0.1), Verdict::Normal);
        assert_eq!(v.observe(2.0, f64::NAN), Verdict::Normal);
    }

    #[test]
    fn rejects_inverted_levels() {
        let cfg = HysteresisConfig {
            enter: 0.5,
            exit: 0.9,
            min_duration: Duration::ZERO,
        };
        assert!(Hysteresis::new(&cfg).is_err());
    }
}
