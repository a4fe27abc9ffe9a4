//! The limiter's maps as the kernel holds them, found without the object
//! that created them: by name among every loaded map, and by pin. What
//! `selfops limits` reads and clears, with or without a running agent.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData, MapInfo, PerCpuArray, loaded_maps};
use selfops_ebpf::limiter::{LimiterBucket, LimiterKey};

use super::{BUCKETS, Entry, Key, LimiterError, STATS, UnmeteredStats, policy};

/// One bucket map in the kernel.
pub struct FoundBuckets {
    pub id: u32,
    /// Pinned in the directory searched (a persistent agent's).
    pub pinned: bool,
    map: HashMap<MapData, LimiterKey, LimiterBucket>,
}

/// The kernel truncates map names to 15 bytes.
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

fn named(name: &str) -> impl Iterator<Item = MapInfo> + '_ {
    loaded_maps()
        .filter_map(Result::ok)
        .filter(move |info| info.name_as_str() == Some(kernel_name(name)))
}

/// Every limiter bucket map loaded, the one pinned in `pin_dir` marked.
pub fn bucket_maps(pin_dir: &Path) -> Result<Vec<FoundBuckets>, LimiterError> {
    let pinned_id = MapInfo::from_pin(pin_dir.join(BUCKETS))
        .ok()
        .map(|i| i.id());
    let mut found = Vec::new();
    for info in named(BUCKETS) {
        let layout = info.key_size() as usize == size_of::<LimiterKey>()
            && info.value_size() as usize == size_of::<LimiterBucket>();
        if !layout {
            continue;
        }
        // Gone since the walk: nothing to show.
        let Ok(data) = MapData::from_id(info.id()) else {
            continue;
        };
        let map = HashMap::try_from(Map::LruHashMap(data)).map_err(|source| LimiterError::Map {
            name: BUCKETS,
            source,
        })?;
        found.push(FoundBuckets {
            id: info.id(),
            pinned: pinned_id == Some(info.id()),
            map,
        });
    }
    Ok(found)
}

impl FoundBuckets {
    pub fn entries(&self) -> Result<Vec<Entry>, LimiterError> {
        policy::entries(&self.map)
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&mut self, key: Key) -> Result<bool, LimiterError> {
        match self.map.remove(&key.to_kernel()) {
            Ok(()) => Ok(true),
            Err(e) if policy::is_not_found(&e) => Ok(false),
            Err(source) => Err(LimiterError::Update { key, source }),
        }
    }

    /// Removes every key; how many went.
    pub fn clear(&mut self) -> Result<usize, LimiterError> {
        let keys: Vec<Key> = self.entries()?.into_iter().map(|e| e.key).collect();
        let mut removed = 0;
        for key in keys {
            removed += usize::from(self.remove(key)?);
        }
        Ok(removed)
    }
}

/// The unmetered-packet counts of every limiter stats map, summed.
pub fn stats() -> UnmeteredStats {
    let mut total = UnmeteredStats::default();
    for info in named(STATS) {
        let Ok(data) = MapData::from_id(info.id()) else {
            continue;
        };
        let Ok(map) = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(data)) else {
            continue;
        };
        if let Ok(s) = policy::stats(&map) {
            total.unmatched += s.unmatched;
            total.not_ip += s.not_ip;
            total.truncated += s.truncated;
            total.contended += s.contended;
            total.expired += s.expired;
            total.allowlisted += s.allowlisted;
        }
    }
    total
}

/// The keys a persistent run left pinned in `dir`, read before the pins are
/// removed (by a run that does not persist, which books them in its own
/// maps if a playbook accounts for them). Nothing pinned: nothing.
pub fn take_pinned(dir: &Path) -> Result<Vec<Entry>, LimiterError> {
    let path = dir.join(BUCKETS);
    let entries = match MapData::from_pin(&path) {
        Ok(data) => HashMap::try_from(Map::LruHashMap(data))
            .ok()
            .map(|map| policy::entries(&map))
            .transpose()?
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    super::remove_pinned(dir)?;
    Ok(entries)
}
