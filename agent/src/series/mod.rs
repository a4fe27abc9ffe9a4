//! Signals as time series for the self-healing loop: host CPU, memory and
//! PSI pressure from procfs, per-service request rate, error rate and p99
//! latency from the tracer's spans, per-executable CPU. Sampled on one
//! clock every 100 ms to 1 s.

mod host;
mod name;
mod processes;
mod sampler;
mod services;

pub use name::{SeriesKey, SeriesName};
pub use sampler::{Sample, Sampler};
pub use services::ServiceStats;
