//! Contextual novelty: is what the signal does now something it has done
//! before? Each value is quantised into one of `bins` levels over the
//! signal's range; the last few levels form a context, and each context
//! (of every length from the level alone up to `order` levels before it) is
//! remembered in a bounded dictionary. A point whose contexts were never seen
//! is novel. Novelty at a context length that is novel most of the time on
//! this signal (a noisy signal at long contexts) counts for little, so the
//! score is how unexpectedly novel the point is, in [0, 1]. After each
//! firing the detector is quiet for a while, so one incident fires once.
//!
//! A streaming agent is not told a signal's range up front: the first
//! `learn` points are held, their minimum and maximum set the range, and then
//! they are replayed into the dictionary; later the range only widens, to
//! take in a value outside it. Nothing allocates after construction.

use serde::Deserialize;

use super::quiet::QuietAfterFiring;
use super::stats::EwStats;
use super::{ConfigError, Detector};

/// Longest context, in levels before the current one.
pub const MAX_ORDER: u32 = 8;
/// Most points held to learn the range.
pub const MAX_LEARN: u32 = 4096;
/// Bounds on the dictionary size (slots, a power of two).
const MIN_CAPACITY: u32 = 256;
const MAX_CAPACITY: u32 = 1 << 20;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContextualConfig {
    /// Levels the range is cut into (2 ..= 256).
    pub bins: u32,
    /// Longest context, in levels before the current one (1 ..= 8).
    pub order: u32,
    /// Points held to learn the range before any score (2 ..= 4096).
    pub learn: u32,
    /// Share of the learnt span added below and above it, so the normal
    /// swing of the signal fills the middle levels, as a range that already
    /// held the signal's anomalies would (0 ..= 10).
    pub margin: f64,
    /// Contexts remembered (a power of two, 256 ..= 2^20); the least
    /// recently seen is forgotten first.
    pub capacity: u32,
    /// Weight of the newest point in each context length's novelty rate,
    /// in (0, 1].
    pub rate_alpha: f64,
    /// Score at which the detector counts itself as having fired.
    pub fire_level: f64,
    /// Points after a firing during which the score is held at 0.
    pub quiet: u32,
}

impl Default for ContextualConfig {
    fn default() -> Self {
        Self {
            bins: 16,
            order: 1,
            learn: 300,
            capacity: 2048,
            margin: 1.0,
            rate_alpha: 0.01,
            fire_level: 0.5,
            quiet: 150,
        }
    }
}

impl ContextualConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        use super::check_range as range;
        range("contextual.bins", self.bins, 2, 256)?;
        range("contextual.order", self.order, 1, MAX_ORDER)?;
        range("contextual.learn", self.learn, 2, MAX_LEARN)?;
        range(
            "contextual.capacity",
            self.capacity,
            MIN_CAPACITY,
            MAX_CAPACITY,
        )?;
        if !self.capacity.is_power_of_two() {
            return Err(ConfigError::Invalid {
                field: "contextual.capacity",
                reason: format!("{} is not a power of two", self.capacity),
            });
        }
        if !(0.0..=10.0).contains(&self.margin) {
            return Err(ConfigError::Invalid {
                field: "contextual.margin",
                reason: format!("{} is outside 0 ..= 10", self.margin),
            });
        }
        super::check_rate("contextual.rate_alpha", self.rate_alpha)?;
        super::check_unit("contextual.fire_level", self.fire_level)
    }
}

/// A bounded set of context fingerprints, two slots per bucket, the one
/// seen longer ago replaced when both are taken.
#[derive(Debug, Clone)]
struct Dictionary {
    /// Fingerprint per slot; 0 is an empty slot.
    keys: Box<[u32]>,
    /// When each slot was last seen (point count, wrapping).
    stamps: Box<[u32]>,
    mask: usize,
}

impl Dictionary {
    /// `capacity` is a power of two of at least 2 (the config layer checks
    /// it; anything else is rounded up so `see` stays in bounds).
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        Self {
            keys: vec![0; capacity].into_boxed_slice(),
            stamps: vec![0; capacity].into_boxed_slice(),
            mask: capacity - 1,
        }
    }

    /// Records `hash`; returns whether it was already there.
    fn see(&mut self, hash: u64, now: u32) -> bool {
        let bucket = (hash as usize) & self.mask & !1;
        // The high half as fingerprint (never 0), independent of the bucket bits.
        let key = ((hash >> 32) as u32) | 1;
        for slot in [bucket, bucket + 1] {
            if self.keys[slot] == key {
                self.stamps[slot] = now;
                return true;
            }
        }
        let age = |slot: usize| now.wrapping_sub(self.stamps[slot]);
        let victim = if self.keys[bucket] == 0 {
            bucket
        } else if self.keys[bucket + 1] == 0 || age(bucket + 1) > age(bucket) {
            bucket + 1
        } else {
            bucket
        };
        self.keys[victim] = key;
        self.stamps[victim] = now;
        false
    }
}

/// One step of a 64-bit mix (multiply, xor-shift): distinct sequences of
/// levels give unrelated hashes.
fn mix(h: u64, x: u64) -> u64 {
    let h = (h ^ x.wrapping_add(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^ (h >> 31)
}

#[derive(Debug, Clone)]
pub struct Contextual {
    cfg: ContextualConfig,
    /// Points held while the range is learnt (freed once it is).
    learning: Box<[f64]>,
    /// How many of `learning` are filled.
    held: usize,
    /// The range, once learnt.
    range: Option<(f64, f64)>,
    /// Last `order` levels, newest first.
    recent: [u16; MAX_ORDER as usize],
    known: usize,
    dict: Dictionary,
    /// How often each context length (0 ..= order) is novel.
    rates: [EwStats; MAX_ORDER as usize + 1],
    now: u32,
    quiet: QuietAfterFiring,
}

impl Contextual {
    pub fn new(cfg: ContextualConfig) -> Self {
        Self {
            learning: vec![0.0; cfg.learn as usize].into_boxed_slice(),
            held: 0,
            range: None,
            recent: [0; MAX_ORDER as usize],
            known: 0,
            dict: Dictionary::new(cfg.capacity as usize),
            rates: [EwStats::new(cfg.rate_alpha); MAX_ORDER as usize + 1],
            now: 0,
            quiet: QuietAfterFiring::default(),
            cfg,
        }
    }

    /// The level of `value`, widening the range to take it in.
    fn level(&mut self, value: f64) -> u16 {
        let (lo, hi) = match self.range {
            Some((lo, hi)) => (lo.min(value), hi.max(value)),
            None => (value, value),
        };
        self.range = Some((lo, hi));
        let span = hi - lo;
        if span <= f64::EPSILON * (1.0 + lo.abs().max(hi.abs())) {
            return 0;
        }
        let top = self.cfg.bins.saturating_sub(1);
        // In [0, top]: the cast saturates, and the ratio is within [0, 1].
        ((value - lo) / span * f64::from(self.cfg.bins)).min(f64::from(top)) as u16
    }

    /// Sees one point's contexts; returns how unexpectedly novel it is, in
    /// [0, 1].
    fn observe(&mut self, value: f64) -> f64 {
        let level = self.level(value);
        self.now = self.now.wrapping_add(1);
        let orders = self.known.min(self.cfg.order as usize);
        let mut h = mix(0, u64::from(level));
        let mut score = 0.0;
        for k in 0..=orders {
            if k > 0 {
                h = mix(h, u64::from(self.recent[k - 1]) + 1);
            }
            let novel = !self.dict.see(h, self.now);
            let rate = &mut self.rates[k];
            // Before any history, a novel context is no surprise.
            let usual = if rate.count() > 0 { rate.mean() } else { 1.0 };
            if novel {
                score += 1.0 - usual;
            }
            rate.update(if novel { 1.0 } else { 0.0 });
        }
        self.recent.copy_within(0..MAX_ORDER as usize - 1, 1);
        self.recent[0] = level;
        self.known = (self.known + 1).min(MAX_ORDER as usize);
        (score / (f64::from(self.cfg.order) + 1.0)).clamp(0.0, 1.0)
    }

    /// Novelty of a finite point; 0 while the range is learnt.
    fn novelty(&mut self, value: f64) -> f64 {
        if self.range.is_some() {
            return self.observe(value);
        }
        if let Some(slot) = self.learning.get_mut(self.held) {
            *slot = value;
            self.held += 1;
        }
        if self.held < self.learning.len() {
            return 0.0;
        }
        // Range learnt: from the held points, which are then replayed and
        // their buffer freed.
        let held = std::mem::take(&mut self.learning);
        let (lo, hi) = held
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let pad = (hi - lo) * self.cfg.margin;
        self.range = Some((lo - pad, hi + pad));
        for &v in held.iter() {
            self.observe(v);
        }
        0.0
    }
}

impl Detector for Contextual {
    fn name(&self) -> &'static str {
        "contextual"
    }

    fn update(&mut self, t: f64, value: f64) -> f64 {
        if !t.is_finite() || !value.is_finite() {
            return 0.0;
        }
        let score = self.novelty(value);
        self.quiet.gate(score, self.cfg.fire_level, self.cfg.quiet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::{noise, step_series};

    fn run(cfg: ContextualConfig, series: impl Iterator<Item = (f64, f64)>) -> Vec<f64> {
        let mut d = Contextual::new(cfg);
        series.map(|(t, v)| d.update(t, v)).collect()
    }

    #[test]
    fn a_level_never_seen_fires_once_at_the_step() {
        let scores = run(
            ContextualConfig::default(),
            step_series(2000, 10.0, 30.0, 1.0),
        );
        let firings: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] >= 0.5).collect();
        assert_eq!(firings.len(), 1, "fires once: {firings:?}");
        assert!((2000..2005).contains(&firings[0]), "{firings:?}");
    }

    #[test]
    fn a_repeating_pattern_is_learnt_and_a_break_in_it_is_news() {
        // A sawtooth of period 20 with mild noise: after learning, quiet.
        let saw = |i: usize, n: f64| (i % 20) as f64 + 0.1 * n;
        let mut d = Contextual::new(ContextualConfig::default());
        let mut late_max: f64 = 0.0;
        for (i, n) in noise(3000).enumerate() {
            let s = d.update(i as f64, saw(i, n));
            if i > 1000 {
                late_max = late_max.max(s);
            }
        }
        assert!(late_max < 0.05, "a learnt pattern scores {late_max}");
        // The same values in an order never seen: a jump from the bottom of
        // the range to the top and back within one tooth. Each level is
        // known, only the step between them is new: half the contexts of
        // the default order 1.
        let broken = [0.0, 19.0, 0.0, 19.0, 0.0, 19.0];
        let peak = broken
            .iter()
            .enumerate()
            .map(|(j, &v)| d.update((3000 + j) as f64, v))
            .fold(0.0, f64::max);
        assert!(peak > 0.45, "a broken pattern scores {peak}");
    }

    #[test]
    fn noise_alone_does_not_fire() {
        let scores = run(
            ContextualConfig::default(),
            noise(20_000).enumerate().map(|(i, n)| (i as f64, 50.0 + n)),
        );
        let late_max = scores[2000..].iter().copied().fold(0.0, f64::max);
        assert!(late_max < 0.5, "noise scores {late_max}");
    }

    #[test]
    fn constant_signal_scores_zero() {
        let scores = run(
            ContextualConfig::default(),
            (0..3000).map(|i| (f64::from(i), 5.0)),
        );
        assert!(scores.iter().all(|&s| s == 0.0));
    }

    #[test]
    fn nothing_scores_while_the_range_is_learnt() {
        let cfg = ContextualConfig {
            learn: 100,
            ..ContextualConfig::default()
        };
        let scores = run(
            cfg,
            (0..200).map(|i| (f64::from(i), if i % 7 == 0 { 1e6 } else { 0.0 })),
        );
        assert!(scores[..100].iter().all(|&s| s == 0.0));
    }

    #[test]
    fn the_dictionary_forgets_the_least_recently_seen_and_never_grows() {
        let mut dict = Dictionary::new(256);
        // Two keys in one bucket, a third evicts the older one.
        let (a, b, c) = (1u64 << 40, 2u64 << 40, 3u64 << 40);
        assert!(!dict.see(a, 1));
        assert!(!dict.see(b, 2));
        assert!(dict.see(a, 3));
        assert!(!dict.see(c, 4));
        assert!(dict.see(a, 5), "a was seen more recently than b");
        assert!(!dict.see(b, 6), "b was forgotten");
        for i in 0..100_000u64 {
            dict.see(mix(0, i), i as u32);
        }
        assert_eq!(dict.keys.len(), 256);
    }

    #[test]
    fn non_finite_input_is_ignored_and_scores_stay_in_range() {
        let mut d = Contextual::new(ContextualConfig::default());
        for (i, n) in noise(5000).enumerate() {
            let v = if i % 10 == 0 { f64::NAN } else { n * 1e9 };
            let t = if i % 33 == 0 {
                f64::NEG_INFINITY
            } else {
                i as f64
            };
            let s = d.update(t, v);
            assert!((0.0..=1.0).contains(&s), "{s}");
        }
        assert!(
            d.range
                .is_some_and(|(lo, hi)| lo.is_finite() && hi.is_finite())
        );
    }

    #[test]
    fn invalid_parameters_are_refused_with_the_field_named() {
        for (cfg, field) in [
            (
                ContextualConfig {
                    capacity: 1000,
                    ..ContextualConfig::default()
                },
                "contextual.capacity",
            ),
            (
                ContextualConfig {
                    order: 9,
                    ..ContextualConfig::default()
                },
                "contextual.order",
            ),
            (
                ContextualConfig {
                    bins: 1,
                    ..ContextualConfig::default()
                },
                "contextual.bins",
            ),
        ] {
            let err = cfg
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(field), "{err}");
        }
        assert!(ContextualConfig::default().validate().is_ok());
    }
}
