//! The last-known-good remote config, kept in the data directory: the
//! signed offer as the server sent it (AgentRemoteConfig, protobuf), written
//! only once it has passed its health window, and written atomically. At
//! start-up it is verified again against the trusted keys before it is
//! used, so the file is no more trusted than the server was.

use std::{io, path::Path};

use prost::Message as _;
use selfops_proto::opamp::AgentRemoteConfig;

use super::identity::write_atomically;

pub const FILE: &str = "remote_config_last_good.pb";

/// The config on trial: its fingerprint (hex) and how many runs of the
/// agent ended within its window. Written when a trial begins, removed when
/// it ends either way or the agent stops in order; found at start-up, it
/// means the last run died within the window.
pub const TRIAL_FILE: &str = "remote_config_on_trial";

/// Runs ended within one config's window before that config is refused.
pub const MAX_INTERRUPTED: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum LastGoodError {
    #[error("reading {FILE}: {0}")]
    Read(io::Error),
    #[error("{FILE} is not an AgentRemoteConfig: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("writing {FILE}: {0}")]
    Write(io::Error),
}

/// The stored offer, if there is one.
pub fn load(data_dir: &Path) -> Result<Option<AgentRemoteConfig>, LastGoodError> {
    match std::fs::read(data_dir.join(FILE)) {
        Ok(bytes) => Ok(Some(AgentRemoteConfig::decode(bytes.as_slice())?)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(LastGoodError::Read(err)),
    }
}

pub fn store(data_dir: &Path, remote: &AgentRemoteConfig) -> Result<(), LastGoodError> {
    write_atomically(&data_dir.join(FILE), &remote.encode_to_vec()).map_err(LastGoodError::Write)
}

/// A trial marker: the offer's fingerprint (hex) and the runs it outlived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialMark {
    pub offer: String,
    pub interrupted: u32,
}

/// The marker a previous run left, counted once more (and stored so), or
/// None. An unreadable marker is dropped.
pub fn count_interrupted_trial(data_dir: &Path) -> Option<TrialMark> {
    let path = data_dir.join(TRIAL_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    let mark = text.split_once(' ').and_then(|(offer, n)| {
        Some(TrialMark {
            offer: offer.to_owned(),
            interrupted: n.trim().parse::<u32>().ok()?.saturating_add(1),
        })
    });
    match &mark {
        Some(mark) => {
            if let Err(err) = mark_trial(data_dir, mark) {
                tracing::warn!(%err, "counting an interrupted trial");
            }
        }
        None => clear_trial(data_dir),
    }
    mark
}

pub fn mark_trial(data_dir: &Path, mark: &TrialMark) -> Result<(), LastGoodError> {
    write_atomically(
        &data_dir.join(TRIAL_FILE),
        format!("{} {}\n", mark.offer, mark.interrupted).as_bytes(),
    )
    .map_err(LastGoodError::Write)
}

pub fn clear_trial(data_dir: &Path) {
    match std::fs::remove_file(data_dir.join(TRIAL_FILE)) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(%err, "removing {TRIAL_FILE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_then_loaded_and_garbage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("selfops-last-good-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().is_none());
        let remote = AgentRemoteConfig {
            config: None,
            config_hash: vec![1, 2, 3],
        };
        store(&dir, &remote).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(remote));
        std::fs::write(dir.join(FILE), [0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(load(&dir), Err(LastGoodError::Decode(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
