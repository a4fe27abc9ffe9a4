//! Static threshold: fires while the value is above `above` or below `below`.

use serde::Deserialize;

use super::{ConfigError, Detector};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Values strictly above this fire.
    #[serde(default)]
    pub above: Option<f64>,
    /// Values strictly below this fire.
    #[serde(default)]
    pub below: Option<f64>,
}

impl ThresholdConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
        if !finite(self.above) || !finite(self.below) {
            return Err(ConfigError::Invalid {
                field: "threshold",
                reason: "bounds must be finite".into(),
            });
        }
        match (self.above, self.below) {
            (None, None) => Err(ConfigError::Invalid {
                field: "threshold",
                reason: "needs `above`, `below` or both".into(),
            }),
            (Some(a), Some(b)) if b > a => Err(ConfigError::Invalid {
                field: "threshold",
                reason: format!("below ({b}) is above `above` ({a}): every value would fire"),
            }),
            _ => Ok(()),
        }
    }
}

/// Score 1 beyond a bound, 0 inside.
#[derive(Debug, Clone)]
pub struct Threshold {
    cfg: ThresholdConfig,
}

impl Threshold {
    pub fn new(cfg: ThresholdConfig) -> Self {
        Self { cfg }
    }
}

impl Detector for Threshold {
    fn name(&self) -> &'static str {
        "threshold"
    }

    fn update(&mut self, _t: f64, value: f64) -> f64 {
        if value.is_nan() {
            return 0.0;
        }
        let high = self.cfg.above.is_some_and(|a| value > a);
        let low = self.cfg.below.is_some_and(|b| value < b);
        if high || low { 1.0 } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::step_series;

    #[test]
    fn step_above_the_bound_fires() {
        let mut d = Threshold::new(ThresholdConfig {
            above: Some(90.0),
            below: None,
        });
        let scores: Vec<f64> = step_series(100, 50.0, 95.0, 1.0)
            .map(|(t, v)| d.update(t, v))
            .collect();
        assert!(scores[..100].iter().all(|&s| s == 0.0));
        assert!(scores[100..].iter().all(|&s| s == 1.0));
    }

    #[test]
    fn constant_signal_inside_bounds_scores_zero() {
        let mut d = Threshold::new(ThresholdConfig {
            above: Some(10.0),
            below: Some(1.0),
        });
        assert!((0..100).all(|i| d.update(f64::from(i), 5.0) == 0.0));
        assert_eq!(d.update(0.0, 0.5), 1.0);
    }

    #[test]
    fn non_finite_input() {
        let mut d = Threshold::new(ThresholdConfig {
            above: Some(10.0),
            below: None,
        });
        assert_eq!(d.update(0.0, f64::NAN), 0.0);
        // An infinite value is beyond any finite bound: that is a real reading.
        assert_eq!(d.update(0.0, f64::INFINITY), 1.0);
        assert_eq!(d.update(f64::NAN, 5.0), 0.0);
    }

    #[test]
    fn rejects_empty_or_inverted_bounds() {
        assert!(
            ThresholdConfig {
                above: None,
                below: None
            }
            .validate()
            .is_err()
        );
        assert!(
            ThresholdConfig {
                above: Some(1.0),
                below: Some(2.0)
            }
            .validate()
            .is_err()
        );
        assert!(
            ThresholdConfig {
                above: Some(f64::NAN),
                below: None
            }
            .validate()
            .is_err()
        );
    }
}
