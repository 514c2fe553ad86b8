//! Qwen3-VL video preprocessing: RGB frames in, vision-tower patches, grid and timestamps out.
//!
//! Mirrors transformers 4.57.1 `Qwen3VLVideoProcessor._preprocess` and `Qwen3VLProcessor._calculate_timestamps`
//! step by step, bit for bit on CPU (parity fixtures: `rewards/fixtures/make_processor_fixtures.py`):
//! 1. `smart_resize` picks one (h, w) for the whole clip from a pixel budget counted over t*h*w;
//! 2. every frame is resized with torchvision's uint8 antialiased bicubic (`F.resize(..., BICUBIC,
//!    antialias=True)` on a uint8 tensor, which on CPU runs ATen's separable fixed-point kernel, see
//!    [`resize_bicubic_aa`]);
//! 3. fused rescale + normalise: `(x - mean/s) / (std/s)` in f32 with s = rescale_factor;
//! 4. an odd frame count repeats the last frame up to a multiple of `temporal_patch_size`;
//! 5. patches are laid out as `view(t, 2, C, h/32, 2, 16, w/32, 2, 16).permute(t, h/32, w/32, 2, 2, C, 2, 16, 16)`,
//!    one row of C*2*16*16 values per 16x16 patch, merge windows of 2x2 patches contiguous.

use std::ops::Range;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Pixel budget of a clip, counted over frames * height * width (transformers' `size` dict). Other keys of the
/// dict are ignored, as transformers' `SizeDict` ignores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeConfig {
    /// `min_pixels`: smaller clips are upscaled (default 128*32*32 = 131072).
    pub shortest_edge: u64,
    /// `max_pixels`: larger clips are downscaled (default 768*32*32 = 786432).
    pub longest_edge: u64,
}

impl Default for SizeConfig {
    fn default() -> Self {
        Self {
            shortest_edge: 128 * 32 * 32,
            longest_edge: 768 * 32 * 32,
        }
    }
}

/// The files transformers 4.57 `BaseVideoProcessor.get_video_processor_dict` tries, in order: the first that
/// exists is read (a legacy checkpoint's image-processor config stands in for the video processor's), and a
/// nested `"video_processor"` object in it is used when present.
pub const VIDEO_PROCESSOR_CONFIG_FILES: [&str; 3] = [
    "video_preprocessor_config.json",
    "preprocessor_config.json",
    "processor_config.json",
];

/// `video_preprocessor_config.json` of a Qwen3-VL checkpoint, read as transformers reads it (see
/// [`VideoProcessorConfig::from_hf_json`]): every field optional, unknown fields ignored. The defaults are the
/// class attributes of transformers 4.57.1 `Qwen3VLVideoProcessor`. Note that released Qwen3-VL checkpoints
/// ship `size = {shortest_edge: 4096, longest_edge: 25165824}`, not the class default.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoProcessorConfig {
    /// Pixel budget over the clip (see [`SizeConfig`]).
    pub size: SizeConfig,
    /// Spatial patch side of the vision tower (16).
    pub patch_size: usize,
    /// Frames per temporal patch (2).
    pub temporal_patch_size: usize,
    /// Spatial merge of the patch merger (2); also the frame pairing of the timestamps.
    pub merge_size: usize,
    /// Per-channel mean (0.5, 0.5, 0.5).
    pub image_mean: [f32; 3],
    /// Per-channel std (0.5, 0.5, 0.5).
    pub image_std: [f32; 3],
    /// Rescale factor (1/255).
    pub rescale_factor: f64,
    /// Resize with `smart_resize` (true).
    pub do_resize: bool,
    /// Multiply by `rescale_factor` (true).
    pub do_rescale: bool,
    /// Subtract mean and divide by std (true).
    pub do_normalize: bool,
    /// Frames are RGB already; accepted for compatibility (true).
    pub do_convert_rgb: bool,
    /// PIL resampling filter id; only 3 (bicubic) is supported.
    pub resample: u32,
    /// Sampling fps the reference uses when it samples frames itself (2). Unused here: frames arrive sampled.
    pub fps: f64,
    /// Reference frame sampling bound (4); unused here.
    pub min_frames: usize,
    /// Reference frame sampling bound (768); unused here.
    pub max_frames: usize,
    /// Whether the reference samples frames itself (true); unused here (TOPReward passes sampled frames).
    pub do_sample_frames: bool,
    /// Reference output option; unused.
    pub return_metadata: bool,
    /// Informational (`"Qwen3VLVideoProcessor"`).
    pub video_processor_type: Option<String>,
    /// Informational (`"Qwen3VLProcessor"`).
    pub processor_class: Option<String>,
}

impl Default for VideoProcessorConfig {
    fn default() -> Self {
        Self {
            size: SizeConfig::default(),
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            do_convert_rgb: true,
            resample: 3,
            fps: 2.0,
            min_frames: 4,
            max_frames: 768,
            do_sample_frames: true,
            return_metadata: false,
            video_processor_type: None,
            processor_class: None,
        }
    }
}

/// Where a [`VideoProcessor`]'s settings came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Read from this file (one of [`VIDEO_PROCESSOR_CONFIG_FILES`]).
    File(PathBuf),
    /// No config file in the checkpoint: the `Qwen3VLVideoProcessor` class defaults (transformers would refuse
    /// to build a processor for such a folder; real checkpoints always ship one of the files).
    ClassDefaults,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::ClassDefaults => f.write_str("Qwen3VLVideoProcessor class defaults"),
        }
    }
}

/// A field of a Hugging Face JSON object: missing, explicitly null, or a value.
enum HfField<'a> {
    Missing,
    Null,
    Value(&'a serde_json::Value),
}

fn hf_field<'a>(map: &'a serde_json::Map<String, serde_json::Value>, name: &str) -> HfField<'a> {
    match map.get(name) {
        None => HfField::Missing,
        Some(serde_json::Value::Null) => HfField::Null,
        Some(v) => HfField::Value(v),
    }
}

impl VideoProcessorConfig {
    /// Read a video processor config as transformers 4.57 does (`get_video_processor_dict` + `from_dict` +
    /// `Qwen3VLVideoProcessor.__init__`):
    /// - a nested `"video_processor"` object (processor_config.json) is used in place of the whole object;
    /// - unknown fields (crop_size, do_center_crop, data_format, device, image_processor_type, min_pixels, ...)
    ///   are ignored, and `do_center_crop` / `crop_size` have no effect on Qwen3-VL's `_preprocess`;
    /// - a missing field takes the class default; a null flag (`do_resize`, `do_rescale`, `do_normalize`,
    ///   ...) is Python's None, which is falsy, so it turns the step off; a null in a field that only frame
    ///   sampling reads (fps, min_frames, max_frames) keeps the default; a null number the preprocessing
    ///   needs (size, patch_size, image_mean, ...) is an error, as it makes transformers fail too;
    /// - `size` must hold `shortest_edge` and `longest_edge` (transformers raises otherwise);
    /// - `image_mean` / `image_std` may be one number for all channels.
    ///
    /// Errors name the field; the caller adds the file.
    pub fn from_hf_json(value: &serde_json::Value) -> Result<Self, (&'static str, String)> {
        let value = value.get("video_processor").unwrap_or(value);
        let map = value
            .as_object()
            .ok_or(("(top level)", "expected a JSON object".to_string()))?;
        let mut c = Self::default();
        fn wrong(field: &'static str, expected: &str, got: &serde_json::Value) -> (&'static str, String) {
            (field, format!("expected {expected}, found {got}"))
        }
        fn needed(field: &'static str) -> (&'static str, String) {
            (
                field,
                "is null; transformers would keep None here and fail, so give a value or remove the key"
                    .into(),
            )
        }
        let uint = |field: &'static str, dflt: usize| -> Result<usize, (&'static str, String)> {
            match hf_field(map, field) {
                HfField::Missing => Ok(dflt),
                HfField::Null => Err(needed(field)),
                HfField::Value(v) => v
                    .as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| wrong(field, "a non-negative integer", v)),
            }
        };
        let flag = |field: &'static str, dflt: bool| -> Result<bool, (&'static str, String)> {
            match hf_field(map, field) {
                HfField::Missing => Ok(dflt),
                HfField::Null => Ok(false),
                HfField::Value(v) => v.as_bool().ok_or_else(|| wrong(field, "true or false", v)),
            }
        };
        let channels = |field: &'static str, dflt: [f32; 3]| -> Result<[f32; 3], (&'static str, String)> {
            match hf_field(map, field) {
                HfField::Missing => Ok(dflt),
                HfField::Null => Err(needed(field)),
                HfField::Value(v) => {
                    if let Some(x) = v.as_f64() {
                        return Ok([x as f32; 3]);
                    }
                    let list: Option<Vec<f32>> = v
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_f64().map(|x| x as f32)).collect());
                    match list {
                        Some(l) if l.len() == 3 && v.as_array().is_some_and(|a| a.len() == 3) => {
                            Ok([l[0], l[1], l[2]])
                        }
                        _ => Err(wrong(field, "a number or a list of 3 numbers", v)),
                    }
                }
            }
        };
        c.size = match hf_field(map, "size") {
            HfField::Missing => c.size,
            HfField::Null => return Err(needed("size")),
            HfField::Value(v) => {
                let edge = |k: &str| v.get(k).and_then(|x| x.as_u64());
                match (edge("shortest_edge"), edge("longest_edge")) {
                    (Some(shortest_edge), Some(longest_edge)) => SizeConfig {
                        shortest_edge,
                        longest_edge,
                    },
                    _ => {
                        return Err(wrong(
                            "size",
                            "an object with integer 'shortest_edge' and 'longest_edge' (min / max pixels)",
                            v,
                        ));
                    }
                }
            }
        };
        c.patch_size = uint("patch_size", c.patch_size)?;
        c.temporal_patch_size = uint("temporal_patch_size", c.temporal_patch_size)?;
        c.merge_size = uint("merge_size", c.merge_size)?;
        c.image_mean = channels("image_mean", c.image_mean)?;
        c.image_std = channels("image_std", c.image_std)?;
        c.rescale_factor = match hf_field(map, "rescale_factor") {
            HfField::Missing => c.rescale_factor,
            HfField::Null => return Err(needed("rescale_factor")),
            HfField::Value(v) => v.as_f64().ok_or_else(|| wrong("rescale_factor", "a number", v))?,
        };
        c.do_resize = flag("do_resize", c.do_resize)?;
        c.do_rescale = flag("do_rescale", c.do_rescale)?;
        c.do_normalize = flag("do_normalize", c.do_normalize)?;
        c.do_convert_rgb = flag("do_convert_rgb", c.do_convert_rgb)?;
        c.do_sample_frames = flag("do_sample_frames", c.do_sample_frames)?;
        c.return_metadata = flag("return_metadata", c.return_metadata)?;
        c.resample = match hf_field(map, "resample") {
            HfField::Missing => c.resample,
            HfField::Null => return Err(needed("resample")),
            HfField::Value(v) => v
                .as_u64()
                .map(|x| x as u32)
                .ok_or_else(|| wrong("resample", "a PIL resampling id (3 = bicubic)", v))?,
        };
        // Read only by the reference's own frame sampling, which TOPReward does not use: null keeps the default.
        if let HfField::Value(v) = hf_field(map, "fps") {
            c.fps = v.as_f64().ok_or_else(|| wrong("fps", "a number", v))?;
        }
        if let HfField::Value(v) = hf_field(map, "min_frames") {
            c.min_frames = v.as_u64().ok_or_else(|| wrong("min_frames", "an integer", v))? as usize;
        }
        if let HfField::Value(v) = hf_field(map, "max_frames") {
            c.max_frames = v.as_u64().ok_or_else(|| wrong("max_frames", "an integer", v))? as usize;
        }
        let text = |field: &str| map.get(field).and_then(|v| v.as_str()).map(str::to_string);
        c.video_processor_type = text("video_processor_type");
        c.processor_class = text("processor_class");
        Ok(c)
    }
}

/// What can go wrong turning frames into model inputs.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("the video has no frames")]
    NoFrames,
    #[error("frame {index} is {width}x{height} but frame 0 is {expected_width}x{expected_height}")]
    MixedFrameSizes {
        index: usize,
        width: u32,
        height: u32,
        expected_width: u32,
        expected_height: u32,
    },
    #[error(
        "{frames} frame(s) but Qwen3-VL needs at least temporal_patch_size = {min} (repeat a lone frame)"
    )]
    TooFewFrames { frames: usize, min: usize },
    #[error("frames are {width}x{height}; both sides must be at least {factor} pixels")]
    FrameTooSmall { width: u32, height: u32, factor: usize },
    #[error("frames are {width}x{height}: aspect ratio must be at most 200")]
    AspectRatio { width: u32, height: u32 },
    #[error("target size {width}x{height} is not a positive multiple of {factor}")]
    BadTargetSize {
        width: usize,
        height: usize,
        factor: usize,
    },
    #[error("video metadata lists {indices} frame indices for {frames} frames")]
    MetadataLength { indices: usize, frames: usize },
    #[error("video fps must be positive and finite, got {0}")]
    BadFps(f64),
    #[error("video processor config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("cannot read video processor config {path}: {source}")]
    ReadConfig { path: PathBuf, source: std::io::Error },
    #[error("video processor config {path}: field `{field}` {reason}")]
    ConfigField {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    #[error("cannot parse video processor config {path}: {source}")]
    ParseConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Where the frames came from in the source video: the timestamps of the prompt derive from these.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoMetadata {
    /// Frame rate of the source video (the frame indices count at this rate).
    pub fps: f64,
    /// Source index of each frame; `None` means `0..n`, as LeRobot's port passes (`frames_indices = range(n)`).
    pub frame_indices: Option<Vec<usize>>,
}

impl VideoMetadata {
    /// Frames numbered `0..n` at `fps` (the LeRobot TOPReward port: sampled frames and their sampling fps).
    pub fn sequential(fps: f64) -> Self {
        Self {
            fps,
            frame_indices: None,
        }
    }
}

/// Preprocessed video: what `Qwen3VLVideoProcessor` returns as `pixel_values_videos` and `video_grid_thw`,
/// plus the per-group timestamps `Qwen3VLProcessor` writes into the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInputs {
    /// Row-major `[num_patches, patch_dim]`, rows ordered by temporal group, then 2x2 merge window, then
    /// patch within the window.
    pub pixel_values: Vec<f32>,
    /// `channels * temporal_patch_size * patch_size^2` (1536 for Qwen3-VL).
    pub patch_dim: usize,
    /// `(t, h, w)` in patches: temporal groups, patch rows, patch columns.
    pub grid_thw: [usize; 3],
    /// Spatial merge size (2): each group yields `h * w / merge^2` video tokens.
    pub merge_size: usize,
    /// Resized frame size `(height, width)` in pixels.
    pub resized: (usize, usize),
    /// Seconds per temporal group: mean of the timestamps of the group's first and last frame.
    pub timestamps: Vec<f64>,
}

impl VideoInputs {
    /// Number of patch rows in `pixel_values`.
    pub fn num_patches(&self) -> usize {
        self.grid_thw.iter().product()
    }

    /// Number of temporal groups (frame pairs).
    pub fn num_groups(&self) -> usize {
        self.grid_thw[0]
    }

    /// Patch rows of one temporal group (its `grid_h * grid_w` patches).
    pub fn patches_per_group(&self) -> usize {
        self.grid_thw[1] * self.grid_thw[2]
    }

    /// `<|video_pad|>` tokens per temporal group after the 2x2 merge.
    pub fn tokens_per_group(&self) -> usize {
        self.patches_per_group() / (self.merge_size * self.merge_size)
    }

    /// Rows of `pixel_values` that belong to temporal group `g`.
    pub fn group_rows(&self, g: usize) -> Range<usize> {
        let n = self.patches_per_group();
        g * n..(g + 1) * n
    }

    /// The timestamp text of group `g`, formatted like Python's `f"<{t:.1f} seconds>"` (round half to even
    /// on the exact binary value; Rust's `{:.1}` does the same).
    pub fn timestamp_text(&self, g: usize) -> String {
        format!("<{:.1} seconds>", self.timestamps[g])
    }
}

/// `smart_resize` of `video_processing_qwen3_vl.py`: the (height, width), multiples of `factor`, closest to the
/// input whose clip budget `t * h * w` lies within `[min_pixels, max_pixels]`. Python's `round` rounds half to
/// even, hence `round_ties_even`.
pub fn smart_resize(
    num_frames: usize,
    height: usize,
    width: usize,
    temporal_factor: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize), ProcessorError> {
    if num_frames < temporal_factor {
        return Err(ProcessorError::TooFewFrames {
            frames: num_frames,
            min: temporal_factor,
        });
    }
    if height < factor || width < factor {
        return Err(ProcessorError::FrameTooSmall {
            width: width as u32,
            height: height as u32,
            factor,
        });
    }
    if height.max(width) as f64 / height.min(width) as f64 > 200.0 {
        return Err(ProcessorError::AspectRatio {
            width: width as u32,
            height: height as u32,
        });
    }
    let f = factor as f64;
    let mut h_bar = (height as f64 / f).round_ties_even() as u64 * factor as u64;
    let mut w_bar = (width as f64 / f).round_ties_even() as u64 * factor as u64;
    let t_bar =
        (num_frames as f64 / temporal_factor as f64).round_ties_even() as u64 * temporal_factor as u64;
    let volume = (num_frames * height * width) as f64;
    if t_bar * h_bar * w_bar > max_pixels {
        let beta = (volume / max_pixels as f64).sqrt();
        h_bar = ((height as f64 / beta / f).floor() as u64 * factor as u64).max(factor as u64);
        w_bar = ((width as f64 / beta / f).floor() as u64 * factor as u64).max(factor as u64);
    } else if t_bar * h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / volume).sqrt();
        h_bar = (height as f64 * beta / f).ceil() as u64 * factor as u64;
        w_bar = (width as f64 * beta / f).ceil() as u64 * factor as u64;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// `Qwen3VLProcessor._calculate_timestamps`: pad the indices to a multiple of `merge_size` by repeating the last,
/// convert to seconds (`idx / fps`) and average the first and last frame of each group.
pub fn calculate_timestamps(indices: &[usize], fps: f64, merge_size: usize) -> Vec<f64> {
    let mut idx = indices.to_vec();
    if let Some(&last) = idx.last() {
        while !idx.len().is_multiple_of(merge_size) {
            idx.push(last);
        }
    }
    let secs: Vec<f64> = idx.iter().map(|&i| i as f64 / fps).collect();
    secs.chunks(merge_size)
        .map(|c| (c[0] + c[merge_size - 1]) / 2.0)
        .collect()
}

/// The Qwen3-VL video processor.
#[derive(Debug, Clone, Default)]
pub struct VideoProcessor {
    config: VideoProcessorConfig,
}

impl VideoProcessor {
    /// A processor with `config`, checked for settings this port does not implement.
    pub fn new(config: VideoProcessorConfig) -> Result<Self, ProcessorError> {
        let bad = |field, reason: &str| {
            Err(ProcessorError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if config.resample != 3 {
            return bad("resample", "only 3 (bicubic) is implemented");
        }
        if config.patch_size == 0 || config.temporal_patch_size == 0 || config.merge_size == 0 {
            return bad(
                "patch_size",
                "patch_size, temporal_patch_size and merge_size must be positive",
            );
        }
        if config.size.shortest_edge > config.size.longest_edge {
            return bad(
                "size",
                "shortest_edge (min pixels) exceeds longest_edge (max pixels)",
            );
        }
        if config.image_std.contains(&0.0) {
            return bad("image_std", "a zero std divides by zero");
        }
        if !(config.rescale_factor.is_finite() && config.rescale_factor > 0.0) {
            return bad("rescale_factor", "must be positive and finite");
        }
        Ok(Self { config })
    }

    /// Read one Hugging Face processor config file as transformers does (see
    /// [`VideoProcessorConfig::from_hf_json`]).
    pub fn from_config_file(path: &Path) -> Result<Self, ProcessorError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProcessorError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ProcessorError::ParseConfig {
                path: path.to_path_buf(),
                source,
            })?;
        let config = VideoProcessorConfig::from_hf_json(&value).map_err(|(field, reason)| {
            ProcessorError::ConfigField {
                path: path.to_path_buf(),
                field,
                reason,
            }
        })?;
        Self::new(config).map_err(|e| match e {
            ProcessorError::Config { field, reason } => ProcessorError::ConfigField {
                path: path.to_path_buf(),
                field,
                reason,
            },
            other => other,
        })
    }

    /// The video processor of a checkpoint folder, found as transformers finds it: the first of
    /// [`VIDEO_PROCESSOR_CONFIG_FILES`] that exists; the class defaults when none does (with the source saying
    /// so, for the caller to report).
    pub fn from_checkpoint_dir(dir: &Path) -> Result<(Self, ConfigSource), ProcessorError> {
        for name in VIDEO_PROCESSOR_CONFIG_FILES {
            let path = dir.join(name);
            if path.is_file() {
                return Ok((Self::from_config_file(&path)?, ConfigSource::File(path)));
            }
        }
        Ok((Self::default(), ConfigSource::ClassDefaults))
    }

    /// The configuration in use.
    pub fn config(&self) -> &VideoProcessorConfig {
        &self.config
    }

    /// The (height, width) `preprocess` resizes a clip of `num_frames` frames of `height x width` to.
    pub fn target_size(
        &self,
        num_frames: usize,
        height: usize,
        width: usize,
    ) -> Result<(usize, usize), ProcessorError> {
        let c = &self.config;
        if !c.do_resize {
            return Ok((height, width));
        }
        smart_resize(
            num_frames,
            height,
            width,
            c.temporal_patch_size,
            c.patch_size * c.merge_size,
            c.size.shortest_edge,
            c.size.longest_edge,
        )
    }

    /// Preprocess a clip exactly like the reference: the resolution follows from the clip length.
    pub fn preprocess(
        &self,
        frames: &[RgbImage],
        metadata: &VideoMetadata,
    ) -> Result<VideoInputs, ProcessorError> {
        let (h, w) = check_frames(frames)?;
        let target = self.target_size(frames.len(), h, w)?;
        self.preprocess_at(frames, metadata, target)
    }

    /// Preprocess a clip at a fixed `(height, width)` (e.g. one resolution for every prefix of an episode, so
    /// a prefix's patches equal the first rows of the full clip's). With the size `smart_resize` picks this
    /// equals [`Self::preprocess`].
    pub fn preprocess_at(
        &self,
        frames: &[RgbImage],
        metadata: &VideoMetadata,
        (out_h, out_w): (usize, usize),
    ) -> Result<VideoInputs, ProcessorError> {
        let c = &self.config;
        let (h, w) = check_frames(frames)?;
        if frames.len() < c.temporal_patch_size {
            return Err(ProcessorError::TooFewFrames {
                frames: frames.len(),
                min: c.temporal_patch_size,
            });
        }
        let factor = c.patch_size * c.merge_size;
        if out_h == 0 || out_w == 0 || out_h % factor != 0 || out_w % factor != 0 {
            return Err(ProcessorError::BadTargetSize {
                width: out_w,
                height: out_h,
                factor,
            });
        }
        if !(metadata.fps.is_finite() && metadata.fps > 0.0) {
            return Err(ProcessorError::BadFps(metadata.fps));
        }
        let indices: Vec<usize> = match &metadata.frame_indices {
            Some(idx) if idx.len() != frames.len() => {
                return Err(ProcessorError::MetadataLength {
                    indices: idx.len(),
                    frames: frames.len(),
                });
            }
            Some(idx) => idx.clone(),
            None => (0..frames.len()).collect(),
        };

        // Resize (uint8 in, uint8 out), then the fused rescale + normalise lookup table per channel: the
        // reference computes `(x - mean') / std'` in f32 with mean' = f32(mean) * f32(1 / rescale_factor).
        let resized: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| {
                if (out_h, out_w) == (h, w) {
                    f.as_raw().clone()
                } else {
                    resize_bicubic_aa(f.as_raw(), h, w, out_h, out_w)
                }
            })
            .collect();
        let lut = self.normalisation_table();

        let tp = c.temporal_patch_size;
        let p = c.patch_size;
        let m = c.merge_size;
        let grid_t = frames.len().div_ceil(tp);
        let (grid_h, grid_w) = (out_h / p, out_w / p);
        let patch_dim = 3 * tp * p * p;
        let mut pixel_values = Vec::with_capacity(grid_t * grid_h * grid_w * patch_dim);
        for gt in 0..grid_t {
            for bh in 0..grid_h / m {
                for bw in 0..grid_w / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            for ch in 0..3 {
                                for t in 0..tp {
                                    // odd counts repeat the last frame up to a multiple of tp
                                    let frame = &resized[(gt * tp + t).min(frames.len() - 1)];
                                    for ph in 0..p {
                                        let y = (bh * m + mh) * p + ph;
                                        let row = &frame[(y * out_w) * 3..(y * out_w + out_w) * 3];
                                        for pw in 0..p {
                                            let x = (bw * m + mw) * p + pw;
                                            pixel_values.push(lut[ch][row[x * 3 + ch] as usize]);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        Ok(VideoInputs {
            pixel_values,
            patch_dim,
            grid_thw: [grid_t, grid_h, grid_w],
            merge_size: m,
            resized: (out_h, out_w),
            timestamps: calculate_timestamps(&indices, metadata.fps, m),
        })
    }

    /// f32 value of each u8 level per channel, as `BaseImageProcessorFast.rescale_and_normalize` computes it.
    fn normalisation_table(&self) -> [[f32; 256]; 3] {
        let c = &self.config;
        let mut lut = [[0f32; 256]; 3];
        for (ch, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                let x = v as f32;
                *out = match (c.do_rescale, c.do_normalize) {
                    (true, true) => {
                        // `_fuse_mean_std_and_rescale_factor`: f32 tensor * python float -> f32 math
                        let inv = (1.0 / c.rescale_factor) as f32;
                        (x - c.image_mean[ch] * inv) / (c.image_std[ch] * inv)
                    }
                    (false, true) => (x - c.image_mean[ch]) / c.image_std[ch],
                    (true, false) => x * c.rescale_factor as f32,
                    (false, false) => x,
                };
            }
        }
        lut
    }
}

/// Frame size `(height, width)` shared by all frames, or the first frame that differs.
pub fn check_frames(frames: &[RgbImage]) -> Result<(usize, usize), ProcessorError> {
    let first = frames.first().ok_or(ProcessorError::NoFrames)?;
    let (w, h) = first.dimensions();
    for (index, f) in frames.iter().enumerate() {
        if f.dimensions() != (w, h) {
            return Err(ProcessorError::MixedFrameSizes {
                index,
                width: f.width(),
                height: f.height(),
                expected_width: w,
                expected_height: h,
            });
        }
    }
    Ok((h as usize, w as usize))
}

/// ATen's antialiased cubic filter (`HelperInterpCubic::aa_filter`, Keys a = -0.5 as in Pillow).
fn aa_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// One axis of the separable resize: for each output index the first input index, the taps and their int16
/// weights, and the fixed-point precision (ATen `_compute_index_ranges_int16_weights`, antialias on,
/// align_corners off, scale = in / out).
struct AxisWeights {
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
    stride: usize,
    precision: u32,
}

impl AxisWeights {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
        let stride = support.ceil() as usize * 2 + 1;
        let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut wf = vec![0f64; out_size * stride];
        let mut wt_max = 0f64;
        for i in 0..out_size {
            let center = scale * (i as f64 + 0.5);
            // static_cast<int64_t> truncates toward zero
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xsize =
                (((center + support + 0.5) as i64).min(in_size as i64) - xmin).clamp(0, stride as i64);
            let w = &mut wf[i * stride..(i + 1) * stride];
            let mut total = 0f64;
            for (j, wj) in w.iter_mut().enumerate().take(xsize as usize) {
                *wj = aa_cubic(((j as i64 + xmin) as f64 - center + 0.5) * invscale);
                total += *wj;
            }
            if total != 0.0 {
                for wj in w.iter_mut().take(xsize as usize) {
                    *wj /= total;
                    wt_max = wt_max.max(*wj);
                }
            }
            start.push(xmin as usize);
            len.push(xsize as usize);
        }
        // the largest precision (< 22) whose doubled max weight still fits in int16
        let mut precision = 0u32;
        while precision < 22 {
            let next = (0.5 + wt_max * (1u64 << (precision + 1)) as f64) as i64;
            if next >= 1 << 15 {
                break;
            }
            precision += 1;
        }
        let weights = wf
            .iter()
            .map(|&w| {
                let v = w * (1u64 << precision) as f64;
                (if v < 0.0 { -0.5 + v } else { 0.5 + v }) as i32
            })
            .collect();
        Self {
            start,
            len,
            weights,
            stride,
            precision,
        }
    }

    /// Fixed-point dot product of output `i` with the taps `value(k)` of input indices `start..start+len`.
    #[inline]
    fn apply(&self, i: usize, value: impl Fn(usize) -> u8) -> u8 {
        let w = &self.weights[i * self.stride..i * self.stride + self.len[i]];
        let mut acc: i32 = 1 << (self.precision - 1);
        for (k, &wk) in w.iter().enumerate() {
            acc += value(self.start[i] + k) as i32 * wk;
        }
        (acc >> self.precision).clamp(0, 255) as u8
    }
}

/// torchvision `F.resize(uint8 image, (out_h, out_w), BICUBIC, antialias=True)` on CPU: ATen's separable
/// uint8 kernel, horizontal pass first (skipped when the width is unchanged), then vertical, each pass rounding
/// and clamping to uint8. `src` is interleaved RGB, row-major.
pub fn resize_bicubic_aa(src: &[u8], in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Vec<u8> {
    let horizontal = if out_w != in_w {
        let ax = AxisWeights::new(in_w, out_w);
        let mut out = vec![0u8; in_h * out_w * 3];
        for y in 0..in_h {
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for x in 0..out_w {
                for c in 0..3 {
                    out[(y * out_w + x) * 3 + c] = ax.apply(x, |k| row[k * 3 + c]);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    if out_h == in_h {
        return horizontal;
    }
    let ay = AxisWeights::new(in_h, out_h);
    let mut out = vec![0u8; out_h * out_w * 3];
    for y in 0..out_h {
        for x in 0..out_w {
            for c in 0..3 {
                out[(y * out_w + x) * 3 + c] = ay.apply(y, |k| horizontal[(k * out_w + x) * 3 + c]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_hand_computed_reference_values() {
        let (min, max) = (128 * 32 * 32, 768 * 32 * 32);
        // within budget: rounded to multiples of 32
        assert_eq!(smart_resize(8, 128, 128, 2, 32, min, max).unwrap(), (128, 128));
        // 16 x 256 x 256 > max: beta = sqrt(16*244*244/786432)
        assert_eq!(smart_resize(16, 244, 244, 2, 32, min, max).unwrap(), (192, 192));
        // below budget: upscale
        assert_eq!(smart_resize(2, 64, 96, 2, 32, min, max).unwrap(), (224, 320));
        // Python rounds 80/32 = 2.5 to 2 (half to even)
        assert_eq!(smart_resize(2, 80, 80, 2, 32, 0, u64::MAX).unwrap(), (64, 64));
        assert!(matches!(
            smart_resize(1, 64, 64, 2, 32, min, max),
            Err(ProcessorError::TooFewFrames { .. })
        ));
        assert!(matches!(
            smart_resize(2, 31, 64, 2, 32, min, max),
            Err(ProcessorError::FrameTooSmall { .. })
        ));
        assert!(matches!(
            smart_resize(2, 32, 6432, 2, 32, min, max),
            Err(ProcessorError::AspectRatio { .. })
        ));
    }

    #[test]
    fn timestamps_pad_with_the_last_index_and_average_pairs() {
        assert_eq!(calculate_timestamps(&[0, 1, 2, 3], 2.0, 2), vec![0.25, 1.25]);
        assert_eq!(calculate_timestamps(&[0, 15, 30], 30.0, 2), vec![0.25, 1.0]);
    }

    #[test]
    fn timestamp_text_rounds_like_python_format() {
        // Python: f"{t:.1f}" for these values (exact binary ties round to even)
        let cases = [
            (0.25, "0.2"),
            (0.75, "0.8"),
            (1.25, "1.2"),
            (0.375, "0.4"),
            (0.35, "0.3"),
            (12.45, "12.4"),
        ];
        for (t, want) in cases {
            let v = VideoInputs {
                pixel_values: vec![],
                patch_dim: 1536,
                grid_thw: [1, 2, 2],
                merge_size: 2,
                resized: (32, 32),
                timestamps: vec![t],
            };
            assert_eq!(v.timestamp_text(0), format!("<{want} seconds>"));
        }
    }

    #[test]
    fn mixed_frame_sizes_name_the_first_differing_frame() {
        let frames = vec![
            RgbImage::new(64, 64),
            RgbImage::new(64, 64),
            RgbImage::new(64, 48),
            RgbImage::new(8, 8),
        ];
        let err = VideoProcessor::default()
            .preprocess(&frames, &VideoMetadata::sequential(2.0))
            .unwrap_err();
        match err {
            ProcessorError::MixedFrameSizes {
                index, width, height, ..
            } => {
                assert_eq!((index, width, height), (2, 64, 48))
            }
            other => panic!("unexpected {other}"),
        }
        let err = VideoProcessor::default()
            .preprocess(&[], &VideoMetadata::sequential(2.0))
            .unwrap_err();
        assert!(matches!(err, ProcessorError::NoFrames));
    }

    #[test]
    fn identity_resize_returns_the_input() {
        let src: Vec<u8> = (0..(40 * 30 * 3)).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_bicubic_aa(&src, 30, 40, 30, 40), src);
    }

    #[test]
    fn checkpoint_config_is_read_when_present_and_defaults_apply_otherwise() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join("processor");
        let (p, source) = VideoProcessor::from_checkpoint_dir(&fixtures).unwrap();
        assert_eq!(
            source,
            ConfigSource::File(fixtures.join("video_preprocessor_config.json"))
        );
        assert_eq!(
            p.config().size,
            SizeConfig {
                shortest_edge: 4096,
                longest_edge: 25165824
            }
        );
        // the released budget keeps 16 frames of 244x244 at 256x256 (the class default gives 192x192)
        assert_eq!(p.target_size(16, 244, 244).unwrap(), (256, 256));
        let dir = std::env::temp_dir().join("toprl-rewards-no-such-checkpoint");
        let (p, source) = VideoProcessor::from_checkpoint_dir(&dir).unwrap();
        assert_eq!(p.config(), &VideoProcessorConfig::default());
        assert_eq!(source, ConfigSource::ClassDefaults);
    }

    #[test]
    fn at_a_fixed_size_a_prefix_gives_the_first_rows_of_the_longer_clip() {
        let frames: Vec<RgbImage> = (0..7u32)
            .map(|f| {
                RgbImage::from_fn(70, 50, |x, y| {
                    image::Rgb([(x * 3 + f) as u8, (y * 5) as u8, (x ^ y) as u8])
                })
            })
            .collect();
        let p = VideoProcessor::default();
        let meta = VideoMetadata::sequential(2.0);
        let full = p.preprocess_at(&frames, &meta, (64, 96)).unwrap();
        let part = p.preprocess_at(&frames[..4], &meta, (64, 96)).unwrap();
        assert_eq!(full.grid_thw, [4, 4, 6]);
        assert_eq!(
            part.pixel_values[..],
            full.pixel_values[..part.pixel_values.len()]
        );
        assert_eq!(part.timestamps[..], full.timestamps[..2]);
        assert_eq!(full.group_rows(1), 24..48);
        assert!(matches!(
            p.preprocess_at(&frames, &meta, (64, 90)),
            Err(ProcessorError::BadTargetSize { .. })
        ));
        let bad = VideoMetadata {
            fps: 2.0,
            frame_indices: Some(vec![0, 1]),
        };
        assert!(matches!(
            p.preprocess(&frames, &bad),
            Err(ProcessorError::MetadataLength { .. })
        ));
    }

    #[test]
    fn hf_config_ignores_unknown_fields_and_names_bad_ones() {
        let cfg = VideoProcessorConfig::from_hf_json(&serde_json::json!({
            "pach_size": 16, "crop_size": null, "data_format": "channels_first", "image_mean": 0.25,
            "size": {"shortest_edge": 10, "longest_edge": 20, "height": 3}
        }))
        .unwrap();
        assert_eq!(cfg.patch_size, 16);
        assert_eq!(cfg.image_mean, [0.25; 3]);
        assert_eq!(cfg.size.longest_edge, 20);
        let (field, reason) =
            VideoProcessorConfig::from_hf_json(&serde_json::json!({"size": {"height": 224, "width": 224}}))
                .unwrap_err();
        assert_eq!(field, "size");
        assert!(reason.contains("shortest_edge"), "{reason}");
        let (field, _) =
            VideoProcessorConfig::from_hf_json(&serde_json::json!({"patch_size": null})).unwrap_err();
        assert_eq!(field, "patch_size");
        let (field, _) =
            VideoProcessorConfig::from_hf_json(&serde_json::json!({"image_std": [0.5, 0.5]})).unwrap_err();
        assert_eq!(field, "image_std");
        let cfg = VideoProcessorConfig::from_hf_json(&serde_json::json!({"resample": 2})).unwrap();
        assert!(matches!(
            VideoProcessor::new(cfg),
            Err(ProcessorError::Config {
                field: "resample",
                ..
            })
        ));
    }
}
