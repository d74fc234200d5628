//! Percentiles of one run's samples, and the median and range of a figure
//! over repeated runs.

use std::time::Duration;

/// Returns the `quantile` (0 to 1) of `samples` by the nearest-rank method.
/// Sorts `samples` in place. Returns 0 for an empty slice.
pub fn percentile(samples: &mut [f64], quantile: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (quantile * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// Latencies of one run, in seconds, with the run's wall time.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    pub seconds: Vec<f64>,
    pub wall: Duration,
}

impl Latencies {
    pub fn p50(&self) -> f64 {
        percentile(&mut self.seconds.clone(), 0.50)
    }

    pub fn p99(&self) -> f64 {
        percentile(&mut self.seconds.clone(), 0.99)
    }

    /// Completed calls per second of wall time.
    pub fn throughput(&self) -> f64 {
        self.seconds.len() as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// One value per run: the figure a table cell shows as its median and range.
#[derive(Debug, Clone, Default)]
pub struct PerRun(pub Vec<f64>);

impl PerRun {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    pub fn runs(&self) -> usize {
        self.0.len()
    }

    /// Returns the middle value, or the mean of the two middle values for an
    /// even number of runs, or 0 when there are no runs.
    pub fn median(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => 0.0,
            length if length % 2 == 1 => sorted[length / 2],
            length => (sorted[length / 2 - 1] + sorted[length / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// Run-by-run ratios `self / baseline`, for figures measured side by side.
    pub fn ratio_to(&self, baseline: &PerRun) -> PerRun {
        PerRun(self.0.iter().zip(&baseline.0).map(|(value, base)| value / base).collect())
    }

    /// Run-by-run differences `self - baseline`.
    pub fn minus(&self, baseline: &PerRun) -> PerRun {
        PerRun(self.0.iter().zip(&baseline.0).map(|(value, base)| value - base).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut samples, 0.50), 50.0);
        assert_eq!(percentile(&mut samples, 0.99), 99.0);
        assert_eq!(percentile(&mut samples, 1.0), 100.0);
        assert_eq!(percentile(&mut [7.0], 0.99), 7.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn per_run_median_and_range() {
        let runs = PerRun(vec![3.0, 1.0, 2.0]);
        assert_eq!(runs.median(), 2.0);
        assert_eq!(PerRun(vec![4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        assert_eq!(runs.min(), 1.0);
        assert_eq!(runs.max(), 3.0);
        let baseline = PerRun(vec![1.5, 0.5, 1.0]);
        assert_eq!(runs.ratio_to(&baseline).0, vec![2.0, 2.0, 2.0]);
        assert_eq!(runs.minus(&baseline).0, vec![1.5, 0.5, 1.0]);
    }
}
