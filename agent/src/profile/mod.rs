//! Continuous CPU profiling: samples, unwinding, symbolization, encoders.
