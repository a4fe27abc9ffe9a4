pub mod counters;
pub mod feature_probes;
pub mod limiter;
pub mod net;
pub mod process;
pub mod profile;
