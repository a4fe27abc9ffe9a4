//! Leave-one-category-out: for each category, a detector family's parameters
//! and threshold are chosen on the other categories only and scored on the
//! one left out, so the figure says how the family does on data it was not
//! tuned on. The in-sample figure (chosen and scored on everything) stands
//! beside it; a large gap means the choice fits the data it is scored on.

use std::collections::BTreeSet;

use super::corpus::Corpus;
use super::scoring::{self, PROFILES, Point};

/// Scores of one configuration: per file, per row.
pub type Scores = Vec<Vec<f64>>;

/// One family's outcome.
pub struct Outcome {
    /// Per held-out category: (category, normalised score or `None` when it
    /// has no windows, raw, index of the configuration chosen without it).
    pub per_category: Vec<(String, Option<f64>, f64, usize)>,
    /// Held-out raws summed and normalised over the whole corpus.
    pub overall: f64,
    /// Best configuration and threshold chosen and scored on everything.
    pub in_sample: f64,
    /// The configuration chosen on everything.
    pub chosen: usize,
}

pub fn categories(corpus: &Corpus) -> Vec<String> {
    let set: BTreeSet<&str> = corpus.files.iter().map(|f| f.category.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

/// Scorable rows of the files whose category `keep` accepts, windows
/// numbered from 0 over those files; returns the rows and the window count.
fn points(corpus: &Corpus, scores: &Scores, keep: impl Fn(&str) -> bool) -> (Vec<Point>, usize) {
    let mut out = Vec::new();
    let mut windows = 0;
    for (file, s) in corpus.files.iter().zip(scores) {
        if !keep(&file.category) {
            continue;
        }
        for (i, kind) in scoring::row_kinds(file.values.len(), &file.windows, windows) {
            out.push(Point { score: s[i], kind });
        }
        windows += file.windows.len();
    }
    (out, windows)
}

/// Runs the protocol over a family of configurations, each already scored.
pub fn evaluate(corpus: &Corpus, family: &[Scores]) -> Outcome {
    let profile = &PROFILES[0];
    let cats = categories(corpus);
    let mut per_category = Vec::new();
    let (mut raw_sum, mut null_sum, mut perfect_sum) = (0.0, 0.0, 0.0);
    for held in &cats {
        // Choose on the others: the configuration and threshold with the
        // best raw score there.
        let mut best = (f64::NEG_INFINITY, f64::INFINITY, 0usize);
        for (k, scores) in family.iter().enumerate() {
            let (mut pts, n) = points(corpus, scores, |c| c != held);
            let s = scoring::sweep(&mut pts, n, profile);
            if s.raw > best.0 {
                best = (s.raw, s.threshold, k);
            }
        }
        let (_, threshold, k) = best;
        let (pts, n) = points(corpus, &family[k], |c| c == held);
        let (raw, null, perfect) = scoring::raw_at(&pts, n, profile, threshold);
        raw_sum += raw;
        null_sum += null;
        perfect_sum += perfect;
        let norm = (n > 0).then(|| scoring::normalize(raw, null, perfect));
        per_category.push((held.clone(), norm, raw, k));
    }
    let mut in_sample = (f64::NEG_INFINITY, 0usize);
    for (k, scores) in family.iter().enumerate() {
        let (mut pts, n) = points(corpus, scores, |_| true);
        let s = scoring::sweep(&mut pts, n, profile);
        if s.normalized > in_sample.0 {
            in_sample = (s.normalized, k);
        }
    }
    Outcome {
        per_category,
        overall: scoring::normalize(raw_sum, null_sum, perfect_sum),
        in_sample: in_sample.0,
        chosen: in_sample.1,
    }
}

#[cfg(test)]
mod tests {
    use super::super::corpus::DataFile;
    use super::*;

    /// One 100-row file per category, one window at rows 40..=59.
    fn corpus() -> Corpus {
        let file = |category: &str| DataFile {
            key: format!("{category}/f.csv"),
            category: category.into(),
            stem: "f".into(),
            raw: Vec::new(),
            times: (0..100).map(f64::from).collect(),
            values: vec![0.0; 100],
            windows: vec![(40, 59)],
        };
        Corpus {
            files: vec![file("a"), file("b")],
        }
    }

    fn fires_at(rows: &[usize]) -> Vec<f64> {
        (0..100)
            .map(|i| if rows.contains(&i) { 1.0 } else { 0.0 })
            .collect()
    }

    #[test]
    fn a_perfect_detector_is_perfect_out_of_sample_too() {
        let c = corpus();
        let out = evaluate(&c, &[vec![fires_at(&[40]), fires_at(&[40])]]);
        assert!((out.overall - 100.0).abs() < 1e-9);
        assert!((out.in_sample - 100.0).abs() < 1e-9);
    }

    #[test]
    fn nothing_is_learnt_from_the_category_scored() {
        let c = corpus();
        // Right on `a`, only a false positive on `b`: chosen on `b`, the
        // threshold never fires, so `a` held out scores 0 although the
        // detector is perfect there.
        let out = evaluate(&c, &[vec![fires_at(&[40]), fires_at(&[20])]]);
        let a = out
            .per_category
            .iter()
            .find(|p| p.0 == "a")
            .and_then(|p| p.1);
        assert_eq!(a, Some(0.0));
        assert!(out.in_sample > 0.0);
        // With a second configuration right on both, each fold finds it.
        let out = evaluate(
            &c,
            &[
                vec![fires_at(&[45]), fires_at(&[20])],
                vec![fires_at(&[40]), fires_at(&[40])],
            ],
        );
        assert!(
            out.per_category.iter().all(|p| p.3 == 1),
            "{:?}",
            out.per_category
        );
        assert!((out.overall - 100.0).abs() < 1e-9);
    }
}
