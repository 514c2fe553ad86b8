//! TOPReward (arXiv 2602.19313) on Qwen3-VL: r_t = log p(" True" | video prefix 1..t, prompt), read from the
//! full-vocabulary log-softmax at the position that predicts the final " True" token, for the prefix schedule
//! `sorted(set(floor(linspace(1, N, min(15, N)))))`; progress is the min-max normalisation of r, VOC its
//! Spearman correlation with time.
//!
//! Two modes:
//! - [`Mode::Exact`] scores every prefix like the reference (the video resolution of a prefix depends on
//!   its length through `smart_resize`; odd prefixes repeat their last frame). Consecutive prefixes that
//!   come out at the same resolution share the KV cache of their common tokens and the vision features of
//!   their common frame groups, for the reasons below: the same computation, done once.
//! - [`Mode::Incremental`] fixes one resolution per episode (that of the whole episode) and scores all prefixes
//!   as one packed prefix tree ([`tree`]): the longest prefix runs once, and every other prefix computes only
//!   what it does not share with it (its padded last group, `<|vision_end|>` and the question), all of them
//!   in one batched pass over the shared KV cache. This is exact for a fixed resolution because the vision
//!   tower attends only within a temporal group and a group's text positions (`get_rope_index`) do not
//!   depend on later frames. [`IncrementalSession`] does the same one prefix at a time (for callers that see
//!   frames arrive).
//!
//! The model consumes token ids and video patches produced by a [`PrefixEncoder`]; [`QwenPrefixEncoder`] is the
//! real one (the Qwen3-VL video processor and the TOPReward prompt of [`prompt`]).

pub mod cache;
pub mod encoder;
pub mod prompt;
pub mod scorer;
pub mod tree;

pub use cache::{EpisodeKey, ScoreCache};
pub use encoder::QwenPrefixEncoder;
pub use prompt::{FALSE_TOKEN_ID, TRUE_TOKEN_ID};
pub use scorer::{
    EpisodeRequest, IncrementalSession, PrefixEncoder, PrefixInput, PrefixScore, ScorerConfig, TopReward,
    TopRewardError, TopRewardModel,
};
pub use tree::PrefixTree;

use serde::{Deserialize, Serialize};

/// Most prefixes scored per episode (paper: 15).
pub const MAX_PREFIXES: usize = 15;

/// How prefixes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Re-encode every prefix at its own resolution, as the reference does.
    #[default]
    Exact,
    /// One resolution per episode, KV cache reused across prefixes.
    Incremental,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(Self::Exact),
            "incremental" => Ok(Self::Incremental),
            other => Err(format!("unknown mode {other:?}: expected exact or incremental")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Exact => "exact",
            Self::Incremental => "incremental",
        })
    }
}

/// Prefix lengths scored for `n` sampled frames: `sorted(set(floor(linspace(1, n, min(15, n)))))`.
pub fn prefix_lengths(n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let k = n.min(MAX_PREFIXES);
    if k == 1 {
        return vec![1];
    }
    // numpy linspace: start + i * step, with the last value set to `stop` exactly.
    let step = (n as f64 - 1.0) / (k as f64 - 1.0);
    let mut out: Vec<usize> = (0..k)
        .map(|i| {
            if i == k - 1 {
                n
            } else {
                (1.0 + i as f64 * step).floor() as usize
            }
        })
        .collect();
    out.dedup();
    out
}

/// Frame indices fed for a prefix of `k` frames: 0..k, the last repeated when k is odd (the processor's
/// temporal patch needs pairs; the paper's code pads the frame list and its metadata indices).
pub fn prefix_frame_indices(k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..k).collect();
    if k % 2 == 1 {
        idx.push(k - 1);
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_schedule_matches_numpy() {
        // Values from numpy: sorted(set(np.floor(np.linspace(1, n, min(15, n))).astype(int))).
        assert_eq!(prefix_lengths(1), vec![1]);
        assert_eq!(prefix_lengths(6), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(
            prefix_lengths(16),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16]
        );
        assert_eq!(
            prefix_lengths(30),
            vec![1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 30]
        );
        assert_eq!(
            prefix_lengths(100),
            vec![1, 8, 15, 22, 29, 36, 43, 50, 57, 64, 71, 78, 85, 92, 100]
        );
        assert_eq!(prefix_lengths(0), Vec::<usize>::new());
    }

    #[test]
    fn odd_prefixes_repeat_the_last_frame() {
        assert_eq!(prefix_frame_indices(1), vec![0, 0]);
        assert_eq!(prefix_frame_indices(3), vec![0, 1, 2, 2]);
        assert_eq!(prefix_frame_indices(4), vec![0, 1, 2, 3]);
    }

    #[test]
    fn mode_parses() {
        assert_eq!("incremental".parse::<Mode>(), Ok(Mode::Incremental));
        assert!("fast".parse::<Mode>().is_err());
    }
}
