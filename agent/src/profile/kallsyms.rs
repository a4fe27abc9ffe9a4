//! Kernel frames symbolized from /proc/kallsyms. The table is not kept in
//! memory (it is ~100k symbols): addresses not seen before are resolved in
//! one pass over the file, and the answers are cached.

use std::{collections::HashMap, sync::Arc};

pub struct KernelSymbols {
    cache: HashMap<u64, Option<Arc<str>>>,
    max_entries: usize,
    pub passes: u64,
}

impl KernelSymbols {
    pub fn new(max_entries: usize) -> Self {
        Self {
            cache: HashMap::new(),
            max_entries: max_entries.max(1),
            passes: 0,
        }
    }

    /// Resolves every address of `addresses` not cached yet.
    pub fn resolve(&mut self, addresses: impl IntoIterator<Item = u64>) {
        let mut wanted: Vec<u64> = addresses
            .into_iter()
            .filter(|a| !self.cache.contains_key(a))
            .collect();
        if wanted.is_empty() {
            return;
        }
        wanted.sort_unstable();
        wanted.dedup();
        if self.cache.len() + wanted.len() > self.max_entries {
            self.cache.clear();
        }
        self.passes += 1;
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        for (address, name) in wanted.iter().zip(lookup(&text, &wanted)) {
            self.cache.insert(*address, name.map(Arc::from));
        }
    }

    pub fn get(&self, address: u64) -> Option<Arc<str>> {
        self.cache.get(&address).cloned().flatten()
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

/// For each of `wanted` (sorted), the name of the text symbol at or below
/// it. Lines are `address type name [module]`.
fn lookup<'t>(text: &'t str, wanted: &[u64]) -> Vec<Option<&'t str>> {
    let mut symbols: Vec<(u64, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?;
            if !matches!(kind, "t" | "T" | "w" | "W") || address == 0 {
                return None;
            }
            Some((address, fields.next()?))
        })
        .collect();
    symbols.sort_unstable_by_key(|s| s.0);
    wanted
        .iter()
        .map(|&address| {
            let i = symbols.partition_point(|s| s.0 <= address);
            i.checked_sub(1).map(|i| symbols[i].1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_symbol_below() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffff81000100 t do_work\n\
                    ffffffff81000200 D some_data\n\
                    ffffffffc0000000 t mod_fn\t[mymod]\n\
                    garbage\n";
        let names = lookup(
            text,
            &[
                0xffff_ffff_8000_0000,
                0xffff_ffff_8100_0050,
                0xffff_ffff_8100_0250,
                0xffff_ffff_c000_0010,
            ],
        );
        assert_eq!(
            names,
            vec![None, Some("_stext"), Some("do_work"), Some("mod_fn")]
        );
    }
}
