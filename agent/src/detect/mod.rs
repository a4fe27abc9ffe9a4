//! Streaming anomaly detectors over time series.
//!
//! Every detector takes one `(time, value)` point at a time and returns an
//! anomaly score in [0, 1] for it, in O(1) time and memory per point: rolling
//! state lives in buffers allocated when the detector is built. A
//! non-finite time or value is skipped (score 0, state untouched) rather than
//! allowed to poison the running statistics. [`Hysteresis`] turns scores into
//! verdicts that do not flap. Detectors are named and parameterised in
//! configuration through [`DetectorConfig`].

mod contextual;
mod ewma;
mod holt_winters;
mod hysteresis;
mod likelihood;
pub mod onnx;
mod quiet;
mod ring;
mod seasonal_likelihood;
mod stats;
mod threshold;
mod windowed_likelihood;
mod zscore;

use serde::Deserialize;

pub use contextual::{Contextual, ContextualConfig};
pub use ewma::{Ewma, EwmaConfig};
pub use holt_winters::{HoltWinters, HoltWintersConfig};
pub use hysteresis::{Hysteresis, HysteresisConfig, Verdict};
pub use likelihood::{Likelihood, LikelihoodConfig};
pub use onnx::{Onnx, OnnxConfig};
pub use seasonal_likelihood::{SeasonalLikelihood, SeasonalLikelihoodConfig};
pub use threshold::{Threshold, ThresholdConfig};
pub use windowed_likelihood::{WindowedLikelihood, WindowedLikelihoodConfig};
pub use zscore::{ZScore, ZScoreConfig};

/// A streaming anomaly detector.
pub trait Detector: Send {
    /// Short stable name, as used in configuration.
    fn name(&self) -> &'static str;
    /// Feeds the point at `t` (seconds, any epoch, non-decreasing) and returns
    /// its anomaly score in [0, 1]. Non-finite input gives 0 and is otherwise
    /// ignored.
    fn update(&mut self, t: f64, value: f64) -> f64;
}

/// A detector and its parameters, as named in configuration, e.g.
/// `{ kind: ewma, alpha: 0.2, limit: 3 }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DetectorConfig {
    Ewma(EwmaConfig),
    Zscore(ZScoreConfig),
    HoltWinters(HoltWintersConfig),
    Threshold(ThresholdConfig),
    SeasonalLikelihood(SeasonalLikelihoodConfig),
    WindowedLikelihood(WindowedLikelihoodConfig),
    Contextual(ContextualConfig),
    Onnx(OnnxConfig),
}

impl Default for DetectorConfig {
    /// The detector chosen on the labelled benchmark by leave-one-category-out
    /// (`cargo xtask bench nab`).
    fn default() -> Self {
        DetectorConfig::Contextual(ContextualConfig::default())
    }
}

impl DetectorConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            DetectorConfig::Ewma(c) => c.validate(),
            DetectorConfig::Zscore(c) => c.validate(),
            DetectorConfig::HoltWinters(c) => c.validate(),
            DetectorConfig::Threshold(c) => c.validate(),
            DetectorConfig::SeasonalLikelihood(c) => c.validate(),
            DetectorConfig::WindowedLikelihood(c) => c.validate(),
            DetectorConfig::Contextual(c) => c.validate(),
            DetectorConfig::Onnx(c) => c.validate(),
        }
    }

    /// Builds the detector, allocating all its rolling state now.
    pub fn build(&self) -> Result<Box<dyn Detector>, ConfigError> {
        if let DetectorConfig::Onnx(c) = self {
            // Loading the model is its validation: done once, not twice.
            return Ok(Box::new(Onnx::new(c.clone())?));
        }
        self.validate()?;
        Ok(match self {
            DetectorConfig::Ewma(c) => Box::new(Ewma::new(c.clone())),
            DetectorConfig::Zscore(c) => Box::new(ZScore::new(c.clone())),
            DetectorConfig::HoltWinters(c) => Box::new(HoltWinters::new(c.clone())),
            DetectorConfig::Threshold(c) => Box::new(Threshold::new(c.clone())),
            DetectorConfig::SeasonalLikelihood(c) => Box::new(SeasonalLikelihood::new(c.clone())),
            DetectorConfig::WindowedLikelihood(c) => Box::new(WindowedLikelihood::new(c.clone())),
            DetectorConfig::Contextual(c) => Box::new(Contextual::new(c.clone())),
            DetectorConfig::Onnx(c) => Box::new(Onnx::new(c.clone())?),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("detector parameter {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A count in `lo ..= hi`.
fn check_range(field: &'static str, v: u32, lo: u32, hi: u32) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            reason: format!("{v} is outside {lo}..={hi}"),
        })
    }
}

/// A smoothing weight: in (0, 1].
fn check_rate(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            reason: format!("{v} is outside (0, 1]"),
        })
    }
}

/// A level or weight in [0, 1].
fn check_unit(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            reason: format!("{v} is outside [0, 1]"),
        })
    }
}

fn check_positive(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            reason: format!("{v} is not a positive number"),
        })
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Deterministic test signals.

    /// Uniform noise in [-1, 1] from a fixed-seed xorshift generator.
    pub fn noise(n: usize) -> impl Iterator<Item = f64> {
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..n).map(move |_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
    }

    /// `n` points at `before`, then `n` at `after`, one a minute, with
    /// uniform noise of amplitude `amp`.
    pub fn step_series(
        n: usize,
        before: f64,
        after: f64,
        amp: f64,
    ) -> impl Iterator<Item = (f64, f64)> {
        noise(2 * n).enumerate().map(move |(i, e)| {
            let level = if i < n { before } else { after };
            (i as f64 * 60.0, level + amp * e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_a_detector_and_its_parameters() {
        let cfg: DetectorConfig = serde_json::from_str(r#"{"kind":"ewma","alpha":0.2,"limit":4}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let DetectorConfig::Ewma(e) = &cfg else {
            panic!("not ewma: {cfg:?}")
        };
        assert_eq!(e.alpha, 0.2);
        assert_eq!(e.limit, 4.0);
        assert_eq!(cfg.build().map(|d| d.name()), Ok("ewma"));

        let hw: DetectorConfig = serde_json::from_str(r#"{"kind":"holt_winters","season":"1h"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hw.build().map(|d| d.name()), Ok("holt_winters"));

        let c: DetectorConfig = serde_json::from_str(r#"{"kind":"contextual","bins":8,"order":2}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&c, DetectorConfig::Contextual(c) if c.bins == 8 && c.order == 2));
        assert_eq!(c.build().map(|d| d.name()), Ok("contextual"));
        assert_eq!(
            DetectorConfig::default().build().map(|d| d.name()),
            Ok("contextual")
        );
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        assert!(serde_json::from_str::<DetectorConfig>(r#"{"kind":"ewma","alhpa":0.2}"#).is_err());
        assert!(serde_json::from_str::<DetectorConfig>(r#"{"kind":"magic"}"#).is_err());
    }

    #[test]
    fn invalid_parameters_fail_to_build_with_the_field_named() {
        let cfg: DetectorConfig = serde_json::from_str(r#"{"kind":"zscore","window":1}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let err = cfg.build().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("zscore.window"), "{err}");
        let cfg = DetectorConfig::Ewma(EwmaConfig {
            alpha: 1.5,
            ..EwmaConfig::default()
        });
        assert!(cfg.build().is_err());
    }

    #[test]
    fn every_default_detector_builds() {
        let configs = [
            DetectorConfig::Ewma(EwmaConfig::default()),
            DetectorConfig::Zscore(ZScoreConfig::default()),
            DetectorConfig::HoltWinters(HoltWintersConfig::default()),
            DetectorConfig::Threshold(ThresholdConfig {
                above: Some(90.0),
                below: None,
            }),
            DetectorConfig::default(),
        ];
        for c in configs {
            assert!(c.build().is_ok(), "{c:?}");
        }
    }
}
