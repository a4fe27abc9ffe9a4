//! GNU build-ids of executables, read with `object` and cached per file so
//! that a thousand workers of one binary cost one ELF read.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    os::unix::fs::MetadataExt,
    sync::Arc,
};

/// Identity of a file's content: device, inode, size and mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
}

/// A bounded cache (oldest entry evicted first) of build-ids by file.
pub struct BuildIdCache {
    entries: HashMap<FileKey, Option<Arc<str>>>,
    order: VecDeque<FileKey>,
    capacity: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildIdError {
    #[error("open: {0}")]
    Open(#[from] std::io::Error),
    #[error("not a readable ELF file: {0}")]
    Elf(#[from] object::Error),
}

impl BuildIdCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Build-id (lowercase hex) of the executable of `pid`, via
    /// /proc/<pid>/exe so it works for deleted files and other mount
    /// namespaces. `Ok(None)`: an ELF file without a build-id note.
    pub fn for_pid(&mut self, pid: u32) -> Result<Option<Arc<str>>, BuildIdError> {
        self.for_file(File::open(format!("/proc/{pid}/exe"))?)
    }

    pub fn for_file(&mut self, file: File) -> Result<Option<Arc<str>>, BuildIdError> {
        let meta = file.metadata()?;
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
        };
        if let Some(hit) = self.entries.get(&key) {
            return Ok(hit.clone());
        }
        let id = read_build_id(file)?;
        if self.entries.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, id.clone());
        self.order.push_back(key);
        Ok(id)
    }
}

/// Reads only the ELF headers and the note, not the whole file.
fn read_build_id(file: File) -> Result<Option<Arc<str>>, BuildIdError> {
    use object::Object as _;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache)?;
    Ok(elf.build_id()?.map(|id| {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        Arc::from(hex)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_executable_has_build_id_and_is_cached() {
        let mut cache = BuildIdCache::new(2);
        let first = cache.for_pid(std::process::id()).unwrap();
        let id = first.expect("rustc links a GNU build-id by default");
        assert!(id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.for_pid(std::process::id()).unwrap(), Some(id));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn non_elf_is_an_error_not_a_panic() {
        let path = std::env::temp_dir().join(format!("selfops-not-elf-{}", std::process::id()));
        std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
        let mut cache = BuildIdCache::new(2);
        assert!(cache.for_file(File::open(&path).unwrap()).is_err());
        std::fs::write(&path, b"\x7fELF\x02\x01\x01garbage").unwrap();
        assert!(cache.for_file(File::open(&path).unwrap()).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn capacity_is_bounded() {
        let mut cache = BuildIdCache::new(1);
        for exe in ["/bin/sh", "/bin/ls", "/bin/cat"] {
            if let Ok(f) = File::open(exe) {
                let _ = cache.for_file(f);
            }
        }
        assert!(cache.len() <= 1);
    }
}
