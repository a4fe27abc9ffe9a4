//! Actuation: playbooks, the kernel limiter, safety (TTL, allowlist, dry-run) and audit.

pub mod audit;
pub mod condition;
pub mod engine;
pub mod limiter;
pub mod playbook;
pub mod runner;

pub use playbook::ActuationConfig;
pub use runner::ActuationLoop;

#[cfg(test)]
mod tests;
