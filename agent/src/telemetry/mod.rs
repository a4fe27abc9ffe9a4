//! Self-telemetry: the agent's own counters (Prometheus text at /metrics)
//! and a JSON view of the process table (/processes).

pub mod kernel_counters;
pub mod metrics;
pub mod program_stats;
pub mod server;

pub use kernel_counters::KernelCounters;
pub use metrics::Metrics;
