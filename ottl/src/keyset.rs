//! A fixed set of literal keys (`keep_keys`, the priority keys of `limit`),
//! tested once per attribute of every record.

/// Keys grouped by length: a lookup compares bytes only with the keys of
/// the same length (attribute keys of one length are few), where a list
/// would be walked key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeySet {
    /// Sorted by length, then bytes, without duplicates.
    keys: Vec<String>,
    /// For each length `n`, the range of `keys` of length `n`: `keys
    /// [starts[n]..starts[n + 1]]`; lengths past the end have no keys.
    starts: Vec<usize>,
}

impl KeySet {
    pub(crate) fn new(mut keys: Vec<String>) -> KeySet {
        keys.sort_unstable_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        keys.dedup();
        let longest = keys.last().map_or(0, String::len);
        let starts = (0..=longest.saturating_add(1))
            .map(|n| keys.partition_point(|k| k.len() < n))
            .collect();
        KeySet { keys, starts }
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        let n = key.len();
        match (
            self.starts.get(n),
            n.checked_add(1).and_then(|m| self.starts.get(m)),
        ) {
            (Some(&start), Some(&end)) => self.keys[start..end].iter().any(|k| k == key),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeySet;

    #[test]
    fn finds_exactly_its_keys() {
        let keys = ["b", "a", "http.route", "url.path", "url.scheme", "a", ""];
        let set = KeySet::new(keys.iter().map(|k| k.to_string()).collect());
        for k in keys {
            assert!(set.contains(k), "{k:?}");
        }
        for k in [
            "c",
            "http.rout",
            "http.routes",
            "url.schemf",
            "URL.path",
            "ab",
        ] {
            assert!(!set.contains(k), "{k:?}");
        }
        let empty = KeySet::new(Vec::new());
        assert!(!empty.contains("") && !empty.contains("a"));
    }
}
