//! The kernel limiter: token buckets in an LRU hash, enforced by an XDP
//! program and/or a tc program (object `selfops-limiter`).
//!
//! [`Limiter::load`] loads the object; [`Limiter::attach_xdp`] and
//! [`Limiter::attach_tc`] hook it to interfaces; [`Limiter::set`],
//! [`Limiter::lift`], [`Limiter::counters`] and [`Limiter::entries`] manage
//! the buckets. Dropping the limiter detaches everything, unless it was
//! loaded with a pin directory (persist), in which case the programs stay
//! attached and the maps stay in bpffs, and the next load with the same
//! directory takes them over without a gap in enforcement.

mod attach;
mod error;
mod pin;
mod policy;

pub use attach::{TcHook, XdpHook, enable_run_stats};
pub use error::LimiterError;
pub use policy::{Counters, Entry, Key, Rate, Scope, UnmeteredStats};
pub use selfops_ebpf::limiter::RATE_MAX;

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray},
    programs::links::PinnedLink,
};
use selfops_ebpf::limiter::{
    LimiterBucket, LimiterKey, STAT_CONTENDED, STAT_NOT_IP, STAT_TRUNCATED, STAT_UNMATCHED,
};

use crate::kernel::LIMITER_OBJECT;

/// Map names in the object.
const BUCKETS: &str = "LIMITER_BUCKETS";
const STATS: &str = "LIMITER_STATS";

/// Where persistent limiter state is pinned unless configured otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/selfops/limiter";

/// How the limiter is loaded.
#[derive(Debug, Clone)]
pub struct LimiterOptions {
    /// Most keys held at once; beyond it the least recently used key is
    /// evicted by the kernel.
    pub max_keys: u32,
    /// Pin maps and links here so enforcement outlives the process
    /// (`persist: true`); `None` detaches everything on drop.
    pub pin_dir: Option<PathBuf>,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        Self {
            max_keys: 4096,
            pin_dir: None,
        }
    }
}

pub struct Limiter {
    // Field order is drop order: maps and links before the object.
    buckets: HashMap<MapData, LimiterKey, LimiterBucket>,
    stats: PerCpuArray<MapData, u64>,
    /// Links pinned for persistence: closing them leaves them attached.
    pinned_links: Vec<PinnedLink>,
    pin_dir: Option<PathBuf>,
    ebpf: Ebpf,
}

impl Limiter {
    pub fn load(options: &LimiterOptions) -> Result<Self, LimiterError> {
        if options.max_keys == 0 {
            return Err(LimiterError::Invalid("max_keys must be at least 1".into()));
        }
        crate::kernel::features::raise_memlock_rlimit();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(BUCKETS, options.max_keys);
        let (buckets_pin, stats_pin);
        if let Some(dir) = &options.pin_dir {
            pin::ensure_bpffs(dir)?;
            buckets_pin = dir.join(BUCKETS);
            stats_pin = dir.join(STATS);
            // An existing pin is reused: the buckets of a previous run stay
            // in force.
            loader.map_pin_path(BUCKETS, buckets_pin.as_path());
            loader.map_pin_path(STATS, stats_pin.as_path());
        }
        let mut ebpf = loader.load(LIMITER_OBJECT)?;
        let buckets = ebpf
            .take_map(BUCKETS)
            .ok_or(LimiterError::Missing(BUCKETS))?;
        let buckets = HashMap::try_from(buckets).map_err(|source| LimiterError::Map {
            name: BUCKETS,
            source,
        })?;
        let stats = ebpf.take_map(STATS).ok_or(LimiterError::Missing(STATS))?;
        let stats = PerCpuArray::try_from(stats).map_err(|source| LimiterError::Map {
            name: STATS,
            source,
        })?;
        Ok(Self {
            buckets,
            stats,
            pinned_links: Vec::new(),
            pin_dir: options.pin_dir.clone(),
            ebpf,
        })
    }

    /// Meters `key` at `rate` for the packets `scope` names. Replacing an
    /// existing key keeps its counters and its bucket level. The map update
    /// is one syscall: on error the previous policy is still in force.
    pub fn set(&mut self, key: Key, rate: Rate, scope: Scope) -> Result<(), LimiterError> {
        let kernel_key = key.to_kernel();
        let mut bucket = policy::bucket(rate, scope)?;
        if let Some(previous) = self.get_raw(&kernel_key)? {
            bucket.passed = previous.passed;
            bucket.dropped = previous.dropped;
            bucket.tat_ns = previous.tat_ns;
        }
        self.buckets
            .insert(kernel_key, bucket, 0)
            .map_err(|source| LimiterError::Update { key, source })?;
        tracing::debug!(%key, ?rate, ?scope, "limiter key set");
        Ok(())
    }

    /// Removes `key`; its traffic is no longer metered. Returns whether the
    /// key was there.
    pub fn lift(&mut self, key: Key) -> Result<bool, LimiterError> {
        match self.buckets.remove(&key.to_kernel()) {
            Ok(()) => Ok(true),
            Err(e) if policy::is_not_found(&e) => Ok(false),
            Err(source) => Err(LimiterError::Update { key, source }),
        }
    }

    /// The key's pass and drop counts, `None` when it is not set (or was
    /// evicted).
    pub fn counters(&self, key: Key) -> Result<Option<Counters>, LimiterError> {
        Ok(self.get_raw(&key.to_kernel())?.map(|b| Counters {
            passed: b.passed,
            dropped: b.dropped,
        }))
    }

    /// Every key with its policy and counters.
    pub fn entries(&self) -> Result<Vec<Entry>, LimiterError> {
        let mut entries = Vec::new();
        for item in self.buckets.iter() {
            match item {
                Ok((key, bucket)) => {
                    if let Some(entry) = Entry::from_kernel(&key, &bucket) {
                        entries.push(entry);
                    }
                }
                // A key evicted or lifted during the walk: skip it.
                Err(e) if policy::is_not_found(&e) => {}
                Err(source) => {
                    return Err(LimiterError::Map {
                        name: BUCKETS,
                        source,
                    });
                }
            }
        }
        Ok(entries)
    }

    /// Packets no key metered, summed over CPUs.
    pub fn stats(&self) -> Result<UnmeteredStats, LimiterError> {
        let read = |index: u32| -> Result<u64, LimiterError> {
            let per_cpu = self
                .stats
                .get(&index, 0)
                .map_err(|source| LimiterError::Map {
                    name: STATS,
                    source,
                })?;
            Ok(per_cpu.iter().sum())
        };
        Ok(UnmeteredStats {
            unmatched: read(STAT_UNMATCHED)?,
            not_ip: read(STAT_NOT_IP)?,
            truncated: read(STAT_TRUNCATED)?,
            contended: read(STAT_CONTENDED)?,
        })
    }

    /// The pin directory, when the limiter persists.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    fn get_raw(&self, key: &LimiterKey) -> Result<Option<LimiterBucket>, LimiterError> {
        match self.buckets.get(key, 0) {
            Ok(bucket) => Ok(Some(bucket)),
            Err(e) if policy::is_not_found(&e) => Ok(None),
            Err(source) => Err(LimiterError::Map {
                name: BUCKETS,
                source,
            }),
        }
    }
}

/// Removes limiter state a persistent run left in `dir`: its links detach
/// and its maps are freed once nothing else holds them.
pub fn remove_pinned(dir: &Path) -> Result<(), LimiterError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(LimiterError::PinDir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries {
        let path = entry
            .map_err(|source| LimiterError::PinDir {
                path: dir.to_owned(),
                source,
            })?
            .path();
        std::fs::remove_file(&path).map_err(|source| LimiterError::PinDir { path, source })?;
    }
    std::fs::remove_dir(dir).map_err(|source| LimiterError::PinDir {
        path: dir.to_owned(),
        source,
    })
}
