//! Reads every series the playbooks need, once per tick.

use std::{sync::Arc, time::Instant};

use super::{
    SeriesKey, SeriesName, ServiceStats,
    host::{CpuReader, PressureReader, memory_utilization},
    processes::ProcessCpuReader,
};
use crate::process::SharedTable;

/// The values of one tick. A series with nothing to report this tick (a
/// first reading, an absent PSI file, a service without requests for its
/// p99) is left out rather than reported as zero.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub values: Vec<(SeriesKey, f64)>,
}

impl Sample {
    pub fn get(&self, key: &SeriesKey) -> Option<f64> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

enum Reader {
    HostCpu(CpuReader),
    HostMemory,
    Pressure(PressureReader),
    Service(SeriesName, String),
    ProcessCpu(ProcessCpuReader),
}

pub struct Sampler {
    readers: Vec<(SeriesKey, Reader)>,
    services: Arc<ServiceStats>,
    table: SharedTable,
    last_tick: Option<Instant>,
}

impl Sampler {
    /// A sampler of exactly `keys` (duplicates read once).
    pub fn new(keys: &[SeriesKey], services: Arc<ServiceStats>, table: SharedTable) -> Self {
        let mut readers: Vec<(SeriesKey, Reader)> = Vec::new();
        for key in keys {
            if readers.iter().any(|(k, _)| k == key) {
                continue;
            }
            let subject = key.subject.clone().unwrap_or_default();
            let reader = match key.name {
                SeriesName::HostCpu => Reader::HostCpu(CpuReader::default()),
                SeriesName::HostMemory => Reader::HostMemory,
                SeriesName::PressureCpu => {
                    Reader::Pressure(PressureReader::new("/proc/pressure/cpu"))
                }
                SeriesName::PressureMemory => {
                    Reader::Pressure(PressureReader::new("/proc/pressure/memory"))
                }
                SeriesName::PressureIo => {
                    Reader::Pressure(PressureReader::new("/proc/pressure/io"))
                }
                SeriesName::ServiceRequestRate
                | SeriesName::ServiceErrorRate
                | SeriesName::ServiceLatencyP99 => Reader::Service(key.name, subject),
                SeriesName::ProcessCpu => Reader::ProcessCpu(ProcessCpuReader::new(subject)),
            };
            readers.push((key.clone(), reader));
        }
        Self {
            readers,
            services,
            table,
            last_tick: None,
        }
    }

    pub fn tick(&mut self) -> Sample {
        let at = Instant::now();
        let seconds = self
            .last_tick
            .replace(at)
            .map(|last| at.duration_since(last).as_secs_f64());
        let mut values = Vec::with_capacity(self.readers.len());
        // Each service window is taken once per tick and shared by its
        // three series.
        let mut windows: Vec<(String, super::services::ServiceWindow)> = Vec::new();
        for (key, reader) in &mut self.readers {
            let value = match reader {
                Reader::HostCpu(r) => r.read(),
                Reader::HostMemory => memory_utilization(),
                Reader::Pressure(r) => r.read(),
                Reader::ProcessCpu(r) => r.read(&self.table),
                Reader::Service(name, service) => {
                    let Some(seconds) = seconds else {
                        // The first tick only opens the window.
                        self.services.take(service, 0.0);
                        continue;
                    };
                    let window = match windows.iter().find(|(s, _)| s == service) {
                        Some((_, w)) => *w,
                        None => {
                            let w = self.services.take(service, seconds);
                            windows.push((service.clone(), w));
                            w
                        }
                    };
                    match name {
                        SeriesName::ServiceRequestRate => Some(window.request_rate),
                        SeriesName::ServiceErrorRate => Some(window.error_rate),
                        _ => window.latency_p99,
                    }
                }
            };
            if let Some(value) = value.filter(|v| v.is_finite()) {
                values.push((key.clone(), value));
            }
        }
        Sample { at, values }
    }
}
