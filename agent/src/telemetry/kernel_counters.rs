//! The kernel's per-CPU loss and drop counters, read on demand into the
//! `selfops_sensor_events_lost_total`, `selfops_sensor_kernel_drops_total`
//! and `selfops_socket_events_filtered_total`
//! series: by a scrape, and by the health gate, which judges a remote
//! config by the ring losses it brings.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::{counter::Counter, family::Family};

use super::{
    Metrics,
    metrics::{ReasonLabel, SensorLabel},
    program_stats::ProgramStats,
};
use crate::kernel::object::LostCounters;

/// Cheap to clone: the kernel maps and the series are shared.
#[derive(Clone)]
pub struct KernelCounters {
    /// None when nothing was loaded: the series alone count.
    kernel: Option<Arc<Mutex<LostCounters>>>,
    programs: Option<Arc<ProgramStats>>,
    lost: Family<SensorLabel, Counter>,
    drops: Family<ReasonLabel, Counter>,
    filtered: Family<ReasonLabel, Counter>,
}

impl KernelCounters {
    pub fn new(kernel: LostCounters, programs: Arc<ProgramStats>, metrics: &Metrics) -> Self {
        Self {
            kernel: Some(Arc::new(Mutex::new(kernel))),
            programs: Some(programs),
            ..Self::series(metrics)
        }
    }

    /// What `metrics` counts, with no kernel maps behind it.
    pub fn series(metrics: &Metrics) -> Self {
        Self {
            kernel: None,
            programs: None,
            lost: metrics.events_lost.clone(),
            drops: metrics.kernel_drops.clone(),
            filtered: metrics.socket_events_filtered.clone(),
        }
    }

    /// Raises the series to the kernel's totals.
    pub fn refresh(&self) {
        if let Some(programs) = &self.programs {
            programs.refresh();
        }
        let Some(kernel) = &self.kernel else {
            return;
        };
        let counters = kernel.lock().unwrap_or_else(|e| e.into_inner());
        let drops = counters.read_drops();
        let lost = counters.read();
        let filtered = counters.read_filtered();
        drop(counters);
        match filtered {
            Ok(totals) => {
                for (reason, total) in totals {
                    let counter = self.filtered.get_or_create(&ReasonLabel {
                        reason: reason.name(),
                    });
                    Metrics::raise_to(&counter, total);
                }
            }
            Err(err) => tracing::warn!(%err, "reading the kernel's filter counters"),
        }
        match drops {
            Ok(totals) => {
                for (reason, total) in totals {
                    let counter = self.drops.get_or_create(&ReasonLabel {
                        reason: reason.name(),
                    });
                    Metrics::raise_to(&counter, total);
                }
            }
            Err(err) => tracing::warn!(%err, "reading the kernel's drop counters"),
        }
        match lost {
            Ok(totals) => {
                for (sensor, total) in totals {
                    Metrics::raise_to(&self.lost.get_or_create(&Metrics::sensor(sensor)), total);
                }
            }
            Err(err) => tracing::warn!(%err, "reading the kernel's lost-event counters"),
        }
    }

    /// Ring-buffer reservation failures so far, all sensors together.
    pub fn ring_losses(&self) -> u64 {
        self.refresh();
        selfops_ebpf::Sensor::ALL
            .iter()
            .map(|&sensor| self.lost.get_or_create(&Metrics::sensor(sensor)).get())
            .fold(0, u64::saturating_add)
    }
}
