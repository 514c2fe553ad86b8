//! From a reward source to per-frame training weights: what makes the arms of an experiment differ.
//!
//! - `none`: plain behaviour cloning, every frame weighs 1.
//! - `sparse`: only episode success is known. Frames of successful episodes weigh 1 and of failed ones 0:
//!   filtered BC, the standard use of a binary episode reward on offline data.
//! - `oracle` / `oracle_noisy` / `time_bias` / `topreward`: dense per-frame progress (the simulator's ground
//!   truth, the same degraded to a target VOC, time alone, or TOPReward's progress interpolated from its
//!   prefixes to every frame) through the deltas and weight formula of [`crate::weighting`] (paper Eq. 3
//!   or LeRobot's RA-BC).

use toprl_envs::episode::Episode;
use toprl_rewards::metrics::interpolate_to_frames;
use toprl_rewards::score::EpisodeScore;

use crate::config::RewardSource;
use crate::reward_quality::{mean_prefix_voc_of, oracle_noisy, time_bias};
use crate::weighting::{
    DeltaKind, ProgressScale, WeightingParams, deltas, dense_prefix_ends, weights_from_deltas,
};

/// Why weights could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("episode {episode} has no ground-truth progress; the `oracle` reward needs simulated episodes")]
    NoTrueProgress { episode: usize },
    #[error("episode {episode} has no success label; the `sparse` reward needs it")]
    NoSuccess { episode: usize },
    #[error("no episode succeeded, so `sparse` (success-filtered) weights are all zero")]
    NoSuccessfulEpisode,
    #[error("the `{0}` reward cannot score AWR rollouts")]
    NotForAwr(&'static str),
    #[error("the `oracle_noisy` reward needs a target `voc`")]
    NoTargetVoc,
    #[error("the `topreward` reward needs one score per episode ({expected}), got {got}")]
    MissingScores { expected: usize, got: usize },
}

/// Per-frame progress in [0, 1] for an episode of `num_frames` frames from a TOPReward score whose prefixes
/// were taken over frames sampled every `stride` original frames (prefix k ends at sampled frame k - 1).
pub fn progress_per_frame(score: &EpisodeScore, stride: f64, num_frames: usize) -> Vec<f64> {
    prefix_values_per_frame(score, &score.progress, stride, num_frames)
}

/// Any per-prefix series of `score` (its progress or raw log-probabilities) interpolated to every frame.
pub fn prefix_values_per_frame(
    score: &EpisodeScore,
    values: &[f64],
    stride: f64,
    num_frames: usize,
) -> Vec<f64> {
    let positions: Vec<f64> = score
        .prefix_lengths
        .iter()
        .map(|&k| (k as f64 - 1.0) * stride)
        .collect();
    interpolate_to_frames(&positions, values, num_frames)
}

/// The simulator's ground-truth progress of every episode.
pub fn oracle_progress(episodes: &[Episode]) -> Result<Vec<Vec<f64>>, LabelError> {
    episodes
        .iter()
        .map(|e| {
            e.true_progress
                .as_ref()
                .map(|p| p.iter().map(|&x| f64::from(x)).collect())
                .ok_or(LabelError::NoTrueProgress { episode: e.index })
        })
        .collect()
}

/// The TOPReward scores, checked to be one per episode.
pub fn scores_for<'s>(
    episodes: &[Episode],
    scores: Option<&'s [(EpisodeScore, f64)]>,
) -> Result<&'s [(EpisodeScore, f64)], LabelError> {
    let scores = scores.unwrap_or(&[]);
    if scores.len() != episodes.len() {
        return Err(LabelError::MissingScores {
            expected: episodes.len(),
            got: scores.len(),
        });
    }
    Ok(scores)
}

/// How an arm turns its reward source into weights (from `[train]` and the arm's table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelSettings {
    pub delta: DeltaKind,
    /// The policy's action chunk, H of `delta = "chunk"`.
    pub chunk: usize,
    pub weighting: WeightingParams,
    /// TOPReward progress scale.
    pub progress: ProgressScale,
    /// Target VOC of `oracle_noisy`.
    pub voc: Option<f64>,
    /// Seed of `oracle_noisy`'s noise.
    pub seed: u64,
}

/// An arm's per-frame weights and what the dense signal behind them looked like.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmLabels {
    pub weights: Vec<Vec<f32>>,
    /// Mean prefix VOC of the progress signal (dense sources only): over the successful demonstrations
    /// for simulated signals, over all episodes' own scores for TOPReward.
    pub reward_voc: Option<f64>,
    /// Standard deviation of the noise `oracle_noisy` added.
    pub noise_sigma: Option<f64>,
}

/// Per-frame progress and the frames where it was scored, for the dense sources.
struct DenseProgress {
    progress: Vec<Vec<f64>>,
    prefix_ends: Vec<Vec<usize>>,
    voc: Option<f64>,
    sigma: Option<f64>,
}

/// Which episodes a simulated signal's VOC is measured on: the successful ones (all when none is
/// labelled successful).
fn voc_episodes(episodes: &[Episode]) -> Vec<bool> {
    let successful: Vec<bool> = episodes.iter().map(|e| e.success == Some(true)).collect();
    if successful.iter().any(|&s| s) {
        successful
    } else {
        vec![true; episodes.len()]
    }
}

fn dense_from_truth(progress: Vec<Vec<f64>>, voc_on: &[bool], sigma: Option<f64>) -> DenseProgress {
    DenseProgress {
        prefix_ends: progress.iter().map(|p| dense_prefix_ends(p.len())).collect(),
        voc: mean_prefix_voc_of(&progress, voc_on),
        progress,
        sigma,
    }
}

/// TOPReward progress per frame on the chosen scale (see [`ProgressScale`]).
fn topreward_progress(
    episodes: &[Episode],
    scores: &[(EpisodeScore, f64)],
    scale: ProgressScale,
) -> DenseProgress {
    let (lo, hi) = scores
        .iter()
        .flat_map(|(s, _)| s.log_probs.iter().copied())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let range = hi - lo;
    let progress = episodes
        .iter()
        .zip(scores)
        .map(|(e, (s, stride))| {
            let values: Vec<f64> = match scale {
                ProgressScale::Episode => s.progress.clone(),
                ProgressScale::LogProb => s.log_probs.clone(),
                ProgressScale::Dataset if range > 0.0 => {
                    s.log_probs.iter().map(|v| (v - lo) / range).collect()
                }
                ProgressScale::Dataset => vec![1.0; s.log_probs.len()],
            };
            prefix_values_per_frame(s, &values, *stride, e.len())
        })
        .collect();
    let prefix_ends = episodes
        .iter()
        .zip(scores)
        .map(|(e, (s, stride))| {
            s.prefix_lengths
                .iter()
                .map(|&k| (((k as f64 - 1.0) * stride).round() as usize).min(e.len().saturating_sub(1)))
                .collect()
        })
        .collect();
    let vocs: Vec<f64> = scores.iter().filter_map(|(s, _)| s.voc).collect();
    DenseProgress {
        progress,
        prefix_ends,
        voc: (!vocs.is_empty()).then(|| vocs.iter().sum::<f64>() / vocs.len() as f64),
        sigma: None,
    }
}

/// Per-frame weights for every episode under `source`.
///
/// `topreward` needs `scores`: one [`EpisodeScore`] per episode with its sampling stride (original frames
/// per sampled frame). Dense sources go through [`crate::weighting`]: deltas of `settings.delta`, then
/// `settings.weighting`.
pub fn frame_weights(
    source: RewardSource,
    episodes: &[Episode],
    scores: Option<&[(EpisodeScore, f64)]>,
    settings: &LabelSettings,
) -> Result<ArmLabels, LabelError> {
    let plain = |weights| ArmLabels {
        weights,
        reward_voc: None,
        noise_sigma: None,
    };
    let dense = match source {
        RewardSource::None => return Ok(plain(episodes.iter().map(|e| vec![1.0; e.len()]).collect())),
        RewardSource::Sparse => {
            let mut weights = Vec::with_capacity(episodes.len());
            for e in episodes {
                let success = e.success.ok_or(LabelError::NoSuccess { episode: e.index })?;
                weights.push(vec![if success { 1.0 } else { 0.0 }; e.len()]);
            }
            if weights.iter().all(|w| w.iter().all(|&x| x == 0.0)) {
                return Err(LabelError::NoSuccessfulEpisode);
            }
            return Ok(plain(weights));
        }
        RewardSource::Oracle => dense_from_truth(oracle_progress(episodes)?, &voc_episodes(episodes), None),
        RewardSource::OracleNoisy => {
            let target = settings.voc.ok_or(LabelError::NoTargetVoc)?;
            let on = voc_episodes(episodes);
            let noisy = oracle_noisy(&oracle_progress(episodes)?, &on, target, settings.seed);
            dense_from_truth(noisy.progress, &on, Some(noisy.sigma))
        }
        RewardSource::TimeBias => {
            let lengths: Vec<usize> = episodes.iter().map(Episode::len).collect();
            dense_from_truth(time_bias(&lengths), &voc_episodes(episodes), None)
        }
        RewardSource::Topreward => {
            topreward_progress(episodes, scores_for(episodes, scores)?, settings.progress)
        }
    };
    let deltas: Vec<Vec<f64>> = dense
        .progress
        .iter()
        .zip(&dense.prefix_ends)
        .map(|(p, ends)| deltas(p, settings.delta, settings.chunk, ends))
        .collect();
    let weights = weights_from_deltas(&deltas, &settings.weighting)
        .into_iter()
        .map(|w| w.into_iter().map(|x| x as f32).collect())
        .collect();
    Ok(ArmLabels {
        weights,
        reward_voc: dense.voc,
        noise_sigma: dense.sigma,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weighting::Weighting;
    use toprl_rewards::metrics::WeightParams;

    fn episode(index: usize, len: usize, success: bool, progress: Vec<f32>) -> Episode {
        Episode {
            index,
            states: vec![vec![0.0; 6]; len],
            actions: vec![vec![0.0; 6]; len],
            success: Some(success),
            true_progress: Some(progress),
            ..Episode::default()
        }
    }

    fn settings(delta: DeltaKind, weighting: Weighting) -> LabelSettings {
        LabelSettings {
            delta,
            chunk: 2,
            weighting: WeightingParams {
                weighting,
                eq3: WeightParams::default(),
                kappa: 0.01,
            },
            progress: ProgressScale::Dataset,
            voc: None,
            seed: 0,
        }
    }

    #[test]
    fn none_and_sparse_weights() {
        let eps = vec![
            episode(0, 3, true, vec![0.0; 3]),
            episode(1, 2, false, vec![0.0; 2]),
        ];
        let p = settings(DeltaKind::Chunk, Weighting::Eq3);
        assert_eq!(
            frame_weights(RewardSource::None, &eps, None, &p).unwrap().weights,
            vec![vec![1.0; 3], vec![1.0; 2]]
        );
        assert_eq!(
            frame_weights(RewardSource::Sparse, &eps, None, &p)
                .unwrap()
                .weights,
            vec![vec![1.0; 3], vec![0.0; 2]]
        );
        let failed = vec![episode(0, 2, false, vec![0.0; 2])];
        assert!(matches!(
            frame_weights(RewardSource::Sparse, &failed, None, &p),
            Err(LabelError::NoSuccessfulEpisode)
        ));
    }

    #[test]
    fn oracle_frame_deltas_follow_eq3() {
        let eps = vec![
            episode(0, 3, true, vec![0.0, 0.5, 1.0]),
            episode(1, 3, false, vec![0.0, 0.0, 0.0]),
        ];
        let labels = frame_weights(
            RewardSource::Oracle,
            &eps,
            None,
            &settings(DeltaKind::Frame, Weighting::Eq3),
        )
        .unwrap();
        let w = labels.weights;
        // Deltas [0, .5, .5] and [0, 0, 0]; mean 1/6: progressing frames clip at 2, stalled ones 2 e^{-1/6}.
        let stalled = (2.0 * (-1.0f64 / 6.0).exp()) as f32;
        assert_eq!(w[0][1], 2.0);
        assert!((w[1][2] - stalled).abs() < 1e-6);
        // The constant episode has no VOC; the rising one has 1.
        assert!((labels.reward_voc.unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn rabc_chunk_weights_single_out_stalled_and_failed_episodes() {
        // A clean demonstration, one that stalls half-way, one that goes backwards.
        let ramp: Vec<f32> = (0..10).map(|t| t as f32 / 9.0).collect();
        let stall: Vec<f32> = (0..10).map(|t| (t as f32 / 9.0).min(0.4)).collect();
        let back: Vec<f32> = (0..10).map(|t| 0.5 - t as f32 / 40.0).collect();
        let eps = vec![
            episode(0, 10, true, ramp),
            episode(1, 10, false, stall),
            episode(2, 10, false, back),
        ];
        let w = frame_weights(
            RewardSource::Oracle,
            &eps,
            None,
            &settings(DeltaKind::Chunk, Weighting::Rabc),
        )
        .unwrap()
        .weights;
        assert!(w[0][..8].iter().all(|&x| x == 1.0), "{:?}", w[0]);
        assert!(w[1][..2].iter().all(|&x| x == 1.0) && w[1][5..].iter().all(|&x| x < 1.0));
        assert!(w[2][..9].iter().all(|&x| x == 0.0), "{:?}", w[2]);
        let stats = crate::weighting::WeightStats::of(&w).unwrap();
        assert!(stats.ess < 0.8, "{stats:?}");
    }

    #[test]
    fn time_bias_and_noisy_oracle_report_their_voc() {
        let eps: Vec<Episode> = (0..12)
            .map(|i| episode(i, 60, true, (0..60).map(|t| t as f32 / 59.0).collect()))
            .collect();
        let mut s = settings(DeltaKind::Chunk, Weighting::Rabc);
        let tb = frame_weights(RewardSource::TimeBias, &eps, None, &s).unwrap();
        assert!((tb.reward_voc.unwrap() - 1.0).abs() < 1e-12);
        assert!(matches!(
            frame_weights(RewardSource::OracleNoisy, &eps, None, &s),
            Err(LabelError::NoTargetVoc)
        ));
        s.voc = Some(0.8);
        let noisy = frame_weights(RewardSource::OracleNoisy, &eps, None, &s).unwrap();
        assert!(
            (noisy.reward_voc.unwrap() - 0.8).abs() < 0.01,
            "{:?}",
            noisy.reward_voc
        );
        assert!(noisy.noise_sigma.unwrap() > 0.0);
    }

    #[test]
    fn topreward_progress_is_interpolated_from_prefixes_to_frames() {
        let score = EpisodeScore {
            prefix_lengths: vec![1, 2, 3],
            log_probs: vec![-3.0, -2.0, -1.0],
            progress: vec![0.0, 0.5, 1.0],
            num_tokens: vec![10, 20, 30],
            voc: Some(1.0),
        };
        // Sampled every 15 frames at 2 fps from 30 fps: prefix ends at frames 0, 15, 30.
        let per_frame = progress_per_frame(&score, 15.0, 31);
        assert_eq!(per_frame[0], 0.0);
        assert!((per_frame[15] - 0.5).abs() < 1e-12 && (per_frame[30] - 1.0).abs() < 1e-12);
        assert!((per_frame[5] - 1.0 / 6.0).abs() < 1e-12);
        let eps = vec![episode(0, 31, true, vec![0.0; 31])];
        let p = settings(DeltaKind::Prefix, Weighting::Eq3);
        assert!(matches!(
            frame_weights(RewardSource::Topreward, &eps, None, &p),
            Err(LabelError::MissingScores { expected: 1, got: 0 })
        ));
        let w = frame_weights(RewardSource::Topreward, &eps, Some(&[(score, 15.0)]), &p);
        assert_eq!(w.unwrap().weights[0].len(), 31);
    }

    #[test]
    fn dataset_scale_keeps_a_failed_episode_low() {
        // Episode 0 reaches log p -0.1, episode 1 never rises above -4: per episode both span 0..1.
        let score = |lp: Vec<f64>| EpisodeScore {
            prefix_lengths: vec![1, 2, 3],
            progress: vec![0.0, 0.5, 1.0],
            num_tokens: vec![1, 2, 3],
            voc: Some(1.0),
            log_probs: lp,
        };
        let scores = vec![
            (score(vec![-5.0, -2.0, -0.1]), 1.0),
            (score(vec![-5.0, -4.5, -4.0]), 1.0),
        ];
        let eps = vec![
            episode(0, 3, true, vec![0.0; 3]),
            episode(1, 3, false, vec![0.0; 3]),
        ];
        let dense = topreward_progress(&eps, &scores, ProgressScale::Dataset);
        assert_eq!(dense.progress[0][2], 1.0);
        assert!((dense.progress[1][2] - 1.0 / 4.9).abs() < 1e-12);
        let per_episode = topreward_progress(&eps, &scores, ProgressScale::Episode);
        assert_eq!(per_episode.progress[1][2], 1.0);
        assert_eq!(dense.prefix_ends[0], vec![0, 1, 2]);
    }
}
