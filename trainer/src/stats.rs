//! Statistics that make arms comparable: the effective sample size of a weighting, seeded percentile
//! bootstrap intervals over seeds, paired differences between arms evaluated on the same scenes, and
//! the mean of the last evaluations of a training curve.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Resamples drawn by [`bootstrap_ci95`].
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// Kish's effective sample size of a weighting, as a fraction of the samples:
/// `(sum w)^2 / (n * sum w^2)`. 1 for constant weights, `k / n` when `k` equal weights are non-zero and
/// the rest zero. `None` when empty or every weight is zero.
pub fn ess_fraction(weights: &[f64]) -> Option<f64> {
    let sum: f64 = weights.iter().sum();
    let sum_sq: f64 = weights.iter().map(|w| w * w).sum();
    if weights.is_empty() || sum_sq <= 0.0 {
        return None;
    }
    Some(sum * sum / (weights.len() as f64 * sum_sq))
}

/// Mean of `values` (NaN when empty).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Percentile bootstrap 95% interval of the mean of `values`: [`BOOTSTRAP_RESAMPLES`] resamples with
/// replacement drawn from `seed`, the 2.5th and 97.5th percentiles of their means (linear interpolation
/// between order statistics). A single value gives `[v, v]`; empty input gives NaNs.
pub fn bootstrap_ci95(values: &[f64], seed: u64) -> [f64; 2] {
    let n = values.len();
    if n == 0 {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    [percentile(&means, 0.025), percentile(&means, 0.975)]
}

/// The `q` quantile of sorted `values` with linear interpolation (numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// An arm against a baseline over the seeds both ran: per-seed differences (same seed, same
/// demonstrations, same evaluation scenes), their mean and bootstrap 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedDifference {
    /// Name of the baseline arm.
    pub baseline: String,
    /// Seeds present in both arms.
    pub seeds: usize,
    /// Mean over seeds of (arm - baseline).
    pub mean: f64,
    pub ci95: [f64; 2],
    /// Seeds where the arm beat / tied / lost to the baseline.
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
}

/// Paired difference of `arm` against `baseline`, each a list of (seed, value); seeds missing from
/// either side are left out. `None` when no seed is shared.
pub fn paired_difference(
    baseline_name: &str,
    arm: &[(u64, f64)],
    baseline: &[(u64, f64)],
    bootstrap_seed: u64,
) -> Option<PairedDifference> {
    let diffs: Vec<f64> = arm
        .iter()
        .filter_map(|(s, v)| baseline.iter().find(|(b, _)| b == s).map(|(_, bv)| v - bv))
        .collect();
    if diffs.is_empty() {
        return None;
    }
    let tol = 1e-12;
    Some(PairedDifference {
        baseline: baseline_name.to_string(),
        seeds: diffs.len(),
        mean: mean(&diffs),
        ci95: bootstrap_ci95(&diffs, bootstrap_seed),
        wins: diffs.iter().filter(|d| **d > tol).count(),
        ties: diffs.iter().filter(|d| d.abs() <= tol).count(),
        losses: diffs.iter().filter(|d| **d < -tol).count(),
    })
}

/// Mean of the last `k` evaluations of a curve of (step, value) (all of them when shorter; NaN when
/// empty). Less noisy than the final point alone, and less biased towards a lucky or unlucky last step.
pub fn last_k_mean(curve: &[(u32, f64)], k: usize) -> f64 {
    let k = k.max(1).min(curve.len());
    let tail: Vec<f64> = curve[curve.len() - k..].iter().map(|c| c.1).collect();
    mean(&tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ess_of_constant_filtered_and_skewed_weights() {
        assert_eq!(ess_fraction(&[2.0; 8]), Some(1.0));
        // Half the samples at weight 1, half at 0: an effective half.
        assert_eq!(ess_fraction(&[1.0, 1.0, 0.0, 0.0]), Some(0.5));
        // (1 + 3)^2 / (2 * (1 + 9)) = 16 / 20.
        assert!((ess_fraction(&[1.0, 3.0]).unwrap() - 0.8).abs() < 1e-12);
        assert_eq!(ess_fraction(&[]), None);
        assert_eq!(ess_fraction(&[0.0, 0.0]), None);
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        // numpy.percentile([1..5], 2.5) = 1.1, 97.5 -> 4.9.
        assert!((percentile(&v, 0.025) - 1.1).abs() < 1e-12);
        assert!((percentile(&v, 0.975) - 4.9).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_interval_is_seeded_and_brackets_the_mean() {
        let v = [0.6, 0.64, 0.72, 0.58, 0.7, 0.66, 0.61, 0.69, 0.75, 0.55];
        let a = bootstrap_ci95(&v, 7);
        assert_eq!(a, bootstrap_ci95(&v, 7), "same seed, same interval");
        assert_ne!(a, bootstrap_ci95(&v, 8), "another seed draws other resamples");
        let m = mean(&v);
        assert!(a[0] < m && m < a[1], "{a:?} around {m}");
        // The interval of a mean of 10 values lies inside their range, and is about 2 x 1.96 standard
        // errors wide: std 0.0617 / sqrt(10) = 0.0195, so roughly 0.076 (the bootstrap uses the
        // population spread, a little narrower).
        assert!(a[0] > 0.55 && a[1] < 0.75);
        let width = a[1] - a[0];
        assert!((0.055..0.085).contains(&width), "width {width}");
        assert_eq!(bootstrap_ci95(&[0.4], 1), [0.4, 0.4]);
        assert_eq!(bootstrap_ci95(&[0.3; 5], 1), [0.3, 0.3]);
        assert!(bootstrap_ci95(&[], 1)[0].is_nan());
    }

    #[test]
    fn paired_difference_matches_seeds_and_counts_outcomes() {
        let base = [(0, 0.5), (1, 0.6), (2, 0.7), (3, 0.4)];
        let arm = [(0, 0.7), (1, 0.6), (2, 0.6), (4, 0.9)];
        let d = paired_difference("bc", &arm, &base, 3).unwrap();
        // Seeds 0, 1, 2: differences 0.2, 0, -0.1.
        assert_eq!(d.seeds, 3);
        assert!((d.mean - 0.1 / 3.0).abs() < 1e-12);
        assert_eq!((d.wins, d.ties, d.losses), (1, 1, 1));
        assert!(d.ci95[0] >= -0.1 - 1e-12 && d.ci95[1] <= 0.2 + 1e-12);
        // An arm against itself differs by exactly zero.
        let same = paired_difference("bc", &base, &base, 3).unwrap();
        assert_eq!((same.mean, same.ci95), (0.0, [0.0, 0.0]));
        assert!(paired_difference("bc", &[(9, 1.0)], &base, 3).is_none());
    }

    #[test]
    fn last_k_mean_of_a_curve() {
        let curve = [(500, 0.9), (1000, 0.7), (1500, 0.6), (2000, 0.8)];
        assert!((last_k_mean(&curve, 3) - 0.7).abs() < 1e-12);
        assert_eq!(last_k_mean(&curve, 1), 0.8);
        assert!((last_k_mean(&curve, 10) - 0.75).abs() < 1e-12);
        assert!(last_k_mean(&[], 3).is_nan());
    }
}
