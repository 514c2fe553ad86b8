//! GVL (Generative Value Learning, arXiv 2411.04549), the baseline TOPReward is compared against: the VLM is
//! shown the episode's first frame as the initial scene (0% complete) and then every frame in a seeded random
//! order, and asked for each frame's task completion percentage. The answer is decoded greedily, parsed,
//! un-shuffled to time order, and scored by VOC against time; an answer that cannot be parsed scores VOC 0
//! (as in the paper).
//!
//! The prompt follows the GVL paper's (quoted in ../shared/reference/topreward.md): the expert-roboticist
//! instruction, "Initial robot scene: [IMG]" with 0%, then "Frame i: [IMG]" for the shuffled frames and the
//! answer format "Frame {i}: Frame Description: {}, Task Completion Percentages:{}%".

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::metrics;
use crate::multimodal::{
    Message, MultimodalEncoder, MultimodalError, Part, TemplateOptions, generate_greedy,
};
use crate::qwen3_vl::Qwen3VL;
use crate::score::{EpisodeScore, ProgressModel};
use crate::topreward::EpisodeKey;

/// GVL settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GvlConfig {
    /// Seed of the frame shuffle (mixed with the episode's content hash, so episodes differ). Default 0.
    pub seed: u64,
    /// Generated tokens allowed per frame (the answer is about 20 tokens a frame). Default 40.
    pub tokens_per_frame: usize,
}

impl Default for GvlConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            tokens_per_frame: 40,
        }
    }
}

/// Result of GVL on one episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GvlScore {
    /// `order[j]` is the episode frame shown as "Frame j+1".
    pub order: Vec<usize>,
    /// The decoded answer.
    pub text: String,
    /// Predicted completion (0..100) of every frame in time order; `None` when the answer did not parse.
    pub predictions: Option<Vec<f64>>,
    /// Spearman correlation of the predictions with time; 0 when the answer did not parse, `None` when the
    /// predictions are constant.
    pub voc: Option<f64>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum GvlError {
    #[error("the episode has no frames")]
    EmptyEpisode,
    #[error("instruction contains the control token {0}; remove it")]
    ControlToken(&'static str),
    #[error(transparent)]
    Multimodal(#[from] MultimodalError),
}

/// SplitMix64: a small, well-mixed generator for the seeded shuffle.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
}

/// A seeded permutation of `0..n` (Fisher-Yates).
pub fn shuffled_order(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The GVL prompt for frames shown in `order`: one user message, text and images interleaved.
pub fn prompt_messages(frames: &[RgbImage], order: &[usize], instruction: &str) -> Vec<Message> {
    let mut content = vec![
        Part::Text(format!(
            "You are an expert roboticist tasked to predict task completion percentages for frames of a robot \
             for the task of {instruction}. The task completion percentages are between 0 and 100, where 100 \
             corresponds to full task completion. We provide several examples of the robot performing the task \
             at various stages and their corresponding task completion percentages. Note that these frames are \
             in random order, so please pay attention to the individual frames when reasoning about task \
             completion percentage.\nInitial robot scene: "
        )),
        Part::Image(frames[0].clone()),
        Part::Text(format!(
            "\nIn the initial robot scene, the task completion percentage is 0.\nNow, for the task of \
             {instruction}, output the task completion percentage for the following frames that are presented \
             in random order. For each frame, format your response as follow: Frame {{i}}: Frame Description: \
             {{}}, Task Completion Percentages:{{}}%\n"
        )),
    ];
    for (j, &f) in order.iter().enumerate() {
        content.push(Part::Text(format!("Frame {}: ", j + 1)));
        content.push(Part::Image(frames[f].clone()));
        content.push(Part::Text("\n".into()));
    }
    vec![Message {
        role: "user".into(),
        content,
    }]
}

/// The completion percentage of each of `n` shown frames, in shown order, from the model's answer; `None`
/// unless every frame 1..=n has one. A frame's value is the number after "Percentage(s):" in its
/// "Frame i:" section, else the last number followed by "%" there; values are clamped to 0..100. The
/// first section of a frame number counts.
pub fn parse_percentages(text: &str, n: usize) -> Option<Vec<f64>> {
    // Sections: (frame number, where "Frame " starts, the byte after the colon).
    let bytes = text.as_bytes();
    let mut starts: Vec<(usize, usize, usize)> = Vec::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("Frame ") {
        let s = i + at + "Frame ".len();
        let digits = text[s..].bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0
            && bytes.get(s + digits) == Some(&b':')
            && let Ok(k) = text[s..s + digits].parse::<usize>()
        {
            starts.push((k, i + at, s + digits + 1));
        }
        i = s;
    }
    let mut out: Vec<Option<f64>> = vec![None; n];
    for (idx, &(k, _, from)) in starts.iter().enumerate() {
        if k == 0 || k > n || out[k - 1].is_some() {
            continue;
        }
        let to = starts.get(idx + 1).map_or(text.len(), |next| next.1);
        if let Some(v) = percentage_in(&text[from..to]) {
            out[k - 1] = Some(v.clamp(0.0, 100.0));
        }
    }
    out.into_iter().collect()
}

/// Leading number of `s` (digits with an optional fraction), and the bytes it took.
fn leading_number(s: &str) -> Option<(f64, usize)> {
    let int = s.bytes().take_while(u8::is_ascii_digit).count();
    if int == 0 {
        return None;
    }
    let mut len = int;
    if s.as_bytes().get(int) == Some(&b'.') {
        let frac = s[int + 1..].bytes().take_while(u8::is_ascii_digit).count();
        if frac > 0 {
            len = int + 1 + frac;
        }
    }
    s[..len].parse().ok().map(|v| (v, len))
}

fn percentage_in(section: &str) -> Option<f64> {
    let lower = section.to_ascii_lowercase();
    if let Some(at) = lower.find("percentage") {
        let rest = &section[at..];
        if let Some(colon) = rest.find(':') {
            let after = rest[colon + 1..].trim_start();
            if let Some((v, _)) = leading_number(after) {
                return Some(v);
            }
        }
    }
    // Fallback: the last number directly followed by '%'.
    let mut best = None;
    let b = section.as_bytes();
    for (pos, _) in section.match_indices('%') {
        let start = section[..pos]
            .trim_end()
            .bytes()
            .rev()
            .take_while(|c| c.is_ascii_digit() || *c == b'.')
            .count();
        let end = section[..pos].trim_end().len();
        if start > 0
            && end >= start
            && b[end - start].is_ascii_digit()
            && let Some((v, _)) = leading_number(&section[end - start..end])
        {
            best = Some(v);
        }
    }
    best
}

/// Un-shuffle: `shown[j]` is the prediction for frame `order[j]`; returns predictions in time order.
pub fn unshuffle(shown: &[f64], order: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; order.len()];
    for (j, &f) in order.iter().enumerate() {
        out[f] = shown[j];
    }
    out
}

/// GVL on a loaded Qwen3-VL.
pub struct Gvl {
    model: Qwen3VL,
    encoder: MultimodalEncoder,
    config: GvlConfig,
    max_tokens: usize,
}

impl std::fmt::Debug for Gvl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gvl").field("config", &self.config).finish()
    }
}

impl Gvl {
    pub fn new(model: Qwen3VL, encoder: MultimodalEncoder, config: GvlConfig) -> Self {
        let max_tokens = model.config().text_config.max_position_embeddings;
        Self {
            model,
            encoder,
            config,
            max_tokens,
        }
    }

    pub fn config(&self) -> &GvlConfig {
        &self.config
    }

    /// The shuffle of an episode: the config seed mixed with the episode's content hash.
    pub fn order_for(&self, frames: &[RgbImage], fps: f64, instruction: &str) -> Vec<usize> {
        episode_order(frames, fps, instruction, self.config.seed)
    }

    /// Run GVL on one episode.
    pub fn score(&self, frames: &[RgbImage], fps: f64, instruction: &str) -> Result<GvlScore, GvlError> {
        check_episode(frames, instruction)?;
        let order = self.order_for(frames, fps, instruction);
        let messages = prompt_messages(frames, &order, instruction);
        let input = self.encoder.encode(
            &messages,
            TemplateOptions {
                add_generation_prompt: true,
                continue_final_message: false,
            },
        )?;
        let budget = self.config.answer_tokens(frames.len());
        let ids = generate_greedy(&self.model, &input, budget, self.max_tokens)?;
        let text = self.encoder.decode(&ids)?;
        Ok(evaluate_answer(&text, order, input.input_ids.len()))
    }
}

/// The shuffle of an episode: `seed` mixed with the episode's content hash, so episodes differ and the
/// same episode is shown in the same order wherever it is scored (locally or on a server).
pub fn episode_order(frames: &[RgbImage], fps: f64, instruction: &str, seed: u64) -> Vec<usize> {
    let key = EpisodeKey::new(frames, fps, instruction, "gvl-shuffle");
    let h = u64::from_str_radix(&key.as_str()[..16], 16).unwrap_or(0);
    shuffled_order(frames.len(), seed ^ h)
}

/// What GVL refuses before any model runs: no frames, or an instruction with a chat control token.
pub fn check_episode(frames: &[RgbImage], instruction: &str) -> Result<(), GvlError> {
    if frames.is_empty() {
        return Err(GvlError::EmptyEpisode);
    }
    for t in [
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<|endoftext|>",
    ] {
        if instruction.contains(t) {
            return Err(GvlError::ControlToken(t));
        }
    }
    Ok(())
}

impl GvlConfig {
    /// Generated tokens allowed for an answer about `frames` frames.
    pub fn answer_tokens(&self, frames: usize) -> usize {
        self.tokens_per_frame * frames + 16
    }
}

/// Parse, un-shuffle and score an answer (VOC 0 when it does not parse).
pub fn evaluate_answer(text: &str, order: Vec<usize>, prompt_tokens: usize) -> GvlScore {
    let predictions = parse_percentages(text, order.len()).map(|shown| unshuffle(&shown, &order));
    let voc = match &predictions {
        Some(p) => metrics::voc(p),
        None => Some(0.0),
    };
    GvlScore {
        order,
        text: text.to_string(),
        predictions,
        voc,
        prompt_tokens,
    }
}

impl GvlScore {
    /// As an [`EpisodeScore`]: one "prefix" per frame, `log_probs` holding the predicted percentages and
    /// `progress` them divided by 100 (all zero when the answer did not parse).
    pub fn to_episode_score(&self) -> EpisodeScore {
        let n = self.order.len();
        let values = self.predictions.clone().unwrap_or_else(|| vec![0.0; n]);
        EpisodeScore {
            prefix_lengths: (1..=n).collect(),
            progress: values.iter().map(|v| v / 100.0).collect(),
            log_probs: values,
            num_tokens: vec![self.prompt_tokens; n],
            voc: self.voc,
        }
    }
}

impl ProgressModel for Gvl {
    type Error = GvlError;

    fn score_episode(
        &mut self,
        frames: &[RgbImage],
        fps: f64,
        instruction: &str,
    ) -> Result<EpisodeScore, Self::Error> {
        Ok(self.score(frames, fps, instruction)?.to_episode_score())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let a = shuffled_order(10, 7);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(a, shuffled_order(10, 7));
        assert_ne!(a, shuffled_order(10, 8));
        assert_ne!(a, (0..10).collect::<Vec<_>>());
        assert_eq!(shuffled_order(1, 3), vec![0]);
        assert!(shuffled_order(0, 3).is_empty());
    }

    #[test]
    fn parses_the_gvl_answer_format_and_unshuffles() {
        let text = "Frame 1: Frame Description: gripper above the cube, Task Completion Percentages:40%\n\
                    Frame 2: Frame Description: cube lifted, Task Completion Percentages: 90%\n\
                    Frame 3: Frame Description: arm at rest, Task Completion Percentages:5.5%";
        let shown = parse_percentages(text, 3).unwrap();
        assert_eq!(shown, vec![40.0, 90.0, 5.5]);
        // Shown order: frame 1 is episode frame 1, frame 2 is episode frame 2, frame 3 is episode frame 0.
        let order = vec![1, 2, 0];
        assert_eq!(unshuffle(&shown, &order), vec![5.5, 40.0, 90.0]);
        let s = evaluate_answer(text, order, 10);
        assert!((s.voc.unwrap() - 1.0).abs() < 1e-12, "{:?}", s.voc);
        let e = s.to_episode_score();
        assert_eq!(e.progress, vec![0.055, 0.4, 0.9]);
        assert_eq!(e.prefix_lengths, vec![1, 2, 3]);
    }

    #[test]
    fn tolerates_variants_and_fails_on_missing_frames() {
        // Lower case, no description, a number with the % sign only, frames out of order, values over 100.
        let text = "Sure!\nFrame 2: task completion percentage: 70\nFrame 1: about 20 %\nFrame 3: done, 120%";
        assert_eq!(parse_percentages(text, 3), Some(vec![20.0, 70.0, 100.0]));
        // Frame 3 missing: no parse, VOC 0.
        let partial = "Frame 1: Task Completion Percentages:10%\nFrame 2: Task Completion Percentages:20%";
        assert_eq!(parse_percentages(partial, 3), None);
        let s = evaluate_answer(partial, vec![0, 1, 2], 5);
        assert_eq!((s.predictions.clone(), s.voc), (None, Some(0.0)));
        assert_eq!(s.to_episode_score().progress, vec![0.0; 3]);
        // Garbage from a random model.
        assert_eq!(parse_percentages("ĠTrue ĠTrue Frame Frame: %%% 12", 2), None);
        assert_eq!(evaluate_answer("", vec![1, 0], 3).voc, Some(0.0));
        // Duplicate sections: the first counts.
        let dup = "Frame 1: Percentages: 30%\nFrame 1: Percentages: 99%\nFrame 2: Percentages: 60%";
        assert_eq!(parse_percentages(dup, 2), Some(vec![30.0, 60.0]));
    }
}
