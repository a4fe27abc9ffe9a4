//! `onnx`: an ONNX model run with tract (pure Rust, on the CPU) over the last
//! `window` points of a series, or of several series fed row by row. The
//! model either gives a score directly or reconstructs its input, the mean
//! squared reconstruction error then being the raw score; either is mapped
//! into [0, 1]. The model is loaded and checked when the detector is built,
//! so a model that does not fit the configuration is a configuration error.
//!
//! Memory is bounded by the window; each inference allocates inside tract
//! (its input and output tensors), which is why `every` can space them out.

mod graph;
mod model;

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Detector};
pub use model::{MAX_MODEL_BYTES, Model};

/// Largest window accepted, in time steps.
pub const MAX_WINDOW: u32 = 4096;
/// Most series one window may hold.
pub const MAX_SIGNALS: u32 = 16;

/// What the model's (first) output holds.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// One value: the raw score.
    #[default]
    Score,
    /// The input window, reconstructed: the raw score is the mean squared error.
    Reconstruction,
}

/// How the raw score becomes a score in [0, 1].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMap {
    /// Clamped into [0, 1] (a model that already outputs a probability).
    #[default]
    Clamp,
    /// `1 / (1 + e^(-raw / scale))`.
    Logistic,
    /// `raw / (raw + scale)` for a non-negative raw score (an error).
    Ratio,
}

/// How a window is prepared before it is fed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Fed as measured.
    #[default]
    None,
    /// Each series minus its mean over the window, divided by its spread.
    Window,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OnnxConfig {
    /// The `.onnx` file.
    pub model: PathBuf,
    /// Time steps per inference (1 ..= 4096); default: what the model's
    /// input shape holds.
    #[serde(default)]
    pub window: Option<u32>,
    /// Series per time step (1 ..= 16); several are fed row by row.
    #[serde(default = "one")]
    pub signals: u32,
    /// Name of the model's input; default: its only input.
    #[serde(default)]
    pub input: Option<String>,
    /// Name of the output read; default: the model's first.
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub output_is: Output,
    #[serde(default)]
    pub map: ScoreMap,
    /// Scale of the `logistic` and `ratio` maps (> 0).
    #[serde(default = "one_f64")]
    pub scale: f64,
    #[serde(default)]
    pub normalize: Normalize,
    /// Run the model once every this many time steps (1 ..= 3600); the
    /// score in between is the last one.
    #[serde(default = "one")]
    pub every: u32,
}

fn one() -> u32 {
    1
}

fn one_f64() -> f64 {
    1.0
}

impl OnnxConfig {
    /// A config for `model` with every other key at its default.
    pub fn for_model(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            window: None,
            signals: 1,
            input: None,
            output: None,
            output_is: Output::Score,
            map: ScoreMap::Clamp,
            scale: 1.0,
            normalize: Normalize::None,
            every: 1,
        }
    }

    /// Values one input holds, when the window is configured.
    fn input_len(&self) -> Option<Option<usize>> {
        match self.window {
            None => Some(None),
            Some(w) => (w as usize).checked_mul(self.signals as usize).map(Some),
        }
    }

    /// Checks the keys, then loads and checks the model.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_keys()?;
        Model::load(self).map(|_| ())
    }

    fn check_keys(&self) -> Result<(), ConfigError> {
        if let Some(w) = self.window
            && !(1..=MAX_WINDOW).contains(&w)
        {
            return Err(ConfigError::Invalid {
                field: "onnx.window",
                reason: format!("{w} is outside 1..={MAX_WINDOW}"),
            });
        }
        if !(1..=MAX_SIGNALS).contains(&self.signals) {
            return Err(ConfigError::Invalid {
                field: "onnx.signals",
                reason: format!("{} is outside 1..={MAX_SIGNALS}", self.signals),
            });
        }
        if !(1..=3600).contains(&self.every) {
            return Err(ConfigError::Invalid {
                field: "onnx.every",
                reason: format!("{} is outside 1..=3600", self.every),
            });
        }
        super::check_positive("onnx.scale", self.scale)
    }
}

/// The running detector.
pub struct Onnx {
    cfg: OnnxConfig,
    model: Model,
    /// The last `input_len` values, a ring in time order from `head`.
    ring: Box<[f32]>,
    head: usize,
    filled: usize,
    /// The window laid out oldest first, as fed (allocated once).
    scratch: Box<[f32]>,
    /// Values fed since the last inference.
    since: u64,
    score: f64,
    raw: f64,
    warned: bool,
}

impl std::fmt::Debug for Onnx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Onnx").field("cfg", &self.cfg).finish()
    }
}

impl Onnx {
    pub fn new(cfg: OnnxConfig) -> Result<Self, ConfigError> {
        cfg.check_keys()?;
        let model = Model::load(&cfg)?;
        Ok(Self::with_model(cfg, model))
    }

    /// A detector over a model already loaded (e.g. from memory).
    pub fn with_model(cfg: OnnxConfig, model: Model) -> Self {
        let len = model.input_len();
        Self {
            ring: vec![0.0; len].into_boxed_slice(),
            scratch: vec![0.0; len].into_boxed_slice(),
            head: 0,
            filled: 0,
            since: 0,
            score: 0.0,
            raw: 0.0,
            warned: false,
            model,
            cfg,
        }
    }

    /// The raw score of the last inference, before it is mapped to [0, 1].
    pub fn raw(&self) -> f64 {
        self.raw
    }

    fn infer(&mut self) -> Result<(f64, f64), String> {
        let len = self.ring.len();
        for (i, slot) in self.scratch.iter_mut().enumerate() {
            *slot = self.ring[(self.head + i) % len];
        }
        if self.cfg.normalize == Normalize::Window {
            normalize(&mut self.scratch, self.cfg.signals as usize);
        }
        let out = self.model.run(&self.scratch)?;
        let raw = match self.cfg.output_is {
            Output::Score => f64::from(out.first().copied().ok_or("empty output")?),
            Output::Reconstruction => {
                if out.len() != len {
                    return Err(format!("output holds {} values, not {len}", out.len()));
                }
                let sum: f64 = self
                    .scratch
                    .iter()
                    .zip(&out)
                    .map(|(&x, &y)| f64::from(x - y).powi(2))
                    .sum();
                sum / len as f64
            }
        };
        Ok((raw, map_score(self.cfg.map, self.cfg.scale, raw)))
    }
}

/// Per series (column of a row-major window), minus its mean, over its spread.
fn normalize(window: &mut [f32], signals: usize) {
    let steps = window.len() / signals.max(1);
    if steps == 0 {
        return;
    }
    for s in 0..signals {
        let column = || window.iter().skip(s).step_by(signals);
        let mean = column().map(|&x| f64::from(x)).sum::<f64>() / steps as f64;
        let var = column()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / steps as f64;
        let spread = var.sqrt();
        for x in window.iter_mut().skip(s).step_by(signals) {
            *x = if spread > 1e-12 {
                ((f64::from(*x) - mean) / spread) as f32
            } else {
                0.0
            };
        }
    }
}

/// The raw score mapped into [0, 1]; anything not a number maps to 0.
pub fn map_score(map: ScoreMap, scale: f64, raw: f64) -> f64 {
    if raw.is_nan() {
        return 0.0;
    }
    let s = match map {
        ScoreMap::Clamp => raw,
        ScoreMap::Logistic => 1.0 / (1.0 + (-raw / scale).exp()),
        ScoreMap::Ratio => {
            let r = raw.max(0.0);
            if r.is_infinite() {
                1.0
            } else {
                r / (r + scale)
            }
        }
    };
    s.clamp(0.0, 1.0)
}

impl Detector for Onnx {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn update(&mut self, _t: f64, value: f64) -> f64 {
        if !value.is_finite() {
            return 0.0;
        }
        let len = self.ring.len();
        // The ring is full once `len` values are in: `head` is then the oldest.
        self.ring[(self.head + self.filled) % len] = value as f32;
        if self.filled < len {
            self.filled += 1;
        } else {
            self.head = (self.head + 1) % len;
        }
        self.since = self.since.saturating_add(1);
        let step = u64::from(self.cfg.every) * u64::from(self.cfg.signals);
        if self.filled < len || self.since < step {
            return self.score;
        }
        self.since = 0;
        match self.infer() {
            Ok((raw, score)) => {
                self.raw = raw;
                self.score = score;
            }
            Err(e) => {
                if !self.warned {
                    tracing::warn!(model = %self.cfg.model.display(), error = %e, "onnx inference failed; scoring 0");
                    self.warned = true;
                }
                self.score = 0.0;
            }
        }
        self.score
    }
}

#[cfg(test)]
mod tests;
