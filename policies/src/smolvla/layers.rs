//! The transformer pieces of SmolVLA: SigLIP vision tower (transformers `SmolVLMVisionTransformer`),
//! the pixel-shuffle connector (`SmolVLMConnector`), Llama decoder layers (`LlamaDecoderLayer`, used
//! both by the SmolLM2 text model and the action expert), SmolVLA's `apply_rope` and its eager
//! attention (`SmolVLMWithExpertModel.eager_attention_forward`).

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, gelu_approximate, silu, softmax};

use super::config::{TextConfig, VisionConfig};

pub(crate) fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out).with_bias(bias).init(device)
}

/// `[B, L, H, D]` heads view of `[B, L, H * D]`.
fn heads(x: Tensor<3>, head_dim: usize) -> Tensor<4> {
    let [b, l, d] = x.dims();
    x.reshape([b, l, d / head_dim, head_dim])
}

/// SmolVLA's `apply_rope` tables for positions `[B, L]` (row-major): `cos`, `sin` of shape
/// `[B, L, 1, head_dim / 2]`, computed in f32 as LeRobot does (base 10000, split-half layout).
pub(crate) fn rope_tables(
    positions: &[i64],
    batch: usize,
    len: usize,
    head_dim: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let half = head_dim / 2;
    let step = (2.0f64 / head_dim as f64) as f32;
    let timescale: Vec<f32> = (0..half).map(|i| 10_000f32.powf(step * i as f32)).collect();
    let mut cos = Vec::with_capacity(batch * len * half);
    let mut sin = Vec::with_capacity(batch * len * half);
    for &p in positions {
        for &ts in &timescale {
            let r = p as f32 / ts;
            cos.push(r.cos());
            sin.push(r.sin());
        }
    }
    let shape = [batch, len, 1, half];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// SmolVLA `apply_rope` on `[B, L, H, D]`: `[x1 cos - x2 sin, x2 cos + x1 sin]` over the two halves.
pub(crate) fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, l, h, d] = x.dims();
    let half = d / 2;
    let cos = cos.clone().expand([b, l, h, half]);
    let sin = sin.clone().expand([b, l, h, half]);
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(
        vec![
            x1.clone() * cos.clone() - x2.clone() * sin.clone(),
            x2 * cos + x1 * sin,
        ],
        3,
    )
}

/// `eager_attention_forward`: grouped-query attention in f32 with masked scores set to f32::MIN.
/// `q` `[B, Lq, H, D]`, `k`/`v` `[B, Lk, KVH, D]`, `mask` `[B, Lq, Lk]` (true = may attend);
/// returns `[B, Lq, H * D]`.
pub(crate) fn masked_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<3, Bool>>,
) -> Tensor<3> {
    let [b, lq, h, d] = q.dims();
    let [_, lk, kvh, _] = k.dims();
    let groups = h / kvh;
    // Head h reads KV head h / groups (expand over a new groups axis, then merge).
    let repeat = |t: Tensor<4>| -> Tensor<4> {
        let t = t.swap_dims(1, 2); // [B, KVH, Lk, D]
        if groups == 1 {
            return t;
        }
        t.unsqueeze_dim::<5>(2)
            .expand([b, kvh, groups, lk, d])
            .reshape([b, h, lk, d])
    };
    let k = repeat(k);
    let v = repeat(v);
    let q = q.swap_dims(1, 2); // [B, H, Lq, D]
    let scores = q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5);
    let scores = match mask {
        Some(mask) => {
            let mask = mask.unsqueeze_dim::<4>(1).expand([b, h, lq, lk]);
            scores.mask_fill(mask.bool_not(), f32::MIN)
        }
        None => scores,
    };
    let probs = softmax(scores, 3);
    probs.matmul(v).swap_dims(1, 2).reshape([b, lq, h * d])
}

/// Llama attention projections (`LlamaAttention`; SmolVLA calls them itself).
#[derive(Module, Debug)]
pub struct LlamaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

/// Llama SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl LlamaMlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

/// One `LlamaDecoderLayer` as SmolVLA drives it (attention computed outside, see `finish`).
#[derive(Module, Debug)]
pub struct LlamaLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: LlamaAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: LlamaMlp,
    pub head_dim: usize,
}

impl LlamaLayer {
    /// A layer of width `hidden`; `kv_in` is the input width of k_proj/v_proj (`hidden`, or the VLM's
    /// KV width for the expert's cross-attention layers).
    pub fn new(cfg: &TextConfig, hidden: usize, intermediate: usize, kv_in: usize, device: &Device) -> Self {
        let hd = cfg.head_dim();
        let q_out = cfg.num_attention_heads * hd;
        let kv_out = cfg.kv_heads() * hd;
        let b = cfg.attention_bias;
        let norm = || {
            RmsNormConfig::new(hidden)
                .with_epsilon(cfg.rms_norm_eps)
                .init(device)
        };
        Self {
            input_layernorm: norm(),
            self_attn: LlamaAttention {
                q_proj: linear(hidden, q_out, b, device),
                k_proj: linear(kv_in, kv_out, b, device),
                v_proj: linear(kv_in, kv_out, b, device),
                o_proj: linear(q_out, hidden, b, device),
            },
            post_attention_layernorm: norm(),
            mlp: LlamaMlp {
                gate_proj: linear(hidden, intermediate, cfg.mlp_bias, device),
                up_proj: linear(hidden, intermediate, cfg.mlp_bias, device),
                down_proj: linear(intermediate, hidden, cfg.mlp_bias, device),
            },
            head_dim: hd,
        }
    }

    /// `input_layernorm` then q, k, v as `[B, L, heads, head_dim]` (no RoPE yet).
    pub fn qkv(&self, hidden: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let h = self.input_layernorm.forward(hidden);
        let a = &self.self_attn;
        (
            heads(a.q_proj.forward(h.clone()), self.head_dim),
            heads(a.k_proj.forward(h.clone()), self.head_dim),
            heads(a.v_proj.forward(h), self.head_dim),
        )
    }

    /// `input_layernorm` then q only.
    pub fn query(&self, hidden: Tensor<3>) -> Tensor<4> {
        let h = self.input_layernorm.forward(hidden);
        heads(self.self_attn.q_proj.forward(h), self.head_dim)
    }

    /// Cross-attention keys/values: the VLM layer's keys (after RoPE) and values `[B, L, KVH, D]`
    /// re-projected by this (expert) layer's k_proj / v_proj.
    pub fn project_kv(&self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let flat = |t: Tensor<4>| -> Tensor<3> {
            let [b, l, h, d] = t.dims();
            t.reshape([b, l, h * d])
        };
        (
            heads(self.self_attn.k_proj.forward(flat(k)), self.head_dim),
            heads(self.self_attn.v_proj.forward(flat(v)), self.head_dim),
        )
    }

    /// The rest of the layer after attention: `o_proj` + residual, then the MLP block + residual.
    pub fn finish(&self, hidden: Tensor<3>, attention: Tensor<3>) -> Tensor<3> {
        let out = self.self_attn.o_proj.forward(attention) + hidden;
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(out.clone()));
        mlp + out
    }
}

/// SigLIP attention (biases, no mask: every patch of an unpadded image is valid).
#[derive(Module, Debug)]
pub struct VisionAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
}

#[derive(Module, Debug)]
pub struct VisionMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// `SmolVLMEncoderLayer`: pre-LN attention and MLP blocks.
#[derive(Module, Debug)]
pub struct VisionLayer {
    pub layer_norm1: LayerNorm,
    pub self_attn: VisionAttention,
    pub layer_norm2: LayerNorm,
    pub mlp: VisionMlp,
    pub num_heads: usize,
    /// gelu with the tanh approximation (`gelu_pytorch_tanh`) or exact (`gelu`).
    pub gelu_tanh: bool,
}

impl VisionLayer {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.layer_norm1.forward(x.clone());
        let a = &self.self_attn;
        let [_, _, width] = h.dims();
        let hd = width / self.num_heads;
        let q = heads(a.q_proj.forward(h.clone()), hd);
        let k = heads(a.k_proj.forward(h.clone()), hd);
        let v = heads(a.v_proj.forward(h), hd);
        let x = a.out_proj.forward(masked_attention(q, k, v, None)) + x;
        let h = self.mlp.fc1.forward(self.layer_norm2.forward(x.clone()));
        let h = if self.gelu_tanh {
            gelu_approximate(h)
        } else {
            gelu(h)
        };
        self.mlp.fc2.forward(h) + x
    }
}

/// `SmolVLMVisionTransformer`: patch embedding (a stride-`patch` conv, computed as a matmul over
/// unfolded patches), learned position embeddings, encoder layers, post-LayerNorm.
#[derive(Module, Debug)]
pub struct VisionTower {
    /// Conv weight in PyTorch layout `[width, channels, patch, patch]`.
    pub patch_weight: Param<Tensor<4>>,
    pub patch_bias: Param<Tensor<1>>,
    /// `[num_patches, width]`.
    pub position_embedding: Param<Tensor<2>>,
    pub layers: Vec<VisionLayer>,
    pub post_layernorm: LayerNorm,
    pub patch_size: usize,
    /// Patches per side of the configured `image_size` (the position-embedding grid).
    pub patches_per_side: usize,
}

impl VisionTower {
    pub fn new(cfg: &VisionConfig, device: &Device) -> Self {
        let w = cfg.hidden_size;
        let p = cfg.patch_size;
        let side = cfg.image_size / p;
        let ln = || {
            LayerNormConfig::new(w)
                .with_epsilon(cfg.layer_norm_eps)
                .init(device)
        };
        let std = 0.02;
        let normal = burn::nn::Initializer::Normal { mean: 0.0, std };
        Self {
            patch_weight: normal.init([w, cfg.num_channels, p, p], device),
            patch_bias: burn::nn::Initializer::Zeros.init([w], device),
            position_embedding: normal.init([side * side, w], device),
            layers: (0..cfg.num_hidden_layers)
                .map(|_| VisionLayer {
                    layer_norm1: ln(),
                    self_attn: VisionAttention {
                        q_proj: linear(w, w, true, device),
                        k_proj: linear(w, w, true, device),
                        v_proj: linear(w, w, true, device),
                        out_proj: linear(w, w, true, device),
                    },
                    layer_norm2: ln(),
                    mlp: VisionMlp {
                        fc1: linear(w, cfg.intermediate_size, true, device),
                        fc2: linear(cfg.intermediate_size, w, true, device),
                    },
                    num_heads: cfg.num_attention_heads,
                    gelu_tanh: cfg.hidden_act == "gelu_pytorch_tanh",
                })
                .collect(),
            post_layernorm: ln(),
            patch_size: p,
            patches_per_side: side,
        }
    }

    /// Position ids of an `nh x nw` patch grid: `SmolVLMVisionEmbeddings.forward` with a full patch
    /// mask (fractional coordinates bucketized into the `patches_per_side` grid; the identity when
    /// the image has the configured size).
    fn position_ids(&self, nh: usize, nw: usize) -> Vec<i64> {
        let n = self.patches_per_side;
        let step = 1.0f32 / n as f32;
        // torch.arange(1/n, 1.0, 1/n)
        let boundaries: Vec<f32> = (1..n).map(|i| i as f32 * step).collect();
        let bucket = |i: usize, count: usize| -> i64 {
            let frac = i as f32 / count as f32 * (1.0f32 - 1e-6);
            boundaries.iter().filter(|&&b| b <= frac).count() as i64
        };
        let mut ids = Vec::with_capacity(nh * nw);
        for h in 0..nh {
            for w in 0..nw {
                ids.push(bucket(h, nh) * n as i64 + bucket(w, nw));
            }
        }
        ids
    }

    /// `[B, C, H, W]` pixels in [-1, 1] -> `last_hidden_state` `[B, patches, width]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = pixels.dims();
        let p = self.patch_size;
        let (nh, nw) = (h / p, w / p);
        let pixels = if nh * p != h || nw * p != w {
            pixels.narrow(2, 0, nh * p).narrow(3, 0, nw * p)
        } else {
            pixels
        };
        // Unfold to [B, nh*nw, C*p*p] with (c, ky, kx) order, the conv weight's flattening order.
        let patches = pixels
            .reshape([b, c, nh, p, nw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * nh * nw, c * p * p]);
        let weight = self.patch_weight.val();
        let [width, _, _, _] = weight.dims();
        let weight = weight.reshape([width, c * p * p]).transpose();
        let embeddings = (patches.matmul(weight) + self.patch_bias.val().unsqueeze_dim::<2>(0)).reshape([
            b,
            nh * nw,
            width,
        ]);
        let ids = self.position_ids(nh, nw);
        let device = embeddings.device();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [nh * nw]), &device);
        let pos = self.position_embedding.val().select(0, ids);
        let mut x = embeddings + pos.unsqueeze_dim::<3>(0);
        for layer in &self.layers {
            x = layer.forward(x);
        }
        self.post_layernorm.forward(x)
    }
}

/// `SmolVLMConnector.pixel_shuffle` in Hugging Face's exact order: `[B, S, D]` -> `[B, S / s^2, D s^2]`.
pub fn pixel_shuffle(x: Tensor<3>, scale: usize) -> Tensor<3> {
    let [b, seq, d] = x.dims();
    let side = (seq as f64).sqrt() as usize;
    let (h, w) = (side, side);
    x.reshape([b, h, w / scale, d * scale])
        .swap_dims(1, 2) // [B, W/s, H, D s]
        .reshape([b, w / scale, h / scale, d * scale * scale])
        .swap_dims(1, 2) // [B, H/s, W/s, D s^2]
        .reshape([b, seq / (scale * scale), d * scale * scale])
}
