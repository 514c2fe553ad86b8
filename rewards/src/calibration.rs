//! Success-detection calibration: pick the threshold theta on the success score (paper v1: mean log p(" True")
//! over the last 3 prefixes; an episode is called a success when its score >= theta) from episodes with known
//! outcomes, by Youden's J (TPR - FPR) or the best F1.

use serde::{Deserialize, Serialize};

use crate::metrics;

/// How the threshold is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// Maximise TPR - FPR.
    #[default]
    Youden,
    /// Maximise F1 of the success class.
    F1,
}

impl std::str::FromStr for Criterion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "youden" => Ok(Self::Youden),
            "f1" => Ok(Self::F1),
            other => Err(format!("unknown criterion {other:?}: expected youden or f1")),
        }
    }
}

impl std::fmt::Display for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Youden => "youden",
            Self::F1 => "f1",
        })
    }
}

/// The chosen threshold and how it does on the calibration episodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdChoice {
    pub criterion: Criterion,
    pub threshold: f64,
    pub tpr: f64,
    pub fpr: f64,
    pub precision: f64,
    pub f1: f64,
    /// Youden's J = TPR - FPR.
    pub youden_j: f64,
    /// ROC-AUC of the scores (threshold-free).
    pub roc_auc: f64,
    pub n_success: usize,
    pub n_failure: usize,
}

/// Evaluate every observed score as a threshold (`score >= theta` is a success) and keep the best by
/// `criterion`; ties go to the lowest threshold. `None` without both classes or on non-finite scores.
pub fn choose_threshold(scores: &[f64], labels: &[bool], criterion: Criterion) -> Option<ThresholdChoice> {
    if scores.len() != labels.len() || scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let roc_auc = metrics::roc_auc(scores, labels)?;
    let n_success = labels.iter().filter(|l| **l).count();
    let n_failure = labels.len() - n_success;
    let mut candidates = scores.to_vec();
    candidates.sort_by(f64::total_cmp);
    candidates.dedup();
    let mut best: Option<(f64, ThresholdChoice)> = None;
    for &theta in &candidates {
        let tp = scores
            .iter()
            .zip(labels)
            .filter(|(s, l)| **l && **s >= theta)
            .count() as f64;
        let fp = scores
            .iter()
            .zip(labels)
            .filter(|(s, l)| !**l && **s >= theta)
            .count() as f64;
        let tpr = tp / n_success as f64;
        let fpr = fp / n_failure as f64;
        let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
        let f1 = if precision + tpr > 0.0 {
            2.0 * precision * tpr / (precision + tpr)
        } else {
            0.0
        };
        let value = match criterion {
            Criterion::Youden => tpr - fpr,
            Criterion::F1 => f1,
        };
        if best.as_ref().is_none_or(|(b, _)| value > *b) {
            best = Some((
                value,
                ThresholdChoice {
                    criterion,
                    threshold: theta,
                    tpr,
                    fpr,
                    precision,
                    f1,
                    youden_j: tpr - fpr,
                    roc_auc,
                    n_success,
                    n_failure,
                },
            ));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_scores_get_a_perfect_threshold() {
        let scores = [-3.0, -2.5, -1.0, -0.5, -2.0, -0.8];
        let labels = [false, false, true, true, false, true];
        let c = choose_threshold(&scores, &labels, Criterion::Youden).unwrap();
        assert_eq!((c.threshold, c.tpr, c.fpr, c.roc_auc), (-1.0, 1.0, 0.0, 1.0));
        let f = choose_threshold(&scores, &labels, Criterion::F1).unwrap();
        assert_eq!((f.threshold, f.f1), (-1.0, 1.0));
    }

    #[test]
    fn overlapping_scores_trade_off_and_criteria_can_differ() {
        // Successes: -1.0, -1.2, -3.0; failures: -1.1, -2.0, -2.5, -2.8.
        let scores = [-1.0, -1.2, -3.0, -1.1, -2.0, -2.5, -2.8];
        let labels = [true, true, true, false, false, false, false];
        let y = choose_threshold(&scores, &labels, Criterion::Youden).unwrap();
        // theta = -1.2: TPR 2/3, FPR 1/4, J = 0.4167 (best; -3.0 gives J = 0).
        assert_eq!(y.threshold, -1.2);
        assert!((y.youden_j - (2.0 / 3.0 - 0.25)).abs() < 1e-12);
        let f = choose_threshold(&scores, &labels, Criterion::F1).unwrap();
        // theta = -1.2: P 2/3, R 2/3, F1 0.667; theta = -3.0: P 3/7, R 1, F1 0.6.
        assert_eq!(f.threshold, -1.2);
        assert!((f.roc_auc - metrics::roc_auc(&scores, &labels).unwrap()).abs() < 1e-12);
        assert!(choose_threshold(&[1.0, 2.0], &[true, true], Criterion::Youden).is_none());
        assert!(choose_threshold(&[f64::NAN, 2.0], &[true, false], Criterion::Youden).is_none());
        assert_eq!("f1".parse::<Criterion>(), Ok(Criterion::F1));
    }
}
