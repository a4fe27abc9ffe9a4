//! NAB's scoring rules: per-row weights from the labelled windows, then one
//! threshold for the whole corpus found by sweeping every distinct score.

/// Weights of one application profile.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fp: 0.11,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FP",
        tp: 1.0,
        fp: 0.22,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FN",
        tp: 1.0,
        fp: 0.11,
        fn_: 2.0,
    },
];

/// `2 / (1 + e^(5p)) - 1`, held at -1 from `p = 3` on.
pub fn scaled_sigmoid(p: f64) -> f64 {
    if p >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * p).exp()) - 1.0
    }
}

/// Rows NAB ignores at the start of a file of `rows` rows.
pub fn probation(rows: usize) -> usize {
    ((0.15 * rows as f64).floor() as usize).min(750)
}

/// What a row is worth if it fires, before the profile's weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowKind {
    /// Inside window `window` (corpus-wide index); `sigmoid` > 0.
    InWindow { window: usize, sigmoid: f64 },
    /// Outside every window; `sigmoid` in [-1, 0).
    Outside { sigmoid: f64 },
}

/// Per-row kinds of one file, probation rows dropped. `windows` are inclusive
/// row ranges, sorted and disjoint; `first_id` numbers them corpus-wide.
/// Returns `(row index, kind)` pairs.
pub fn row_kinds(
    rows: usize,
    windows: &[(usize, usize)],
    first_id: usize,
) -> Vec<(usize, RowKind)> {
    let skip = probation(rows);
    let mut out = Vec::with_capacity(rows.saturating_sub(skip));
    let mut next = 0; // next window not yet entered
    let mut prev: Option<(usize, f64)> = None; // (right edge, width) of the last window left
    for i in 0..rows {
        let current = windows.get(next).filter(|&&(l, _)| l <= i);
        let kind = match current {
            Some(&(l, r)) => {
                let width = (r - l + 1) as f64;
                let pos = -((r as f64) - (i as f64) + 1.0) / width;
                RowKind::InWindow {
                    window: first_id + next,
                    sigmoid: scaled_sigmoid(pos),
                }
            }
            None => {
                let pos = match prev {
                    None => 3.0,
                    Some((right, width)) => (i - right) as f64 / (width - 1.0),
                };
                RowKind::Outside {
                    sigmoid: scaled_sigmoid(pos),
                }
            }
        };
        if i >= skip {
            out.push((i, kind));
        }
        if let Some(&(l, r)) = current
            && i == r
        {
            prev = Some((r, (r - l + 1) as f64));
            next += 1;
        }
    }
    out
}

/// A scorable row: the detector's score and what firing there is worth.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub score: f64,
    pub kind: RowKind,
}

/// Result of the threshold sweep for one profile.
#[derive(Debug, Clone, Copy)]
pub struct Sweep {
    pub threshold: f64,
    pub raw: f64,
    pub normalized: f64,
    pub true_windows: usize,
    pub false_positives: usize,
}

/// Sweeps every distinct score as the threshold (a row fires when its score
/// is at or above it) and keeps the one with the largest raw sum.
/// `total_windows` counts all labelled windows; windows never reached past
/// probation do not count for the null detector, as in NAB.
pub fn sweep(points: &mut [Point], total_windows: usize, profile: &Profile) -> Sweep {
    points.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut best_in_window: Vec<Option<f64>> = vec![None; total_windows];
    let mut scored = vec![false; total_windows];
    for p in points.iter() {
        if let RowKind::InWindow { window, .. } = p.kind {
            scored[window] = true;
        }
    }
    let null = -profile.fn_ * scored.iter().filter(|&&s| s).count() as f64;
    let perfect = profile.tp * total_windows as f64;
    let max_tp = scaled_sigmoid(-1.0);

    let mut raw = null;
    let (mut tps, mut fps) = (0usize, 0usize);
    let mut best = (f64::INFINITY, raw, 0usize, 0usize); // never fires
    let mut i = 0;
    while i < points.len() {
        let threshold = points[i].score;
        while i < points.len() && points[i].score == threshold {
            match points[i].kind {
                RowKind::InWindow { window, sigmoid } => {
                    // Only the best (earliest) firing row of a window counts.
                    let value = profile.tp * sigmoid / max_tp;
                    let slot = &mut best_in_window[window];
                    let old = match *slot {
                        Some(v) => v,
                        None => {
                            tps += 1;
                            -profile.fn_
                        }
                    };
                    let new = value.max(old);
                    raw += new - old;
                    *slot = Some(new);
                }
                RowKind::Outside { sigmoid } => {
                    raw += profile.fp * sigmoid;
                    fps += 1;
                }
            }
            i += 1;
        }
        if raw > best.1 {
            best = (threshold, raw, tps, fps);
        }
    }
    let (threshold, raw, true_windows, false_positives) = best;
    let normalized = if perfect > null {
        100.0 * (raw - null) / (perfect - null)
    } else {
        0.0
    };
    Sweep {
        threshold,
        raw,
        normalized,
        true_windows,
        false_positives,
    }
}

/// Raw score at a fixed `threshold` (a row fires when its score is at or
/// above it), for scoring held-out data at a threshold chosen elsewhere.
/// Returns `(raw, null, perfect)`.
pub fn raw_at(
    points: &[Point],
    total_windows: usize,
    profile: &Profile,
    threshold: f64,
) -> (f64, f64, f64) {
    let mut best_in_window: Vec<Option<f64>> = vec![None; total_windows];
    let mut scored = vec![false; total_windows];
    let max_tp = scaled_sigmoid(-1.0);
    let mut fp_cost = 0.0;
    for p in points {
        let fires = p.score >= threshold;
        match p.kind {
            RowKind::InWindow { window, sigmoid } => {
                scored[window] = true;
                if fires {
                    let value = profile.tp * sigmoid / max_tp;
                    let slot = &mut best_in_window[window];
                    *slot = Some(slot.map_or(value, |v: f64| v.max(value)));
                }
            }
            RowKind::Outside { sigmoid } => {
                if fires {
                    fp_cost += profile.fp * sigmoid;
                }
            }
        }
    }
    let null = -profile.fn_ * scored.iter().filter(|&&s| s).count() as f64;
    let tp: f64 = best_in_window.iter().flatten().sum();
    let misses = scored
        .iter()
        .zip(&best_in_window)
        .filter(|(s, b)| **s && b.is_none())
        .count() as f64;
    let raw = tp - profile.fn_ * misses + fp_cost;
    (raw, null, profile.tp * total_windows as f64)
}

/// `100 · (raw − null) / (perfect − null)`; 0 when there is nothing to find.
pub fn normalize(raw: f64, null: f64, perfect: f64) -> f64 {
    if perfect > null {
        100.0 * (raw - null) / (perfect - null)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: Profile = PROFILES[0];

    /// One file of 100 rows (probation 15) with one window at rows 40..=59.
    fn file(scores: impl Fn(usize) -> f64) -> Vec<Point> {
        row_kinds(100, &[(40, 59)], 0)
            .into_iter()
            .map(|(i, kind)| Point {
                score: scores(i),
                kind,
            })
            .collect()
    }

    #[test]
    fn sigmoid_and_probation_follow_nab() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614_298_151_430_3).abs() < 1e-12);
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert_eq!(scaled_sigmoid(3.0), -1.0);
        assert_eq!(probation(100), 15);
        assert_eq!(probation(4032), 604);
        assert_eq!(probation(22695), 750);
    }

    #[test]
    fn never_firing_scores_zero() {
        let mut pts = file(|_| 0.0);
        // Score 0 everywhere: firing everywhere or nowhere; nowhere wins.
        let s = sweep(&mut pts, 1, &STD);
        assert_eq!(s.raw, -1.0);
        assert_eq!(s.normalized, 0.0);
    }

    #[test]
    fn firing_at_the_left_edge_only_is_perfect() {
        let mut pts = file(|i| if i == 40 { 0.9 } else { 0.1 });
        let s = sweep(&mut pts, 1, &STD);
        assert!((s.raw - 1.0).abs() < 1e-12, "{s:?}");
        assert!((s.normalized - 100.0).abs() < 1e-9);
        assert_eq!(s.threshold, 0.9);
    }

    #[test]
    fn one_false_positive_far_from_windows_costs_a_fp() {
        // Row 20 is before the only window: full cost.
        let mut pts = file(|i| if i == 40 || i == 20 { 0.9 } else { 0.0 });
        let s = sweep(&mut pts, 1, &STD);
        assert!((s.raw - (1.0 - 0.11)).abs() < 1e-12, "{s:?}");
        // (0.89 - (-1)) / (1 - (-1)) = 94.5
        assert!((s.normalized - 94.5).abs() < 1e-9);
        assert_eq!(s.false_positives, 1);
    }

    #[test]
    fn false_positive_just_after_a_window_is_cheap() {
        // Row 60 is 1 row past the right edge (59) of a 20-row window:
        // position 1/19, sigmoid 2/(1+e^(5/19)) - 1.
        let mut pts = file(|i| if i == 40 || i == 60 { 0.9 } else { 0.0 });
        let s = sweep(&mut pts, 1, &STD);
        let cost = 0.11 * (2.0 / (1.0 + (5.0f64 / 19.0).exp()) - 1.0);
        assert!((s.raw - (1.0 + cost)).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn late_detection_earns_less_and_only_the_first_counts() {
        // Rows 50 and 55 fire: only 50 counts. Position -(59-50+1)/20 = -0.5.
        let mut pts = file(|i| if i == 50 || i == 55 { 0.9 } else { 0.0 });
        let s = sweep(&mut pts, 1, &STD);
        let want = scaled_sigmoid(-0.5) / scaled_sigmoid(-1.0);
        assert!((s.raw - want).abs() < 1e-12, "{s:?}");
        assert_eq!(s.true_windows, 1);
    }

    #[test]
    fn probation_rows_are_not_scored() {
        let mut pts = file(|i| if i < 15 { 1.0 } else { 0.0 });
        assert!(pts.iter().all(|p| p.score == 0.0));
        let s = sweep(&mut pts, 1, &STD);
        assert_eq!(s.normalized, 0.0);
    }

    #[test]
    fn raw_at_the_swept_threshold_matches_the_sweep() {
        let mut pts = file(|i| match i {
            20 => 0.7,
            45 => 0.8,
            60 => 0.75,
            _ => 0.1,
        });
        let s = sweep(&mut pts, 1, &STD);
        let (raw, null, perfect) = raw_at(&pts, 1, &STD, s.threshold);
        assert!((raw - s.raw).abs() < 1e-12, "{raw} {s:?}");
        assert!((normalize(raw, null, perfect) - s.normalized).abs() < 1e-9);
        let (never, _, _) = raw_at(&pts, 1, &STD, f64::INFINITY);
        assert_eq!(never, -1.0);
    }

    #[test]
    fn low_fn_profile_doubles_the_miss() {
        let mut pts = file(|i| if i == 20 { 0.9 } else { 0.0 });
        let s = sweep(&mut pts, 1, &PROFILES[2]);
        assert_eq!(s.raw, -2.0, "a lone false positive does not pay");
    }
}
