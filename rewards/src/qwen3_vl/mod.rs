//! Qwen3-VL (dense 2B/4B/8B/32B) in candle, faithful to transformers 4.57.1 `Qwen3VLForConditionalGeneration`:
//! vision tower with DeepStack, text decoder with interleaved MRoPE and a causal mask, `get_rope_index`.
//!
//! candle-transformers' own `qwen3_vl` is not used: it builds no causal mask in prefill and applies 1-D RoPE.
//! The video preprocessor (frames to patches, grid, timestamps) is [`processor`].

pub mod activation;
pub mod attention;
pub mod config;
pub mod device;
pub mod processor;
pub mod text;
pub mod vision;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_nn::VarBuilder;

pub use attention::TreeRow;
pub use candle_core::{DType, Device, Tensor};
pub use config::{Config, TextConfig, VisionConfig};
pub use device::{DeviceSpec, Precision};
pub use text::{DeepStack, KvCache, Position3, TextModel};
pub use vision::{GridThw, VisionModel, VisionOutput};

/// What can go wrong loading or running the model. Messages name the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {0} does not exist")]
    MissingDir(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid Qwen3-VL config.json: {source}")]
    BadConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {field} = {value} is {reason}")]
    ConfigValue {
        path: PathBuf,
        field: &'static str,
        value: usize,
        reason: &'static str,
    },
    #[error(
        "unsupported architecture in {path}: model_type is {found:?}, expected \"qwen3_vl\" (dense Qwen3-VL)"
    )]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("no weights in {0}: expected model.safetensors or model.safetensors.index.json")]
    MissingWeights(PathBuf),
    #[error("weights index {path} is invalid: {reason}")]
    BadIndex { path: PathBuf, reason: String },
    #[error("cannot load weights from {dir} (missing, corrupt or wrongly shaped tensor?): {source}")]
    Weights {
        dir: PathBuf,
        source: candle_core::Error,
    },
    #[error("hub download of {repo}/{file} failed: {reason}")]
    Hub {
        repo: String,
        file: String,
        reason: String,
    },
    #[error("{0}")]
    Device(String),
    #[error("input has {tokens} tokens, more than the limit of {limit}")]
    TooLong { tokens: usize, limit: usize },
    #[error("input does not match the video: {0}")]
    BadInput(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Whether `model`, not an existing path, names a Hugging Face Hub repository (`owner/name`).
pub fn looks_like_hub_id(model: &str) -> bool {
    model.split('/').count() == 2 && !model.starts_with('.') && !model.starts_with('/')
}

/// Files of a checkpoint on local disk.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json` when the checkpoint ships one.
    pub tokenizer: Option<PathBuf>,
}

impl CheckpointFiles {
    /// Resolve a local checkpoint directory, or (when `model` is not an existing path and looks like
    /// `owner/name`) download config, weights and tokenizer through the Hugging Face hub cache.
    pub fn resolve(model: &str) -> Result<Self, ModelError> {
        let path = Path::new(model);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if !looks_like_hub_id(model) {
            return Err(ModelError::MissingDir(path.to_path_buf()));
        }
        Self::from_hub(model)
    }

    /// What [`Self::resolve`] would check without downloading anything: a local directory must hold
    /// the checkpoint files; a hub id (`owner/name`) is accepted as is (resolved when loading).
    pub fn check(model: &str) -> Result<(), ModelError> {
        let path = Path::new(model);
        if path.is_dir() {
            return Self::from_dir(path).map(|_| ());
        }
        if looks_like_hub_id(model) {
            Ok(())
        } else {
            Err(ModelError::MissingDir(path.to_path_buf()))
        }
    }

    /// A local directory with config.json and model.safetensors (or sharded with an index).
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::MissingDir(dir.to_path_buf()));
        }
        let config = dir.join("config.json");
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let weights = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_names(&index)?.into_iter().map(|f| dir.join(f)).collect()
        } else {
            return Err(ModelError::MissingWeights(dir.to_path_buf()));
        };
        let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
        })
    }

    fn from_hub(repo_id: &str) -> Result<Self, ModelError> {
        let hub_err = |file: &str, e: hf_hub::api::sync::ApiError| ModelError::Hub {
            repo: repo_id.to_string(),
            file: file.to_string(),
            reason: e.to_string(),
        };
        let api = hf_hub::api::sync::Api::new().map_err(|e| hub_err("(client)", e))?;
        let repo = api.model(repo_id.to_string());
        let config = repo.get("config.json").map_err(|e| hub_err("config.json", e))?;
        let weights = match repo.get("model.safetensors.index.json") {
            Ok(index) => shard_names(&index)?
                .into_iter()
                .map(|f| repo.get(&f).map_err(|e| hub_err(&f, e)))
                .collect::<Result<Vec<_>, _>>()?,
            Err(_) => vec![
                repo.get("model.safetensors")
                    .map_err(|e| hub_err("model.safetensors", e))?,
            ],
        };
        let tokenizer = repo.get("tokenizer.json").ok();
        // The video processor's settings (released checkpoints override the class pixel budget): the first of
        // the files transformers tries, in its order. It lands in the same snapshot directory, where
        // `VideoProcessor::from_checkpoint_dir` reads it.
        for name in processor::VIDEO_PROCESSOR_CONFIG_FILES {
            if repo.get(name).is_ok() {
                break;
            }
        }
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self {
            dir,
            config,
            weights,
            tokenizer,
        })
    }
}

fn shard_names(index: &Path) -> Result<Vec<String>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::Io {
        path: index.into(),
        source: e,
    })?;
    let bad = |reason: String| ModelError::BadIndex {
        path: index.into(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map".into()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    Ok(files)
}

/// Read and check a checkpoint's config.json.
pub fn read_config(path: &Path) -> Result<Config, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
        path: path.into(),
        source: e,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::BadConfig {
        path: path.into(),
        source: e,
    })?;
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("<missing>");
    if model_type != "qwen3_vl" {
        return Err(ModelError::UnsupportedArchitecture {
            path: path.into(),
            found: model_type.to_string(),
        });
    }
    let config: Config = serde_json::from_value(value).map_err(|e| ModelError::BadConfig {
        path: path.into(),
        source: e,
    })?;
    check_sizes(&config, path)?;
    Ok(config)
}

/// Sizes are checked before any shape is computed: a config.json with a zero head count or a size near
/// `usize::MAX` would otherwise divide by zero or overflow while the model is built. The bounds are far
/// above any released Qwen3-VL (largest dimension 151,936, 64 layers).
fn check_sizes(config: &Config, path: &Path) -> Result<(), ModelError> {
    const LARGE: usize = 1 << 22;
    const LAYERS: usize = 1 << 10;
    const SMALL: usize = 64;
    let t = &config.text_config;
    let v = &config.vision_config;
    let fields: [(&'static str, usize, usize); 17] = [
        ("text_config.vocab_size", t.vocab_size, LARGE),
        ("text_config.hidden_size", t.hidden_size, LARGE),
        ("text_config.intermediate_size", t.intermediate_size, LARGE),
        ("text_config.num_hidden_layers", t.num_hidden_layers, LAYERS),
        ("text_config.num_attention_heads", t.num_attention_heads, LARGE),
        ("text_config.num_key_value_heads", t.num_key_value_heads, LARGE),
        ("text_config.head_dim", t.head_dim, LARGE),
        (
            "text_config.max_position_embeddings",
            t.max_position_embeddings,
            1 << 24,
        ),
        ("vision_config.depth", v.depth, LAYERS),
        ("vision_config.hidden_size", v.hidden_size, LARGE),
        ("vision_config.intermediate_size", v.intermediate_size, LARGE),
        ("vision_config.num_heads", v.num_heads, LARGE),
        ("vision_config.in_channels", v.in_channels, SMALL),
        ("vision_config.patch_size", v.patch_size, SMALL),
        ("vision_config.spatial_merge_size", v.spatial_merge_size, SMALL),
        ("vision_config.temporal_patch_size", v.temporal_patch_size, SMALL),
        ("vision_config.out_hidden_size", v.out_hidden_size, LARGE),
    ];
    let bad = |field, value, reason| ModelError::ConfigValue {
        path: path.into(),
        field,
        value,
        reason,
    };
    for (field, value, max) in fields {
        if value == 0 {
            return Err(bad(field, value, "zero"));
        }
        if value > max {
            return Err(bad(field, value, "implausibly large"));
        }
    }
    if v.num_position_embeddings > LARGE {
        return Err(bad(
            "vision_config.num_position_embeddings",
            v.num_position_embeddings,
            "implausibly large",
        ));
    }
    if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
        return Err(bad(
            "text_config.num_key_value_heads",
            t.num_key_value_heads,
            "not a divisor of num_attention_heads",
        ));
    }
    if !v.hidden_size.is_multiple_of(v.num_heads) {
        return Err(bad(
            "vision_config.num_heads",
            v.num_heads,
            "not a divisor of hidden_size",
        ));
    }
    if let Some(&i) = v.deepstack_visual_indexes.iter().find(|&&i| i >= v.depth) {
        return Err(bad(
            "vision_config.deepstack_visual_indexes",
            i,
            "not below depth",
        ));
    }
    Ok(())
}

/// Qwen3-VL for conditional generation: vision tower + text decoder + LM head.
#[derive(Debug, Clone)]
pub struct Qwen3VL {
    pub visual: VisionModel,
    pub text: TextModel,
    cfg: Config,
    device: Device,
}

impl Qwen3VL {
    /// Build from a config and a VarBuilder over the checkpoint root (names `model.visual.*`,
    /// `model.language_model.*`, `lm_head.*`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let visual = VisionModel::new(&cfg.vision_config, vb.pp("model.visual"))?;
        let text = TextModel::new(
            &cfg.text_config,
            &cfg.mrope_section(),
            cfg.tied_embeddings(),
            vb.clone(),
        )?;
        Ok(Self {
            visual,
            text,
            cfg: cfg.clone(),
            device: vb.device().clone(),
        })
    }

    /// Load a checkpoint on `device` in `precision` (see [`Precision`]: `auto` keeps a GPU model in the stored
    /// dtype and computes in f32 on the CPU). Returns the model and the dtype it runs in.
    pub fn load_on(
        files: &CheckpointFiles,
        device: DeviceSpec,
        precision: Precision,
    ) -> Result<(Self, DType), ModelError> {
        // The config first: a wrong architecture is reported as such, before any weight is opened.
        let cfg = read_config(&files.config)?;
        let dev = device.open().map_err(ModelError::Device)?;
        let reader = Self::open_weights(files)?;
        let dtype = precision.resolve(&device, reader.stored_dtype());
        Ok((Self::from_reader(&cfg, reader, files, &dev, dtype)?, dtype))
    }

    /// Load a checkpoint (local directory or hub id) in `dtype`. The safetensors are read tensor by tensor
    /// ([`weights::SafetensorsReader`]); a tensor stored in another dtype is converted on load.
    pub fn load(files: &CheckpointFiles, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let cfg = read_config(&files.config)?;
        let reader = Self::open_weights(files)?;
        Self::from_reader(&cfg, reader, files, device, dtype)
    }

    /// The checkpoint's weight files, their headers validated (no tensor read yet).
    fn open_weights(files: &CheckpointFiles) -> Result<weights::SafetensorsReader, ModelError> {
        for w in &files.weights {
            if !w.is_file() {
                return Err(ModelError::MissingWeights(w.clone()));
            }
        }
        weights::SafetensorsReader::open(&files.weights).map_err(|e| ModelError::Weights {
            dir: files.dir.clone(),
            source: e,
        })
    }

    fn from_reader(
        cfg: &Config,
        reader: weights::SafetensorsReader,
        files: &CheckpointFiles,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        // Tensor by tensor with positioned reads: the peak is the model plus its largest tensor, not the
        // model twice as with a memory map (see `weights`).
        let vb = VarBuilder::from_backend(Box::new(reader), dtype, device.clone());
        Self::new(cfg, vb).map_err(|e| ModelError::Weights {
            dir: files.dir.clone(),
            source: e,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Budget in bytes of one chunk of f32 attention scores, in the vision tower and the decoder (default
    /// [`attention::DEFAULT_CHUNK_BYTES`]); smaller bounds memory on long videos, larger means fewer chunks.
    pub fn set_attention_chunk_bytes(&mut self, bytes: usize) {
        self.visual.set_attention_chunk_bytes(bytes);
        self.text.set_attention_chunk_bytes(bytes);
    }

    /// The dtype the model computes in.
    pub fn dtype(&self) -> DType {
        self.text.dtype()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `get_rope_index` for one sequence: text tokens advance (t, h, w) together; each visual group (a video's
    /// temporal group is laid out as an image of grid (1, h/m, w/m)) takes positions (s, s + row, s + col)
    /// after the text that precedes it, and the text after it restarts at max + 1. `groups` lists, in order,
    /// the merged (rows, cols) of every visual group in `ids`.
    pub fn rope_positions(
        &self,
        ids: &[u32],
        groups: &[(usize, usize)],
    ) -> Result<Vec<Position3>, ModelError> {
        let pads = [self.cfg.video_token_id, self.cfg.image_token_id];
        let mut out = Vec::with_capacity(ids.len());
        let mut next = 0u32;
        let mut i = 0;
        let mut g = groups.iter();
        while i < ids.len() {
            if pads.contains(&ids[i]) {
                let &(gh, gw) = g.next().ok_or_else(|| {
                    ModelError::BadInput(format!(
                        "more visual token runs than the {} groups given",
                        groups.len()
                    ))
                })?;
                let n = gh * gw;
                if i + n > ids.len() || ids[i..i + n].iter().any(|t| *t != ids[i]) {
                    return Err(ModelError::BadInput(format!(
                        "visual run at token {i} is shorter than its grid {gh}x{gw}"
                    )));
                }
                for r in 0..gh {
                    for c in 0..gw {
                        out.push([next, next + r as u32, next + c as u32]);
                    }
                }
                next += gh.max(gw) as u32;
                i += n;
            } else {
                out.push([next; 3]);
                next += 1;
                i += 1;
            }
        }
        if g.next().is_some() {
            return Err(ModelError::BadInput(
                "fewer visual token runs than video groups".into(),
            ));
        }
        Ok(out)
    }

    /// Merged (rows, cols) of every temporal group of the given videos, in order.
    pub fn groups_of(&self, grids: &[GridThw]) -> Vec<(usize, usize)> {
        let m = self.cfg.vision_config.spatial_merge_size;
        grids
            .iter()
            .flat_map(|g| std::iter::repeat_n((g.h / m, g.w / m), g.t))
            .collect()
    }

    /// Indices of the visual (image/video pad) tokens in `ids`.
    pub fn visual_positions(&self, ids: &[u32]) -> Vec<u32> {
        let pads = [self.cfg.video_token_id, self.cfg.image_token_id];
        ids.iter()
            .enumerate()
            .filter(|(_, t)| pads.contains(t))
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Input embeddings: token embeddings with the visual pad tokens replaced by `visual` rows, in order
    /// (`masked_scatter` in transformers).
    pub fn input_embeds(&self, ids: &[u32], visual: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let pos = self.visual_positions(ids);
        let n_vis = visual.map(|v| v.dim(0)).transpose()?.unwrap_or(0);
        if pos.len() != n_vis {
            return Err(ModelError::BadInput(format!(
                "{} visual tokens in the input but {n_vis} visual features",
                pos.len()
            )));
        }
        let emb = self.text.embed(ids)?;
        let Some(visual) = visual else { return Ok(emb) };
        let visual = visual.to_dtype(emb.dtype())?;
        // Concatenate runs of text rows and visual rows.
        let mut parts = Vec::new();
        let (mut i, mut v) = (0usize, 0usize);
        let is_vis: Vec<bool> = {
            let mut m = vec![false; ids.len()];
            for &p in &pos {
                m[p as usize] = true;
            }
            m
        };
        while i < ids.len() {
            let start = i;
            let kind = is_vis[i];
            while i < ids.len() && is_vis[i] == kind {
                i += 1;
            }
            if kind {
                parts.push(visual.narrow(0, v, i - start)?);
                v += i - start;
            } else {
                parts.push(emb.narrow(0, start, i - start)?);
            }
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Full forward of one sequence: logits `(len, vocab)` at every position, or only at `rows` if given.
    pub fn forward(
        &self,
        ids: &[u32],
        pixel_values: Option<&Tensor>,
        grids: &[GridThw],
        rows: Option<&[usize]>,
    ) -> Result<Tensor, ModelError> {
        let vis = match pixel_values {
            Some(pv) => Some(self.visual.forward(pv, grids)?),
            None => None,
        };
        let positions = self.rope_positions(ids, &self.groups_of(grids))?;
        let mut cache = KvCache::new(self.text.num_layers());
        let hidden = self.forward_tokens(ids, &positions, vis.as_ref(), &mut cache)?;
        let hidden = match rows {
            Some(r) => {
                let idx = Tensor::from_vec(r.iter().map(|&x| x as u32).collect(), r.len(), &self.device)?;
                hidden.index_select(&idx, 0)?
            }
            None => hidden,
        };
        Ok(self.text.logits(&hidden)?)
    }

    /// Decode a chunk of tokens continuing `cache` (positions given), with the visual features of the
    /// chunk's pad tokens in `vis`; returns the final hidden states `(len, hidden)`.
    pub fn forward_tokens(
        &self,
        ids: &[u32],
        positions: &[Position3],
        vis: Option<&VisionOutput>,
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        self.forward_chunk(ids, positions, vis, cache, None)
    }

    /// Decode a packed prefix tree on top of the trunk in `cache` ([`TextModel::forward_tree`]): `ids` are
    /// branches laid end to end, `rows[i]` says which keys token `i` sees. The branches stay in `cache`.
    pub fn forward_tree_tokens(
        &self,
        ids: &[u32],
        positions: &[Position3],
        vis: Option<&VisionOutput>,
        rows: &[TreeRow],
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        self.forward_chunk(ids, positions, vis, cache, Some(rows))
    }

    fn forward_chunk(
        &self,
        ids: &[u32],
        positions: &[Position3],
        vis: Option<&VisionOutput>,
        cache: &mut KvCache,
        tree: Option<&[TreeRow]>,
    ) -> Result<Tensor, ModelError> {
        let embeds = self.input_embeds(ids, vis.map(|v| &v.embeds))?;
        let pos = self.visual_positions(ids);
        let positions_t;
        let deepstack = match vis {
            Some(v) if !pos.is_empty() && !v.deepstack.is_empty() => {
                let n = pos.len();
                positions_t = Tensor::from_vec(pos, n, &self.device)?;
                Some(DeepStack {
                    positions: &positions_t,
                    features: &v.deepstack,
                })
            }
            _ => None,
        };
        let hidden = match tree {
            Some(rows) => self
                .text
                .forward_tree(&embeds, positions, deepstack, rows, cache)?,
            None => self.text.forward_embeds(&embeds, positions, deepstack, cache)?,
        };
        Ok(hidden)
    }
}
