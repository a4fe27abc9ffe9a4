//! The fleet server: the OpAMP server side that agents connect to, an
//! inventory of them in SQLite or PostgreSQL, and signed configs offered
//! to a selection of them. `selfops fleet serve|status|rollout|keygen|simulate`.

pub mod api;
pub mod cli;
pub mod hex;
pub mod keygen;
pub mod listener;
pub mod metrics;
pub mod nofile;
pub mod opamp;
mod peers;
pub mod rollout;
pub mod server;
pub mod session;
pub mod simulate;
pub mod status;
pub mod store;
pub mod ws;

#[cfg(any(test, feature = "test-support"))]
pub mod test_postgres;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_postgres;
#[cfg(test)]
mod tests_rollback;
