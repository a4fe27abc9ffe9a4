//! The health gate: a remote config is on trial from the moment it is
//! applied until it has run healthy for `control.health_window`. Healthy
//! means the agent's supervised tasks are all alive and its export pipeline
//! delivers without new failures: no batch given up since the trial began,
//! and no retries unless signals were also delivered.

use std::sync::Arc;

use crate::{
    export::{ExportMetrics, metrics as export},
    supervise::Health,
};

/// What the gate looks at, shared with the rest of the agent.
#[derive(Debug, Clone)]
pub struct Watch {
    health: Arc<Health>,
    export: ExportMetrics,
}

/// The export counters, per sink, when a trial began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baseline {
    sinks: [SinkCounts; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct SinkCounts {
    failures: u64,
    retries: u64,
    delivered: u64,
}

const SINKS: [&str; 2] = [export::SINK_FILE, export::SINK_OTLP];
const SIGNALS: [&str; 3] = [export::TRACES, export::METRICS, export::LOGS];

impl Watch {
    pub fn new(health: Arc<Health>, export: ExportMetrics) -> Self {
        Self { health, export }
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn baseline(&self) -> Baseline {
        Baseline {
            sinks: SINKS.map(|sink| {
                let label = export::SinkLabels { sink };
                SinkCounts {
                    failures: self.export.failures.get_or_create(&label).get(),
                    retries: self.export.retries.get_or_create(&label).get(),
                    delivered: SIGNALS
                        .iter()
                        .map(|&signal| self.export.exported_count(signal, sink))
                        .fold(0u64, u64::saturating_add),
                }
            }),
        }
    }

    /// `Err` with a one-line reason when the agent is not healthy, or one of
    /// its sinks has been failing, since `since`.
    pub fn check(&self, since: &Baseline) -> Result<(), String> {
        self.health.live()?;
        let now = self.baseline();
        for ((sink, then), now) in SINKS.iter().zip(&since.sinks).zip(&now.sinks) {
            let failures = now.failures.saturating_sub(then.failures);
            if failures > 0 {
                return Err(format!(
                    "export to {sink} failing: {failures} batch(es) not delivered since the config was applied"
                ));
            }
            let retries = now.retries.saturating_sub(then.retries);
            if retries > 0 && now.delivered == then.delivered {
                return Err(format!(
                    "export to {sink} failing: {retries} retries and nothing delivered since the config was applied"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::{Failure, Task};

    #[test]
    fn healthy_until_a_task_fails_or_export_fails() {
        let health = Arc::new(Health::default());
        health.started();
        let export = ExportMetrics::default();
        let watch = Watch::new(health.clone(), export.clone());
        // Failures from before the trial do not count.
        export.failure(export::SINK_OTLP);
        let since = watch.baseline();
        assert_eq!(watch.check(&since), Ok(()));

        // Retries that still deliver are tolerated.
        export.retry(export::SINK_OTLP);
        export.exported(export::TRACES, export::SINK_OTLP, 3);
        assert_eq!(watch.check(&since), Ok(()));

        // Retries with nothing delivered are not, even while another sink
        // delivers.
        let since = watch.baseline();
        export.retry(export::SINK_OTLP);
        export.exported(export::TRACES, export::SINK_FILE, 3);
        let err = watch.check(&since).unwrap_err();
        assert!(
            err.contains("otlp") && err.contains("nothing delivered"),
            "{err}"
        );

        // A batch given up.
        let since = watch.baseline();
        export.failure(export::SINK_FILE);
        let err = watch.check(&since).unwrap_err();
        assert!(err.contains("to file") && err.contains("1 batch"), "{err}");

        // A supervised task that failed.
        let since = watch.baseline();
        assert_eq!(watch.check(&since), Ok(()));
        health.failed(&Failure {
            task: Task::Profiler,
            cause: "boom".into(),
        });
        let err = watch.check(&since).unwrap_err();
        assert!(err.contains("profiler") && err.contains("boom"), "{err}");
    }
}
