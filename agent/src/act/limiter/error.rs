//! What can go wrong loading, attaching or updating the limiter.

use std::path::PathBuf;

use aya::{EbpfError, maps::MapError, pin::PinError, programs::ProgramError};

use super::Key;

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("loading the limiter object: {0}")]
    Load(#[from] EbpfError),
    #[error("{0} is missing from the limiter object")]
    Missing(&'static str),
    #[error("limiter map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    /// The kernel refused the update; the key's previous policy stands.
    #[error("updating limiter key {key}: {source} (previous policy unchanged)")]
    Update { key: Key, source: MapError },
    #[error("invalid limiter policy: {0}")]
    Invalid(String),
    #[error("limiter program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    /// Another program's XDP is on the interface; it is left alone.
    #[error("{interface} already carries another XDP program ({detail}): left in place")]
    Occupied { interface: String, detail: String },
    #[error("attaching the limiter to {interface}: {detail}")]
    Attach { interface: String, detail: String },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: PinError },
    #[error("enabling bpf run-time statistics: {0}")]
    RunStats(String),
    #[error("limiter pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
}
