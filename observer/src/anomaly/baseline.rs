//! An online baseline of one signal: exponentially weighted mean and variance.
//!
//! In: one value per window, already on the log scale. Out: whether a value
//! lies above what the baseline expects, by more than `k` standard deviations
//! and by more than a minimum ratio.
//!
//! The update is the exponentially weighted form of Welford's (West 1979,
//! Finch 2009): with `d = x - mean`, `mean += a·d` and
//! `var = (1 - a)·(var + a·d²)`, so each window costs a handful of float
//! operations and two numbers of state. The first value seeds the mean.

/// Mean and variance, exponentially weighted.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Ewma {
    mean: f32,
    var: f32,
    /// Values seen (saturating).
    count: u32,
}

impl Ewma {
    /// Takes one value with smoothing `alpha` (the weight of the newest value).
    pub(crate) fn update(&mut self, value: f64, alpha: f64) {
        if self.count == 0 {
            self.mean = value as f32;
            self.var = 0.0;
        } else {
            let mean = f64::from(self.mean);
            let diff = value - mean;
            let increment = alpha * diff;
            self.mean = (mean + increment) as f32;
            self.var = ((1.0 - alpha) * (f64::from(self.var) + diff * increment)) as f32;
        }
        self.count = self.count.saturating_add(1);
    }

    /// Values seen.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// The mean.
    pub(crate) fn mean(&self) -> f64 {
        f64::from(self.mean)
    }

    /// The standard deviation.
    pub(crate) fn deviation(&self) -> f64 {
        f64::from(self.var).max(0.0).sqrt()
    }

    /// Whether `value` exceeds the mean by more than `sensitivity` standard
    /// deviations and by more than `min_gap` (the log of the minimum ratio).
    pub(crate) fn exceeded_by(&self, value: f64, sensitivity: f64, min_gap: f64) -> bool {
        value - self.mean() > (sensitivity * self.deviation()).max(min_gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_to_mean_and_variance_of_a_two_value_series() {
        let mut ewma = Ewma::default();
        for i in 0..2000 {
            ewma.update(if i % 2 == 0 { 1.0 } else { 3.0 }, 0.05);
        }
        assert!((ewma.mean() - 2.0).abs() < 0.1, "{}", ewma.mean());
        assert!((ewma.deviation() - 1.0).abs() < 0.1, "{}", ewma.deviation());
        assert!(ewma.exceeded_by(6.5, 4.0, 0.5));
        assert!(!ewma.exceeded_by(5.5, 4.0, 0.5));
    }

    #[test]
    fn the_minimum_gap_holds_for_a_flat_series() {
        let mut ewma = Ewma::default();
        for _ in 0..50 {
            ewma.update(2.0, 0.1);
        }
        assert_eq!(ewma.deviation(), 0.0);
        assert!(!ewma.exceeded_by(2.5, 4.0, 1.0));
        assert!(ewma.exceeded_by(3.5, 4.0, 1.0));
    }
}
