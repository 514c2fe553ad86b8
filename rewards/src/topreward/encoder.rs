//! The real [`PrefixEncoder`]: the Qwen3-VL video processor (`qwen3_vl::processor`) and the TOPReward prompt
//! (`topreward::prompt`), as the reference calls them (explicit fps and frame indices, no frame sampling).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::prompt::{PromptBuilder, PromptConfig};
use super::scorer::{PrefixEncoder, PrefixInput, TopRewardError};
use crate::qwen3_vl::processor::{
    ConfigSource, VIDEO_PROCESSOR_CONFIG_FILES, VideoMetadata, VideoProcessor, resize_bicubic_aa,
};
use crate::qwen3_vl::{CheckpointFiles, GridThw};

/// Frames + instruction to model inputs with the checkpoint's video processor config and tokenizer.
#[derive(Debug, Clone)]
pub struct QwenPrefixEncoder {
    processor: VideoProcessor,
    prompt: PromptBuilder,
}

impl QwenPrefixEncoder {
    pub fn new(processor: VideoProcessor, prompt: PromptBuilder) -> Self {
        Self { processor, prompt }
    }

    /// The checkpoint's video processor config (the first of [`VIDEO_PROCESSOR_CONFIG_FILES`], as transformers
    /// looks for it; class defaults, with a warning, when none exists) and tokenizer:
    /// `tokenizer` if given, else the checkpoint's `tokenizer.json`, else the Qwen3 tokenizer cached by
    /// scripts/setup.sh.
    pub fn from_checkpoint(
        files: &CheckpointFiles,
        tokenizer: Option<&Path>,
        prompt: PromptConfig,
    ) -> Result<Self, TopRewardError> {
        let (processor, source) = VideoProcessor::from_checkpoint_dir(&files.dir)
            .map_err(|e| TopRewardError::Encode(e.to_string()))?;
        match &source {
            ConfigSource::File(path) => tracing::info!("video processor config: {}", path.display()),
            ConfigSource::ClassDefaults => tracing::warn!(
                "{} has none of {:?}: using the Qwen3VLVideoProcessor class defaults (pixel budget {:?}); \
                 released checkpoints ship their own budget",
                files.dir.display(),
                VIDEO_PROCESSOR_CONFIG_FILES,
                processor.config().size
            ),
        }
        let tok = match (tokenizer, &files.tokenizer) {
            (Some(t), _) => t.to_path_buf(),
            (None, Some(t)) => t.clone(),
            (None, None) => {
                crate::assets::qwen3_tokenizer_json().map_err(|e| TopRewardError::Encode(e.to_string()))?
            }
        };
        let prompt = PromptBuilder::from_tokenizer_file(&tok, prompt)
            .map_err(|e| TopRewardError::Encode(e.to_string()))?;
        Ok(Self { processor, prompt })
    }
}

impl PrefixEncoder for QwenPrefixEncoder {
    fn encode(
        &self,
        frames: &[RgbImage],
        indices: &[usize],
        fps: f64,
        instruction: &str,
        resolution: Option<(usize, usize)>,
    ) -> Result<PrefixInput, TopRewardError> {
        let clip = indices
            .iter()
            .map(|&i| {
                frames.get(i).cloned().ok_or(TopRewardError::FrameIndex {
                    index: i,
                    len: frames.len(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let meta = VideoMetadata {
            fps,
            frame_indices: Some(indices.to_vec()),
        };
        let video = match resolution {
            Some(r) => self.processor.preprocess_at(&clip, &meta, r),
            None => self.processor.preprocess(&clip, &meta),
        }
        .map_err(|e| TopRewardError::Encode(e.to_string()))?;
        let prompt = self
            .prompt
            .build(instruction, &video)
            .map_err(|e| TopRewardError::Encode(e.to_string()))?;
        let [t, h, w] = video.grid_thw;
        let rows = video.num_patches();
        let pixel_values = Tensor::from_vec(video.pixel_values, (rows, video.patch_dim), &Device::Cpu)?;
        let tp = self.processor.config().temporal_patch_size;
        Ok(PrefixInput {
            input_ids: prompt.input_ids,
            score_position: prompt.score_position,
            target_token_id: prompt.target_token_id,
            pixel_values,
            grid: GridThw::new(t, h, w),
            group_frames: indices.chunks(tp).map(|c| (c[0], c[c.len() - 1])).collect(),
        })
    }

    fn resize(
        &self,
        frames: &[RgbImage],
        (out_h, out_w): (usize, usize),
    ) -> Result<Vec<RgbImage>, TopRewardError> {
        frames
            .iter()
            .map(|f| {
                let (w, h) = (f.width() as usize, f.height() as usize);
                if (h, w) == (out_h, out_w) {
                    return Ok(f.clone());
                }
                // The processor's own resize, so `preprocess_at` then finds frames already at its size.
                let raw = resize_bicubic_aa(f.as_raw(), h, w, out_h, out_w);
                RgbImage::from_raw(out_w as u32, out_h as u32, raw).ok_or_else(|| {
                    TopRewardError::Encode(format!("resize to {out_w}x{out_h} gave a short buffer"))
                })
            })
            .collect()
    }

    fn resolution(
        &self,
        num_frames: usize,
        height: usize,
        width: usize,
    ) -> Result<(usize, usize), TopRewardError> {
        self.processor
            .target_size(num_frames, height, width)
            .map_err(|e| TopRewardError::Encode(e.to_string()))
    }

    fn settings_key(&self) -> String {
        format!("{:?}|{:?}", self.processor.config(), self.prompt.config())
    }
}
