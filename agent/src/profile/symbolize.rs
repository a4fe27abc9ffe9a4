//! Host-side symbolization of user frames with blazesym (ELF symbols, DWARF
//! lines and inlined functions where present), cached per file and offset.

use std::{collections::HashMap, sync::Arc};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use super::{model::Symbol, unwind::cache::TableKey};

/// Distinct files blazesym may hold parsed at once; beyond it its caches
/// are dropped, which bounds memory with many distinct executables.
const MAX_OPEN_FILES: usize = 32;

pub struct UserSymbolizer {
    symbolizer: Symbolizer,
    files: std::collections::HashSet<String>,
    cache: HashMap<(TableKey, u64), Arc<[Symbol]>>,
    max_entries: usize,
    /// Interned names: one copy of a function name however many frames.
    names: HashMap<Arc<str>, ()>,
}

fn new_symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .build()
}

impl UserSymbolizer {
    pub fn new(max_entries: usize) -> Self {
        Self {
            symbolizer: new_symbolizer(),
            files: Default::default(),
            cache: HashMap::new(),
            max_entries: max_entries.max(1),
            names: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Symbols of `file_offset` in the file at `path` (outermost last);
    /// empty when the file has no symbol there or cannot be read.
    /// With `only_cached`, an offset not symbolized before stays unknown
    /// (an interval's symbolization is bounded in time).
    pub fn symbolize(
        &mut self,
        key: &TableKey,
        path: impl FnOnce() -> String,
        file_offset: u64,
        only_cached: bool,
    ) -> Arc<[Symbol]> {
        if let Some(found) = self.cache.get(&(key.clone(), file_offset)) {
            return found.clone();
        }
        if only_cached {
            return Arc::from(Vec::new());
        }
        let path = path();
        if !self.files.contains(&path) {
            if self.files.len() >= MAX_OPEN_FILES {
                self.symbolizer = new_symbolizer();
                self.files.clear();
            }
            self.files.insert(path.clone());
        }
        let mut elf = Elf::new(&path);
        elf.debug_syms = true;
        let source = Source::Elf(elf);
        // (function, file, line), innermost first.
        let found: Vec<(String, Option<String>, Option<u32>)> = match self
            .symbolizer
            .symbolize_single(&source, Input::FileOffset(file_offset))
        {
            Ok(Symbolized::Sym(sym)) => {
                let code = |c: Option<&blazesym::symbolize::CodeInfo<'_>>| {
                    (
                        c.map(|c| c.to_path().to_string_lossy().into_owned()),
                        c.and_then(|c| c.line),
                    )
                };
                // blazesym lists inlined callees outermost first; the model
                // wants the innermost first and the real function last.
                let mut out: Vec<_> = sym
                    .inlined
                    .iter()
                    .rev()
                    .map(|f| {
                        let (file, line) = code(f.code_info.as_ref());
                        (f.name.to_string(), file, line)
                    })
                    .collect();
                let (file, line) = code(sym.code_info.as_deref());
                out.push((sym.name.to_string(), file, line));
                out
            }
            Ok(Symbolized::Unknown(_)) | Err(_) => Vec::new(),
        };
        let symbols: Arc<[Symbol]> = found
            .into_iter()
            .map(|(function, file, line)| Symbol {
                function: self.intern(&function),
                file: file.map(|f| self.intern(&f)),
                line,
            })
            .collect();
        if self.cache.len() >= self.max_entries {
            self.cache.clear();
            self.names.clear();
        }
        self.cache
            .insert((key.clone(), file_offset), symbols.clone());
        symbols
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some((found, _)) = self.names.get_key_value(name) {
            return found.clone();
        }
        let name: Arc<str> = Arc::from(name);
        self.names.insert(name.clone(), ());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::maps::ProcessMaps;

    #[inline(never)]
    fn a_function_with_a_name() -> u64 {
        a_function_with_a_name as fn() -> u64 as usize as u64
    }

    #[test]
    fn symbolizes_own_function() {
        let here = a_function_with_a_name();
        let maps = ProcessMaps::parse(&std::fs::read_to_string("/proc/self/maps").unwrap());
        let entry = maps.find(here).unwrap();
        let key = TableKey::File(entry.file);
        let mut symbolizer = UserSymbolizer::new(16);
        let symbols = symbolizer.symbolize(
            &key,
            || entry.path.to_string(),
            entry.file_offset(here),
            false,
        );
        let last = symbols.last().expect("a symbol");
        assert!(
            last.function.contains("a_function_with_a_name"),
            "{symbols:?}"
        );
        let again = symbolizer.symbolize(
            &key,
            || entry.path.to_string(),
            entry.file_offset(here),
            true,
        );
        assert!(Arc::ptr_eq(&symbols, &again), "cached");
        let none = symbolizer.symbolize(&key, || "/nonexistent/file".into(), 0x10, false);
        assert!(none.is_empty());
    }
}
