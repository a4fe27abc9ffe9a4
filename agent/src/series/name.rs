//! The series a playbook can name.

use std::fmt;

use serde::Deserialize;

/// A series kind. Per-service and per-executable kinds need a subject
/// (`service:` or `executable:` in the playbook).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum SeriesName {
    /// Busy share of all CPUs, 0–1 (/proc/stat).
    HostCpu,
    /// 1 − MemAvailable/MemTotal, 0–1 (/proc/meminfo).
    HostMemory,
    /// Share of wall time some task stalled on CPU, memory or IO (PSI "some").
    PressureCpu,
    PressureMemory,
    PressureIo,
    /// Requests per second a service handled (server spans).
    ServiceRequestRate,
    /// Share of those requests that failed (status Error), 0–1.
    ServiceErrorRate,
    /// 99th percentile of their duration in seconds.
    ServiceLatencyP99,
    /// CPU used by the processes of one executable, in cores.
    ProcessCpu,
}

impl SeriesName {
    pub const ALL: [SeriesName; 9] = [
        SeriesName::HostCpu,
        SeriesName::HostMemory,
        SeriesName::PressureCpu,
        SeriesName::PressureMemory,
        SeriesName::PressureIo,
        SeriesName::ServiceRequestRate,
        SeriesName::ServiceErrorRate,
        SeriesName::ServiceLatencyP99,
        SeriesName::ProcessCpu,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SeriesName::HostCpu => "host.cpu.utilization",
            SeriesName::HostMemory => "host.memory.utilization",
            SeriesName::PressureCpu => "host.pressure.cpu",
            SeriesName::PressureMemory => "host.pressure.memory",
            SeriesName::PressureIo => "host.pressure.io",
            SeriesName::ServiceRequestRate => "service.request.rate",
            SeriesName::ServiceErrorRate => "service.error.rate",
            SeriesName::ServiceLatencyP99 => "service.latency.p99",
            SeriesName::ProcessCpu => "process.cpu.utilization",
        }
    }

    /// What names the subject of this series, if it needs one.
    pub fn subject(self) -> Option<&'static str> {
        match self {
            SeriesName::ServiceRequestRate
            | SeriesName::ServiceErrorRate
            | SeriesName::ServiceLatencyP99 => Some("service"),
            SeriesName::ProcessCpu => Some("executable"),
            _ => None,
        }
    }
}

impl TryFrom<String> for SeriesName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        SeriesName::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = SeriesName::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown signal {name:?}; known: {}", known.join(", "))
            })
    }
}

impl fmt::Display for SeriesName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One series: a kind and, for per-service or per-executable kinds, whose.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub name: SeriesName,
    pub subject: Option<String>,
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Some(subject) => write!(f, "{}{{{subject}}}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for name in SeriesName::ALL {
            assert_eq!(SeriesName::try_from(name.as_str().to_owned()), Ok(name));
        }
        let err = SeriesName::try_from("host.cpu".to_owned()).unwrap_err();
        assert!(err.contains("host.cpu.utilization"), "{err}");
    }
}
