//! Self-telemetry: the agent's own counters (Prometheus text at /metrics)
//! and a JSON view of the process table (/processes).

pub mod metrics;
pub mod server;

pub use metrics::Metrics;
