//! Deduplicated string table shared by the pprof and OTLP encoders: both
//! formats refer to strings by index, and index 0 is always "".

use std::collections::HashMap;

#[derive(Debug)]
pub struct StringTable {
    strings: Vec<String>,
    index: HashMap<String, usize>,
}

impl Default for StringTable {
    fn default() -> Self {
        Self::new()
    }
}

impl StringTable {
    pub fn new() -> Self {
        let mut index = HashMap::new();
        index.insert(String::new(), 0);
        Self {
            strings: vec![String::new()],
            index,
        }
    }

    /// The index of `s`, adding it on first use.
    pub fn intern(&mut self, s: &str) -> usize {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.strings.len();
        self.strings.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn into_strings(self) -> Vec<String> {
        self.strings
    }
}

#[cfg(test)]
mod tests {
    use super::StringTable;

    #[test]
    fn empty_string_is_zero_and_strings_are_unique() {
        let mut t = StringTable::new();
        assert_eq!(t.intern(""), 0);
        let a = t.intern("a");
        let b = t.intern("b");
        assert_eq!(t.intern("a"), a);
        assert_ne!(a, b);
        assert_eq!(t.into_strings(), ["", "a", "b"]);
    }
}
