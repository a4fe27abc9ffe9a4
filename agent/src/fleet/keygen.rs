//! `selfops fleet keygen`: an Ed25519 key pair in the text forms the agent
//! reads — the public key as one `control.trusted_keys` entry (base64 of
//! the 32 raw bytes), the secret key as base64 of its 32 bytes.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use crate::control::signed::SecretKey;

#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("{0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The two files written for `prefix`.
pub fn paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    (with(".key"), with(".pub"))
}

/// Writes `PREFIX.key` (mode 0600) and `PREFIX.pub`; refuses to overwrite
/// either, so an existing signing key is never lost.
pub fn write(prefix: &Path) -> Result<(PathBuf, PathBuf), KeygenError> {
    let key = SecretKey::generate();
    let (secret, public) = paths(prefix);
    write_new(&secret, 0o600, &key.to_base64())?;
    write_new(&public, 0o644, &key.public().to_base64())?;
    Ok((secret, public))
}

fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), KeygenError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| KeygenError::Write(path.to_owned(), e))?;
    writeln!(file, "{text}").map_err(|e| KeygenError::Write(path.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::signed::TrustedKey;

    #[test]
    fn written_keys_parse_as_the_agent_reads_them() {
        let dir = std::env::temp_dir().join(format!("selfops-keygen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (secret, public) = write(&dir.join("fleet")).unwrap();
        let key = SecretKey::parse(&std::fs::read_to_string(&secret).unwrap()).unwrap();
        let trusted = TrustedKey::parse(&std::fs::read_to_string(&public).unwrap()).unwrap();
        assert_eq!(key.public(), trusted);
        // As a YAML list entry in the agent's config.
        let yaml = format!("control:\n  trusted_keys: ['{}']\n", trusted.to_base64());
        let config = crate::config::Config::parse(&yaml, Path::new("t.yaml")).unwrap();
        assert_eq!(config.control.trusted_keys, vec![trusted]);
        assert!(write(&dir.join("fleet")).is_err(), "no overwrite");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
