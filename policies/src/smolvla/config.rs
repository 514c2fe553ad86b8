//! The two configs a SmolVLA checkpoint needs, read as LeRobot / transformers read them: the policy's
//! `config.json` (LeRobot 0.4.4 `SmolVLAConfig`) and the backbone's `config.json` (transformers
//! `SmolVLMConfig`, found in `vlm_model_name`). Unknown fields are ignored (both tools write many);
//! missing fields take the defaults of those classes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};

/// One entry of LeRobot's `input_features` / `output_features`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyFeature {
    /// `STATE`, `VISUAL`, `ACTION`, `ENV`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub shape: Vec<usize>,
}

/// A JSON object of features that keeps its key order (a plain map would sort the cameras).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features(pub Vec<(String, PolicyFeature)>);

impl Features {
    pub fn get(&self, key: &str) -> Option<&PolicyFeature> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, f)| f)
    }
}

impl Serialize for Features {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Features {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Features;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of features {name: {type, shape}}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Features, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, PolicyFeature>()? {
                    out.push((k, v));
                }
                Ok(Features(out))
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Features, E> {
                Ok(Features::default())
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// LeRobot 0.4.4 `SmolVLAConfig` (configuration_smolvla.py): the fields the model uses, with the same
/// defaults. Fields LeRobot writes that the model does not need are ignored on read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmolVlaConfig {
    /// Must be `"smolvla"`.
    #[serde(rename = "type")]
    pub policy_type: String,
    /// In file order (LeRobot iterates cameras in the order of this JSON object).
    pub input_features: Features,
    pub output_features: Features,
    pub n_obs_steps: usize,
    pub chunk_size: usize,
    pub n_action_steps: usize,
    /// `{"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}` by default.
    pub normalization_mapping: BTreeMap<String, String>,
    pub max_state_dim: usize,
    pub max_action_dim: usize,
    /// `(width, height)` every camera is resized-with-padding to (LeRobot passes it as `*args`).
    pub resize_imgs_with_padding: Option<[usize; 2]>,
    pub empty_cameras: usize,
    pub adapt_to_pi_aloha: bool,
    pub use_delta_joint_actions_aloha: bool,
    pub tokenizer_max_length: usize,
    pub num_steps: usize,
    pub use_cache: bool,
    pub freeze_vision_encoder: bool,
    pub train_expert_only: bool,
    pub train_state_proj: bool,
    pub optimizer_lr: f64,
    pub optimizer_betas: [f64; 2],
    pub optimizer_eps: f64,
    pub optimizer_weight_decay: f64,
    pub optimizer_grad_clip_norm: f64,
    pub scheduler_warmup_steps: usize,
    pub scheduler_decay_steps: usize,
    pub scheduler_decay_lr: f64,
    pub vlm_model_name: String,
    pub load_vlm_weights: bool,
    pub add_image_special_tokens: bool,
    pub attention_mode: String,
    pub prefix_length: i64,
    pub pad_language_to: String,
    pub num_expert_layers: i64,
    pub num_vlm_layers: i64,
    pub self_attn_every_n_layers: i64,
    pub expert_width_multiplier: f64,
    pub min_period: f64,
    pub max_period: f64,
}

impl Default for SmolVlaConfig {
    fn default() -> Self {
        let norm = [
            ("VISUAL", "IDENTITY"),
            ("STATE", "MEAN_STD"),
            ("ACTION", "MEAN_STD"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Self {
            policy_type: "smolvla".into(),
            input_features: Features::default(),
            output_features: Features::default(),
            n_obs_steps: 1,
            chunk_size: 50,
            n_action_steps: 50,
            normalization_mapping: norm,
            max_state_dim: 32,
            max_action_dim: 32,
            resize_imgs_with_padding: Some([512, 512]),
            empty_cameras: 0,
            adapt_to_pi_aloha: false,
            use_delta_joint_actions_aloha: false,
            tokenizer_max_length: 48,
            num_steps: 10,
            use_cache: true,
            freeze_vision_encoder: true,
            train_expert_only: true,
            train_state_proj: true,
            optimizer_lr: 1e-4,
            optimizer_betas: [0.9, 0.95],
            optimizer_eps: 1e-8,
            optimizer_weight_decay: 1e-10,
            optimizer_grad_clip_norm: 10.0,
            scheduler_warmup_steps: 1_000,
            scheduler_decay_steps: 30_000,
            scheduler_decay_lr: 2.5e-6,
            vlm_model_name: "HuggingFaceTB/SmolVLM2-500M-Video-Instruct".into(),
            load_vlm_weights: false,
            add_image_special_tokens: false,
            attention_mode: "cross_attn".into(),
            prefix_length: -1,
            pad_language_to: "longest".into(),
            num_expert_layers: -1,
            num_vlm_layers: 16,
            self_attn_every_n_layers: 2,
            expert_width_multiplier: 0.75,
            min_period: 4e-3,
            max_period: 4.0,
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| PolicyError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl SmolVlaConfig {
    /// Read a LeRobot `config.json`; refuses another policy type and the options this port does not
    /// implement (each named with its expected value).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: Self = read_json(path)?;
        cfg.validate().map_err(|reason| PolicyError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Check the options the port supports; the error names the field and the expected value.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.policy_type != "smolvla" {
            return Err(format!(
                "field `type` is {:?}, expected \"smolvla\"",
                self.policy_type
            ));
        }
        if self.attention_mode != "cross_attn" {
            return Err(format!(
                "field `attention_mode` is {:?}; only \"cross_attn\" (LeRobot's default) is supported",
                self.attention_mode
            ));
        }
        if self.add_image_special_tokens {
            return Err(
                "field `add_image_special_tokens` is true; only false (LeRobot's default) is supported"
                    .into(),
            );
        }
        if self.prefix_length > 0 {
            return Err(format!(
                "field `prefix_length` is {}; only -1 (no prefix padding, LeRobot's default) is supported",
                self.prefix_length
            ));
        }
        if self.adapt_to_pi_aloha || self.use_delta_joint_actions_aloha {
            return Err("fields `adapt_to_pi_aloha` / `use_delta_joint_actions_aloha` must be false".into());
        }
        if self.chunk_size == 0 || self.num_steps == 0 {
            return Err("fields `chunk_size` and `num_steps` must be > 0".into());
        }
        if self.n_action_steps > self.chunk_size {
            return Err(format!(
                "field `n_action_steps` ({}) exceeds `chunk_size` ({})",
                self.n_action_steps, self.chunk_size
            ));
        }
        if let Some(d) = self.state_dim()
            && d > self.max_state_dim
        {
            return Err(format!(
                "observation.state has {d} dims > max_state_dim {}",
                self.max_state_dim
            ));
        }
        if let Some(d) = self.action_dim()
            && d > self.max_action_dim
        {
            return Err(format!(
                "action has {d} dims > max_action_dim {}",
                self.max_action_dim
            ));
        }
        Ok(())
    }

    /// Camera feature names in LeRobot's order: `config.image_features` keeps the `VISUAL` entries
    /// of `input_features` in the order of the JSON object.
    pub fn image_features(&self) -> Vec<String> {
        self.input_features
            .0
            .iter()
            .filter(|(_, f)| f.kind == "VISUAL")
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Unpadded state dimension (`observation.state` shape), when the config declares it.
    pub fn state_dim(&self) -> Option<usize> {
        self.input_features
            .get("observation.state")
            .and_then(|f| f.shape.first().copied())
    }

    /// Unpadded action dimension (`action` shape), when the config declares it.
    pub fn action_dim(&self) -> Option<usize> {
        self.output_features
            .get("action")
            .and_then(|f| f.shape.first().copied())
    }
}

/// transformers `LlamaConfig` fields SmolVLA uses (the text model and, copied, the action expert).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (as LlamaConfig).
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads` (as LlamaConfig).
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub hidden_act: String,
}

impl Default for TextConfig {
    fn default() -> Self {
        // transformers 4.57 LlamaConfig defaults, with SmolVLMConfig's rms_norm_eps 1e-5.
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            rms_norm_eps: 1e-5,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: "silu".into(),
        }
    }
}

impl TextConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

/// transformers `SmolVLMVisionConfig` (SigLIP) fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
}

impl Default for VisionConfig {
    fn default() -> Self {
        // transformers 4.57 SmolVLMVisionConfig defaults.
        Self {
            hidden_size: 1152,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            layer_norm_eps: 1e-6,
            hidden_act: "gelu_pytorch_tanh".into(),
        }
    }
}

/// transformers `SmolVLMConfig` (the `config.json` in `vlm_model_name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VlmConfig {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub scale_factor: usize,
    pub tie_word_embeddings: bool,
}

impl Default for VlmConfig {
    fn default() -> Self {
        Self {
            text_config: TextConfig::default(),
            vision_config: VisionConfig::default(),
            scale_factor: 2,
            tie_word_embeddings: false,
        }
    }
}

impl VlmConfig {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: Self = read_json(path)?;
        cfg.validate().map_err(|reason| PolicyError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        if t.num_attention_heads == 0
            || t.kv_heads() == 0
            || !t.num_attention_heads.is_multiple_of(t.kv_heads())
        {
            return Err(format!(
                "text_config: num_attention_heads {} must be a positive multiple of num_key_value_heads {}",
                t.num_attention_heads,
                t.kv_heads()
            ));
        }
        if !t.head_dim().is_multiple_of(2) {
            return Err(format!(
                "text_config.head_dim {} must be even (RoPE)",
                t.head_dim()
            ));
        }
        if t.hidden_act != "silu" {
            return Err(format!(
                "text_config.hidden_act is {:?}, expected \"silu\"",
                t.hidden_act
            ));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "vision_config.hidden_size {} must be a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision_config.image_size {} must be a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        let side = v.image_size / v.patch_size;
        if self.scale_factor == 0 || !side.is_multiple_of(self.scale_factor) {
            return Err(format!(
                "scale_factor {} must divide the patch grid side {side}",
                self.scale_factor
            ));
        }
        if !matches!(v.hidden_act.as_str(), "gelu_pytorch_tanh" | "gelu") {
            return Err(format!(
                "vision_config.hidden_act is {:?}, expected \"gelu_pytorch_tanh\" or \"gelu\"",
                v.hidden_act
            ));
        }
        Ok(())
    }
}

/// Python's `get_intermediate_size` in smolvlm_with_expert.py (the expert MLP width).
pub fn expert_intermediate_size(hidden: usize) -> usize {
    let h = (2 * hidden) / 3; // int(2 * hidden_dim / 3)
    let h = 4 * h;
    256 * h.div_ceil(256)
}

/// The shapes SmolVLA derives from its two configs (SmolVLMWithExpertModel.__init__).
#[derive(Debug, Clone, PartialEq)]
pub struct SmolVlaDims {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub scale_factor: usize,
    pub tie_word_embeddings: bool,
    /// VLM text layers kept (`num_vlm_layers`, at most the text model's).
    pub vlm_layers: usize,
    pub expert_layers: usize,
    pub expert_hidden: usize,
    pub expert_intermediate: usize,
    pub self_attn_every_n_layers: i64,
    pub max_state_dim: usize,
    pub max_action_dim: usize,
    pub chunk_size: usize,
    pub num_steps: usize,
    pub min_period: f64,
    pub max_period: f64,
    /// `(width, height)` images are resized-with-padding to, or `None`.
    pub resize: Option<[usize; 2]>,
}

impl SmolVlaDims {
    pub fn new(cfg: &SmolVlaConfig, vlm: &VlmConfig) -> std::result::Result<Self, String> {
        cfg.validate()?;
        vlm.validate()?;
        let text_layers = vlm.text_config.num_hidden_layers;
        let vlm_layers = if cfg.num_vlm_layers > 0 {
            (cfg.num_vlm_layers as usize).min(text_layers)
        } else {
            text_layers
        };
        let expert_layers = if cfg.num_expert_layers > 0 {
            let n = cfg.num_expert_layers as usize;
            if !vlm_layers.is_multiple_of(n) {
                return Err(format!(
                    "num_expert_layers {n} must divide the number of VLM layers {vlm_layers}"
                ));
            }
            n
        } else {
            vlm_layers
        };
        if vlm_layers == 0 {
            return Err(
                "the VLM keeps no text layer (num_vlm_layers / text_config.num_hidden_layers)".into(),
            );
        }
        // int(hidden_size * expert_width_multiplier)
        let expert_hidden = (vlm.text_config.hidden_size as f64 * cfg.expert_width_multiplier) as usize;
        Ok(Self {
            text: vlm.text_config.clone(),
            vision: vlm.vision_config.clone(),
            scale_factor: vlm.scale_factor,
            tie_word_embeddings: vlm.tie_word_embeddings,
            vlm_layers,
            expert_layers,
            expert_hidden,
            expert_intermediate: expert_intermediate_size(expert_hidden),
            self_attn_every_n_layers: cfg.self_attn_every_n_layers,
            max_state_dim: cfg.max_state_dim,
            max_action_dim: cfg.max_action_dim,
            chunk_size: cfg.chunk_size,
            num_steps: cfg.num_steps,
            min_period: cfg.min_period,
            max_period: cfg.max_period,
            resize: cfg.resize_imgs_with_padding,
        })
    }

    /// Whether VLM layer `i` is a self-attention layer (joint prefix + action attention); the others
    /// cross-attend from the actions to the VLM layer's keys and values.
    pub fn is_self_attn_layer(&self, i: usize) -> bool {
        self.self_attn_every_n_layers > 0 && i.is_multiple_of(self.self_attn_every_n_layers as usize)
    }

    /// Expert layer paired with VLM layer `i` (`get_model_layers`): with fewer expert layers, only
    /// every `vlm_layers / expert_layers`-th VLM layer has one.
    pub fn expert_index(&self, i: usize) -> Option<usize> {
        let multiple_of = self.vlm_layers / self.expert_layers;
        match i.checked_div(multiple_of) {
            None => Some(i),
            Some(_) if i > 0 && !i.is_multiple_of(multiple_of) => None,
            Some(j) => Some(j),
        }
    }

    /// Image tokens per camera after the pixel shuffle.
    pub fn image_tokens(&self) -> usize {
        let side = self.vision.image_size / self.vision.patch_size;
        side * side / (self.scale_factor * self.scale_factor)
    }
}
