//! SmolVLA's input and output processing, mirroring LeRobot 0.4.4 exactly:
//! - the preprocessor pipeline (`processor_smolvla.make_smolvla_pre_post_processors`): rename, newline
//!   after the task, tokenisation (`TokenizerProcessorStep`), normalisation (`NormalizerProcessorStep`);
//! - the model-side input preparation of `SmolVLAPolicy` (`prepare_images`: `resize_with_pad` with
//!   bilinear `F.interpolate(align_corners=False)`, zero padding left/top, then `x * 2 - 1`;
//!   `prepare_state`: zero-pad to `max_state_dim`);
//! - the output side: unpad the action chunk to the action feature's size, then `UnnormalizerProcessorStep`.
//!
//! Everything here is plain `Vec<f32>`; the model turns a [`PreparedBatch`] into tensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::lerobot::{
    ACTION_KEY, FeatureType, LeRobotFolder, NormMode, NormalizerStep, STATE_KEY, TokenizerStep, read_json,
};
use crate::error::{PolicyError, Result, config_err, input_err};

/// A camera frame as LeRobot features hold it: `[3, height, width]` floats in `[0, 1]`, channel-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ChwImage {
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl ChwImage {
    /// From RGB8 bytes in row-major HWC order (what cameras and the simulator give), scaled to `[0, 1]`
    /// like LeRobot's dataset loader (`to_tensor` / 255).
    pub fn from_rgb8(height: usize, width: usize, rgb: &[u8]) -> Result<Self> {
        if rgb.len() != height * width * 3 {
            return Err(input_err(format!(
                "an RGB image of {height}x{width} needs {} bytes, got {}",
                height * width * 3,
                rgb.len()
            )));
        }
        let plane = height * width;
        let mut data = vec![0.0; 3 * plane];
        for (p, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * plane + p] = f32::from(px[c]) / 255.0;
            }
        }
        Ok(Self { height, width, data })
    }
}

/// One raw sample: LeRobot feature names to values, and the task text.
#[derive(Debug, Clone, Default)]
pub struct RawSample {
    /// `observation.state` (and any other vector feature) in dataset units.
    pub vectors: BTreeMap<String, Vec<f32>>,
    /// `observation.images.<camera>`.
    pub images: BTreeMap<String, ChwImage>,
    pub task: String,
}

/// Model inputs for a batch, as `SmolVLAPolicy.prepare_images` / `prepare_state` and the tokenizer
/// step give them.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    pub batch: usize,
    /// One entry per camera, in `config.json` order: `[batch, 3, height, width]` raw values in `[0, 1]`
    /// (the model's `prepare_images` resizes with padding and maps to `[-1, 1]`; see [`resize_with_pad`]).
    pub images: Vec<PreparedImages>,
    /// Per camera, per sample: whether the camera is present (always true: toprl refuses missing ones).
    pub image_masks: Vec<Vec<bool>>,
    /// `[batch, max_state_dim]`, normalised and zero-padded.
    pub state: Vec<f32>,
    /// `[batch, token_len]` token ids, right-padded.
    pub tokens: Vec<u32>,
    /// `[batch, token_len]`: true for real tokens.
    pub token_mask: Vec<bool>,
    pub token_len: usize,
}

#[derive(Debug, Clone)]
pub struct PreparedImages {
    pub key: String,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

/// `resize_with_pad(img, width, height, pad_value=0)` of LeRobot's `modeling_smolvla` for one
/// `[channels, H, W]` image: bilinear resize keeping the aspect ratio (`align_corners=False`, the
/// source index clamped at 0 as PyTorch's CPU kernel does), then zero padding on the left and top.
pub fn resize_with_pad(img: &ChwImage, channels: usize, width: usize, height: usize) -> ChwImage {
    let (cur_h, cur_w) = (img.height, img.width);
    // Python float arithmetic: ratio = max(cur_width / width, cur_height / height); int() truncates.
    let ratio = (cur_w as f64 / width as f64).max(cur_h as f64 / height as f64);
    let rh = ((cur_h as f64 / ratio) as usize).max(1);
    let rw = ((cur_w as f64 / ratio) as usize).max(1);
    let resized = bilinear(&img.data, channels, cur_h, cur_w, rh, rw);
    let pad_h = height.saturating_sub(rh);
    let pad_w = width.saturating_sub(rw);
    let (out_h, out_w) = (rh + pad_h, rw + pad_w);
    let mut out = vec![0.0; channels * out_h * out_w];
    for c in 0..channels {
        for y in 0..rh {
            let src = &resized[(c * rh + y) * rw..(c * rh + y + 1) * rw];
            let start = (c * out_h + y + pad_h) * out_w + pad_w;
            out[start..start + rw].copy_from_slice(src);
        }
    }
    ChwImage {
        height: out_h,
        width: out_w,
        data: out,
    }
}

/// Source indices and weights of PyTorch's `upsample_bilinear2d` (align_corners=False) along one axis:
/// `src = max(scale * (dst + 0.5) - 0.5, 0)` with `scale = in / out` in f32.
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|dst| {
            let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
            let i0 = src as usize;
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).min(1.0);
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

fn bilinear(data: &[f32], channels: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    if (h, w) == (oh, ow) {
        return data.to_vec();
    }
    let ys = linear_taps(h, oh);
    let xs = linear_taps(w, ow);
    let mut out = vec![0.0; channels * oh * ow];
    for c in 0..channels {
        let plane = &data[c * h * w..(c + 1) * h * w];
        for (oy, &(y0, y1, wy0, wy1)) in ys.iter().enumerate() {
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for (ox, &(x0, x1, wx0, wx1)) in xs.iter().enumerate() {
                out[(c * oh + oy) * ow + ox] =
                    wy0 * (wx0 * r0[x0] + wx1 * r0[x1]) + wy1 * (wx0 * r1[x0] + wx1 * r1[x1]);
            }
        }
    }
    out
}

/// The VLM folder named by `vlm_model_name` / the tokenizer step's `tokenizer_name`: a local folder as
/// given, else relative to the checkpoint folder or its parent, else a Hugging Face Hub model id whose `config.json`,
/// `tokenizer.json` and `tokenizer_config.json` are fetched (or reused from the cache) with `hf-hub`.
pub fn resolve_vlm_dir(name: &str, checkpoint_dir: &Path) -> Result<PathBuf> {
    let as_given = PathBuf::from(name);
    if as_given.is_dir() {
        return Ok(as_given);
    }
    // LeRobot resolves a relative name against the working directory; toprl also tries the checkpoint
    // folder and its parent (a VLM folder kept beside the checkpoint, as the fixtures do).
    let beside = checkpoint_dir.join(name);
    if beside.is_dir() {
        return Ok(beside);
    }
    if let Some(sibling) = checkpoint_dir.parent().map(|p| p.join(name))
        && sibling.is_dir()
    {
        return Ok(sibling);
    }
    if !crate::smolvla::lerobot::looks_like_hub_id(name) {
        return Err(PolicyError::Io {
            path: as_given,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "VLM folder `{name}` not found (also tried {}), and it is not a hub id",
                    beside.display()
                ),
            ),
        });
    }
    let hub_err = |file: &str, e: hf_hub::api::sync::ApiError| PolicyError::Io {
        path: PathBuf::from(format!("hf://{name}/{file}")),
        source: std::io::Error::other(format!(
            "cannot fetch the VLM's {file} from the Hugging Face Hub ({e}); it needs network access to \
             huggingface.co (or HF_ENDPOINT) once, or pass a local folder with config.json, tokenizer.json \
             and tokenizer_config.json"
        )),
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| hub_err("(client)", e))?;
    let repo = api.model(name.to_string());
    let config = repo.get("config.json").map_err(|e| hub_err("config.json", e))?;
    repo.get("tokenizer.json")
        .map_err(|e| hub_err("tokenizer.json", e))?;
    // Optional in some repos; the pad token falls back to tokenizer.json's padding settings.
    let _ = repo.get("tokenizer_config.json");
    let _ = repo.get("special_tokens_map.json");
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The token a `tokenizer_config.json` / `special_tokens_map.json` names for `key` (a string or an
/// `AddedToken` object with `content`).
fn named_token(dir: &Path, key: &str) -> Option<String> {
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        let Ok(v) = read_json(&dir.join(file)) else {
            continue;
        };
        match v.get(key) {
            Some(Value::String(s)) => return Some(s.clone()),
            Some(Value::Object(o)) => {
                if let Some(Value::String(s)) = o.get("content") {
                    return Some(s.clone());
                }
            }
            _ => {}
        }
    }
    None
}

/// `TokenizerProcessorStep` with a `tokenizers` tokenizer read from the VLM folder's `tokenizer.json`:
/// the same Rust tokenizer `PreTrainedTokenizerFast` drives, with its truncation and padding set as
/// transformers sets them for `tokenizer(text, max_length, truncation, padding, padding_side)`.
#[derive(Debug, Clone)]
pub struct TaskTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    step: TokenizerStep,
    pad: Option<(String, u32)>,
}

impl TaskTokenizer {
    pub fn from_dir(dir: &Path, step: TokenizerStep) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(PolicyError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing VLM tokenizer"),
            });
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| config_err(&path, e.to_string()))?;
        let pad = named_token(dir, "pad_token")
            .and_then(|t| tokenizer.token_to_id(&t).map(|id| (t, id)))
            .or_else(|| tokenizer.get_padding().map(|p| (p.pad_token.clone(), p.pad_id)));
        if !matches!(step.padding_side.as_str(), "right" | "left") {
            return Err(config_err(
                &path,
                format!(
                    "tokenizer step `padding_side` is \"{}\", expected \"right\" or \"left\"",
                    step.padding_side
                ),
            ));
        }
        if !matches!(step.padding.as_str(), "longest" | "max_length" | "do_not_pad") {
            return Err(config_err(
                &path,
                format!(
                    "tokenizer step `padding` is \"{}\", expected longest / max_length / do_not_pad",
                    step.padding
                ),
            ));
        }
        Ok(Self {
            tokenizer,
            path,
            step,
            pad,
        })
    }

    pub fn max_length(&self) -> usize {
        self.step.max_length
    }

    /// Token ids and attention masks for a batch of prompts, each `[batch, len]` row-major.
    pub fn encode(&self, texts: &[String]) -> Result<(Vec<u32>, Vec<bool>, usize)> {
        let mut tok = self.tokenizer.clone();
        let trunc = self.step.truncation.then(|| TruncationParams {
            max_length: self.step.max_length,
            ..TruncationParams::default()
        });
        tok.with_truncation(trunc)
            .map_err(|e| config_err(&self.path, e.to_string()))?;
        let strategy = match self.step.padding.as_str() {
            "max_length" => Some(PaddingStrategy::Fixed(self.step.max_length)),
            "longest" => Some(PaddingStrategy::BatchLongest),
            _ => None,
        };
        let padding = match (strategy, &self.pad) {
            (None, _) => None,
            (Some(strategy), Some((token, id))) => Some(PaddingParams {
                strategy,
                direction: if self.step.padding_side == "left" {
                    PaddingDirection::Left
                } else {
                    PaddingDirection::Right
                },
                pad_to_multiple_of: None,
                pad_id: *id,
                pad_type_id: 0,
                pad_token: token.clone(),
            }),
            (Some(_), None) => None,
        };
        tok.with_padding(padding);
        let encodings = tok
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| config_err(&self.path, format!("tokenising the task: {e}")))?;
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        if encodings.iter().any(|e| e.get_ids().len() != len) {
            return Err(config_err(
                &self.path,
                "prompts of different lengths need padding, but the tokenizer has no pad token",
            ));
        }
        let ids = encodings
            .iter()
            .flat_map(|e| e.get_ids().iter().copied())
            .collect();
        let mask = encodings
            .iter()
            .flat_map(|e| e.get_attention_mask().iter().map(|&m| m != 0))
            .collect();
        Ok((ids, mask, len))
    }
}

/// LeRobot's SmolVLA pre- and postprocessing, built from a checkpoint folder.
#[derive(Debug, Clone)]
pub struct SmolVlaProcessor {
    config_path: PathBuf,
    rename_map: BTreeMap<String, String>,
    add_newline: bool,
    tokenizer: TaskTokenizer,
    normalizer: NormalizerStep,
    unnormalizer: NormalizerStep,
    camera_keys: Vec<String>,
    state_dim: usize,
    action_dim: usize,
    max_state_dim: usize,
    max_action_dim: usize,
    resize: Option<(usize, usize)>,
}

/// `prepare_images` for one camera frame: [`resize_with_pad`] to `resize_imgs_with_padding` (when set),
/// then `x * 2 - 1` as SigLIP expects.
pub fn prepare_image(img: &ChwImage, resize: Option<(usize, usize)>) -> ChwImage {
    let mut out = match resize {
        Some((w, h)) => resize_with_pad(img, 3, w, h),
        None => img.clone(),
    };
    out.data.iter_mut().for_each(|v| *v = *v * 2.0 - 1.0);
    out
}

impl SmolVlaProcessor {
    /// Build from a read folder and its resolved VLM folder (for the tokenizer).
    pub fn new(folder: &LeRobotFolder, vlm_dir: &Path) -> Result<Self> {
        let cfg = &folder.config;
        let tokenizer = TaskTokenizer::from_dir(vlm_dir, folder.tokenizer_step().clone())?;
        let normalizer = folder
            .preprocessor
            .normalizer()
            .cloned()
            .ok_or_else(|| config_err(&folder.preprocessor.path, "no `normalizer_processor` step"))?;
        let unnormalizer = folder
            .postprocessor
            .normalizer()
            .cloned()
            .ok_or_else(|| config_err(&folder.postprocessor.path, "no `unnormalizer_processor` step"))?;
        for f in normalizer.features.of_kind(FeatureType::Visual) {
            let mode = normalizer.norm_map.get(&FeatureType::Visual).copied();
            if normalizer.stats.contains_key(&f.key) && mode.is_some_and(|m| m != NormMode::Identity) {
                return Err(config_err(
                    &folder.preprocessor.path,
                    format!(
                        "image feature `{}` is normalised ({mode:?}); toprl supports IDENTITY only",
                        f.key
                    ),
                ));
            }
        }
        Ok(Self {
            config_path: cfg.path.clone(),
            rename_map: folder.preprocessor.rename_map(),
            add_newline: folder.preprocessor.adds_newline(),
            tokenizer,
            normalizer,
            unnormalizer,
            camera_keys: cfg.camera_keys(),
            state_dim: cfg.state_dim(),
            action_dim: cfg.action_dim(),
            max_state_dim: cfg.io.max_state_dim,
            max_action_dim: cfg.io.max_action_dim,
            resize: cfg.io.resize_imgs_with_padding,
        })
    }

    pub fn camera_keys(&self) -> &[String] {
        &self.camera_keys
    }
    pub fn state_dim(&self) -> usize {
        self.state_dim
    }
    pub fn action_dim(&self) -> usize {
        self.action_dim
    }
    pub fn max_action_dim(&self) -> usize {
        self.max_action_dim
    }
    /// `resize_imgs_with_padding` as `(width, height)`.
    pub fn resize(&self) -> Option<(usize, usize)> {
        self.resize
    }
    pub fn tokenizer(&self) -> &TaskTokenizer {
        &self.tokenizer
    }

    /// Replace the statistics (fine-tuning on a new dataset).
    pub fn set_stats(&mut self, folder: &LeRobotFolder) {
        if let Some(n) = folder.preprocessor.normalizer() {
            self.normalizer = n.clone();
        }
        if let Some(n) = folder.postprocessor.normalizer() {
            self.unnormalizer = n.clone();
        }
    }

    /// The preprocessor pipeline plus `prepare_images` / `prepare_state` for a batch of raw samples.
    /// The camera set must be exactly the config's (a missing or an unknown camera is an error naming
    /// the `config.json` key), and the state must have the feature's size.
    pub fn prepare(&self, samples: &[RawSample]) -> Result<PreparedBatch> {
        if samples.is_empty() {
            return Err(input_err("an empty batch"));
        }
        let batch = samples.len();
        let mut state = vec![0.0; batch * self.max_state_dim];
        let mut per_camera: Vec<Vec<ChwImage>> = vec![Vec::with_capacity(batch); self.camera_keys.len()];
        let mut tasks = Vec::with_capacity(batch);
        for (b, sample) in samples.iter().enumerate() {
            let rename = |k: &String| self.rename_map.get(k).cloned().unwrap_or_else(|| k.clone());
            let vectors: BTreeMap<String, &Vec<f32>> =
                sample.vectors.iter().map(|(k, v)| (rename(k), v)).collect();
            let images: BTreeMap<String, &ChwImage> =
                sample.images.iter().map(|(k, v)| (rename(k), v)).collect();
            for key in images.keys() {
                if !self.camera_keys.contains(key) {
                    return Err(config_err(
                        &self.config_path,
                        format!(
                            "the observation has camera `{key}`, but key `input_features` lists only {:?}",
                            self.camera_keys
                        ),
                    ));
                }
            }
            for (c, key) in self.camera_keys.iter().enumerate() {
                let img = images.get(key).ok_or_else(|| {
                    config_err(
                        &self.config_path,
                        format!("key `input_features.{key}`: the observation has no tensor `{key}`"),
                    )
                })?;
                if img.data.len() != 3 * img.height * img.width || img.height == 0 || img.width == 0 {
                    return Err(input_err(format!(
                        "`{key}` holds {} values for a [3, {}, {}] image",
                        img.data.len(),
                        img.height,
                        img.width
                    )));
                }
                per_camera[c].push((*img).clone());
            }
            let raw_state = vectors
                .get(STATE_KEY)
                .ok_or_else(|| input_err(format!("the observation has no tensor `{STATE_KEY}`")))?;
            if raw_state.len() != self.state_dim {
                return Err(input_err(format!(
                    "`{STATE_KEY}` has {} values, `input_features.{STATE_KEY}.shape` in {} says {}",
                    raw_state.len(),
                    self.config_path.display(),
                    self.state_dim
                )));
            }
            let mut s = (*raw_state).clone();
            self.normalizer
                .apply(STATE_KEY, FeatureType::State, &mut s, false)
                .map_err(input_err)?;
            state[b * self.max_state_dim..b * self.max_state_dim + self.state_dim].copy_from_slice(&s);
            let task = if self.add_newline && !sample.task.ends_with('\n') {
                format!("{}\n", sample.task)
            } else {
                sample.task.clone()
            };
            tasks.push(task);
        }
        let (tokens, token_mask, token_len) = self.tokenizer.encode(&tasks)?;
        let mut images = Vec::with_capacity(self.camera_keys.len());
        for (key, frames) in self.camera_keys.iter().zip(per_camera) {
            let (h, w) = (frames[0].height, frames[0].width);
            if frames.iter().any(|f| (f.height, f.width) != (h, w)) {
                return Err(input_err(format!(
                    "`{key}` frames of one batch differ in size; a batch stacks one size per camera"
                )));
            }
            let data = frames.iter().flat_map(|f| f.data.iter().copied()).collect();
            images.push(PreparedImages {
                key: key.clone(),
                height: h,
                width: w,
                data,
            });
        }
        Ok(PreparedBatch {
            batch,
            image_masks: vec![vec![true; batch]; images.len()],
            images,
            state,
            tokens,
            token_mask,
            token_len,
        })
    }

    /// Normalise and zero-pad an action chunk `[chunk, action_dim]` (dataset units) to
    /// `[chunk, max_action_dim]`, as the preprocessor and `prepare_action` do for training targets.
    pub fn prepare_actions(&self, actions: &[f32]) -> Result<Vec<f32>> {
        if !actions.len().is_multiple_of(self.action_dim) {
            return Err(input_err(format!(
                "actions: {} values are not rows of {}",
                actions.len(),
                self.action_dim
            )));
        }
        let mut out = Vec::with_capacity(actions.len() / self.action_dim * self.max_action_dim);
        for row in actions.chunks(self.action_dim) {
            let mut r = row.to_vec();
            self.normalizer
                .apply(ACTION_KEY, FeatureType::Action, &mut r, false)
                .map_err(input_err)?;
            r.resize(self.max_action_dim, 0.0);
            out.extend(r);
        }
        Ok(out)
    }

    /// Unpad `[chunk, max_action_dim]` model output to the action feature's size, then un-normalise
    /// (postprocessor): dataset units, `[chunk][action_dim]`.
    pub fn postprocess(&self, padded: &[f32]) -> Result<Vec<Vec<f32>>> {
        if !padded.len().is_multiple_of(self.max_action_dim) {
            return Err(input_err(format!(
                "model output of {} values is not rows of max_action_dim {}",
                padded.len(),
                self.max_action_dim
            )));
        }
        padded
            .chunks(self.max_action_dim)
            .map(|row| {
                let mut a = row[..self.action_dim].to_vec();
                self.unnormalizer
                    .apply(ACTION_KEY, FeatureType::Action, &mut a, true)
                    .map_err(input_err)?;
                Ok(a)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_taps_match_pytorch_half_pixel_rule() {
        // Downscale 4 -> 2: scale 2, src = 2 * (d + 0.5) - 0.5 = 0.5, 2.5.
        let taps = linear_taps(4, 2);
        assert_eq!(taps[0], (0, 1, 0.5, 0.5));
        assert_eq!(taps[1], (2, 3, 0.5, 0.5));
        // Upscale 2 -> 4: scale 0.5, src = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last index clamps).
        let taps = linear_taps(2, 4);
        assert_eq!(taps[0], (0, 1, 1.0, 0.0));
        assert_eq!(taps[1], (0, 1, 0.75, 0.25));
        assert_eq!(taps[3].0, 1);
        assert_eq!(taps[3].1, 1);
    }

    #[test]
    fn resize_with_pad_pads_left_and_top_and_keeps_aspect() {
        // A 2x4 image into 4x4: ratio 1, so it stays 2x4 and gets 2 rows of zeros on top.
        let img = ChwImage {
            height: 2,
            width: 4,
            data: (0..8).map(|v| v as f32).collect(),
        };
        let out = resize_with_pad(&img, 1, 4, 4);
        assert_eq!((out.height, out.width), (4, 4));
        assert_eq!(&out.data[..8], &[0.0; 8]);
        assert_eq!(&out.data[8..], &img.data[..]);
        // A 4x2 image into 4x4: 2 columns of zeros on the left.
        let img = ChwImage {
            height: 4,
            width: 2,
            data: (1..=8).map(|v| v as f32).collect(),
        };
        let out = resize_with_pad(&img, 1, 4, 4);
        assert_eq!(&out.data[..4], &[0.0, 0.0, 1.0, 2.0]);
    }
}
