//! A compiled regex with a cheap test in front of it: most attribute values
//! a statement's regex is tried on do not match, and ruling them out with a
//! substring search costs a fraction of entering the regex engine (whose
//! per-search setup dominates on values this short).

use memchr::memmem::Finder;
use regex::Regex;
use regex_syntax::hir::literal::Extractor;

/// More literals than this and the test would cost about what the regex
/// does.
const MAX_LITERALS: usize = 4;

#[derive(Debug)]
pub(crate) struct Pattern {
    re: Regex,
    /// Literals every match starts with (as `regex-syntax` extracts them):
    /// a text containing none of them cannot match. `None` when the regex
    /// has no such short, finite set.
    starts: Option<Vec<Finder<'static>>>,
}

impl Pattern {
    pub(crate) fn new(re: Regex) -> Pattern {
        let starts = required_starts(re.as_str());
        Pattern { re, starts }
    }

    pub(crate) fn regex(&self) -> &Regex {
        &self.re
    }

    /// Whether the regex can be skipped: the text cannot match.
    pub(crate) fn rules_out(&self, s: &str) -> bool {
        self.starts
            .as_ref()
            .is_some_and(|fs| fs.iter().all(|f| f.find(s.as_bytes()).is_none()))
    }

    pub(crate) fn is_match(&self, s: &str) -> bool {
        !self.rules_out(s) && self.re.is_match(s)
    }

    /// Whether the prefilter is in use (for tests).
    #[cfg(test)]
    pub(crate) fn has_prefilter(&self) -> bool {
        self.starts.is_some()
    }
}

/// The pattern is parsed again with the same (default) syntax options as
/// the `regex` crate uses, so that both read it the same way.
fn required_starts(pattern: &str) -> Option<Vec<Finder<'static>>> {
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    let mut seq = Extractor::new().extract(&hir);
    // A small class multiplies the literals (`/users/[0-9]` gives ten):
    // cut them shorter until few enough remain (`/users/`). Every match
    // still starts with one of them.
    let mut len = seq.max_literal_len()?;
    while seq.len()? > MAX_LITERALS && len > 1 {
        len -= 1;
        seq.keep_first_bytes(len);
        seq.sort();
        seq.dedup();
    }
    let literals = seq.literals()?;
    // An empty literal is in every text; an empty set (a regex matching
    // nothing) is left to the regex.
    if literals.is_empty()
        || literals.len() > MAX_LITERALS
        || literals.iter().any(|l| l.as_bytes().is_empty())
    {
        return None;
    }
    Some(
        literals
            .iter()
            .map(|l| Finder::new(l.as_bytes()).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::Pattern;
    use regex::Regex;

    fn pattern(p: &str) -> Pattern {
        Pattern::new(Regex::new(p).unwrap())
    }

    /// The prefilter never rules out a text the regex matches, whatever the
    /// pattern's shape, and `is_match` answers as the regex does.
    #[test]
    fn never_rules_out_a_match() {
        let patterns = [
            r"/users/[0-9]+",
            r"^internal\.",
            r"^internal.",
            r"^internal\.|^debug",
            r"(?i)users/",
            r"(?i)k",
            r"[ab]c|d[ef]",
            r"\d{3}",
            r"a*",
            r"",
            r"(?m)^x$",
            r"café|naïve",
            r"[^\s\S]",
        ];
        let texts = [
            "",
            "/api/users/42",
            "/API/USERS/7",
            "/api/users/",
            "internal.x",
            "internalx",
            "debug.y",
            "k",
            "K",
            "\u{212A}",
            "bc",
            "xdf",
            "123",
            "12",
            "a\nx\nb",
            "café",
            "naïve",
            "cafe",
        ];
        for p in patterns {
            let re = Regex::new(p).unwrap();
            let pat = pattern(p);
            for t in texts {
                let want = re.is_match(t);
                assert!(!(want && pat.rules_out(t)), "{p:?} ruled out {t:?}");
                assert_eq!(pat.is_match(t), want, "{p:?} on {t:?}");
            }
        }
    }

    #[test]
    fn literal_starts_are_found_even_behind_small_classes() {
        let p = pattern(r"/users/[0-9]+");
        assert!(p.has_prefilter());
        assert!(p.rules_out("/api/orders"));
        assert!(!p.rules_out("/api/users/12"));
        // Nothing every match starts with: no prefilter.
        for p in [r"a*", r"", r"\w+", r"[^/]+/x"] {
            assert!(!pattern(p).has_prefilter(), "{p:?}");
        }
    }
}
