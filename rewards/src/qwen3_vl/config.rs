//! Qwen3-VL configuration, read from the checkpoint's own `config.json` (transformers 4.57.1
//! `Qwen3VLConfig`, `Qwen3VLTextConfig`, `Qwen3VLVisionConfig`).
//!
//! Unlike toprl's own configs these structs accept unknown fields: a checkpoint's config.json carries
//! many keys (architectures, dtype, transformers_version, ...) that do not shape the model. Defaults are
//! the transformers defaults for every field a checkpoint may omit.

use serde::Deserialize;

/// Top-level `config.json` of a `Qwen3VLForConditionalGeneration` checkpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    /// Must be `qwen3_vl` (dense). MoE (`qwen3_vl_moe`) and other families are rejected on load.
    pub model_type: String,
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    #[serde(default = "default_image_token_id")]
    pub image_token_id: u32,
    #[serde(default = "default_video_token_id")]
    pub video_token_id: u32,
    #[serde(default = "default_vision_start_token_id")]
    pub vision_start_token_id: u32,
    #[serde(default = "default_vision_end_token_id")]
    pub vision_end_token_id: u32,
    /// Tie `lm_head` to the token embedding (2B/4B: true; 8B/32B: false).
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// `rope_scaling` of the text model: the multimodal RoPE split (`mrope_section`, interleaved).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeScaling {
    #[serde(default = "default_mrope_section")]
    pub mrope_section: Vec<usize>,
    #[serde(default = "default_true")]
    pub mrope_interleaved: bool,
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
}

/// `text_config`: the Qwen3 decoder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TextConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// `vision_config`: the ViT with DeepStack mergers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    #[serde(default = "default_gelu_tanh")]
    pub hidden_act: String,
    pub intermediate_size: usize,
    pub num_heads: usize,
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_two")]
    pub spatial_merge_size: usize,
    #[serde(default = "default_two")]
    pub temporal_patch_size: usize,
    pub out_hidden_size: usize,
    #[serde(default = "default_num_position_embeddings")]
    pub num_position_embeddings: usize,
    #[serde(default)]
    pub deepstack_visual_indexes: Vec<usize>,
}

impl Config {
    /// Multimodal RoPE split of the rotary half-dimension between (t, h, w).
    pub fn mrope_section(&self) -> Vec<usize> {
        self.text_config
            .rope_scaling
            .as_ref()
            .map(|r| r.mrope_section.clone())
            .unwrap_or_else(default_mrope_section)
    }

    /// Whether `lm_head` shares the token embedding's weight.
    pub fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings || self.text_config.tie_word_embeddings
    }

    /// Number of parameters the model allocates (tied head counted once), from shapes alone.
    pub fn num_parameters(&self) -> usize {
        self.parameter_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Every weight the model reads, by checkpoint name, with its shape.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let t = &self.text_config;
        let v = &self.vision_config;
        let mut out = Vec::new();
        let mut push = |name: String, shape: Vec<usize>| out.push((name, shape));
        let lm = "model.language_model";
        push(
            format!("{lm}.embed_tokens.weight"),
            vec![t.vocab_size, t.hidden_size],
        );
        let q = t.num_attention_heads * t.head_dim;
        let kv = t.num_key_value_heads * t.head_dim;
        for i in 0..t.num_hidden_layers {
            let p = format!("{lm}.layers.{i}");
            for (n, o, inp) in [
                ("q_proj", q, t.hidden_size),
                ("k_proj", kv, t.hidden_size),
                ("v_proj", kv, t.hidden_size),
            ] {
                push(format!("{p}.self_attn.{n}.weight"), vec![o, inp]);
                if t.attention_bias {
                    push(format!("{p}.self_attn.{n}.bias"), vec![o]);
                }
            }
            push(format!("{p}.self_attn.o_proj.weight"), vec![t.hidden_size, q]);
            if t.attention_bias {
                push(format!("{p}.self_attn.o_proj.bias"), vec![t.hidden_size]);
            }
            push(format!("{p}.self_attn.q_norm.weight"), vec![t.head_dim]);
            push(format!("{p}.self_attn.k_norm.weight"), vec![t.head_dim]);
            push(
                format!("{p}.mlp.gate_proj.weight"),
                vec![t.intermediate_size, t.hidden_size],
            );
            push(
                format!("{p}.mlp.up_proj.weight"),
                vec![t.intermediate_size, t.hidden_size],
            );
            push(
                format!("{p}.mlp.down_proj.weight"),
                vec![t.hidden_size, t.intermediate_size],
            );
            push(format!("{p}.input_layernorm.weight"), vec![t.hidden_size]);
            push(
                format!("{p}.post_attention_layernorm.weight"),
                vec![t.hidden_size],
            );
        }
        push(format!("{lm}.norm.weight"), vec![t.hidden_size]);
        if !self.tied_embeddings() {
            push("lm_head.weight".to_string(), vec![t.vocab_size, t.hidden_size]);
        }
        let vis = "model.visual";
        push(
            format!("{vis}.patch_embed.proj.weight"),
            vec![
                v.hidden_size,
                v.in_channels,
                v.temporal_patch_size,
                v.patch_size,
                v.patch_size,
            ],
        );
        push(format!("{vis}.patch_embed.proj.bias"), vec![v.hidden_size]);
        push(
            format!("{vis}.pos_embed.weight"),
            vec![v.num_position_embeddings, v.hidden_size],
        );
        for i in 0..v.depth {
            let p = format!("{vis}.blocks.{i}");
            for n in ["norm1", "norm2"] {
                push(format!("{p}.{n}.weight"), vec![v.hidden_size]);
                push(format!("{p}.{n}.bias"), vec![v.hidden_size]);
            }
            push(
                format!("{p}.attn.qkv.weight"),
                vec![3 * v.hidden_size, v.hidden_size],
            );
            push(format!("{p}.attn.qkv.bias"), vec![3 * v.hidden_size]);
            push(
                format!("{p}.attn.proj.weight"),
                vec![v.hidden_size, v.hidden_size],
            );
            push(format!("{p}.attn.proj.bias"), vec![v.hidden_size]);
            push(
                format!("{p}.mlp.linear_fc1.weight"),
                vec![v.intermediate_size, v.hidden_size],
            );
            push(format!("{p}.mlp.linear_fc1.bias"), vec![v.intermediate_size]);
            push(
                format!("{p}.mlp.linear_fc2.weight"),
                vec![v.hidden_size, v.intermediate_size],
            );
            push(format!("{p}.mlp.linear_fc2.bias"), vec![v.hidden_size]);
        }
        let merged = v.hidden_size * v.spatial_merge_size * v.spatial_merge_size;
        let mut merger = |p: String, norm: usize| {
            push(format!("{p}.norm.weight"), vec![norm]);
            push(format!("{p}.norm.bias"), vec![norm]);
            push(format!("{p}.linear_fc1.weight"), vec![merged, merged]);
            push(format!("{p}.linear_fc1.bias"), vec![merged]);
            push(format!("{p}.linear_fc2.weight"), vec![v.out_hidden_size, merged]);
            push(format!("{p}.linear_fc2.bias"), vec![v.out_hidden_size]);
        };
        merger(format!("{vis}.merger"), v.hidden_size);
        for i in 0..v.deepstack_visual_indexes.len() {
            merger(format!("{vis}.deepstack_merger_list.{i}"), merged);
        }
        out
    }
}

fn default_image_token_id() -> u32 {
    151655
}
fn default_video_token_id() -> u32 {
    151656
}
fn default_vision_start_token_id() -> u32 {
    151652
}
fn default_vision_end_token_id() -> u32 {
    151653
}
fn default_mrope_section() -> Vec<usize> {
    vec![24, 20, 20]
}
fn default_true() -> bool {
    true
}
fn default_rope_type() -> String {
    "default".to_string()
}
fn default_vocab_size() -> usize {
    151936
}
fn default_head_dim() -> usize {
    128
}
fn default_silu() -> String {
    "silu".to_string()
}
fn default_gelu_tanh() -> String {
    "gelu_pytorch_tanh".to_string()
}
fn default_max_position_embeddings() -> usize {
    128000
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    5_000_000.0
}
fn default_in_channels() -> usize {
    3
}
fn default_patch_size() -> usize {
    16
}
fn default_two() -> usize {
    2
}
fn default_num_position_embeddings() -> usize {
    2304
}
