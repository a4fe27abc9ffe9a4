//! selfops agent: the userspace half of the node agent. The binary
//! (`main.rs`) is a thin command-line shell over these modules.

pub mod act;
pub mod agent;
pub mod cli;
pub mod config;
pub mod control;
pub mod detect;
pub mod export;
pub mod fleet;
pub mod k8s;
pub mod kernel;
pub mod limits;
pub mod lock;
pub mod memory;
pub mod pipeline;
pub mod process;
pub mod profile;
pub mod receive;
pub mod series;
pub mod signal;
pub mod supervise;
pub mod telemetry;
pub mod tls;
pub mod trace;
