//! From a reward source to per-frame training weights: what makes the arms of an experiment differ.
//!
//! - `none`: plain behaviour cloning, every frame weighs 1.
//! - `sparse`: only episode success is known. Frames of successful episodes weigh 1 and of failed ones 0:
//!   filtered BC, the standard use of a binary episode reward on offline data.
//! - `oracle` / `topreward`: dense per-frame progress (the simulator's ground truth, or TOPReward's min-max
//!   progress interpolated from its prefixes to every frame) through paper Eq. 3:
//!   w_t = clip(tau * exp(delta_t - mean delta), min, delta_max), with delta_t = s_t - s_{t-1}.

use toprl_envs::episode::Episode;
use toprl_rewards::metrics::{WeightParams, interpolate_to_frames, reward_aligned_weights};
use toprl_rewards::score::EpisodeScore;

use crate::config::RewardSource;

/// Why weights could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("episode {episode} has no ground-truth progress; the `oracle` reward needs simulated episodes")]
    NoTrueProgress { episode: usize },
    #[error("episode {episode} has no success label; the `sparse` reward needs it")]
    NoSuccess { episode: usize },
    #[error("no episode succeeded, so `sparse` (success-filtered) weights are all zero")]
    NoSuccessfulEpisode,
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

/// Per-frame weights for every episode under `source`.
///
/// `topreward` needs `scores`: one [`EpisodeScore`] per episode with its sampling stride (original frames
/// per sampled frame).
pub fn frame_weights(
    source: RewardSource,
    episodes: &[Episode],
    scores: Option<&[(EpisodeScore, f64)]>,
    params: &WeightParams,
) -> Result<Vec<Vec<f32>>, LabelError> {
    let progress: Vec<Vec<f64>> = match source {
        RewardSource::None => return Ok(episodes.iter().map(|e| vec![1.0; e.len()]).collect()),
        RewardSource::Sparse => {
            let mut weights = Vec::with_capacity(episodes.len());
            for e in episodes {
                let success = e.success.ok_or(LabelError::NoSuccess { episode: e.index })?;
                weights.push(vec![if success { 1.0 } else { 0.0 }; e.len()]);
            }
            if weights.iter().all(|w| w.iter().all(|&x| x == 0.0)) {
                return Err(LabelError::NoSuccessfulEpisode);
            }
            return Ok(weights);
        }
        RewardSource::Oracle => oracle_progress(episodes)?,
        RewardSource::Topreward => episodes
            .iter()
            .zip(scores_for(episodes, scores)?)
            .map(|(e, (s, stride))| progress_per_frame(s, *stride, e.len()))
            .collect(),
    };
    Ok(reward_aligned_weights(&progress, params)
        .into_iter()
        .map(|w| w.into_iter().map(|x| x as f32).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn none_and_sparse_weights() {
        let eps = vec![
            episode(0, 3, true, vec![0.0; 3]),
            episode(1, 2, false, vec![0.0; 2]),
        ];
        let p = WeightParams::default();
        assert_eq!(
            frame_weights(RewardSource::None, &eps, None, &p).unwrap(),
            vec![vec![1.0; 3], vec![1.0; 2]]
        );
        assert_eq!(
            frame_weights(RewardSource::Sparse, &eps, None, &p).unwrap(),
            vec![vec![1.0; 3], vec![0.0; 2]]
        );
        let failed = vec![episode(0, 2, false, vec![0.0; 2])];
        assert!(matches!(
            frame_weights(RewardSource::Sparse, &failed, None, &p),
            Err(LabelError::NoSuccessfulEpisode)
        ));
    }

    #[test]
    fn oracle_weights_follow_eq3() {
        let eps = vec![
            episode(0, 3, true, vec![0.0, 0.5, 1.0]),
            episode(1, 3, false, vec![0.0, 0.0, 0.0]),
        ];
        let w = frame_weights(RewardSource::Oracle, &eps, None, &WeightParams::default()).unwrap();
        // Deltas [0, .5, .5] and [0, 0, 0]; mean 1/6: progressing frames clip at 2, stalled ones 2 e^{-1/6}.
        let stalled = (2.0 * (-1.0f64 / 6.0).exp()) as f32;
        assert_eq!(w[0][1], 2.0);
        assert!((w[1][2] - stalled).abs() < 1e-6);
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
        assert!(matches!(
            frame_weights(RewardSource::Topreward, &eps, None, &WeightParams::default()),
            Err(LabelError::MissingScores { expected: 1, got: 0 })
        ));
        let w = frame_weights(
            RewardSource::Topreward,
            &eps,
            Some(&[(score, 15.0)]),
            &WeightParams::default(),
        );
        assert_eq!(w.unwrap()[0].len(), 31);
    }
}
