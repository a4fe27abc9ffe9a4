pub mod counters;
pub mod feature_probes;
pub mod process;
