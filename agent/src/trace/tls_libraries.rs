//! Finding the OpenSSL 3 libraries processes use, so the TLS uprobes can be
//! attached to each. A uprobe is set on a file (inode), so one attachment
//! covers every process mapping that file, including those started later.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where distributions install libssl.so.3.
const SYSTEM_PATHS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/aarch64-linux-gnu/libssl.so.3",
    "/usr/lib64/libssl.so.3",
    "/usr/lib/libssl.so.3",
];

fn is_libssl3(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with("libssl.so.3"))
}

/// Libraries not yet in `seen` (by device and inode), as paths the agent
/// can open: processes in other mount namespaces are reached through
/// /proc/<pid>/root.
pub fn find_new(seen: &mut HashSet<(u64, u64)>) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut consider = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path)
            && seen.insert((meta.dev(), meta.ino()))
        {
            found.push(path);
        }
    };
    for path in SYSTEM_PATHS {
        if Path::new(path).exists() {
            consider(PathBuf::from(path));
        }
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let libs: HashSet<&str> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.starts_with('/') && is_libssl3(p))
            .collect();
        for lib in libs {
            consider(PathBuf::from(format!("/proc/{pid}/root{lib}")));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_libssl3("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(!is_libssl3("/usr/lib/x86_64-linux-gnu/libssl.so.1.1"));
        assert!(!is_libssl3("/usr/lib/libcrypto.so.3"));
    }

    #[test]
    fn dedupes_by_inode() {
        let mut seen = HashSet::new();
        let first = find_new(&mut seen);
        assert!(
            find_new(&mut seen).is_empty(),
            "second scan finds nothing new: {first:?}"
        );
    }
}
