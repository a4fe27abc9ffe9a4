//! Unwind tables shared by every process that maps the same file: keyed by
//! GNU build-id (else by device and inode), built lazily on first use and
//! evicted least-recently-used under a memory budget.

use std::{collections::HashMap, fs::File, sync::Arc};

use object::{Object as _, read::ReadCache};

use super::table::UnwindTable;
use crate::profile::maps::{FileKey, MapEntry};

/// Which file a table belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TableKey {
    BuildId(Arc<str>),
    File(FileKey),
}

/// What is known of one mapped file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub key: TableKey,
    pub build_id: Option<Arc<str>>,
}

struct Slot {
    /// `None`: the file could not be read or has no usable CFI; remembered
    /// so it is not retried on every sample.
    table: Option<Arc<UnwindTable>>,
    bytes: usize,
    last_use: u64,
}

/// Counts for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheStats {
    pub tables: usize,
    pub bytes: usize,
    pub builds: u64,
    pub build_failures: u64,
    pub evictions: u64,
    /// Lookups that found no table because the build budget was spent.
    pub builds_deferred: u64,
    /// Time spent building tables.
    pub build_seconds: f64,
}

pub struct TableCache {
    files: HashMap<FileKey, FileInfo>,
    slots: HashMap<TableKey, Slot>,
    budget_bytes: usize,
    max_files: usize,
    clock: u64,
    stats: CacheStats,
    /// When set (shutting down), tables not built yet are not built: those
    /// frames fall back to frame pointers.
    pub builds_paused: bool,
    /// Building a large library's table costs real CPU (tens of ms for
    /// libc, seconds for a compiler's shared library): at most
    /// `build_budget` of building per second; beyond it frames fall back
    /// to frame pointers and the file is built later.
    build_budget: std::time::Duration,
    window_start: std::time::Instant,
    window_spent: std::time::Duration,
}

/// Share of each second the cache may spend building tables of large files.
pub const BUILD_BUDGET_PER_SECOND: std::time::Duration = std::time::Duration::from_millis(100);
/// Files up to this size (libc, python3, nginx, most programs) are always
/// built at once: tens of milliseconds each, once per build-id. Larger ones
/// (a compiler's multi-hundred-MiB libraries) wait for the budget.
pub const ALWAYS_BUILD_FILE_BYTES: u64 = 16 << 20;

/// Bytes a remembered failure is charged, so failures are bounded too.
const FAILED_SLOT_BYTES: usize = 64;

impl TableCache {
    pub fn new(budget_bytes: usize, max_files: usize) -> Self {
        Self {
            files: HashMap::new(),
            slots: HashMap::new(),
            budget_bytes,
            max_files: max_files.max(1),
            clock: 0,
            stats: CacheStats::default(),
            builds_paused: false,
            build_budget: BUILD_BUDGET_PER_SECOND,
            window_start: std::time::Instant::now(),
            window_spent: std::time::Duration::ZERO,
        }
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Build-id and table key of a mapped file (one ELF note read per file).
    pub fn file(&mut self, pid: u32, entry: &MapEntry) -> FileInfo {
        if let Some(info) = self.files.get(&entry.file) {
            return info.clone();
        }
        let build_id = open(pid, entry).ok().and_then(|f| read_build_id(&f));
        let info = FileInfo {
            key: match &build_id {
                Some(id) => TableKey::BuildId(id.clone()),
                None => TableKey::File(entry.file),
            },
            build_id,
        };
        if self.files.len() >= self.max_files {
            self.files.clear();
        }
        self.files.insert(entry.file, info.clone());
        info
    }

    /// The unwind table of the file behind `entry`, built on first use.
    pub fn table(&mut self, pid: u32, entry: &MapEntry) -> Option<Arc<UnwindTable>> {
        let info = self.file(pid, entry);
        self.clock += 1;
        if let Some(slot) = self.slots.get_mut(&info.key) {
            slot.last_use = self.clock;
            return slot.table.clone();
        }
        if self.builds_paused {
            self.stats.builds_deferred += 1;
            return None;
        }
        let began = std::time::Instant::now();
        let file = open(pid, entry);
        let large = file
            .as_ref()
            .ok()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() > ALWAYS_BUILD_FILE_BYTES);
        if large && !self.may_build() {
            self.stats.builds_deferred += 1;
            return None;
        }
        self.stats.builds += 1;
        let built = file
            .map_err(super::table::TableError::from)
            .and_then(|f| UnwindTable::build(&f));
        let took = began.elapsed();
        self.stats.build_seconds += took.as_secs_f64();
        if large {
            self.window_spent += took;
        }
        let table = match built {
            Ok(table) if table.size_bytes() <= self.budget_bytes => Some(Arc::new(table)),
            Ok(table) => {
                self.stats.build_failures += 1;
                tracing::debug!(path = %entry.path, bytes = table.size_bytes(), "unwind table over the memory budget");
                None
            }
            Err(err) => {
                self.stats.build_failures += 1;
                tracing::debug!(path = %entry.path, %err, "no unwind table");
                None
            }
        };
        let bytes = table.as_ref().map_or(FAILED_SLOT_BYTES, |t| t.size_bytes());
        self.make_room(bytes);
        self.slots.insert(
            info.key,
            Slot {
                table: table.clone(),
                bytes,
                last_use: self.clock,
            },
        );
        self.stats.bytes += bytes;
        self.stats.tables = self.slots.len();
        table
    }

    fn may_build(&mut self) -> bool {
        let now = std::time::Instant::now();
        if now.duration_since(self.window_start) >= std::time::Duration::from_secs(1) {
            // Carry an overrun over, so one long build is paid off.
            self.window_spent = self.window_spent.saturating_sub(self.build_budget);
            self.window_start = now;
        }
        self.window_spent < self.build_budget
    }

    fn make_room(&mut self, bytes: usize) {
        while self.stats.bytes + bytes > self.budget_bytes {
            let Some(oldest) = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.last_use)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.stats.bytes -= slot.bytes;
                self.stats.evictions += 1;
            }
        }
        self.stats.tables = self.slots.len();
    }
}

/// Opens the mapped file through /proc so deleted files and other mount
/// namespaces work; the plain path is the fallback.
pub fn open(pid: u32, entry: &MapEntry) -> std::io::Result<File> {
    File::open(entry.open_path(pid)).or_else(|_| File::open(&*entry.path))
}

pub fn read_build_id(file: &File) -> Option<Arc<str>> {
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let id = elf.build_id().ok()??;
    if id.is_empty() || id.len() > 64 {
        return None;
    }
    Some(Arc::from(
        id.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::maps::ProcessMaps;

    #[test]
    fn tables_shared_and_budget_enforced() {
        let pid = std::process::id();
        let maps = ProcessMaps::parse(&std::fs::read_to_string("/proc/self/maps").unwrap());
        let here = tables_shared_and_budget_enforced as fn() as usize as u64;
        let entry = maps.find(here).unwrap().clone();
        let mut cache = TableCache::new(64 << 20, 16);
        let a = cache.table(pid, &entry).unwrap();
        let b = cache.table(pid, &entry).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "built once");
        assert_eq!(cache.stats().builds, 1);
        assert!(cache.stats().bytes >= a.size_bytes());
        // A budget below one table: nothing is kept, failures are bounded.
        let mut tiny = TableCache::new(1024, 16);
        assert!(tiny.table(pid, &entry).is_none());
        assert!(tiny.stats().bytes <= 1024);
    }
}
