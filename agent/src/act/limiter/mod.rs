//! The kernel limiter: token buckets in an LRU hash, enforced by an XDP
//! program and/or a tc program (object `selfops-limiter`), behind an
//! allowlist the programs consult first, each bucket carrying its own
//! deadline the programs honour without the agent.
//!
//! [`Limiter::load`] loads the object; [`Limiter::attach_xdp`] and
//! [`Limiter::attach_tc`] hook it to interfaces; [`Limiter::set`],
//! [`Limiter::lift`], [`Limiter::counters`] and [`Limiter::entries`] manage
//! the buckets. Dropping the limiter detaches everything, unless it was
//! loaded with a pin directory (persist), in which case the programs stay
//! attached and the maps stay in bpffs, and the next load with the same
//! directory takes them over without a gap in enforcement.

mod allow;
mod attach;
pub mod clock;
mod error;
pub mod found;
mod pin;
mod policy;
mod stale;

pub use allow::AllowRules;
pub use attach::{TcHook, TcMode, XdpHook, enable_run_stats};
pub use error::LimiterError;
pub use policy::{Counters, Entry, Key, Rate, Scope, UnmeteredStats};
pub use selfops_ebpf::limiter::RATE_MAX;
pub use stale::{link_pins, remove_stale_filters, remove_stale_links};

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, MapData, PerCpuArray},
    programs::links::PinnedLink,
};
use selfops_ebpf::limiter::{LimiterBucket, LimiterKey};

use crate::kernel::LIMITER_OBJECT;

/// Map names in the object (at most 15 bytes: the kernel keeps 15).
pub const BUCKETS: &str = "LIMITER_BUCKETS";
pub const STATS: &str = "LIMITER_STATS";
/// Every map the object pins, for persistence.
const PINNED_MAPS: [&str; 4] = [BUCKETS, STATS, allow::PORTS, allow::SOURCES];

/// Longest time a key may hold: a limit is a reaction, not a policy.
pub const TTL_MAX: Duration = Duration::from_secs(24 * 60 * 60);

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
    /// Passed whatever the keys say; written at load (replacing what a
    /// pinned map held).
    pub allow: AllowRules,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        Self {
            max_keys: 4096,
            pin_dir: None,
            allow: AllowRules::default(),
        }
    }
}

pub struct Limiter {
    // Field order is drop order: maps and links before the object.
    buckets: HashMap<MapData, LimiterKey, LimiterBucket>,
    stats: PerCpuArray<MapData, u64>,
    allow_ports: allow::PortMap,
    allow_sources: allow::SourceMap,
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
        let pins: Vec<(&str, PathBuf)>;
        if let Some(dir) = &options.pin_dir {
            pin::ensure_bpffs(dir)?;
            pins = PINNED_MAPS
                .iter()
                .map(|name| (*name, dir.join(name)))
                .collect();
            pin::discard_incompatible(dir)?;
            // An existing pin is reused: the buckets of a previous run stay
            // in force.
            for (name, path) in &pins {
                loader.map_pin_path(name, path.as_path());
            }
        }
        let mut ebpf = loader.load(LIMITER_OBJECT)?;
        let buckets =
            HashMap::try_from(take(&mut ebpf, BUCKETS)?).map_err(|source| LimiterError::Map {
                name: BUCKETS,
                source,
            })?;
        let stats =
            PerCpuArray::try_from(take(&mut ebpf, STATS)?).map_err(|source| LimiterError::Map {
                name: STATS,
                source,
            })?;
        let mut allow_ports =
            HashMap::try_from(take(&mut ebpf, allow::PORTS)?).map_err(|source| {
                LimiterError::Map {
                    name: allow::PORTS,
                    source,
                }
            })?;
        let mut allow_sources =
            LpmTrie::try_from(take(&mut ebpf, allow::SOURCES)?).map_err(|source| {
                LimiterError::Map {
                    name: allow::SOURCES,
                    source,
                }
            })?;
        allow::write(&mut allow_ports, &mut allow_sources, &options.allow)?;
        Ok(Self {
            buckets,
            stats,
            allow_ports,
            allow_sources,
            pinned_links: Vec::new(),
            pin_dir: options.pin_dir.clone(),
            ebpf,
        })
    }

    /// Meters `key` at `rate` for the packets `scope` names, for `ttl` (at
    /// most [`TTL_MAX`]): from then on the programs ignore the key, agent
    /// or no agent. Replacing an existing key keeps its counters and its
    /// bucket level. The map update is one syscall: on error the previous
    /// policy is still in force.
    pub fn set(
        &mut self,
        key: Key,
        rate: Rate,
        scope: Scope,
        ttl: Duration,
    ) -> Result<(), LimiterError> {
        if ttl.is_zero() || ttl > TTL_MAX {
            return Err(LimiterError::Invalid(format!(
                "ttl {ttl:?} is not allowed: use more than 0 and at most {TTL_MAX:?}"
            )));
        }
        let deadline = clock::deadline_after(ttl)
            .ok_or_else(|| LimiterError::Invalid(format!("ttl {ttl:?} overflows the clock")))?;
        self.set_until(key, rate, scope, deadline)
    }

    /// As [`Limiter::set`], with the absolute deadline (CLOCK_BOOTTIME ns):
    /// for a key adopted with the time it had left.
    pub fn set_until(
        &mut self,
        key: Key,
        rate: Rate,
        scope: Scope,
        deadline_ns: u64,
    ) -> Result<(), LimiterError> {
        let kernel_key = key.to_kernel();
        let mut bucket = policy::bucket(rate, scope)?;
        bucket.expires_ns = deadline_ns;
        if let Some(previous) = self.get_raw(&kernel_key)? {
            bucket.passed = previous.passed;
            bucket.dropped = previous.dropped;
            bucket.tat_ns = previous.tat_ns;
        }
        self.buckets
            .insert(kernel_key, bucket, 0)
            .map_err(|source| LimiterError::Update { key, source })?;
        tracing::debug!(%key, ?rate, ?scope, deadline_ns, "limiter key set");
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

    /// Every key with its policy, counters and deadline.
    pub fn entries(&self) -> Result<Vec<Entry>, LimiterError> {
        policy::entries(&self.buckets)
    }

    /// Packets no key metered, summed over CPUs.
    pub fn stats(&self) -> Result<UnmeteredStats, LimiterError> {
        policy::stats(&self.stats)
    }

    /// Replaces the allowlist the programs consult (new entries first, so
    /// nothing that stays protected is unprotected for a moment).
    pub fn set_allowlist(&mut self, rules: &AllowRules) -> Result<(), LimiterError> {
        allow::write(&mut self.allow_ports, &mut self.allow_sources, rules)
    }

    /// The allowlist the programs consult.
    pub fn allowlist(&self) -> AllowRules {
        allow::read(&self.allow_ports, &self.allow_sources)
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

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LimiterError> {
    ebpf.take_map(name).ok_or(LimiterError::Missing(name))
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
