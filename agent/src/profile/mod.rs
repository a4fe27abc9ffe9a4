//! Continuous CPU profiling: samples, unwinding, symbolization, encoders.

pub mod model;
