pub mod counters;
pub mod feature_probes;
pub mod net;
pub mod process;
