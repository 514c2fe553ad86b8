//! Progress normalisation, value-order correlation and the reward-aligned BC weights.
//!
//! These are the pieces of TOPReward that sit after the model: they take the raw per-prefix
//! log-probabilities and turn them into what evaluation (VOC, success) and training (Eq. 3) use.

/// Min-max normalise raw scores to progress in [0, 1] (paper: s_k = (r_k - min r) / (max r - min r)).
///
/// A constant sequence has no progress signal; like the reference code it maps to all ones.
pub fn min_max_progress(raw: &[f64]) -> Vec<f64> {
    let min = raw.iter().copied().fold(f64::INFINITY, f64::min);
    let max = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let range = max - min;
    if range.is_nan() || range <= 0.0 {
        return vec![1.0; raw.len()];
    }
    raw.iter().map(|r| (r - min) / range).collect()
}

/// Ranks starting at 1, ties sharing the average of the ranks they span (as `scipy.stats.rankdata`).
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) hold ranks start+1..=end; their mean is (start + 1 + end) / 2.
        let shared = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = shared;
        }
        start = end;
    }
    ranks
}

/// Pearson correlation; `None` when either side is constant or there are fewer than two points.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    Some(sxy / (sxx.sqrt() * syy.sqrt()))
}

/// Spearman rank correlation with average ranks for ties.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Value-order correlation (GVL, arXiv 2411.04549): Spearman correlation between predicted values and
/// their time order. `None` for constant values or fewer than two points.
pub fn voc(values: &[f64]) -> Option<f64> {
    let time: Vec<f64> = (0..values.len()).map(|i| i as f64).collect();
    spearman(values, &time)
}

/// TOPReward's episode success score (paper v1): the mean raw log p(" True") over the last `last` prefixes
/// (the paper uses 3). An episode counts as a success when the score is at least a threshold theta chosen on
/// a labelled set's ROC curve (typically in [-1.5, -0.5]). `None` without prefixes or with `last == 0`.
pub fn success_score(log_probs: &[f64], last: usize) -> Option<f64> {
    let tail = &log_probs[log_probs.len().saturating_sub(last)..];
    if tail.is_empty() || last == 0 {
        return None;
    }
    Some(tail.iter().sum::<f64>() / tail.len() as f64)
}

/// Area under the ROC curve of `scores` for binary `labels` (true = success): the probability that a random
/// success scores above a random failure, ties counting one half (Mann-Whitney U). `None` when either
/// class is absent or the lengths differ.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.len() != labels.len() {
        return None;
    }
    let positives: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(&s, _)| s)
        .collect();
    let negatives: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| !**l)
        .map(|(&s, _)| s)
        .collect();
    if positives.is_empty() || negatives.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for p in &positives {
        for n in &negatives {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (positives.len() * negatives.len()) as f64)
}

/// Linearly interpolate values known at (strictly increasing) frame positions to every frame in
/// `0..num_frames`. Frames before the first known position take the first value, after the last the last.
pub fn interpolate_to_frames(positions: &[f64], values: &[f64], num_frames: usize) -> Vec<f64> {
    assert_eq!(positions.len(), values.len(), "one value per position");
    if positions.is_empty() {
        return vec![0.0; num_frames];
    }
    let mut out = Vec::with_capacity(num_frames);
    let mut seg = 0;
    for f in 0..num_frames {
        let t = f as f64;
        while seg + 1 < positions.len() && positions[seg + 1] <= t {
            seg += 1;
        }
        let v = if t <= positions[0] {
            values[0]
        } else if seg + 1 >= positions.len() {
            values[positions.len() - 1]
        } else {
            let (x0, x1) = (positions[seg], positions[seg + 1]);
            let w = (t - x0) / (x1 - x0);
            values[seg] * (1.0 - w) + values[seg + 1] * w
        };
        out.push(v);
    }
    out
}

/// Hyper-parameters of the reward-aligned BC weights (paper Eq. 3).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightParams {
    /// Temperature-like scale in front of the exponential (paper: tau = 2.0).
    #[serde(default = "default_tau")]
    pub tau: f64,
    /// Upper clip of the weight (paper: delta_max = 2.0).
    #[serde(default = "default_delta_max")]
    pub delta_max: f64,
    /// Lower clip of the weight. The paper clips at 0; one public re-implementation floors at 0.1.
    #[serde(default)]
    pub min_weight: f64,
}

fn default_tau() -> f64 {
    2.0
}
fn default_delta_max() -> f64 {
    2.0
}

impl Default for WeightParams {
    fn default() -> Self {
        Self {
            tau: default_tau(),
            delta_max: default_delta_max(),
            min_weight: 0.0,
        }
    }
}

/// Why Eq. 3 parameters cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightParamsError {
    #[error("{field} must be a finite number, got {value}")]
    NotFinite { field: &'static str, value: f64 },
    #[error("tau must be positive, got {0}")]
    NonPositiveTau(f64),
    #[error("min_weight ({min_weight}) must be at most delta_max ({delta_max}) and at least 0")]
    BadClip { min_weight: f64, delta_max: f64 },
}

impl WeightParams {
    /// Check the parameters before any work: Eq. 3 clips tau * exp(.) to [min_weight, delta_max], which
    /// needs finite numbers with 0 <= min_weight <= delta_max and a positive tau.
    pub fn validate(&self) -> Result<(), WeightParamsError> {
        for (field, value) in [
            ("tau", self.tau),
            ("delta_max", self.delta_max),
            ("min_weight", self.min_weight),
        ] {
            if !value.is_finite() {
                return Err(WeightParamsError::NotFinite { field, value });
            }
        }
        if self.tau <= 0.0 {
            return Err(WeightParamsError::NonPositiveTau(self.tau));
        }
        if self.min_weight < 0.0 || self.min_weight > self.delta_max {
            return Err(WeightParamsError::BadClip {
                min_weight: self.min_weight,
                delta_max: self.delta_max,
            });
        }
        Ok(())
    }
}

/// Per-frame progress increments delta_t = s_t - s_{t-1}; the first frame's increment is 0.
pub fn progress_deltas(progress: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(progress.len());
    for (t, s) in progress.iter().enumerate() {
        out.push(if t == 0 { 0.0 } else { s - progress[t - 1] });
    }
    out
}

/// Paper Eq. 3: w_t = clip(tau * exp(delta_t - mean_delta), min_weight, delta_max) for every frame of
/// every episode, where mean_delta is the mean increment over the whole dataset. `params` must pass
/// [`WeightParams::validate`] (callers check it before loading models); an invalid clip range panics.
pub fn reward_aligned_weights(episodes_progress: &[Vec<f64>], params: &WeightParams) -> Vec<Vec<f64>> {
    let deltas: Vec<Vec<f64>> = episodes_progress.iter().map(|p| progress_deltas(p)).collect();
    let count: usize = deltas.iter().map(Vec::len).sum();
    let mean = if count == 0 {
        0.0
    } else {
        deltas.iter().flatten().sum::<f64>() / count as f64
    };
    deltas
        .iter()
        .map(|d| {
            d.iter()
                .map(|delta| (params.tau * (delta - mean).exp()).clamp(params.min_weight, params.delta_max))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn eq3_parameters_are_checked_before_use() {
        let p = |tau, delta_max, min_weight| WeightParams {
            tau,
            delta_max,
            min_weight,
        };
        assert!(p(2.0, 2.0, 0.0).validate().is_ok());
        assert!(p(2.0, 1.0, 1.0).validate().is_ok());
        assert!(matches!(
            p(2.0, 1.0, 5.0).validate(),
            Err(WeightParamsError::BadClip { .. })
        ));
        assert!(matches!(
            p(2.0, f64::NAN, 0.0).validate(),
            Err(WeightParamsError::NotFinite {
                field: "delta_max",
                ..
            })
        ));
        assert!(matches!(
            p(f64::NAN, 2.0, 0.0).validate(),
            Err(WeightParamsError::NotFinite { field: "tau", .. })
        ));
        assert!(p(2.0, f64::INFINITY, 0.0).validate().is_err());
        assert!(p(0.0, 2.0, 0.0).validate().is_err());
        assert!(p(2.0, 2.0, -1.0).validate().is_err());
    }

    use super::*;

    #[test]
    fn success_score_is_the_mean_of_the_last_prefixes() {
        assert_eq!(success_score(&[-5.0, -3.0, -1.0, -2.0, -0.0], 3), Some(-1.0));
        assert_eq!(success_score(&[-2.0, -1.0], 3), Some(-1.5));
        assert_eq!(success_score(&[], 3), None);
        assert_eq!(success_score(&[-1.0], 0), None);
    }

    #[test]
    fn roc_auc_counts_pairs_and_half_ties() {
        // Perfect separation, perfectly inverted, and one tie among four pairs.
        assert_eq!(
            roc_auc(&[0.9, 0.8, 0.1, 0.2], &[true, true, false, false]),
            Some(1.0)
        );
        assert_eq!(
            roc_auc(&[0.1, 0.2, 0.9, 0.8], &[true, true, false, false]),
            Some(0.0)
        );
        assert_eq!(
            roc_auc(&[0.5, 0.9, 0.5, 0.1], &[true, true, false, false]),
            Some(0.875)
        );
        assert_eq!(roc_auc(&[0.5, 0.9], &[true, true]), None);
        assert_eq!(roc_auc(&[0.5], &[true, false]), None);
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn progress_is_min_max_and_constant_maps_to_ones() {
        assert_eq!(min_max_progress(&[-3.0, -1.0, -2.0]), vec![0.0, 1.0, 0.5]);
        assert_eq!(min_max_progress(&[-0.7, -0.7]), vec![1.0, 1.0]);
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(average_ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
        assert_eq!(average_ranks(&[5.0, 5.0, 5.0]), vec![2.0, 2.0, 2.0]);
    }

    #[test]
    fn voc_matches_hand_computed_values() {
        assert!(close(voc(&[0.1, 0.2, 0.3, 0.9]).unwrap(), 1.0));
        assert!(close(voc(&[0.9, 0.5, 0.1]).unwrap(), -1.0));
        // Values [1, 1, 2, 3]: ranks [1.5, 1.5, 3, 4] against time ranks [1, 2, 3, 4].
        // Pearson of the ranks: cov = 4.5 / sqrt(4.5 * 5) = 0.9486832980505138.
        assert!(close(
            voc(&[1.0, 1.0, 2.0, 3.0]).unwrap(),
            4.5 / (4.5f64 * 5.0).sqrt()
        ));
        // Values [0, 2, 1]: ranks [1, 3, 2] vs [1, 2, 3] -> 1 - 6 * 2 / (3 * 8) = 0.5.
        assert!(close(voc(&[0.0, 2.0, 1.0]).unwrap(), 0.5));
        assert_eq!(voc(&[0.3, 0.3, 0.3]), None);
        assert_eq!(voc(&[0.3]), None);
    }

    #[test]
    fn interpolation_reaches_every_frame() {
        let v = interpolate_to_frames(&[0.0, 2.0, 4.0], &[0.0, 1.0, 0.0], 6);
        assert_eq!(v, vec![0.0, 0.5, 1.0, 0.5, 0.0, 0.0]);
        let v = interpolate_to_frames(&[1.0, 3.0], &[0.2, 0.6], 4);
        assert!(close(v[0], 0.2) && close(v[1], 0.2) && close(v[2], 0.4) && close(v[3], 0.6));
    }

    #[test]
    fn eq3_weights_on_hand_computed_progress() {
        // Deltas: episode A [0, 0.5, 0.5], episode B [0, -0.25, 0.25]; mean = 1.0 / 6.
        let progress = vec![vec![0.0, 0.5, 1.0], vec![0.5, 0.25, 0.5]];
        let w = reward_aligned_weights(&progress, &WeightParams::default());
        let mean: f64 = 1.0 / 6.0;
        let expect = |d: f64| (2.0 * (d - mean).exp()).clamp(0.0, 2.0);
        assert!(close(w[0][0], expect(0.0)));
        assert!(close(w[0][1], 2.0), "0.5 above the mean clips at delta_max");
        assert!(close(w[1][1], expect(-0.25)));
        assert!(w[1][1] < w[1][0] && w[1][0] < w[1][2]);
        let floored = reward_aligned_weights(
            &[vec![1.0, -5.0]],
            &WeightParams {
                tau: 2.0,
                delta_max: 2.0,
                min_weight: 0.1,
            },
        );
        assert!(close(floored[0][1], 0.1));
    }
}
