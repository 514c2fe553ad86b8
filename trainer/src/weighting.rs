//! From per-frame progress to per-frame training weights, at the granularity the method needs.
//!
//! 1. **Delta** (`[train] delta`): how much progress an action is credited with.
//!    - `chunk` (default): `s(t + H) - s(t)`, `H` the policy's action chunk, the future index clamped to the
//!      episode's last frame; what LeRobot's RA-BC does (`lerobot/utils/rabc.py`, `_compute_delta`). A
//!      chunk of actions is what the policy predicts from frame `t`, so it is credited with what the
//!      chunk achieves.
//!    - `prefix`: between the two scored prefixes around frame `t` (TOPReward's prefix ends; 15 evenly
//!      spaced points for sources scored at every frame), the resolution the reward model really has.
//!    - `frame`: `s(t) - s(t - 1)`, 0 on the first frame (the original per-frame reading of Eq. 3; at
//!      30 Hz it is tiny and the weights come out nearly constant).
//! 2. **Weighting** (`[train] weighting`):
//!    - `eq3`: paper Eq. 3, `w = clip(tau * exp(delta - mean delta), min_weight, delta_max)`.
//!    - `rabc`: LeRobot's RA-BC (from SARM, `RABCWeights._compute_weights`): with `mu = max(mean delta, 0)`
//!      and `sigma = max(std delta, eps)` over the dataset, `w = 1` when `delta > kappa`,
//!      `clip((delta - (mu - 2 sigma)) / (4 sigma + eps), 0, 1)` when `0 <= delta <= kappa`, and 0 when
//!      progress goes backwards. Deltas and kappa are rounded to f32 first, as LeRobot does; checked
//!      against LeRobot 0.4.4's own code by `tests/rabc_lerobot_parity.rs`.
//!
//! The loss is self-normalised per batch (`sum w l / sum w`, as LeRobot's training loop), so only the
//! weights' ratios matter, and [`WeightStats`] reports how far they are from uniform (`ess`: Kish's
//! effective sample size as a fraction of frames; 1 = plain BC).

use serde::{Deserialize, Serialize};
use toprl_rewards::metrics::WeightParams;

use crate::stats::ess_fraction;

/// Numerical floor of RA-BC's spread and denominator (LeRobot's `epsilon`).
pub const RABC_EPSILON: f64 = 1e-6;

/// Prefix ends used by `delta = "prefix"` for sources scored at every frame: TOPReward's 15 prefixes.
pub const DENSE_PREFIXES: usize = 15;

/// How progress differences are taken (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DeltaKind {
    #[default]
    Chunk,
    Prefix,
    Frame,
}

/// Which formula turns deltas into weights (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    #[default]
    Eq3,
    Rabc,
}

/// How TOPReward's per-prefix log p(" True") becomes progress that compares across episodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProgressScale {
    /// Min-max over the whole dataset's log-probabilities: one scale for every episode, so an episode
    /// the model never believes finished stays low (the default).
    #[default]
    Dataset,
    /// Raw log p(" True"), no normalisation (deltas in nats).
    LogProb,
    /// The paper's per-episode min-max: every episode, failed or not, climbs from 0 to 1.
    Episode,
}

/// Per-frame deltas of one episode's progress.
///
/// `prefix_ends` are the frames where the progress was scored (sorted); only `delta = "prefix"` reads
/// them. Every frame gets the increase between the scored ends around it: frames from end k up to end
/// k + 1 get `s(end_{k+1}) - s(end_k)`; frames past the last end get the last segment's.
pub fn deltas(progress: &[f64], kind: DeltaKind, chunk: usize, prefix_ends: &[usize]) -> Vec<f64> {
    let n = progress.len();
    match kind {
        DeltaKind::Frame => (0..n)
            .map(|t| {
                if t == 0 {
                    0.0
                } else {
                    progress[t] - progress[t - 1]
                }
            })
            .collect(),
        DeltaKind::Chunk => (0..n)
            .map(|t| progress[(t + chunk).min(n - 1)] - progress[t])
            .collect(),
        DeltaKind::Prefix => {
            let ends: Vec<usize> = prefix_ends.iter().copied().filter(|&e| e < n).collect();
            if ends.len() < 2 {
                return vec![0.0; n];
            }
            let mut out = Vec::with_capacity(n);
            let mut seg = 0;
            for t in 0..n {
                while seg + 2 < ends.len() && ends[seg + 1] <= t {
                    seg += 1;
                }
                out.push(progress[ends[seg + 1]] - progress[ends[seg]]);
            }
            out
        }
    }
}

/// Frames where a source scored at every frame is read for `delta = "prefix"`: [`DENSE_PREFIXES`]
/// evenly spaced, first and last included.
pub fn dense_prefix_ends(num_frames: usize) -> Vec<usize> {
    let k = DENSE_PREFIXES.min(num_frames);
    if k < 2 {
        return vec![0; k];
    }
    let mut ends: Vec<usize> = (0..k)
        .map(|i| (i as f64 * (num_frames - 1) as f64 / (k - 1) as f64).round() as usize)
        .collect();
    ends.dedup();
    ends
}

/// Settings of the weighting, from `[train]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightingParams {
    pub weighting: Weighting,
    /// Eq. 3's tau, delta_max and lower clip.
    pub eq3: WeightParams,
    /// RA-BC's threshold above which a delta counts as full progress.
    pub kappa: f64,
}

/// Per-frame weights of every episode from its deltas, with dataset-wide statistics.
pub fn weights_from_deltas(deltas: &[Vec<f64>], params: &WeightingParams) -> Vec<Vec<f64>> {
    let all: Vec<f64> = deltas.iter().flatten().copied().collect();
    let n = all.len().max(1) as f64;
    let mean = all.iter().sum::<f64>() / n;
    match params.weighting {
        Weighting::Eq3 => {
            let p = &params.eq3;
            deltas
                .iter()
                .map(|d| {
                    d.iter()
                        .map(|x| (p.tau * (x - mean).exp()).clamp(p.min_weight, p.delta_max))
                        .collect()
                })
                .collect()
        }
        Weighting::Rabc => {
            // Population std, as numpy's default in LeRobot.
            let std = (all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            let mu = mean.max(0.0);
            let sigma = std.max(RABC_EPSILON);
            let lower = mu - 2.0 * sigma;
            // LeRobot rounds each delta to f32 (`np.array(deltas, dtype=np.float32)` in
            // `compute_batch_weights`) and compares it with kappa in f32; done here too, so a delta
            // within f32 rounding of kappa (e.g. 0.31 - 0.3 with kappa 0.01) gets LeRobot's weight.
            let kappa = f64::from(params.kappa as f32);
            deltas
                .iter()
                .map(|d| {
                    d.iter()
                        .map(|&x| {
                            let x = f64::from(x as f32);
                            if x > kappa {
                                1.0
                            } else if x >= 0.0 {
                                ((x - lower) / (4.0 * sigma + RABC_EPSILON)).clamp(0.0, 1.0)
                            } else {
                                0.0
                            }
                        })
                        .collect()
                })
                .collect()
        }
    }
}

/// How an arm's per-frame weights are spread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WeightStats {
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Effective sample size as a fraction of frames (1 = uniform = plain BC).
    pub ess: f64,
    /// Fraction of frames with weight 0.
    pub zero_fraction: f64,
}

impl WeightStats {
    /// Statistics of every frame's weight. `None` without frames or with all weights zero.
    pub fn of(weights: &[Vec<f32>]) -> Option<Self> {
        let all: Vec<f64> = weights.iter().flatten().map(|&w| f64::from(w)).collect();
        let ess = ess_fraction(&all)?;
        let n = all.len() as f64;
        let mean = all.iter().sum::<f64>() / n;
        let std = (all.iter().map(|w| (w - mean).powi(2)).sum::<f64>() / n).sqrt();
        Some(Self {
            mean,
            std,
            min: all.iter().copied().fold(f64::INFINITY, f64::min),
            max: all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ess,
            zero_fraction: all.iter().filter(|&&w| w == 0.0).count() as f64 / n,
        })
    }
}

/// Per-sample weights rescaled to average 1 over the batch, so that `mean(w' l) = sum w l / sum w`
/// (the self-normalised loss). A batch whose weights are all zero gets all zeros (no gradient).
pub fn self_normalise(weights: &[f32]) -> Vec<f32> {
    let sum: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    if sum <= 0.0 {
        return vec![0.0; weights.len()];
    }
    let scale = weights.len() as f64 / sum;
    weights.iter().map(|&w| (f64::from(w) * scale) as f32).collect()
}

/// Learning rate at `step` of `total`: linear warmup from 0 over `warmup` steps, then constant or a
/// cosine decay to `min_lr` at `total`.
pub fn learning_rate(lr: f64, min_lr: f64, warmup: u32, cosine: bool, step: u32, total: u32) -> f64 {
    if step < warmup {
        return lr * f64::from(step + 1) / f64::from(warmup);
    }
    if !cosine || total <= warmup {
        return lr;
    }
    let progress = (f64::from(step - warmup) / f64::from(total - warmup)).min(1.0);
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Checks of the settings this module reads, as (field, message) for [`crate::config::ConfigError`].
pub fn validate_config(config: &crate::config::ExperimentConfig) -> Result<(), (String, String)> {
    use crate::config::{Algorithm, RewardSource};
    let t = &config.train;
    if !(t.kappa.is_finite() && t.kappa >= 0.0) {
        return Err((
            "train.kappa".into(),
            format!("expected a number >= 0, got {}", t.kappa),
        ));
    }
    if !(t.min_lr.is_finite() && t.min_lr >= 0.0 && t.min_lr <= t.lr) {
        return Err((
            "train.min_lr".into(),
            format!("expected a number in [0, train.lr = {}], got {}", t.lr, t.min_lr),
        ));
    }
    if t.last_k == 0 {
        return Err(("train.last_k".into(), "expected at least 1".into()));
    }
    for (i, arm) in config.arms.iter().enumerate() {
        let field = |name: &str| format!("arms[{i}].{name}");
        match (arm.reward, arm.voc) {
            (RewardSource::OracleNoisy, None) => {
                return Err((
                    field("voc"),
                    "`oracle_noisy` needs a target `voc`, e.g. 0.8".into(),
                ));
            }
            (RewardSource::OracleNoisy, Some(v)) if !(v > -1.0 && v <= 1.0) => {
                return Err((field("voc"), format!("expected a VOC in (-1, 1], got {v}")));
            }
            (RewardSource::OracleNoisy, Some(_)) | (_, None) => {}
            (other, Some(_)) => {
                return Err((
                    field("voc"),
                    format!("only `oracle_noisy` takes a target VOC, this arm's reward is {other:?}"),
                ));
            }
        }
        if arm.steps == Some(0) {
            return Err((field("steps"), "expected at least 1".into()));
        }
        if arm.algorithm == Algorithm::Awr
            && matches!(arm.reward, RewardSource::OracleNoisy | RewardSource::TimeBias)
        {
            return Err((
                field("reward"),
                "`awr` supports \"none\" (zero advantages), \"sparse\", \"oracle\" and \"topreward\"".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RABC: WeightingParams = WeightingParams {
        weighting: Weighting::Rabc,
        eq3: WeightParams {
            tau: 2.0,
            delta_max: 2.0,
            min_weight: 0.0,
        },
        kappa: 0.01,
    };

    #[test]
    fn chunk_frame_and_prefix_deltas() {
        let s = [0.0, 0.1, 0.3, 0.3, 0.6, 1.0];
        let c = deltas(&s, DeltaKind::Chunk, 2, &[]);
        let expect = [0.3, 0.2, 0.3, 0.7, 0.4, 0.0];
        assert!(c.iter().zip(expect).all(|(a, b)| (a - b).abs() < 1e-12), "{c:?}");
        let f = deltas(&s, DeltaKind::Frame, 2, &[]);
        assert_eq!(f[0], 0.0);
        assert!((f[4] - 0.3).abs() < 1e-12);
        // Prefix ends 0, 2, 5: frames 0-1 get 0.3, frames 2-5 get 0.7.
        let p = deltas(&s, DeltaKind::Prefix, 2, &[0, 2, 5]);
        let expect = [0.3, 0.3, 0.7, 0.7, 0.7, 0.7];
        assert!(p.iter().zip(expect).all(|(a, b)| (a - b).abs() < 1e-12), "{p:?}");
        assert_eq!(dense_prefix_ends(5), vec![0, 1, 2, 3, 4]);
        let ends = dense_prefix_ends(141);
        assert_eq!((ends.len(), ends[1], ends[14]), (15, 10, 140));
    }

    #[test]
    fn rabc_matches_lerobots_formula() {
        // Deltas over the dataset: mean 0.02, population std 0.04.
        let d = vec![vec![0.06, -0.02], vec![0.005, 0.015]];
        let all = [0.06, -0.02, 0.005, 0.015];
        let m: f64 = all.iter().sum::<f64>() / 4.0;
        let sd = (all.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 4.0).sqrt();
        let w = weights_from_deltas(&d, &RABC);
        assert_eq!(w[0][0], 1.0, "above kappa");
        assert_eq!(w[0][1], 0.0, "backwards");
        // The delta as LeRobot reads it: rounded to f32.
        let d32 = f64::from(0.005f32);
        let soft = ((d32 - (m - 2.0 * sd)) / (4.0 * sd + RABC_EPSILON)).clamp(0.0, 1.0);
        assert!((w[1][0] - soft).abs() < 1e-12);
        assert_eq!(w[1][1], 1.0);
        // A negative mean is floored at 0 before the lower bound.
        // A delta of kappa in decimal is kappa after LeRobot's f32 rounding: soft, not 1.
        let at_kappa = weights_from_deltas(&[vec![0.31 - 0.3, 0.5]], &RABC);
        assert!(0.31 - 0.3 > RABC.kappa && at_kappa[0][0] < 1.0, "{at_kappa:?}");
        let neg = weights_from_deltas(&[vec![-0.5, 0.0]], &RABC);
        let sd = 0.25;
        assert!((neg[0][1] - (2.0 * sd / (4.0 * sd + RABC_EPSILON))).abs() < 1e-9);
    }

    #[test]
    fn eq3_on_chunk_deltas() {
        let p = WeightingParams {
            weighting: Weighting::Eq3,
            ..RABC
        };
        let w = weights_from_deltas(&[vec![0.5, -0.5]], &p);
        assert_eq!(w[0][0], 2.0);
        assert!((w[0][1] - 2.0 * (-0.5f64).exp()).abs() < 1e-12);
    }

    #[test]
    fn weight_stats_and_self_normalisation() {
        let s = WeightStats::of(&[vec![1.0, 0.0], vec![1.0, 0.0]]).unwrap();
        assert_eq!((s.mean, s.std, s.ess, s.zero_fraction), (0.5, 0.5, 0.5, 0.5));
        assert!(WeightStats::of(&[vec![0.0]]).is_none());
        assert_eq!(self_normalise(&[1.0, 3.0]), vec![0.5, 1.5]);
        assert_eq!(self_normalise(&[0.0, 0.0]), vec![0.0, 0.0]);
        // mean(w' l) == sum(w l) / sum(w).
        let (w, l) = ([0.2f32, 0.0, 0.6], [1.0f32, 5.0, 2.0]);
        let wn = self_normalise(&w);
        let lhs: f32 = wn.iter().zip(&l).map(|(a, b)| a * b).sum::<f32>() / 3.0;
        assert!((lhs - (0.2 + 1.2) / 0.8).abs() < 1e-6);
    }

    #[test]
    fn warmup_then_cosine() {
        assert!((learning_rate(1e-3, 0.0, 10, true, 0, 110) - 1e-4).abs() < 1e-15);
        assert_eq!(learning_rate(1e-3, 0.0, 10, true, 9, 110), 1e-3);
        assert_eq!(learning_rate(1e-3, 0.0, 10, true, 10, 110), 1e-3);
        assert!((learning_rate(1e-3, 0.0, 10, true, 60, 110) - 5e-4).abs() < 1e-15);
        assert!(learning_rate(1e-3, 1e-5, 10, true, 110, 110) - 1e-5 < 1e-15);
        assert_eq!(learning_rate(1e-3, 0.0, 0, false, 50, 110), 1e-3);
    }
}
