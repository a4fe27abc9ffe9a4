//! Continuous CPU profiling: samples, unwinding, symbolization, encoders.

pub mod model;
pub mod outputs;
// Encoders and files of the outputs.
pub mod files;
pub mod flamegraph;
pub mod names;
pub mod otlp;
#[cfg(test)]
mod outputs_tests;
pub mod pprof;
mod strings;
#[cfg(test)]
mod test_fixture;
// Sampling, unwinding, symbolization and aggregation.
pub mod aggregate;
pub mod filter;
pub mod kallsyms;
pub mod live;
pub mod maps;
pub mod metrics;
pub mod profiler;
pub mod record;
pub mod run;
pub mod sampler;
pub mod symbolize;
pub mod unwind;
