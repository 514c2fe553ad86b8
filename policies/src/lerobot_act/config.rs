//! LeRobot 0.4.4's `ACTConfig` (`lerobot/policies/act/configuration_act.py`), read from a checkpoint's
//! `config.json` as `PreTrainedConfig.from_pretrained` reads it: unknown fields ignored, missing ones at
//! LeRobot's defaults, the options LeRobot itself refuses (or that torchvision cannot build) refused
//! here with the field named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Result, config_err};
use crate::smolvla::lerobot::{ACTION_KEY, Feature, FeatureType, Features, NormMode, STATE_KEY, read_json};

/// LeRobot's `OBS_ENV_STATE`.
pub const ENV_STATE_KEY: &str = "observation.environment_state";

fn d_one() -> usize {
    1
}
fn d_chunk() -> usize {
    100
}
fn d_norm_map() -> BTreeMap<FeatureType, NormMode> {
    BTreeMap::from([
        (FeatureType::Visual, NormMode::MeanStd),
        (FeatureType::State, NormMode::MeanStd),
        (FeatureType::Action, NormMode::MeanStd),
    ])
}
fn d_backbone() -> String {
    "resnet18".into()
}
fn d_backbone_weights() -> Option<String> {
    Some("ResNet18_Weights.IMAGENET1K_V1".into())
}
fn d_dim() -> usize {
    512
}
fn d_heads() -> usize {
    8
}
fn d_ff() -> usize {
    3200
}
fn d_relu() -> String {
    "relu".into()
}
fn d_four() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_latent() -> usize {
    32
}
fn d_dropout() -> f64 {
    0.1
}
fn d_kl() -> f64 {
    10.0
}
fn d_lr() -> f64 {
    1e-5
}
fn d_wd() -> f64 {
    1e-4
}

/// `replace_final_stride_with_dilation` is annotated `int` with default `False`: accept both.
fn bool_or_int<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::Number(n) => Ok(n.as_f64().is_some_and(|v| v != 0.0)),
        Value::Null => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "expected a bool or an integer, got {other}"
        ))),
    }
}

/// The fields of LeRobot 0.4.4's `ACTConfig`, with its defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeRobotActConfig {
    #[serde(default)]
    pub input_features: Features,
    #[serde(default)]
    pub output_features: Features,
    #[serde(default = "d_one")]
    pub n_obs_steps: usize,
    #[serde(default = "d_chunk")]
    pub chunk_size: usize,
    #[serde(default = "d_chunk")]
    pub n_action_steps: usize,
    #[serde(default = "d_norm_map")]
    pub normalization_mapping: BTreeMap<FeatureType, NormMode>,
    #[serde(default = "d_backbone")]
    pub vision_backbone: String,
    #[serde(default = "d_backbone_weights")]
    pub pretrained_backbone_weights: Option<String>,
    #[serde(default, deserialize_with = "bool_or_int")]
    pub replace_final_stride_with_dilation: bool,
    #[serde(default)]
    pub pre_norm: bool,
    #[serde(default = "d_dim")]
    pub dim_model: usize,
    #[serde(default = "d_heads")]
    pub n_heads: usize,
    #[serde(default = "d_ff")]
    pub dim_feedforward: usize,
    #[serde(default = "d_relu")]
    pub feedforward_activation: String,
    #[serde(default = "d_four")]
    pub n_encoder_layers: usize,
    #[serde(default = "d_one")]
    pub n_decoder_layers: usize,
    #[serde(default = "d_true")]
    pub use_vae: bool,
    #[serde(default = "d_latent")]
    pub latent_dim: usize,
    #[serde(default = "d_four")]
    pub n_vae_encoder_layers: usize,
    #[serde(default)]
    pub temporal_ensemble_coeff: Option<f64>,
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    #[serde(default = "d_kl")]
    pub kl_weight: f64,
    #[serde(default = "d_lr")]
    pub optimizer_lr: f64,
    #[serde(default = "d_wd")]
    pub optimizer_weight_decay: f64,
    #[serde(default = "d_lr")]
    pub optimizer_lr_backbone: f64,
}

/// The transformer's feed-forward activation (`get_activation_fn`; `glu` halves the width, which
/// LeRobot's `linear2` cannot take, so it is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Gelu,
}

/// Everything the network's shape depends on, derived from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct ActDims {
    /// `observation.state` size, when the config has that STATE feature.
    pub state_dim: Option<usize>,
    /// The ENV feature's size, when there is one.
    pub env_state_dim: Option<usize>,
    pub action_dim: usize,
    /// Camera keys in `input_features` order (the order of the image tokens).
    pub cameras: Vec<Feature>,
    /// BasicBlocks per ResNet stage: `[2, 2, 2, 2]` (resnet18) or `[3, 4, 6, 3]` (resnet34).
    pub resnet_blocks: [usize; 4],
    pub chunk_size: usize,
    pub dim_model: usize,
    pub n_heads: usize,
    pub dim_feedforward: usize,
    pub activation: Activation,
    pub pre_norm: bool,
    pub n_encoder_layers: usize,
    pub n_decoder_layers: usize,
    pub use_vae: bool,
    pub latent_dim: usize,
    pub n_vae_encoder_layers: usize,
    pub dropout: f64,
}

impl ActDims {
    /// Tokens before the image tokens: the latent, then the robot state and the env state if present
    /// (`n_1d_tokens`).
    pub fn n_1d_tokens(&self) -> usize {
        1 + usize::from(self.state_dim.is_some()) + usize::from(self.env_state_dim.is_some())
    }

    /// Length of the VAE encoder's input: `[cls, (robot_state), *actions]`.
    pub fn vae_tokens(&self) -> usize {
        1 + usize::from(self.state_dim.is_some()) + self.chunk_size
    }
}

/// `config.json` of a LeRobot ACT checkpoint: the typed view, the shapes derived from it, and the file
/// as written (saved back unchanged apart from the fields toprl sets).
#[derive(Debug, Clone)]
pub struct ActFolderConfig {
    pub path: PathBuf,
    pub cfg: LeRobotActConfig,
    pub dims: ActDims,
    pub raw: Value,
}

impl LeRobotActConfig {
    /// The `config.json` LeRobot 0.4.4 writes for this config: `"type": "act"`, every `ACTConfig` field,
    /// and `PreTrainedConfig`'s own fields (CPU device, no AMP / PEFT, no hub push).
    pub fn to_config_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("type".into(), Value::from("act"));
        if let Ok(Value::Object(fields)) = serde_json::to_value(self) {
            map.extend(fields);
        }
        for (key, value) in [
            ("device", Value::from("cpu")),
            ("use_amp", Value::from(false)),
            ("use_peft", Value::from(false)),
            ("push_to_hub", Value::from(false)),
            ("repo_id", Value::Null),
            ("private", Value::Null),
            ("tags", Value::Null),
            ("license", Value::Null),
            ("pretrained_path", Value::Null),
        ] {
            map.entry(key).or_insert(value);
        }
        Value::Object(map)
    }
}

impl ActFolderConfig {
    /// Read `dir/config.json`, refusing any policy type but `act`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(crate::smolvla::lerobot::CONFIG_FILE);
        let raw = read_json(&path)?;
        Self::from_value(path, raw)
    }

    /// Parse and check an already-read `config.json` (`path` is only used to name errors).
    pub fn from_value(path: PathBuf, raw: Value) -> Result<Self> {
        crate::smolvla::lerobot::expect_policy_type(&path, &raw, "act")?;
        let cfg: LeRobotActConfig =
            serde_json::from_value(raw.clone()).map_err(|e| config_err(&path, e.to_string()))?;
        let dims = derive_dims(&cfg).map_err(|r| config_err(&path, r))?;
        Ok(Self { path, cfg, dims, raw })
    }

    /// Set a top-level field of the file as written (the typed view is not re-read).
    pub fn set_raw(&mut self, key: &str, value: Value) {
        if let Value::Object(map) = &mut self.raw {
            map.insert(key.to_string(), value);
        }
    }
}

/// `ACTConfig.__post_init__` and `validate_features`, plus what this port supports, then the shapes.
pub fn derive_dims(cfg: &LeRobotActConfig) -> std::result::Result<ActDims, String> {
    let resnet_blocks = match cfg.vision_backbone.as_str() {
        "resnet18" => [2, 2, 2, 2],
        "resnet34" => [3, 4, 6, 3],
        other if other.starts_with("resnet") => {
            return Err(format!(
                "key `vision_backbone` is \"{other}\"; toprl builds the BasicBlock ResNets \"resnet18\" and \"resnet34\""
            ));
        }
        other => {
            return Err(format!(
                "key `vision_backbone` is \"{other}\", expected one of the ResNet variants"
            ));
        }
    };
    if cfg.replace_final_stride_with_dilation {
        // torchvision's BasicBlock raises "Dilation > 1 not supported in BasicBlock".
        return Err(
            "key `replace_final_stride_with_dilation` is true, which torchvision's resnet18/34 refuse; expected false"
                .into(),
        );
    }
    if cfg.n_obs_steps != 1 {
        return Err(format!(
            "key `n_obs_steps` is {}, expected 1 (LeRobot's ACT handles one observation step)",
            cfg.n_obs_steps
        ));
    }
    if cfg.chunk_size == 0 || cfg.n_action_steps == 0 || cfg.n_action_steps > cfg.chunk_size {
        return Err(format!(
            "key `n_action_steps` is {} with `chunk_size` {}, expected 1 <= n_action_steps <= chunk_size",
            cfg.n_action_steps, cfg.chunk_size
        ));
    }
    if cfg.temporal_ensemble_coeff.is_some() && cfg.n_action_steps > 1 {
        return Err(format!(
            "key `temporal_ensemble_coeff` is set with `n_action_steps` {}, expected n_action_steps 1",
            cfg.n_action_steps
        ));
    }
    if cfg.dim_model == 0 || cfg.n_heads == 0 || !cfg.dim_model.is_multiple_of(cfg.n_heads) {
        return Err(format!(
            "key `dim_model` is {} with `n_heads` {}, expected a positive multiple of n_heads",
            cfg.dim_model, cfg.n_heads
        ));
    }
    if !cfg.dim_model.is_multiple_of(4) {
        // The 2D sine embedding interleaves sin/cos over dim_model / 2 channels.
        return Err(format!(
            "key `dim_model` is {}, expected a multiple of 4 (2D sinusoidal image position embedding)",
            cfg.dim_model
        ));
    }
    let activation = match cfg.feedforward_activation.as_str() {
        "relu" => Activation::Relu,
        "gelu" => Activation::Gelu,
        other => {
            return Err(format!(
                "key `feedforward_activation` is \"{other}\", expected \"relu\" or \"gelu\""
            ));
        }
    };
    if !(0.0..1.0).contains(&cfg.dropout) {
        return Err(format!("key `dropout` is {}, expected 0 <= p < 1", cfg.dropout));
    }
    let vector = |f: &Feature, at: &str| -> std::result::Result<usize, String> {
        match f.shape.as_slice() {
            [n] if *n > 0 => Ok(*n),
            other => Err(format!(
                "key `{at}.{}.shape` is {other:?}, expected [n] with n > 0",
                f.key
            )),
        }
    };
    let state_dim = cfg
        .input_features
        .0
        .iter()
        .find(|f| f.kind == FeatureType::State && f.key == STATE_KEY)
        .map(|f| vector(f, "input_features"))
        .transpose()?;
    let env_state_dim = cfg
        .input_features
        .of_kind(FeatureType::Env)
        .next()
        .map(|f| vector(f, "input_features"))
        .transpose()?;
    let action = cfg
        .output_features
        .0
        .iter()
        .find(|f| f.kind == FeatureType::Action && f.key == ACTION_KEY)
        .ok_or_else(|| format!("key `output_features.{ACTION_KEY}` (type ACTION) is missing"))?;
    let action_dim = vector(action, "output_features")?;
    let cameras: Vec<Feature> = cfg.input_features.of_kind(FeatureType::Visual).cloned().collect();
    for f in &cameras {
        if f.shape.len() != 3 || f.shape[0] != 3 || f.shape[1] == 0 || f.shape[2] == 0 {
            return Err(format!(
                "key `input_features.{}.shape` is {:?}, expected [3, H, W]",
                f.key, f.shape
            ));
        }
    }
    if cameras.is_empty() && env_state_dim.is_none() {
        return Err(
            "key `input_features` has no VISUAL and no ENV feature; ACT needs at least one image or the environment state"
                .into(),
        );
    }
    Ok(ActDims {
        state_dim,
        env_state_dim,
        action_dim,
        cameras,
        resnet_blocks,
        chunk_size: cfg.chunk_size,
        dim_model: cfg.dim_model,
        n_heads: cfg.n_heads,
        dim_feedforward: cfg.dim_feedforward,
        activation,
        pre_norm: cfg.pre_norm,
        n_encoder_layers: cfg.n_encoder_layers,
        n_decoder_layers: cfg.n_decoder_layers,
        use_vae: cfg.use_vae,
        latent_dim: cfg.latent_dim,
        n_vae_encoder_layers: cfg.n_vae_encoder_layers,
        dropout: cfg.dropout,
    })
}
