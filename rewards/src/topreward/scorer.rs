//! TOPReward scoring on a loaded Qwen3-VL: one prefix (exact), a KV-cache session (incremental), whole
//! episodes with the prefix schedule, and a cached batch API.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use indicatif::ProgressBar;

#[cfg(doc)]
use super::TRUE_TOKEN_ID;
use super::cache::{EpisodeKey, ScoreCache};
use super::{Mode, prefix_frame_indices, prefix_lengths};
use crate::metrics;
use crate::qwen3_vl::activation::exp_f32;
use crate::qwen3_vl::{CheckpointFiles, GridThw, KvCache, ModelError, Position3, Qwen3VL, VisionOutput};
use crate::score::{EpisodeScore, ProgressModel};

/// Errors of TOPReward scoring. Each names what was wrong with the input.
#[derive(Debug, thiserror::Error)]
pub enum TopRewardError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the episode has no frames")]
    EmptyEpisode,
    #[error("the instruction is empty; TOPReward asks whether the video completes it")]
    EmptyInstruction,
    #[error(
        "the model gave a non-finite log p(True) = {value} for the prefix of {prefix} frames (are its weights finite?)"
    )]
    NonFiniteScore { prefix: usize, value: f64 },
    #[error("fps must be a positive finite number, got {0}")]
    BadFps(f64),
    #[error("frame {index} is {found_w}x{found_h}, but frame 0 is {w}x{h}; all frames must share one size")]
    FrameSizeMismatch {
        index: usize,
        w: u32,
        h: u32,
        found_w: u32,
        found_h: u32,
    },
    #[error("frame index {index} is out of range for {len} frames")]
    FrameIndex { index: usize, len: usize },
    #[error(
        "input of {tokens} tokens is longer than the limit of {limit} (fewer or smaller frames, or raise the limit)"
    )]
    TooLong { tokens: usize, limit: usize },
    #[error("score position {position} / target token {target} invalid for a prompt of {len} tokens")]
    ScorePosition {
        position: usize,
        len: usize,
        target: u32,
    },
    #[error("prefix encoding failed: {0}")]
    Encode(String),
    #[error("score cache {path}: {reason}")]
    Cache { path: PathBuf, reason: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Model inputs of one prefix: the prompt, where its answer is scored, and its video patches.
#[derive(Debug, Clone)]
pub struct PrefixInput {
    pub input_ids: Vec<u32>,
    /// Position whose logits predict the answer (the reference: `len - 2`, the prompt ends with " True").
    pub score_position: usize,
    /// The scored token (" True" = [`TRUE_TOKEN_ID`] by default).
    pub target_token_id: u32,
    /// `(patches, 3 * 2 * 16 * 16)` f32, the Qwen3-VL processor's patch order.
    pub pixel_values: Tensor,
    pub grid: GridThw,
    /// Source frame indices of each temporal group, in order (an odd prefix ends with a repeated frame).
    pub group_frames: Vec<(usize, usize)>,
}

impl PrefixInput {
    /// Patch rows of temporal group `g` and their one-group grid: a group's vision features depend on its own
    /// patches only (attention within the group), so a group can be encoded alone.
    pub(crate) fn group_pixels(&self, g: usize) -> candle_core::Result<(Tensor, GridThw)> {
        let hw = self.grid.h * self.grid.w;
        Ok((
            self.pixel_values.narrow(0, g * hw, hw)?,
            GridThw::new(1, self.grid.h, self.grid.w),
        ))
    }
}

/// Score of one prefix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixScore {
    /// log p(" True"), natural log, full-vocabulary softmax.
    pub log_prob: f64,
    /// Tokens in the model input (as the reference feeds it).
    pub num_tokens: usize,
}

/// Builds the model inputs of a prefix: Qwen3-VL video preprocessing plus the TOPReward prompt.
pub trait PrefixEncoder {
    /// Encode `frames[indices]` (indices already padded to an even count) with timestamps `index / fps`.
    /// `resolution` forces the resized (height, width); `None` lets `smart_resize` pick it for this clip.
    fn encode(
        &self,
        frames: &[RgbImage],
        indices: &[usize],
        fps: f64,
        instruction: &str,
        resolution: Option<(usize, usize)>,
    ) -> Result<PrefixInput, TopRewardError>;

    /// `frames` resized to `resolution` exactly as `encode` would resize them, so that encoding many prefixes
    /// of one episode at a fixed resolution resizes each frame once. The default leaves them to `encode`.
    fn resize(
        &self,
        frames: &[RgbImage],
        resolution: (usize, usize),
    ) -> Result<Vec<RgbImage>, TopRewardError> {
        let _ = resolution;
        Ok(frames.to_vec())
    }

    /// The (height, width) `smart_resize` picks for a clip of `num_frames` frames of `height` x `width`.
    fn resolution(
        &self,
        num_frames: usize,
        height: usize,
        width: usize,
    ) -> Result<(usize, usize), TopRewardError>;

    /// Identifies the encoder's settings (prompt template, pixel budget, ...) for the score cache key.
    fn settings_key(&self) -> String;
}

/// TOPReward's view of a Qwen3-VL: scores prefixes.
#[derive(Debug, Clone)]
pub struct TopRewardModel {
    model: Qwen3VL,
    max_tokens: usize,
}

impl TopRewardModel {
    /// Wrap a loaded model; the token limit defaults to the model's `max_position_embeddings`.
    pub fn new(model: Qwen3VL) -> Self {
        let max_tokens = model.config().text_config.max_position_embeddings;
        Self { model, max_tokens }
    }

    /// Load from a local checkpoint directory or a hub id, f32 on CPU.
    pub fn load(model: &str) -> Result<Self, TopRewardError> {
        let files = CheckpointFiles::resolve(model)?;
        Ok(Self::new(Qwen3VL::load(&files, &Device::Cpu, DType::F32)?))
    }

    /// Refuse inputs longer than `limit` tokens (never more than `max_position_embeddings`).
    pub fn with_max_tokens(mut self, limit: usize) -> Self {
        self.max_tokens = limit.min(self.model.config().text_config.max_position_embeddings);
        self
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn model(&self) -> &Qwen3VL {
        &self.model
    }

    /// The model, to change run settings such as the attention chunk budget.
    pub fn model_mut(&mut self) -> &mut Qwen3VL {
        &mut self.model
    }

    pub(crate) fn check(&self, input: &PrefixInput) -> Result<(), TopRewardError> {
        let len = input.input_ids.len();
        let vocab = self.model.config().text_config.vocab_size;
        if input.score_position >= len || input.target_token_id as usize >= vocab {
            return Err(TopRewardError::ScorePosition {
                position: input.score_position,
                len,
                target: input.target_token_id,
            });
        }
        if input.input_ids.len() > self.max_tokens {
            return Err(TopRewardError::TooLong {
                tokens: input.input_ids.len(),
                limit: self.max_tokens,
            });
        }
        Ok(())
    }

    /// Full-vocabulary log-softmax of one hidden row, at `target`.
    fn log_prob(&self, hidden_row: &Tensor, target: u32) -> Result<f64, TopRewardError> {
        let lp = self.log_probs(&hidden_row.unsqueeze(0)?, &[target])?;
        Ok(lp[0])
    }

    /// Full-vocabulary log-softmax of each hidden row `(rows, hidden)` at its target: `x[t] - logsumexp(x)`
    /// over the f32 logits, accumulated in f64 (transformers: `log_softmax(logits.float())`). Only the targets
    /// are needed, so no `(rows, vocab)` log-softmax tensor is built; rows run in parallel.
    pub(crate) fn log_probs(&self, hidden: &Tensor, targets: &[u32]) -> Result<Vec<f64>, TopRewardError> {
        use rayon::prelude::*;
        let logits = self.model.text.logits(hidden)?.to_vec2::<f32>()?;
        if logits.len() != targets.len() {
            return Err(TopRewardError::Encode(format!(
                "{} hidden rows for {} targets",
                logits.len(),
                targets.len()
            )));
        }
        Ok(logits
            .par_iter()
            .zip(targets)
            .map(|(row, &t)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // exp(x - max) in f32 as torch computes it (vectorised), summed in f64 in blocks.
                let sum: f64 = row
                    .chunks(256)
                    .map(|c| c.iter().map(|&x| exp_f32(x - max)).sum::<f32>() as f64)
                    .sum();
                row.get(t as usize)
                    .map_or(f64::NAN, |&x| (x - max) as f64 - sum.ln())
            })
            .collect())
    }

    /// Score one prefix as the reference does: the whole prompt through the model, log-softmax at the
    /// score position (the one before the final " True").
    pub fn score_exact(&self, input: &PrefixInput) -> Result<PrefixScore, TopRewardError> {
        self.model.device().with_context(|| self.score_exact_inner(input))
    }

    fn score_exact_inner(&self, input: &PrefixInput) -> Result<PrefixScore, TopRewardError> {
        self.check(input)?;
        let ids = &input.input_ids;
        let vis = self.model.visual.forward(&input.pixel_values, &[input.grid])?;
        let positions = self
            .model
            .rope_positions(ids, &self.model.groups_of(&[input.grid]))?;
        let mut cache = KvCache::new(self.model.text.num_layers());
        let hidden = self
            .model
            .forward_tokens(ids, &positions, Some(&vis), &mut cache)?;
        let log_prob = self.log_prob(&hidden.get(input.score_position)?, input.target_token_id)?;
        Ok(PrefixScore {
            log_prob,
            num_tokens: ids.len(),
        })
    }

    /// A KV-cache session for the prefixes of one episode at one resolution.
    pub fn session(&self) -> IncrementalSession<'_> {
        IncrementalSession {
            m: self,
            cache: KvCache::new(self.model.text.num_layers()),
            keys: Vec::new(),
            groups: HashMap::new(),
            computed_tokens: 0,
        }
    }
}

/// What a cached position holds: a text token, or visual token `index` of the group of frames `frames` at
/// grid `h` x `w`. Two sequences share their KV cache up to the first differing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TokenKey {
    Text(u32),
    Visual {
        frames: (usize, usize),
        h: usize,
        w: usize,
        index: usize,
    },
}

/// Identity of an encoded frame group: its source frames and merged grid (as [`TokenKey::Visual`]).
pub(crate) type GroupKey = ((usize, usize), usize, usize);

/// A run of consecutive visual tokens of one frame group.
pub(crate) struct VisualRun {
    pub key: GroupKey,
    /// Index of the group in the prefix.
    pub group: usize,
    /// First token of the run within the group's tokens.
    pub offset: usize,
    pub len: usize,
}

/// What each token of a prefix (up to its score position) is: its cache key, its MRoPE position, and for a
/// visual token its (group, offset within the group). Shared by the KV-cache session and the prefix tree.
pub(crate) struct TokenLayout {
    /// Merged `(h, w)` of each temporal group.
    pub groups: Vec<(usize, usize)>,
    pub positions: Vec<Position3>,
    pub keys: Vec<TokenKey>,
    pub visual_of: Vec<Option<(usize, usize)>>,
}

impl TokenLayout {
    pub fn new(model: &Qwen3VL, input: &PrefixInput, ids: &[u32]) -> Result<Self, TopRewardError> {
        let groups = model.groups_of(&[input.grid]);
        if groups.len() != input.group_frames.len() {
            return Err(TopRewardError::Encode(format!(
                "{} temporal groups but {} group frame pairs",
                groups.len(),
                input.group_frames.len()
            )));
        }
        let positions = model.rope_positions(ids, &groups)?;
        let video = model.config().video_token_id;
        let image = model.config().image_token_id;
        let mut keys = Vec::with_capacity(ids.len());
        let mut visual_of = Vec::with_capacity(ids.len());
        let (mut g, mut in_run, mut prev_vis) = (0usize, 0usize, false);
        for &t in ids {
            if t == video || t == image {
                if !prev_vis {
                    in_run = 0;
                } else if in_run == groups[g].0 * groups[g].1 {
                    g += 1;
                    in_run = 0;
                }
                let (gh, gw) = *groups.get(g).ok_or_else(|| {
                    TopRewardError::Encode(format!("more visual tokens than {} groups hold", groups.len()))
                })?;
                keys.push(TokenKey::Visual {
                    frames: input.group_frames[g],
                    h: gh,
                    w: gw,
                    index: in_run,
                });
                visual_of.push(Some((g, in_run)));
                in_run += 1;
                prev_vis = true;
            } else {
                if prev_vis {
                    g += 1;
                }
                keys.push(TokenKey::Text(t));
                visual_of.push(None);
                prev_vis = false;
            }
        }
        Ok(Self {
            groups,
            positions,
            keys,
            visual_of,
        })
    }

    /// The runs of visual tokens among tokens `from..` of `input`, in order.
    pub fn visual_runs(&self, input: &PrefixInput, from: usize) -> Vec<VisualRun> {
        let end = self.visual_of.len();
        let mut runs = Vec::new();
        let mut i = from;
        while i < end {
            let Some((group, offset)) = self.visual_of[i] else {
                i += 1;
                continue;
            };
            let (gh, gw) = self.groups[group];
            let len = (gh * gw - offset).min(end - i);
            runs.push(VisualRun {
                key: (input.group_frames[group], gh, gw),
                group,
                offset,
                len,
            });
            i += len;
        }
        runs
    }
}

/// Incremental scoring of growing prefixes: reuses the KV cache of the longest shared token prefix and the
/// vision features of groups already encoded.
pub struct IncrementalSession<'a> {
    m: &'a TopRewardModel,
    cache: KvCache,
    keys: Vec<TokenKey>,
    groups: HashMap<GroupKey, VisionOutput>,
    computed_tokens: usize,
}

impl std::fmt::Debug for IncrementalSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncrementalSession")
            .field("cached_tokens", &self.cache.len())
            .finish()
    }
}

impl IncrementalSession<'_> {
    /// Tokens currently held in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Tokens run through the decoder so far (the rest came from the cache).
    pub fn computed_tokens(&self) -> usize {
        self.computed_tokens
    }

    /// Score a prefix, computing only what differs from the previously scored one.
    pub fn score(&mut self, input: &PrefixInput) -> Result<PrefixScore, TopRewardError> {
        // On the CPU, candle's own thread pool, kept warm across the many short parallel sections.
        let device = self.m.model.device().clone();
        device.with_context(|| self.score_inner(input))
    }

    fn score_inner(&mut self, input: &PrefixInput) -> Result<PrefixScore, TopRewardError> {
        let m = self.m;
        m.check(input)?;
        let model = &m.model;
        // Tokens after the score position (the answer " True") cannot change its logits: stop there.
        let ids = &input.input_ids[..input.score_position + 1];
        let layout = TokenLayout::new(model, input, ids)?;
        let mut common = self
            .keys
            .iter()
            .zip(&layout.keys)
            .take_while(|(a, b)| a == b)
            .count()
            .min(self.cache.len());
        if common == ids.len() {
            common -= 1; // at least one token must run to produce the logits
        }
        self.cache.truncate(common)?;
        // Vision features of the visual tokens in the new chunk, from cached or newly encoded groups.
        let mut parts = Vec::new();
        for run in layout.visual_runs(input, common) {
            let out = match self.groups.entry(run.key) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let (pixels, grid) = input.group_pixels(run.group)?;
                    e.insert(model.visual.forward(&pixels, &[grid])?)
                }
            };
            parts.push(out.narrow(run.offset, run.len)?);
        }
        let vis = VisionOutput::cat(&parts)?;
        let hidden = match model.forward_tokens(
            &ids[common..],
            &layout.positions[common..],
            vis.as_ref(),
            &mut self.cache,
        ) {
            Ok(h) => h,
            Err(e) => {
                // Some layers may have appended to the cache: start the next prefix from scratch.
                self.cache = KvCache::new(model.text.num_layers());
                self.keys.clear();
                return Err(e.into());
            }
        };
        self.computed_tokens += ids.len() - common;
        let last = hidden.dim(0)? - 1;
        let log_prob = m.log_prob(&hidden.get(last)?, input.target_token_id)?;
        self.keys = layout.keys;
        Ok(PrefixScore {
            log_prob,
            num_tokens: input.input_ids.len(),
        })
    }
}

/// Settings of episode scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorerConfig {
    /// Exact (reference) or incremental (fixed resolution, KV cache reuse). Default: exact.
    pub mode: Mode,
    /// Optional on-disk JSON cache directory (one file per episode key, written atomically). Default: none.
    pub cache_dir: Option<PathBuf>,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Exact,
            cache_dir: None,
        }
    }
}

/// One episode to score in a batch.
#[derive(Debug, Clone, Copy)]
pub struct EpisodeRequest<'a> {
    /// Frames already sampled at `fps`, in time order.
    pub frames: &'a [RgbImage],
    pub fps: f64,
    pub instruction: &'a str,
}

/// TOPReward over whole episodes: prefix schedule, scoring, normalisation, VOC, with a score cache keyed
/// by episode content and settings (re-scoring the same episode is free).
pub struct TopReward<E> {
    model: TopRewardModel,
    encoder: E,
    config: ScorerConfig,
    model_key: String,
    cache: ScoreCache,
    progress: Option<ProgressBar>,
}

impl<E> std::fmt::Debug for TopReward<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopReward")
            .field("config", &self.config)
            .field("model", &self.model_key)
            .finish()
    }
}

impl<E: PrefixEncoder> TopReward<E> {
    /// `model_key` identifies the weights in cache keys (e.g. the checkpoint path or hub id).
    pub fn new(
        model: TopRewardModel,
        encoder: E,
        config: ScorerConfig,
        model_key: impl Into<String>,
    ) -> Result<Self, TopRewardError> {
        let cache = ScoreCache::new(config.cache_dir.clone())?;
        Ok(Self {
            model,
            encoder,
            config,
            model_key: model_key.into(),
            cache,
            progress: None,
        })
    }

    pub fn model(&self) -> &TopRewardModel {
        &self.model
    }

    pub fn config(&self) -> &ScorerConfig {
        &self.config
    }

    /// A progress bar advanced once per scored prefix (its length is set per episode).
    pub fn set_progress(&mut self, bar: Option<ProgressBar>) {
        self.progress = bar;
    }

    /// Cache key of an episode under the current settings.
    pub fn episode_key(&self, frames: &[RgbImage], fps: f64, instruction: &str) -> EpisodeKey {
        let settings = format!(
            "model={};mode={};max_tokens={};encoder={}",
            self.model_key,
            self.config.mode,
            self.model.max_tokens,
            self.encoder.settings_key(),
        );
        EpisodeKey::new(frames, fps, instruction, &settings)
    }

    /// Score one episode (cached).
    pub fn score_frames(
        &mut self,
        frames: &[RgbImage],
        fps: f64,
        instruction: &str,
    ) -> Result<EpisodeScore, TopRewardError> {
        let key = self.episode_key(frames, fps, instruction);
        if let Some(hit) = self.cache.get(&key)? {
            return Ok(hit);
        }
        let score = self.score_uncached(frames, fps, instruction)?;
        self.cache.put(&key, &score)?;
        Ok(score)
    }

    /// Score many episodes; each result is independent (a bad episode does not stop the others).
    pub fn score_batch(
        &mut self,
        episodes: &[EpisodeRequest<'_>],
    ) -> Vec<Result<EpisodeScore, TopRewardError>> {
        episodes
            .iter()
            .map(|e| self.score_frames(e.frames, e.fps, e.instruction))
            .collect()
    }

    /// Score one episode, bypassing the cache.
    pub fn score_uncached(
        &mut self,
        frames: &[RgbImage],
        fps: f64,
        instruction: &str,
    ) -> Result<EpisodeScore, TopRewardError> {
        if frames.is_empty() {
            return Err(TopRewardError::EmptyEpisode);
        }
        if instruction.trim().is_empty() {
            return Err(TopRewardError::EmptyInstruction);
        }
        if !(fps.is_finite() && fps > 0.0) {
            return Err(TopRewardError::BadFps(fps));
        }
        let (w, h) = frames[0].dimensions();
        for (index, f) in frames.iter().enumerate() {
            let (fw, fh) = f.dimensions();
            if (fw, fh) != (w, h) {
                return Err(TopRewardError::FrameSizeMismatch {
                    index,
                    w,
                    h,
                    found_w: fw,
                    found_h: fh,
                });
            }
        }
        let lengths = prefix_lengths(frames.len());
        if let Some(pb) = &self.progress {
            pb.set_length(lengths.len() as u64);
            pb.set_position(0);
        }
        let mut log_probs = Vec::with_capacity(lengths.len());
        let mut num_tokens = Vec::with_capacity(lengths.len());
        match self.config.mode {
            Mode::Exact => {
                // Every prefix at the resolution the reference gives it. Where consecutive prefixes share
                // their resolution, the KV cache of their common tokens and the vision features of their
                // common frame groups are reused: the same computation (attention is causal, a group's
                // features depend on its own patches), not an approximation.
                let mut session = self.model.session();
                for &k in &lengths {
                    let input =
                        self.encoder
                            .encode(frames, &prefix_frame_indices(k), fps, instruction, None)?;
                    let s = finite(session.score(&input)?, k)?;
                    log_probs.push(s.log_prob);
                    num_tokens.push(s.num_tokens);
                    if let Some(pb) = &self.progress {
                        pb.inc(1);
                    }
                }
            }
            Mode::Incremental => {
                // One resolution for the episode: the one the whole (padded) episode gets. Every frame is
                // resized once, and all prefixes run as one packed prefix tree on the longest one.
                let n = frames.len() + frames.len() % 2;
                let res = self.encoder.resolution(n, h as usize, w as usize)?;
                let frames = self.encoder.resize(frames, res)?;
                let (&longest, shorter) = lengths.split_last().ok_or(TopRewardError::EmptyEpisode)?;
                let encode = |k: usize| {
                    self.encoder
                        .encode(&frames, &prefix_frame_indices(k), fps, instruction, Some(res))
                };
                let mut tree = self.model.prefix_tree(&encode(longest)?)?;
                for &k in shorter {
                    tree.add(&encode(k)?)?;
                    if let Some(pb) = &self.progress {
                        pb.inc(1);
                    }
                }
                let mut scores = tree.finish()?;
                // The trunk (the longest prefix) came first.
                scores.rotate_left(1);
                for (s, &k) in scores.into_iter().zip(&lengths) {
                    let s = finite(s, k)?;
                    log_probs.push(s.log_prob);
                    num_tokens.push(s.num_tokens);
                }
                if let Some(pb) = &self.progress {
                    pb.inc(1);
                }
            }
        }
        let progress = metrics::min_max_progress(&log_probs);
        let voc = metrics::voc(&progress);
        Ok(EpisodeScore {
            prefix_lengths: lengths,
            log_probs,
            progress,
            num_tokens,
            voc,
        })
    }
}

/// Model outputs enter the pipeline here: a NaN or infinite log-probability (a checkpoint with NaN or
/// Inf weights) is an error, never min-max "progress" (a NaN range would map every prefix to 1.0).
fn finite(score: PrefixScore, prefix: usize) -> Result<PrefixScore, TopRewardError> {
    if score.log_prob.is_finite() {
        Ok(score)
    } else {
        Err(TopRewardError::NonFiniteScore {
            prefix,
            value: score.log_prob,
        })
    }
}

impl<E: PrefixEncoder> ProgressModel for TopReward<E> {
    type Error = TopRewardError;

    fn score_episode(
        &mut self,
        frames: &[RgbImage],
        fps: f64,
        instruction: &str,
    ) -> Result<EpisodeScore, Self::Error> {
        self.score_frames(frames, fps, instruction)
    }
}
