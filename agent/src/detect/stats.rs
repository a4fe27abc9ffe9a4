//! Small numeric building blocks shared by the detectors: exponentially
//! weighted moments and the normal tail probability.

/// Exponentially weighted mean and variance of a stream, O(1) per point.
#[derive(Debug, Clone, Copy)]
pub struct EwStats {
    alpha: f64,
    mean: f64,
    var: f64,
    count: u64,
    /// `(1 - alpha)^(count - 1)`: the weight the variance still lacks, so
    /// the early estimate is not biased low.
    missing: f64,
}

impl EwStats {
    /// `alpha` in (0, 1]: the weight of the newest point.
    pub fn new(alpha: f64) -> Self {
        Self {
            alpha,
            mean: 0.0,
            var: 0.0,
            count: 0,
            missing: 1.0,
        }
    }

    pub fn update(&mut self, x: f64) {
        if self.count == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let d = x - self.mean;
            self.mean += self.alpha * d;
            // West's incremental form: stays non-negative, no catastrophic cancellation.
            self.var = (1.0 - self.alpha) * (self.var + self.alpha * d * d);
            self.missing *= 1.0 - self.alpha;
        }
        self.count = self.count.saturating_add(1);
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Bias-corrected: after a few points already of the right size.
    pub fn std(&self) -> f64 {
        let weight = 1.0 - self.missing;
        if weight > 0.0 {
            (self.var / weight).sqrt()
        } else {
            0.0
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Complementary error function, relative error below 1.2e-7 over the whole
/// real line (a Chebyshev fit of `erfc`); good in the far tail, where the
/// detectors need it, unlike `1 - erf`.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Probability that a standard normal variable exceeds `z`.
pub fn normal_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Score in [0, 1] for a deviation of `z` standard deviations: the
/// probability mass of a normal distribution closer to the mean than `z`
/// (0 at the mean, 0.95 at 1.96 σ, 0.997 at 3 σ).
pub fn two_sided_score(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    (1.0 - 2.0 * normal_tail(z.abs())).clamp(0.0, 1.0)
}

/// Surprisal, in nats, of a deviation of `z` standard deviations:
/// `-ln P(|Z| >= |z|)` for a standard normal Z. 0 at the mean, about 5.9 at
/// 3 σ, growing like z²/2; unbounded, so extreme points stay ordered.
pub fn surprisal(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    let x = z.abs() / std::f64::consts::SQRT_2;
    if x < 25.0 {
        -erfc(x).ln()
    } else {
        // erfc(x) ≈ e^(-x²) / (x √π) where it would underflow.
        x * x + (x * std::f64::consts::PI.sqrt()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_matches_known_values() {
        assert!((normal_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_tail(1.959_964) - 0.025).abs() < 1e-7);
        assert!((normal_tail(-1.959_964) - 0.975).abs() < 1e-7);
        // Far tail: relative, not absolute, accuracy.
        let p6 = 9.865_876_450_377e-10;
        assert!((normal_tail(6.0) / p6 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn surprisal_is_continuous_and_monotone() {
        assert!(surprisal(0.0).abs() < 1e-6);
        assert!((surprisal(3.0) - (-(0.002_699_796f64).ln())).abs() < 1e-5);
        let below = surprisal(25.0 * std::f64::consts::SQRT_2 - 1e-9);
        let above = surprisal(25.0 * std::f64::consts::SQRT_2 + 1e-9);
        assert!((below - above).abs() / below < 1e-3, "{below} {above}");
        assert!(surprisal(1e6).is_finite());
        assert!(surprisal(5.0) < surprisal(6.0));
    }

    #[test]
    fn ew_stats_converge_on_constant_and_track_spread() {
        let mut s = EwStats::new(0.1);
        for i in 0..1000 {
            s.update(if i % 2 == 0 { 1.0 } else { -1.0 });
        }
        assert!(s.mean().abs() < 0.1);
        assert!((s.std() - 1.0).abs() < 0.1);
    }
}
