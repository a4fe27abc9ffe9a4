//! Memory maps of sampled processes from /proc/<pid>/maps, cached per pid
//! and re-read when a sampled address falls outside every known mapping.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

/// Identity of a mapped file: device and inode, as /proc/<pid>/maps gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub inode: u64,
}

/// One executable file mapping of a process.
#[derive(Debug, Clone)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub file: FileKey,
    pub path: Arc<str>,
}

impl MapEntry {
    pub fn file_offset(&self, address: u64) -> u64 {
        address - self.start + self.offset
    }

    /// A path that opens this very file even when it was deleted or lives in
    /// another mount namespace.
    pub fn open_path(&self, pid: u32) -> String {
        format!("/proc/{pid}/map_files/{:x}-{:x}", self.start, self.end)
    }
}

/// Executable mappings of one process, sorted by address.
#[derive(Debug, Default)]
pub struct ProcessMaps {
    entries: Vec<MapEntry>,
}

impl ProcessMaps {
    pub fn find(&self, address: u64) -> Option<&MapEntry> {
        let i = self.entries.partition_point(|e| e.start <= address);
        let entry = self.entries.get(i.checked_sub(1)?)?;
        (address < entry.end).then_some(entry)
    }

    pub fn parse(text: &str) -> Self {
        let mut entries: Vec<MapEntry> = text.lines().filter_map(parse_line).collect();
        entries.sort_by_key(|e| e.start);
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `start-end perms offset dev inode path`: only executable file mappings.
fn parse_line(line: &str) -> Option<MapEntry> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    if perms.as_bytes().get(2) != Some(&b'x') {
        return None;
    }
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.next()?.trim_start();
    if inode == 0 || path.is_empty() {
        return None; // anonymous (JIT) memory, [vdso], [vsyscall]
    }
    let dev = (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?;
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset,
        file: FileKey { dev, inode },
        path: Arc::from(path),
    })
}

struct Cached {
    maps: Arc<ProcessMaps>,
    read_at: Instant,
    used: bool,
}

/// Per-pid maps, bounded in count; pids not sampled for a whole interval
/// are forgotten at [`MapsCache::end_interval`].
pub struct MapsCache {
    pids: HashMap<u32, Cached>,
    max_pids: usize,
    /// A miss re-reads the maps at most this often per process.
    min_refresh: Duration,
    pub reads: u64,
    pub read_failures: u64,
}

impl MapsCache {
    pub fn new(max_pids: usize) -> Self {
        Self {
            pids: HashMap::new(),
            max_pids: max_pids.max(1),
            min_refresh: Duration::from_millis(500),
            reads: 0,
            read_failures: 0,
        }
    }

    /// The maps of `pid`, re-read if `address` (when given) is in none of
    /// the cached mappings. `None`: the process is gone.
    pub fn get(
        &mut self,
        pid: u32,
        address: Option<u64>,
        now: Instant,
    ) -> Option<Arc<ProcessMaps>> {
        if let Some(cached) = self.pids.get_mut(&pid) {
            cached.used = true;
            let hit = address.is_none_or(|a| cached.maps.find(a).is_some());
            if hit || now.duration_since(cached.read_at) < self.min_refresh {
                return Some(cached.maps.clone());
            }
        }
        self.reads += 1;
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            self.read_failures += 1;
            // Keep what we had: a process that just exited still unwinds.
            return self.pids.get(&pid).map(|c| c.maps.clone());
        };
        let maps = Arc::new(ProcessMaps::parse(&text));
        if self.pids.len() >= self.max_pids && !self.pids.contains_key(&pid) {
            self.pids.retain(|_, c| c.used);
            if self.pids.len() >= self.max_pids {
                self.pids.clear();
            }
        }
        self.pids.insert(
            pid,
            Cached {
                maps: maps.clone(),
                read_at: now,
                used: true,
            },
        );
        Some(maps)
    }

    pub fn end_interval(&mut self) {
        self.pids.retain(|_, c| std::mem::take(&mut c.used));
    }

    pub fn len(&self) -> usize {
        self.pids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234 /usr/bin/prog
55d0c0a02000-55d0c0a05000 r-xp 00002000 08:01 1234 /usr/bin/prog
7f0000000000-7f0000001000 rwxp 00000000 00:00 0 
7f1000000000-7f1000100000 r-xp 00028000 fe:00 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f2000000000-7f2000001000 r-xp 00000000 00:00 0                          [vdso]
7f3000000000-7f3000001000 r-xp 00000000 08:01 77 /tmp/a b (deleted)
garbage line
";

    #[test]
    fn parses_executable_file_mappings() {
        let maps = ProcessMaps::parse(MAPS);
        assert_eq!(maps.len(), 3);
        let prog = maps.find(0x55d0c0a02010).unwrap();
        assert_eq!(&*prog.path, "/usr/bin/prog");
        assert_eq!(prog.file_offset(0x55d0c0a02010), 0x2010);
        assert_eq!(
            prog.file,
            FileKey {
                dev: 8 << 32 | 1,
                inode: 1234
            }
        );
        assert!(maps.find(0x55d0c0a00010).is_none(), "not executable");
        assert!(maps.find(0x7f2000000010).is_none(), "vdso");
        assert_eq!(
            &*maps.find(0x7f3000000000).unwrap().path,
            "/tmp/a b (deleted)"
        );
        assert!(maps.find(0x7f1000100000).is_none(), "end is exclusive");
    }

    #[test]
    fn cache_is_bounded_and_forgets_unused() {
        let mut cache = MapsCache::new(2);
        let me = std::process::id();
        let now = Instant::now();
        assert!(cache.get(me, None, now).is_some());
        assert!(cache.get(u32::MAX - 1, None, now).is_none(), "no such pid");
        cache.end_interval();
        assert_eq!(cache.len(), 1);
        cache.end_interval();
        assert_eq!(cache.len(), 0);
    }
}
