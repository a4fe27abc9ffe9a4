//! Profiling settings a remote config changes while the agent runs:
//! `profile.enabled`, `profile.frequency_hz`, `profile.include` and
//! `profile.exclude`. Sampling stops and starts, and changes frequency, by
//! re-opening the perf events only; the sampler object, its ring, the worker
//! and every other sensor stay as they are.

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use super::{filter::ProcessFilter, profiler::Retune, sampler::SamplerError};
use crate::config::ProfileConfig;

/// What the profiler is doing now, published after each change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub enabled: bool,
    pub frequency_hz: u32,
}

/// What a live change acts on: the running profiler, or a stand-in in tests.
pub trait Sampling {
    /// Samples every CPU at this frequency, or none at all (`None`).
    fn set_rate(&mut self, frequency_hz: Option<u32>) -> Result<(), SamplerError>;
    /// Hands the worker its new filter and sample period.
    fn retune(&mut self, retune: Retune);
}

#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("profile.include/exclude: {0}")]
    Filter(#[from] globset::Error),
    #[error("profile sampling: {0}")]
    Sampler(#[from] SamplerError),
    /// The profiler is in neither state: the caller should give up on it.
    #[error("{0}; putting the previous settings back failed too: {1}")]
    Stuck(Box<TuneError>, Box<TuneError>),
}

/// Applies profile sections as they come and publishes the result, both as
/// a watch value and as `selfops_profile_frequency_hz` (0 while off).
pub struct Tuner {
    applied: ProfileConfig,
    effective: watch::Sender<Effective>,
    gauge: Gauge,
}

impl Tuner {
    /// `config` is what the profiler was started with.
    pub fn new(config: &ProfileConfig, gauge: Gauge) -> Self {
        let tuner = Self {
            applied: config.clone(),
            effective: watch::Sender::new(Effective {
                enabled: config.enabled,
                frequency_hz: config.frequency_hz,
            }),
            gauge,
        };
        tuner.publish();
        tuner
    }

    pub fn effective(&self) -> watch::Receiver<Effective> {
        self.effective.subscribe()
    }

    /// Brings `target` from the applied section to `config`, touching only
    /// what differs. On failure the previous settings are put back, so what
    /// is published stays true, and the error is returned; `Stuck` when
    /// putting them back failed too.
    pub fn apply(
        &mut self,
        target: &mut dyn Sampling,
        config: &ProfileConfig,
    ) -> Result<(), TuneError> {
        match Self::change(&self.applied, config, target) {
            Ok(()) => {
                self.applied = config.clone();
                self.publish();
                tracing::info!(
                    enabled = config.enabled,
                    frequency_hz = config.frequency_hz,
                    "profiling reconfigured"
                );
                Ok(())
            }
            Err(err) => {
                tracing::warn!(%err, "profiling not reconfigured; keeping the previous settings");
                let previous = self.applied.clone();
                match Self::change(config, &previous, target) {
                    Ok(()) => Err(err),
                    Err(undo) => Err(TuneError::Stuck(Box::new(err), Box::new(undo))),
                }
            }
        }
    }

    fn change(
        from: &ProfileConfig,
        to: &ProfileConfig,
        target: &mut dyn Sampling,
    ) -> Result<(), TuneError> {
        let filter_changed = from.include != to.include || from.exclude != to.exclude;
        let rate_changed = from.enabled != to.enabled || from.frequency_hz != to.frequency_hz;
        if filter_changed || from.frequency_hz != to.frequency_hz {
            // Built first: a bad glob changes nothing.
            let filter = ProcessFilter::new(&to.include, &to.exclude)?;
            target.retune(Retune {
                filter,
                frequency_hz: to.frequency_hz,
            });
        }
        if rate_changed {
            target.set_rate(to.enabled.then_some(to.frequency_hz))?;
        }
        Ok(())
    }

    fn publish(&self) {
        let effective = Effective {
            enabled: self.applied.enabled,
            frequency_hz: self.applied.frequency_hz,
        };
        self.gauge.set(if effective.enabled {
            i64::from(effective.frequency_hz)
        } else {
            0
        });
        self.effective.send_replace(effective);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it is asked; fails a rate when told to.
    #[derive(Default)]
    struct Recorder {
        pub rates: Vec<Option<u32>>,
        pub periods: Vec<u32>,
        pub refuse: Option<u32>,
    }

    impl Sampling for Recorder {
        fn set_rate(&mut self, frequency_hz: Option<u32>) -> Result<(), SamplerError> {
            if frequency_hz.is_some() && frequency_hz == self.refuse {
                return Err(SamplerError::Missing("a perf event"));
            }
            self.rates.push(frequency_hz);
            Ok(())
        }
        fn retune(&mut self, retune: Retune) {
            self.periods.push(retune.frequency_hz);
        }
    }

    #[test]
    fn only_what_differs_is_touched_and_a_failure_is_undone() {
        let start = ProfileConfig::default();
        let gauge = Gauge::default();
        let mut tuner = Tuner::new(&start, gauge.clone());
        assert_eq!(gauge.get(), i64::from(start.frequency_hz));
        let mut target = Recorder::default();

        // The same section: nothing re-opened.
        tuner.apply(&mut target, &start).unwrap();
        assert!(target.rates.is_empty() && target.periods.is_empty());

        let faster = ProfileConfig {
            frequency_hz: 97,
            ..start.clone()
        };
        tuner.apply(&mut target, &faster).unwrap();
        assert_eq!(target.rates, [Some(97)]);
        assert_eq!(target.periods, [97]);
        assert_eq!(gauge.get(), 97);

        // Off: perf events closed, the filter left alone.
        let off = ProfileConfig {
            enabled: false,
            ..faster.clone()
        };
        tuner.apply(&mut target, &off).unwrap();
        assert_eq!(target.rates, [Some(97), None]);
        assert_eq!(target.periods, [97]);
        assert_eq!(gauge.get(), 0);
        assert!(!tuner.effective().borrow().enabled);

        // A rate the kernel refuses: back to what ran, and said so.
        target.refuse = Some(499);
        let refused = ProfileConfig {
            frequency_hz: 499,
            ..faster.clone()
        };
        tuner.apply(&mut target, &faster).unwrap();
        let err = tuner.apply(&mut target, &refused).unwrap_err();
        assert!(matches!(err, TuneError::Sampler(_)), "{err}");
        assert_eq!(target.rates.last(), Some(&Some(97)));
        assert_eq!(target.periods.last(), Some(&97));
        assert_eq!(
            *tuner.effective().borrow(),
            Effective {
                enabled: true,
                frequency_hz: 97
            }
        );
    }
}
