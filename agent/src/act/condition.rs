//! A playbook's `when`, evaluated point by point: a level (optionally on an
//! EWMA-smoothed value) or a detector's score, both turned into a verdict
//! with hysteresis so a flapping signal does not flap actions.

use std::time::Instant;

use super::playbook::When;
use crate::detect::{
    ConfigError, Detector, Ewma, EwmaConfig, Hysteresis, HysteresisConfig, Verdict,
};

/// Anomaly score that enters the verdict when a playbook does not say.
const DEFAULT_SCORE_ABOVE: f64 = 0.9;

enum Evaluator {
    /// Scores 1 beyond `enter`, 0 at or behind `clear`, ½ in between (the
    /// verdict holds), so the hysteresis sees the two levels.
    Level {
        smoothing: Option<Ewma>,
        enter: f64,
        clear: f64,
        above: bool,
    },
    Anomaly {
        detector: Box<dyn Detector>,
        enter: f64,
    },
}

pub struct Condition {
    evaluator: Evaluator,
    hysteresis: Hysteresis,
    /// When the condition first held in the current run toward a verdict
    /// (the signal crossing its level): where loop latency counts from.
    crossed_at: Option<Instant>,
    epoch: Instant,
}

/// One evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub verdict: Verdict,
    /// The value compared with the level (smoothed, if smoothing), or the
    /// anomaly score.
    pub compared: f64,
}

impl Condition {
    pub fn new(when: &When, epoch: Instant) -> Result<Self, ConfigError> {
        let (evaluator, enter, exit) = match (&when.anomaly, when.level()) {
            (Some(detector), _) => {
                let enter = when.score_above.unwrap_or(DEFAULT_SCORE_ABOVE);
                let evaluator = Evaluator::Anomaly {
                    detector: detector.build()?,
                    enter,
                };
                (evaluator, enter, enter)
            }
            (None, level) => {
                let (enter, above) = level.unwrap_or((0.0, true));
                let smoothing = when.ewma.map(|alpha| {
                    Ewma::new(EwmaConfig {
                        alpha,
                        ..EwmaConfig::default()
                    })
                });
                let clear = when.clear.map_or(enter, |c| c.0);
                (
                    Evaluator::Level {
                        smoothing,
                        enter,
                        clear,
                        above,
                    },
                    1.0,
                    0.0,
                )
            }
        };
        Ok(Self {
            evaluator,
            hysteresis: Hysteresis::new(&HysteresisConfig {
                enter,
                exit,
                min_duration: when.hold,
            })?,
            crossed_at: None,
            epoch,
        })
    }

    pub fn verdict(&self) -> Verdict {
        self.hysteresis.verdict()
    }

    /// When the signal crossed into the current anomalous verdict.
    pub fn crossed_at(&self) -> Option<Instant> {
        self.crossed_at
    }

    pub fn observe(&mut self, at: Instant, value: f64) -> Evaluation {
        let t = at.duration_since(self.epoch).as_secs_f64();
        let (score, compared, entering) = match &mut self.evaluator {
            Evaluator::Level {
                smoothing,
                enter,
                clear,
                above,
            } => {
                let compared = match smoothing {
                    Some(ewma) => {
                        ewma.update(t, value);
                        ewma.smoothed().unwrap_or(value)
                    }
                    None => value,
                };
                let beyond = |level: f64| {
                    if *above {
                        compared > level
                    } else {
                        compared < level
                    }
                };
                let behind = |level: f64| {
                    if *above {
                        compared <= level
                    } else {
                        compared >= level
                    }
                };
                let score = if beyond(*enter) {
                    1.0
                } else if behind(*clear) {
                    0.0
                } else {
                    0.5
                };
                (score, compared, score == 1.0)
            }
            Evaluator::Anomaly { detector, enter } => {
                let score = detector.update(t, value);
                (score, score, score >= *enter)
            }
        };
        let before = self.hysteresis.verdict();
        let verdict = self.hysteresis.observe(t, score);
        if before == Verdict::Normal {
            // Track the crossing that leads to the verdict: reset whenever
            // the condition lapses before the verdict turns.
            if entering {
                self.crossed_at.get_or_insert(at);
            } else if verdict == Verdict::Normal {
                self.crossed_at = None;
            }
        } else if verdict == Verdict::Normal {
            self.crossed_at = None;
        }
        Evaluation { verdict, compared }
    }
}
