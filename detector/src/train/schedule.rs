//! The reference's learning rate (mmcv 0.2.10's step policy with linear warm-up).

/// Step decay by epoch after a linear warm-up by iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    /// The base rate (0.02).
    pub base: f64,
    /// Warm-up iterations (500).
    pub warmup_iters: usize,
    /// The warm-up starts at `base * warmup_ratio` (1/100).
    pub warmup_ratio: f64,
    /// Epochs (0-based) at which the rate is multiplied by `gamma` (9 and 16).
    pub steps: Vec<usize>,
    /// The decay factor (0.1).
    pub gamma: f64,
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule {
            base: 0.02,
            warmup_iters: 500,
            warmup_ratio: 0.01,
            steps: vec![9, 16],
            gamma: 0.1,
        }
    }
}

impl LrSchedule {
    /// The rate at global iteration `iter` (0-based) within `epoch` (0-based): the step rate,
    /// and during warm-up `rate * (1 - (1 - iter / warmup) * (1 - ratio))`.
    pub fn rate(&self, epoch: usize, iter: usize) -> f64 {
        let decays = self.steps.iter().filter(|&&s| epoch >= s).count() as i32;
        let rate = self.base * self.gamma.powi(decays);
        if iter < self.warmup_iters {
            let k = (1.0 - iter as f64 / self.warmup_iters as f64) * (1.0 - self.warmup_ratio);
            rate * (1.0 - k)
        } else {
            rate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_steps() {
        let s = LrSchedule::default();
        assert!((s.rate(0, 0) - 2e-4).abs() < 1e-12);
        assert!((s.rate(0, 250) - 0.02 * (1.0 - 0.5 * 0.99)).abs() < 1e-12);
        assert_eq!(s.rate(0, 500), 0.02);
        assert_eq!(s.rate(8, 10_000), 0.02);
        assert!((s.rate(9, 10_000) - 0.002).abs() < 1e-12);
        assert!((s.rate(16, 10_000) - 2e-4).abs() < 1e-12);
    }
}
