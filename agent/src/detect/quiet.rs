//! Quiet after firing: once a score reaches the firing level, the next
//! `quiet` points score 0, so one incident fires once rather than on every
//! point of it (NAB rewards the first detection in a window, and playbooks
//! act on the first).

#[derive(Debug, Clone, Default)]
pub struct QuietAfterFiring {
    left: u32,
}

impl QuietAfterFiring {
    /// The score to report for `score`: 0 while quiet, else `score`, and a
    /// score at or above `fire_level` starts `quiet` points of quiet.
    pub fn gate(&mut self, score: f64, fire_level: f64, quiet: u32) -> f64 {
        if self.left > 0 {
            self.left -= 1;
            return 0.0;
        }
        if score >= fire_level {
            self.left = quiet;
        }
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firing_silences_the_next_points_only() {
        let mut q = QuietAfterFiring::default();
        let scores = [0.1, 0.9, 0.9, 0.9, 0.9, 0.2];
        let out: Vec<f64> = scores.iter().map(|&s| q.gate(s, 0.5, 2)).collect();
        assert_eq!(out, [0.1, 0.9, 0.0, 0.0, 0.9, 0.0]);
    }
}
