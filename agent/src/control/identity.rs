//! The agent's OpAMP instance_uid: a UUIDv7 made once and kept in the data
//! directory, so the server sees the same agent across restarts.

use std::{
    io,
    path::{Path, PathBuf},
};

use uuid::Uuid;

pub const FILE: &str = "opamp_instance_uid";

/// The uid stored in `data_dir`, or a new one stored there.
pub fn load_or_create(data_dir: &Path) -> io::Result<Uuid> {
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match Uuid::parse_str(text.trim()) {
            Ok(uid) if !uid.is_nil() => return Ok(uid),
            _ => {
                tracing::warn!(path = %path.display(), "unreadable instance uid: making a new one")
            }
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let uid = Uuid::now_v7();
    store(&path, uid)?;
    Ok(uid)
}

/// Replaces the stored uid (the server may assign a new one).
pub fn store_in(data_dir: &Path, uid: Uuid) -> io::Result<()> {
    store(&data_dir.join(FILE), uid)
}

fn store(path: &Path, uid: Uuid) -> io::Result<()> {
    write_atomically(path, uid.hyphenated().to_string().as_bytes())
}

/// Written beside, synced, then renamed over: a crash leaves the old file
/// or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept() {
        let dir = std::env::temp_dir().join(format!("selfops-uid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = load_or_create(&dir).unwrap();
        assert_eq!(first.get_version_num(), 7);
        assert_eq!(load_or_create(&dir).unwrap(), first);
        let assigned = Uuid::now_v7();
        store_in(&dir, assigned).unwrap();
        assert_eq!(load_or_create(&dir).unwrap(), assigned);
        std::fs::write(dir.join(FILE), "garbage").unwrap();
        let fresh = load_or_create(&dir).unwrap();
        assert_ne!(fresh, assigned);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
