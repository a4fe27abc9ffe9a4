//! A fixed set of literal keys (`keep_keys`, the priority keys of `limit`),
//! tested once per attribute of every record.

/// Keys grouped by length: a lookup compares bytes only with the keys of
/// the same length (attribute keys of one length are few), where a list
/// would be walked key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeySet {
    /// Sorted by length, then bytes, without duplicates.
    keys: Vec<String>,
    /// For each length `n` up to [`INDEXED`], the range of `keys` of
    /// length `n`: `keys[starts[n]..starts[n + 1]]`. Longer keys (rare) are
    /// the tail from `starts[INDEXED + 1]`, searched in turn, so that the
    /// index stays small whatever a statement holds.
    starts: Vec<usize>,
}

/// Longest key length given its own range.
const INDEXED: usize = 64;

impl KeySet {
    pub(crate) fn new(mut keys: Vec<String>) -> KeySet {
        keys.sort_unstable_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        keys.dedup();
        let starts = (0..=INDEXED + 1)
            .map(|n| keys.partition_point(|k| k.len() < n))
            .collect();
        KeySet { keys, starts }
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        let n = key.len();
        let range = if n <= INDEXED {
            self.starts
                .get(n)
                .copied()
                .zip(self.starts.get(n + 1).copied())
        } else {
            self.starts.get(INDEXED + 1).map(|&s| (s, self.keys.len()))
        };
        range
            .and_then(|(start, end)| self.keys.get(start..end))
            .is_some_and(|keys| keys.iter().any(|k| k == key))
    }
}

#[cfg(test)]
mod tests {
    use super::KeySet;

    #[test]
    fn finds_exactly_its_keys() {
        let long = "k".repeat(100);
        let longer = "k".repeat(101);
        let other_long = "j".repeat(100);
        let keys = [
            "b",
            "a",
            "http.route",
            "url.path",
            "url.scheme",
            "a",
            "",
            &long,
        ];
        let set = KeySet::new(keys.iter().map(|k| k.to_string()).collect());
        for k in keys {
            assert!(set.contains(k), "{k:?}");
        }
        let absent = [
            "c",
            "http.rout",
            "http.routes",
            "url.schemf",
            "URL.path",
            "ab",
        ];
        for k in absent.into_iter().chain([longer.as_str(), &other_long]) {
            assert!(!set.contains(k), "{k:?}");
        }
        let empty = KeySet::new(Vec::new());
        assert!(!empty.contains("") && !empty.contains("a") && !empty.contains(&long));
    }
}
