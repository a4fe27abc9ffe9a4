//! Counting samples per interval, keyed by process, thread and stack, and
//! turning the counts into the symbolized [`IntervalProfile`].

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{
    kallsyms::KernelSymbols,
    maps::{MapEntry, MapsCache},
    model::{Frame, IntervalProfile, Mapping, ProcessLabels, StackCount},
    symbolize::UserSymbolizer,
    unwind::cache::TableCache,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StackKey {
    pid: u32,
    thread: [u8; 16],
    kernel: Box<[u64]>,
    user: Box<[u64]>,
}

/// One interval's counts.
pub struct Aggregator {
    stacks: HashMap<StackKey, u64>,
    labels: HashMap<(u32, [u8; 16]), Arc<ProcessLabels>>,
    max_stacks: usize,
    start: SystemTime,
    /// Samples not counted because the interval already held `max_stacks`
    /// distinct stacks.
    pub dropped: u64,
}

/// What turning counts into frames needs.
pub struct Resolvers<'a> {
    pub maps: &'a mut MapsCache,
    pub tables: &'a mut TableCache,
    pub symbols: &'a mut UserSymbolizer,
    pub kernel: &'a mut KernelSymbols,
    /// New symbolization stops at this time; later frames keep their
    /// addresses (and are symbolized in a later interval).
    pub deadline: std::time::Instant,
}

impl Aggregator {
    pub fn new(max_stacks: usize, start: SystemTime) -> Self {
        Self {
            stacks: HashMap::new(),
            labels: HashMap::new(),
            max_stacks,
            start,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    /// Counts one sample. `labels` is asked only for a new (pid, thread).
    pub fn add(
        &mut self,
        pid: u32,
        thread: [u8; 16],
        kernel: &[u64],
        user: &[u64],
        labels: impl FnOnce() -> ProcessLabels,
    ) {
        let key = StackKey {
            pid,
            thread,
            kernel: kernel.into(),
            user: user.into(),
        };
        if let Some(count) = self.stacks.get_mut(&key) {
            *count += 1;
            return;
        }
        if self.stacks.len() >= self.max_stacks {
            self.dropped += 1;
            return;
        }
        self.labels
            .entry((pid, thread))
            .or_insert_with(|| Arc::new(labels()));
        self.stacks.insert(key, 1);
    }

    /// Ends the interval: symbolized stacks, leaf first.
    pub fn finish(self, end: SystemTime, period_nanos: u64, r: Resolvers<'_>) -> IntervalProfile {
        let Resolvers {
            maps: maps_cache,
            tables,
            symbols,
            kernel,
            deadline,
        } = r;
        kernel.resolve(self.stacks.keys().flat_map(|k| k.kernel.iter().copied()));
        let mut mappings: HashMap<(u32, u64), Arc<Mapping>> = HashMap::new();
        let mut stacks = Vec::with_capacity(self.stacks.len());
        // Hottest first: when the symbolization budget runs out, what is
        // left unnamed is what matters least.
        let mut counted: Vec<(StackKey, u64)> = self.stacks.into_iter().collect();
        counted.sort_unstable_by_key(|c| std::cmp::Reverse(c.1));
        for (key, count) in counted {
            let Some(labels) = self.labels.get(&(key.pid, key.thread)).cloned() else {
                continue;
            };
            let mut frames = Vec::with_capacity(key.kernel.len() + key.user.len());
            for &address in key.kernel.iter() {
                frames.push(Frame {
                    address,
                    mapping: None,
                    file_offset: address,
                    kernel: true,
                    symbols: kernel
                        .get(address)
                        .map(|f| {
                            vec![super::model::Symbol {
                                function: f,
                                file: None,
                                line: None,
                            }]
                        })
                        .unwrap_or_default(),
                });
            }
            let maps = maps_cache.get(key.pid, None, std::time::Instant::now());
            for (i, &address) in key.user.iter().enumerate() {
                // Return addresses point after the call instruction.
                let lookup = if i == 0 {
                    address
                } else {
                    address.wrapping_sub(1)
                };
                let entry = maps.as_ref().and_then(|m| m.find(lookup));
                frames.push(match entry {
                    Some(entry) => user_frame(
                        UserFrame {
                            pid: key.pid,
                            address,
                            lookup,
                            entry,
                            only_cached: std::time::Instant::now() >= deadline,
                        },
                        &mut mappings,
                        tables,
                        symbols,
                    ),
                    None => Frame {
                        address,
                        mapping: None,
                        file_offset: address,
                        kernel: false,
                        symbols: Vec::new(),
                    },
                });
            }
            stacks.push(StackCount {
                labels,
                frames,
                count,
            });
        }
        IntervalProfile {
            start: self.start,
            duration: end.duration_since(self.start).unwrap_or(Duration::ZERO),
            period_nanos,
            stacks,
        }
    }
}

/// One user frame of process `pid`: `address` as sampled, `lookup` the
/// address its symbol is looked up at (return addresses minus one).
struct UserFrame<'e> {
    pid: u32,
    address: u64,
    lookup: u64,
    entry: &'e MapEntry,
    only_cached: bool,
}

fn user_frame(
    f: UserFrame<'_>,
    mappings: &mut HashMap<(u32, u64), Arc<Mapping>>,
    tables: &mut TableCache,
    symbols: &mut UserSymbolizer,
) -> Frame {
    let UserFrame {
        pid,
        address,
        lookup,
        entry,
        only_cached,
    } = f;
    let info = tables.file(pid, entry);
    let mapping = mappings
        .entry((pid, entry.start))
        .or_insert_with(|| {
            Arc::new(Mapping {
                path: entry.path.to_string(),
                build_id: info.build_id.as_deref().map(str::to_owned),
                start: entry.start,
                end: entry.end,
                file_offset: entry.offset,
            })
        })
        .clone();
    let syms = symbols.symbolize(
        &info.key,
        || symbol_path(pid, entry),
        entry.file_offset(lookup),
        only_cached,
    );
    Frame {
        address,
        mapping: Some(mapping),
        file_offset: entry.file_offset(address),
        kernel: false,
        symbols: syms.to_vec(),
    }
}

/// The plain path when it still names the mapped file (so every process of
/// one binary shares blazesym's parsed file), else the /proc path that
/// reaches deleted files and other mount namespaces.
fn symbol_path(pid: u32, entry: &MapEntry) -> String {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata(&*entry.path) {
        Ok(meta) if meta.ino() == entry.file.inode => entry.path.to_string(),
        _ => entry.open_path(pid),
    }
}
