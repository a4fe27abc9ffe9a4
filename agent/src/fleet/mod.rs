//! The fleet server: the OpAMP server side that agents connect to, an
//! inventory of them in SQLite, and signed configs offered to a selection
//! of them. `selfops fleet serve|status|rollout|keygen`.

pub mod api;
pub mod cli;
pub mod hex;
pub mod keygen;
pub mod listener;
pub mod nofile;
pub mod opamp;
pub mod rollout;
pub mod server;
pub mod session;
pub mod simulate;
pub mod status;
pub mod store;

#[cfg(test)]
mod tests;
