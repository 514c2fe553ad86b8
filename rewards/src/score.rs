//! The interface every progress reward model offers: frames of one episode and its instruction in,
//! per-prefix scores and normalised progress out.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Scores of one episode, one entry per scored prefix (paper: the prefix schedule over sampled frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeScore {
    /// Number of sampled frames in each scored prefix, increasing.
    pub prefix_lengths: Vec<usize>,
    /// Raw model score per prefix (TOPReward: log p(" True"), natural log).
    pub log_probs: Vec<f64>,
    /// Min-max normalised progress per prefix, in [0, 1].
    pub progress: Vec<f64>,
    /// Input tokens the model read per prefix.
    pub num_tokens: Vec<usize>,
    /// Value-order correlation of `progress`; `None` when undefined (constant or a single prefix).
    pub voc: Option<f64>,
}

/// A reward model that scores how far an episode has progressed at each prefix.
pub trait ProgressModel {
    /// The error the model reports (bad frames, missing weights, a too-long input, ...).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Score one episode: `frames` already sampled at `fps`, in time order.
    fn score_episode(
        &mut self,
        frames: &[RgbImage],
        fps: f64,
        instruction: &str,
    ) -> Result<EpisodeScore, Self::Error>;

    /// Episodes this model can score at once (remote scorers: one per server). Default 1.
    fn parallelism(&self) -> usize {
        1
    }

    /// Score several episodes, results in order (default: one after another).
    fn score_episodes(
        &mut self,
        episodes: &[crate::topreward::EpisodeRequest<'_>],
    ) -> Vec<Result<EpisodeScore, Self::Error>> {
        episodes
            .iter()
            .map(|e| self.score_episode(e.frames, e.fps, e.instruction))
            .collect()
    }
}
