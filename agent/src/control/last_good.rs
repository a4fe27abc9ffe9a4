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

/// A trial marker: the offer's fingerprint (hex), the runs it outlived,
/// and whether the agent is re-executing itself to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialMark {
    pub offer: String,
    pub interrupted: u32,
    pub restart: bool,
}

/// The offer a remote config that needs a restart arrived in, kept while
/// the agent re-executes itself to run it on trial.
pub const TRIAL_OFFER_FILE: &str = "remote_config_on_trial.pb";

/// A rollback that needed a restart, for the next run to report.
pub const ROLLED_BACK_FILE: &str = "remote_config_rolled_back";

/// The marker a previous run left, as it is, or None. An unreadable marker
/// is dropped.
pub fn read_trial(data_dir: &Path) -> Option<TrialMark> {
    let text = std::fs::read_to_string(data_dir.join(TRIAL_FILE)).ok()?;
    let mark = parse_mark(&text);
    if mark.is_none() {
        clear_trial(data_dir);
    }
    mark
}

fn parse_mark(text: &str) -> Option<TrialMark> {
    let mut words = text.split_whitespace();
    let offer = words.next()?.to_owned();
    let interrupted = words.next()?.parse::<u32>().ok()?;
    let restart = match words.next() {
        None => false,
        Some("restart") => true,
        Some(_) => return None,
    };
    Some(TrialMark {
        offer,
        interrupted,
        restart,
    })
}

/// The marker a previous run left, counted once more (and stored so), or
/// None.
pub fn count_interrupted_trial(data_dir: &Path) -> Option<TrialMark> {
    let mut mark = read_trial(data_dir)?;
    mark.interrupted = mark.interrupted.saturating_add(1);
    if let Err(err) = mark_trial(data_dir, &mark) {
        tracing::warn!(%err, "counting an interrupted trial");
    }
    Some(mark)
}

pub fn mark_trial(data_dir: &Path, mark: &TrialMark) -> Result<(), LastGoodError> {
    let restart = if mark.restart { " restart" } else { "" };
    write_atomically(
        &data_dir.join(TRIAL_FILE),
        format!("{} {}{restart}\n", mark.offer, mark.interrupted).as_bytes(),
    )
    .map_err(LastGoodError::Write)
}

/// Forgets the trial: its marker and its offer.
pub fn clear_trial(data_dir: &Path) {
    for file in [TRIAL_FILE, TRIAL_OFFER_FILE] {
        remove(data_dir, file);
    }
}

fn remove(data_dir: &Path, file: &str) {
    match std::fs::remove_file(data_dir.join(file)) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(%err, "removing {file}"),
    }
}

/// Keeps the offer the agent re-executes itself for.
pub fn store_trial_offer(data_dir: &Path, remote: &AgentRemoteConfig) -> Result<(), LastGoodError> {
    write_atomically(&data_dir.join(TRIAL_OFFER_FILE), &remote.encode_to_vec())
        .map_err(LastGoodError::Write)
}

pub fn load_trial_offer(data_dir: &Path) -> Option<AgentRemoteConfig> {
    let bytes = std::fs::read(data_dir.join(TRIAL_OFFER_FILE)).ok()?;
    AgentRemoteConfig::decode(bytes.as_slice()).ok()
}

/// A rollback to report after the restart it needed: the offer's
/// fingerprint (hex), its config hash and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    pub offer: String,
    pub config_hash: Vec<u8>,
    pub reason: String,
}

pub fn store_rolled_back(data_dir: &Path, note: &RolledBack) -> Result<(), LastGoodError> {
    let text = format!(
        "{} {} {}\n",
        note.offer,
        if note.config_hash.is_empty() {
            "-".to_owned()
        } else {
            super::audit::hex(&note.config_hash)
        },
        super::state::one_line(&note.reason)
    );
    write_atomically(&data_dir.join(ROLLED_BACK_FILE), text.as_bytes())
        .map_err(LastGoodError::Write)
}

/// The note a previous run left, taken (removed) so it is reported once.
pub fn take_rolled_back(data_dir: &Path) -> Option<RolledBack> {
    let text = std::fs::read_to_string(data_dir.join(ROLLED_BACK_FILE)).ok()?;
    remove(data_dir, ROLLED_BACK_FILE);
    let mut parts = text.trim_end().splitn(3, ' ');
    let offer = parts.next()?.to_owned();
    let config_hash = match parts.next()? {
        "-" => Vec::new(),
        hash => unhex(hash)?,
    };
    Some(RolledBack {
        offer,
        config_hash,
        reason: parts.next()?.to_owned(),
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
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

    #[test]
    fn trial_marks_offers_and_rollback_notes_round_trip() {
        let dir = std::env::temp_dir().join(format!("selfops-trial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_trial(&dir), None);
        let mark = TrialMark {
            offer: "ab12".into(),
            interrupted: 0,
            restart: true,
        };
        mark_trial(&dir, &mark).unwrap();
        assert_eq!(read_trial(&dir), Some(mark.clone()));
        let remote = AgentRemoteConfig {
            config: None,
            config_hash: vec![9],
        };
        store_trial_offer(&dir, &remote).unwrap();
        assert_eq!(load_trial_offer(&dir), Some(remote));
        let counted = count_interrupted_trial(&dir).unwrap();
        assert_eq!((counted.interrupted, counted.restart), (1, true));
        assert_eq!(read_trial(&dir), Some(counted));
        clear_trial(&dir);
        assert_eq!((read_trial(&dir), load_trial_offer(&dir)), (None, None));
        // Garbage is dropped.
        std::fs::write(dir.join(TRIAL_FILE), "ab12 x\n").unwrap();
        assert_eq!(read_trial(&dir), None);
        assert!(!dir.join(TRIAL_FILE).exists());

        let note = RolledBack {
            offer: "ab12".into(),
            config_hash: vec![0xab, 0x01],
            reason: "rolled back to the last-known-good config: CPU 2.00 cores".into(),
        };
        store_rolled_back(&dir, &note).unwrap();
        assert_eq!(take_rolled_back(&dir), Some(note.clone()));
        assert_eq!(take_rolled_back(&dir), None);
        let note = RolledBack {
            config_hash: Vec::new(),
            ..note
        };
        store_rolled_back(&dir, &note).unwrap();
        assert_eq!(take_rolled_back(&dir), Some(note));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
