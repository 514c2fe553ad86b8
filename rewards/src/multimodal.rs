//! Chat messages with text, images and videos, rendered and run on Qwen3-VL as `Qwen3VLProcessor` and the
//! checkpoint's chat template do; the engine behind the reward server's OpenAI-compatible endpoint and GVL.
//!
//! - Chat template (Qwen3-VL Instruct, no default system prompt): each message is
//!   `<|im_start|>{role}\n{content}<|im_end|>\n`, content items concatenated without separators: text as is,
//!   an image as `<|vision_start|><|image_pad|><|vision_end|>`, a video as
//!   `<|vision_start|><|video_pad|><|vision_end|>`. `continue_final_message` leaves the last message open
//!   (no `<|im_end|>\n`), `add_generation_prompt` appends `<|im_start|>assistant\n`.
//! - Processor: a video becomes, per temporal group, `<{t:.1f} seconds><|vision_start|>` + pads +
//!   `<|vision_end|>` (as [`crate::topreward::prompt`]); an image becomes `<|vision_start|>` +
//!   `<|image_pad|>` x (grid_h * grid_w / 4) + `<|vision_end|>`.
//! - Images are resized by the image processor's `smart_resize` (pixel budget of `preprocessor_config.json`,
//!   default the released checkpoints' 65536..16777216) and tiled over the temporal patch, which is what the
//!   video path does for a two-frame clip of the same picture.

use std::path::Path;

use candle_core::{D, Device, Tensor};
use image::RgbImage;
use tokenizers::Tokenizer;

use crate::qwen3_vl::processor::{
    SizeConfig, VideoMetadata, VideoProcessor, calculate_timestamps, check_frames, smart_resize,
};
use crate::qwen3_vl::{GridThw, KvCache, ModelError, Position3, Qwen3VL, TreeRow, VisionOutput};

/// `<|endoftext|>`.
pub const ENDOFTEXT_TOKEN_ID: u32 = 151643;
/// `<|im_end|>`.
pub const IM_END_TOKEN_ID: u32 = 151645;

/// Errors of building or running a multimodal input. Each says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum MultimodalError {
    #[error("cannot load tokenizer {path}: {reason}")]
    Tokenizer { path: String, reason: String },
    #[error("image or video preprocessing failed: {0}")]
    Processor(String),
    #[error("tokenizer failed: {0}")]
    Encode(String),
    #[error("no messages to render")]
    NoMessages,
    #[error(
        "input of {tokens} tokens is longer than the limit of {limit} (fewer or smaller frames, or raise the limit)"
    )]
    TooLong { tokens: usize, limit: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One item of a message's content.
#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Image(RgbImage),
    /// Frames with their timing (timestamps `index / fps`; an odd count repeats the last frame).
    Video {
        frames: Vec<RgbImage>,
        metadata: VideoMetadata,
    },
}

/// A chat message.
#[derive(Debug, Clone)]
pub struct Message {
    pub role: String,
    pub content: Vec<Part>,
}

/// How the chat template closes the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TemplateOptions {
    pub add_generation_prompt: bool,
    pub continue_final_message: bool,
}

/// Tokenised multimodal input: token ids and the patches of every image and video, in order.
#[derive(Debug, Clone)]
pub struct MultimodalInput {
    pub input_ids: Vec<u32>,
    /// `(patches, patch_dim)` rows of all media, in the order they appear; `None` for text only.
    pub pixel_values: Option<Tensor>,
    /// One grid per image or video.
    pub grids: Vec<GridThw>,
    /// The processor-expanded text that was tokenised.
    pub text: String,
}

/// Renders messages and preprocesses their media with the checkpoint's processors and tokenizer.
#[derive(Debug, Clone)]
pub struct MultimodalEncoder {
    video: VideoProcessor,
    image_size: SizeConfig,
    tokenizer: Tokenizer,
}

/// Image pixel budget of released Qwen3-VL checkpoints (`preprocessor_config.json` `size`).
pub const DEFAULT_IMAGE_SIZE: SizeConfig = SizeConfig {
    shortest_edge: 65536,
    longest_edge: 16777216,
};

impl MultimodalEncoder {
    pub fn new(video: VideoProcessor, image_size: SizeConfig, tokenizer: Tokenizer) -> Self {
        Self {
            video,
            image_size,
            tokenizer,
        }
    }

    /// The checkpoint's video processor, image budget (`preprocessor_config.json` `size`, read as transformers
    /// does: other fields ignored, the default when absent) and the given tokenizer.json.
    pub fn from_checkpoint(dir: &Path, tokenizer: &Path) -> Result<Self, MultimodalError> {
        let (video, _source) = VideoProcessor::from_checkpoint_dir(dir)
            .map_err(|e| MultimodalError::Processor(e.to_string()))?;
        let image_size = read_image_size(&dir.join("preprocessor_config.json"))?;
        let tokenizer = Tokenizer::from_file(tokenizer).map_err(|e| MultimodalError::Tokenizer {
            path: tokenizer.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self::new(video, image_size, tokenizer))
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat-template text before the processor expands the media placeholders.
    pub fn render(messages: &[Message], options: TemplateOptions) -> Result<String, MultimodalError> {
        if messages.is_empty() {
            return Err(MultimodalError::NoMessages);
        }
        let mut text = String::new();
        for (i, m) in messages.iter().enumerate() {
            text.push_str(&format!("<|im_start|>{}\n", m.role));
            for part in &m.content {
                match part {
                    Part::Text(t) => text.push_str(t),
                    Part::Image(_) => text.push_str("<|vision_start|><|image_pad|><|vision_end|>"),
                    Part::Video { .. } => text.push_str("<|vision_start|><|video_pad|><|vision_end|>"),
                }
            }
            let last = i + 1 == messages.len();
            if !(last && options.continue_final_message) {
                text.push_str("<|im_end|>\n");
            }
        }
        if options.add_generation_prompt {
            text.push_str("<|im_start|>assistant\n");
        }
        Ok(text)
    }

    /// Render, preprocess and tokenise.
    pub fn encode(
        &self,
        messages: &[Message],
        options: TemplateOptions,
    ) -> Result<MultimodalInput, MultimodalError> {
        let mut pixels: Vec<f32> = Vec::new();
        let mut rows = 0usize;
        let mut patch_dim = 0usize;
        let mut grids = Vec::new();
        let text = self.expand(messages, options, |part| {
            let v = match part {
                Part::Image(img) => {
                    let clip = vec![img.clone(); self.video.config().temporal_patch_size];
                    let target = self.image_target(img)?;
                    self.video
                        .preprocess_at(&clip, &VideoMetadata::sequential(1.0), target)
                        .map_err(processor_error)?
                }
                Part::Video { frames, metadata } => {
                    self.video.preprocess(frames, metadata).map_err(processor_error)?
                }
                Part::Text(_) => return Ok(String::new()),
            };
            rows += v.num_patches();
            patch_dim = v.patch_dim;
            grids.push(GridThw::new(v.grid_thw[0], v.grid_thw[1], v.grid_thw[2]));
            pixels.extend_from_slice(&v.pixel_values);
            Ok(match part {
                Part::Image(_) => image_placeholder(v.tokens_per_group()),
                _ => video_placeholder(&v.timestamps, v.tokens_per_group()),
            })
        })?;
        let input_ids = self.tokenize(&text)?;
        let pixel_values = if rows == 0 {
            None
        } else {
            Some(Tensor::from_vec(pixels, (rows, patch_dim), &Device::Cpu)?)
        };
        Ok(MultimodalInput {
            input_ids,
            pixel_values,
            grids,
            text,
        })
    }

    /// The token ids [`Self::encode`] gives, from the media's geometry alone (no pixel is resized): what a
    /// remote client compares with the prompt a server reports.
    pub fn prompt_ids(
        &self,
        messages: &[Message],
        options: TemplateOptions,
    ) -> Result<Vec<u32>, MultimodalError> {
        let c = self.video.config();
        let (patch, merge) = (c.patch_size, c.merge_size);
        let text = self.expand(messages, options, |part| match part {
            Part::Image(img) => {
                let (h, w) = self.image_target(img)?;
                Ok(image_placeholder((h / patch) * (w / patch) / (merge * merge)))
            }
            Part::Video { frames, metadata } => {
                let (h, w) = check_frames(frames).map_err(processor_error)?;
                let (h, w) = self
                    .video
                    .target_size(frames.len(), h, w)
                    .map_err(processor_error)?;
                let indices = match &metadata.frame_indices {
                    Some(idx) if idx.len() != frames.len() => {
                        return Err(MultimodalError::Processor(format!(
                            "{} frame indices for {} frames",
                            idx.len(),
                            frames.len()
                        )));
                    }
                    Some(idx) => idx.clone(),
                    None => (0..frames.len()).collect(),
                };
                let timestamps = calculate_timestamps(&indices, metadata.fps, merge);
                Ok(video_placeholder(
                    &timestamps,
                    (h / patch) * (w / patch) / (merge * merge),
                ))
            }
            Part::Text(_) => Ok(String::new()),
        })?;
        self.tokenize(&text)
    }

    /// The chat template with each image and video replaced by what `media` returns for it (its expanded
    /// placeholder), as the processor replaces the template's placeholders.
    fn expand(
        &self,
        messages: &[Message],
        options: TemplateOptions,
        mut media: impl FnMut(&Part) -> Result<String, MultimodalError>,
    ) -> Result<String, MultimodalError> {
        if messages.is_empty() {
            return Err(MultimodalError::NoMessages);
        }
        let mut text = String::new();
        for (i, m) in messages.iter().enumerate() {
            text.push_str(&format!("<|im_start|>{}\n", m.role));
            for part in &m.content {
                match part {
                    Part::Text(t) => text.push_str(t),
                    media_part => text.push_str(&media(media_part)?),
                }
            }
            let last = i + 1 == messages.len();
            if !(last && options.continue_final_message) {
                text.push_str("<|im_end|>\n");
            }
        }
        if options.add_generation_prompt {
            text.push_str("<|im_start|>assistant\n");
        }
        Ok(text)
    }

    /// The (height, width) an image is resized to: the image processor's budget is over one picture and the
    /// video `smart_resize` counts `temporal_patch_size` copies of it, so the budget is scaled by that.
    fn image_target(&self, img: &RgbImage) -> Result<(usize, usize), MultimodalError> {
        let c = self.video.config();
        let tp = c.temporal_patch_size;
        smart_resize(
            tp,
            img.height() as usize,
            img.width() as usize,
            tp,
            c.patch_size * c.merge_size,
            self.image_size.shortest_edge * tp as u64,
            self.image_size.longest_edge * tp as u64,
        )
        .map_err(processor_error)
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, MultimodalError> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| MultimodalError::Encode(e.to_string()))
    }

    /// Token ids to text, special tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, MultimodalError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| MultimodalError::Encode(e.to_string()))
    }

    /// One token's text as the tokenizer decodes it alone (special tokens kept).
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }
}

fn processor_error(e: crate::qwen3_vl::processor::ProcessorError) -> MultimodalError {
    MultimodalError::Processor(e.to_string())
}

/// An image in the prompt after the processor: `<|vision_start|>`, `tokens` pads, `<|vision_end|>`.
fn image_placeholder(tokens: usize) -> String {
    format!("<|vision_start|>{}<|vision_end|>", "<|image_pad|>".repeat(tokens))
}

/// A video in the prompt after the processor (`Qwen3VLProcessor`, transformers 4.57): per temporal group
/// `<{t:.1f} seconds><|vision_start|>` + `tokens_per_group` pads + `<|vision_end|>`, replacing the template's
/// whole `<|vision_start|><|video_pad|><|vision_end|>`.
pub fn video_placeholder(timestamps: &[f64], tokens_per_group: usize) -> String {
    let pads = "<|video_pad|>".repeat(tokens_per_group);
    timestamps
        .iter()
        .map(|t| format!("<{t:.1} seconds><|vision_start|>{pads}<|vision_end|>"))
        .collect()
}

fn read_image_size(path: &Path) -> Result<SizeConfig, MultimodalError> {
    if !path.is_file() {
        return Ok(DEFAULT_IMAGE_SIZE);
    }
    let bad = |reason: String| MultimodalError::Processor(format!("{}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let Some(size) = json.get("size") else {
        return Ok(DEFAULT_IMAGE_SIZE);
    };
    let edge = |k: &str, d: u64| size.get(k).and_then(serde_json::Value::as_u64).unwrap_or(d);
    Ok(SizeConfig {
        shortest_edge: edge("shortest_edge", DEFAULT_IMAGE_SIZE.shortest_edge),
        longest_edge: edge("longest_edge", DEFAULT_IMAGE_SIZE.longest_edge),
    })
}

/// Run a multimodal prompt through the model and decode greedily.
#[derive(Debug)]
pub struct Session<'a> {
    model: &'a Qwen3VL,
    cache: KvCache,
    next_position: u32,
    /// Token count so far (prompt and generated).
    pub len: usize,
}

/// Full-vocabulary log-softmax of the logits at one position.
#[derive(Debug, Clone)]
pub struct StepLogProbs(pub Vec<f32>);

impl StepLogProbs {
    /// Greedy choice, restricted to `allowed` when given (ties: the lowest id, as argmax).
    pub fn argmax(&self, allowed: Option<&[u32]>) -> u32 {
        let mut best: Option<(u32, f32)> = None;
        let mut consider = |id: u32| {
            if let Some(&v) = self.0.get(id as usize)
                && best.is_none_or(|(_, b)| v > b)
            {
                best = Some((id, v));
            }
        };
        match allowed {
            Some(ids) => {
                let mut ids = ids.to_vec();
                ids.sort_unstable();
                ids.into_iter().for_each(&mut consider)
            }
            None => (0..self.0.len() as u32).for_each(consider),
        }
        best.map_or(0, |(id, _)| id)
    }

    /// The `k` most likely tokens, most likely first.
    pub fn top(&self, k: usize) -> Vec<(u32, f32)> {
        let mut idx: Vec<(u32, f32)> = self.0.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
        let k = k.min(idx.len());
        if k == 0 {
            return Vec::new();
        }
        idx.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
        idx.truncate(k);
        idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        idx
    }

    pub fn get(&self, id: u32) -> Option<f32> {
        self.0.get(id as usize).copied()
    }
}

/// What [`Session::prefill_many`] gives: one result per prompt, in order, and how many prompts were prefilled
/// in a pass shared with others.
#[derive(Debug)]
pub struct PackedPrefill<'a> {
    pub results: Vec<Result<(Session<'a>, StepLogProbs), MultimodalError>>,
    pub shared: usize,
}

/// Full-vocabulary log-softmax of the next token after each hidden row `(rows, hidden)`.
fn step_log_probs(model: &Qwen3VL, hidden: &Tensor) -> Result<Vec<StepLogProbs>, MultimodalError> {
    let lp = candle_nn::ops::log_softmax(&model.text.logits(hidden)?, D::Minus1)?;
    Ok(lp.to_vec2::<f32>()?.into_iter().map(StepLogProbs).collect())
}

impl<'a> Session<'a> {
    /// Prefill the prompt; returns the session and the log-probs of the next token.
    pub fn prefill(
        model: &'a Qwen3VL,
        input: &MultimodalInput,
        max_tokens: usize,
    ) -> Result<(Self, StepLogProbs), MultimodalError> {
        // On the CPU, candle's own thread pool, kept warm across the many short parallel sections.
        model
            .device()
            .with_context(|| Self::prefill_alone(model, input, max_tokens))
    }

    fn prefill_alone(
        model: &'a Qwen3VL,
        input: &MultimodalInput,
        max_tokens: usize,
    ) -> Result<(Self, StepLogProbs), MultimodalError> {
        if input.input_ids.len() > max_tokens {
            return Err(MultimodalError::TooLong {
                tokens: input.input_ids.len(),
                limit: max_tokens,
            });
        }
        let vis = match &input.pixel_values {
            Some(pv) => Some(model.visual.forward(pv, &input.grids)?),
            None => None,
        };
        let positions = model.rope_positions(&input.input_ids, &model.groups_of(&input.grids))?;
        let mut cache = KvCache::new(model.text.num_layers());
        let hidden = model.forward_tokens(&input.input_ids, &positions, vis.as_ref(), &mut cache)?;
        let next_position = positions.last().map_or(0, |p: &Position3| p[0] + 1);
        let mut s = Self {
            model,
            cache,
            next_position,
            len: input.input_ids.len(),
        };
        let last = hidden.dim(0)? - 1;
        let lp = s.log_probs(&hidden.get(last)?)?;
        s.len = input.input_ids.len();
        Ok((s, lp))
    }

    /// Prefill several prompts in as few passes as `pass_tokens` allows: their tokens laid end to end, each
    /// attending only to itself (a packed batch, [`crate::qwen3_vl::TreeRow`] with nothing shared), their media
    /// encoded in shared vision batches, their next-token log-probs from one language-model-head product. Each
    /// result equals [`Self::prefill`] of that prompt (up to float summation order) and its session decodes on
    /// from its own slice of the packed cache. A prompt over `max_tokens` fails alone; if a packed pass fails,
    /// its prompts are retried one by one so that a bad one fails alone.
    pub fn prefill_many(
        model: &'a Qwen3VL,
        inputs: &[&MultimodalInput],
        max_tokens: usize,
        pass_tokens: usize,
    ) -> PackedPrefill<'a> {
        let mut results: Vec<Option<Result<(Self, StepLogProbs), MultimodalError>>> = inputs
            .iter()
            .map(|i| {
                (i.input_ids.len() > max_tokens).then(|| {
                    Err(MultimodalError::TooLong {
                        tokens: i.input_ids.len(),
                        limit: max_tokens,
                    })
                })
            })
            .collect();
        // Passes: consecutive prompts up to `pass_tokens` tokens (at least one prompt each).
        let mut pass: Vec<usize> = Vec::new();
        let mut tokens = 0;
        let mut passes = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            if !pass.is_empty() && tokens + input.input_ids.len() > pass_tokens {
                passes.push(std::mem::take(&mut pass));
                tokens = 0;
            }
            pass.push(i);
            tokens += input.input_ids.len();
        }
        if !pass.is_empty() {
            passes.push(pass);
        }
        let mut shared = 0;
        for pass in passes {
            let members: Vec<&MultimodalInput> = pass.iter().map(|&i| inputs[i]).collect();
            match model
                .device()
                .with_context(|| Self::prefill_packed(model, &members))
            {
                Ok(sessions) => {
                    if pass.len() > 1 {
                        shared += pass.len();
                    }
                    for (&i, s) in pass.iter().zip(sessions) {
                        results[i] = Some(Ok(s));
                    }
                }
                Err(_) if pass.len() > 1 => {
                    for &i in &pass {
                        results[i] = Some(Self::prefill(model, inputs[i], max_tokens));
                    }
                }
                Err(e) => results[pass[0]] = Some(Err(e)),
            }
        }
        let results = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(MultimodalError::Encode("a prompt was never run".into()))))
            .collect();
        PackedPrefill { results, shared }
    }

    fn prefill_packed(
        model: &'a Qwen3VL,
        inputs: &[&MultimodalInput],
    ) -> Result<Vec<(Self, StepLogProbs)>, MultimodalError> {
        let media: Vec<(&Tensor, &[GridThw])> = inputs
            .iter()
            .filter_map(|i| i.pixel_values.as_ref().map(|pv| (pv, i.grids.as_slice())))
            .collect();
        let vis = model.visual.forward_many(&media)?;
        let (mut ids, mut positions, mut rows, mut spans) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for input in inputs {
            let start = ids.len();
            let p = model.rope_positions(&input.input_ids, &model.groups_of(&input.grids))?;
            ids.extend_from_slice(&input.input_ids);
            positions.extend_from_slice(&p);
            rows.extend(std::iter::repeat_n(
                TreeRow { shared: 0, start },
                input.input_ids.len(),
            ));
            spans.push((
                start,
                input.input_ids.len(),
                p.last().map_or(0, |p: &Position3| p[0] + 1),
            ));
        }
        let vis = VisionOutput::cat(&vis)?;
        let mut cache = KvCache::new(model.text.num_layers());
        let hidden = model.forward_tree_tokens(&ids, &positions, vis.as_ref(), &rows, &mut cache)?;
        let last: Vec<u32> = spans
            .iter()
            .map(|&(start, len, _)| (start + len - 1) as u32)
            .collect();
        let n = last.len();
        let last = hidden.index_select(&Tensor::from_vec(last, n, hidden.device())?, 0)?;
        let lps = step_log_probs(model, &last)?;
        spans
            .iter()
            .zip(lps)
            .map(|(&(start, len, next_position), lp)| {
                Ok((
                    Self {
                        model,
                        cache: cache.slice(start, len)?,
                        next_position,
                        len,
                    },
                    lp,
                ))
            })
            .collect()
    }

    fn log_probs(&self, row: &Tensor) -> Result<StepLogProbs, MultimodalError> {
        let mut lp = step_log_probs(self.model, &row.unsqueeze(0)?)?;
        lp.pop()
            .ok_or_else(|| MultimodalError::Encode("no log-probs for a row".into()))
    }

    /// Feed one token (text position after the last); returns the log-probs of the next.
    pub fn step(&mut self, token: u32) -> Result<StepLogProbs, MultimodalError> {
        let device = self.model.device().clone();
        device.with_context(|| self.step_alone(token))
    }

    fn step_alone(&mut self, token: u32) -> Result<StepLogProbs, MultimodalError> {
        let p = self.next_position;
        let hidden = self
            .model
            .forward_tokens(&[token], &[[p, p, p]], None, &mut self.cache)?;
        self.next_position += 1;
        self.len += 1;
        self.log_probs(&hidden.get(0)?)
    }
}

/// Greedy decoding of up to `max_new_tokens` tokens, stopping after `<|im_end|>` or `<|endoftext|>` (not
/// included in the result).
pub fn generate_greedy(
    model: &Qwen3VL,
    input: &MultimodalInput,
    max_new_tokens: usize,
    max_tokens: usize,
) -> Result<Vec<u32>, MultimodalError> {
    let (mut session, mut lp) = Session::prefill(model, input, max_tokens)?;
    let mut out = Vec::new();
    while out.len() < max_new_tokens {
        let token = lp.argmax(None);
        if token == IM_END_TOKEN_ID || token == ENDOFTEXT_TOKEN_ID {
            break;
        }
        out.push(token);
        if out.len() == max_new_tokens || session.len + 1 > max_tokens {
            break;
        }
        lp = session.step(token)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_renders_open_user_turn_and_generation_prompt() {
        let m = vec![Message {
            role: "user".into(),
            content: vec![
                Part::Video {
                    frames: vec![],
                    metadata: VideoMetadata::sequential(2.0),
                },
                Part::Text("Q: done? The answer is:".into()),
            ],
        }];
        let open = TemplateOptions {
            add_generation_prompt: false,
            continue_final_message: true,
        };
        assert_eq!(
            MultimodalEncoder::render(&m, open).unwrap(),
            "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Q: done? The answer is:"
        );
        let closed = TemplateOptions {
            add_generation_prompt: true,
            continue_final_message: false,
        };
        assert_eq!(
            MultimodalEncoder::render(&m, closed).unwrap(),
            "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Q: done? The answer is:<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(MultimodalEncoder::render(&[], closed).is_err());
    }

    #[test]
    fn prompt_ids_from_geometry_equal_the_encoded_ids() {
        let path = crate::assets::qwen3_tokenizer_json().expect("the Qwen3 tokenizer: run scripts/setup.sh");
        let tok = Tokenizer::from_file(path).expect("tokenizer");
        let encoder = MultimodalEncoder::new(VideoProcessor::default(), DEFAULT_IMAGE_SIZE, tok);
        let frame = |i: u8| RgbImage::from_fn(70, 50, |x, y| image::Rgb([x as u8, y as u8, i]));
        let m = vec![Message {
            role: "user".into(),
            content: vec![
                Part::Image(RgbImage::from_pixel(80, 48, image::Rgb([1, 2, 3]))),
                Part::Video {
                    frames: (0..5).map(frame).collect(),
                    metadata: VideoMetadata {
                        fps: 3.0,
                        frame_indices: Some(vec![0, 2, 4, 6, 7]),
                    },
                },
                Part::Text("Q: done? The answer is:".into()),
            ],
        }];
        for options in [
            TemplateOptions {
                add_generation_prompt: false,
                continue_final_message: true,
            },
            TemplateOptions {
                add_generation_prompt: true,
                continue_final_message: false,
            },
        ] {
            let encoded = encoder.encode(&m, options).unwrap();
            assert_eq!(encoder.prompt_ids(&m, options).unwrap(), encoded.input_ids);
            assert!(
                encoded
                    .text
                    .starts_with("<|im_start|>user\n<|vision_start|><|image_pad|>")
            );
            // 5 frames: 3 groups (the last frame repeated), each `<t seconds><|vision_start|>..`.
            assert_eq!(encoded.text.matches("<|vision_start|>").count(), 1 + 3);
            assert!(
                encoded
                    .text
                    .contains("<|vision_end|><0.3 seconds><|vision_start|><|video_pad|>")
            );
        }
    }

    #[test]
    fn log_prob_helpers() {
        let lp = StepLogProbs(vec![-3.0, -0.5, -0.5, -2.0]);
        assert_eq!(lp.argmax(None), 1);
        assert_eq!(lp.argmax(Some(&[3, 0])), 3);
        assert_eq!(lp.top(2), vec![(1, -0.5), (2, -0.5)]);
        assert_eq!(lp.get(9), None);
    }
}
