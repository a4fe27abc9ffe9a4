//! Actuation: playbooks, the kernel limiter, safety (TTL, allowlist, dry-run) and audit.

pub mod audit;
pub mod condition;
mod enforcement;
pub mod engine;
pub mod limiter;
pub mod limiter_audit;
pub mod playbook;
pub mod runner;

pub use playbook::ActuationConfig;
pub use runner::ActuationLoop;

#[cfg(test)]
mod modes_tests;
#[cfg(test)]
mod reconfigure_tests;
#[cfg(test)]
mod tests;
