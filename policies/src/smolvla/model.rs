//! `VLAFlowMatching` + `SmolVLMWithExpertModel` (LeRobot 0.4.4 modeling_smolvla.py and
//! smolvlm_with_expert.py): prefix (images, language, state) through the first `num_vlm_layers`
//! SmolLM2 layers, actions through the expert that alternates joint self-attention and
//! cross-attention to the VLM's keys/values, flow-matching loss and Euler sampling with a KV cache.

use burn::module::Param;
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::config::SmolVlaDims;
use super::layers::{
    LlamaLayer, VisionTower, apply_rope, linear, masked_attention, pixel_shuffle, rope_tables,
};
use crate::error::{PolicyError, Result};

/// One training or inference batch, already through LeRobot's preprocessor (normalised state and
/// actions, tokenised prompt). Images are raw camera tensors in [0, 1]; the model resizes them.
#[derive(Debug, Clone)]
pub struct SmolVlaBatch {
    /// One `[B, 3, H, W]` tensor per camera, in the config's camera order; sizes may differ.
    pub images: Vec<Tensor<4>>,
    /// Per camera, per sample: false marks a missing camera (LeRobot's `*_padding_mask`); empty means
    /// every image is present. For LeRobot's `empty_cameras`, pass an all-zero image (any size) with
    /// mask false: after resize and `x * 2 - 1` it is LeRobot's all -1 image.
    pub image_masks: Vec<Vec<bool>>,
    /// Normalised state `[B, state_dim]` (zero-padded to `max_state_dim` here).
    pub state: Tensor<2>,
    /// Prompt token ids `[B, L]` (right-padded).
    pub tokens: Tensor<2, Int>,
    /// `[B, L]`, true for real tokens.
    pub token_mask: Tensor<2, Bool>,
}

/// Debug taps mirroring the tensors the parity fixtures dump (filled when passed to the forward).
#[derive(Debug, Default)]
pub struct SmolVlaTrace {
    /// Images after resize-with-padding and `x * 2 - 1`, per camera.
    pub prepared_images: Vec<Tensor<4>>,
    /// Vision tower output (`last_hidden_state`) per camera.
    pub vision_features: Vec<Tensor<3>>,
    /// Connector output per camera (before the sqrt(width) scaling).
    pub image_embeddings: Vec<Tensor<3>>,
    pub prefix_embs: Option<Tensor<3>>,
    pub suffix_embs: Option<Tensor<3>>,
    /// Hidden state entering each VLM layer (prefix tokens).
    pub vlm_layer_in: Vec<Tensor<3>>,
    /// Hidden state entering each expert layer (action tokens).
    pub expert_layer_in: Vec<Tensor<3>>,
    /// Expert output before its final norm.
    pub expert_final_in: Option<Tensor<3>>,
}

/// Host-side prefix bookkeeping: padding / block masks and positions (`make_att_2d_masks`,
/// `cumsum(pad) - 1`).
#[derive(Debug, Clone)]
pub struct PrefixLayout {
    pub batch: usize,
    pub len: usize,
    /// `[B * L]` true for valid tokens.
    pub pad: Vec<bool>,
    /// `[B * L]` block starts (LeRobot's `att_masks`: 1 for the state token).
    pub att: Vec<bool>,
}

/// `make_att_2d_masks`: token i may attend j when cumsum(att)[j] <= cumsum(att)[i] and both are
/// valid. Inputs `[B * L]`; returns `[B * L * L]`.
pub fn make_att_2d_masks(pad: &[bool], att: &[bool], batch: usize, len: usize) -> Vec<bool> {
    let mut out = vec![false; batch * len * len];
    for b in 0..batch {
        let mut cum = Vec::with_capacity(len);
        let mut c = 0i64;
        for j in 0..len {
            c += att[b * len + j] as i64;
            cum.push(c);
        }
        for i in 0..len {
            for j in 0..len {
                out[(b * len + i) * len + j] = cum[j] <= cum[i] && pad[b * len + i] && pad[b * len + j];
            }
        }
    }
    out
}

/// Position ids `cumsum(pad) - 1` per row; `[B * L]`.
pub fn position_ids(pad: &[bool], batch: usize, len: usize, offset: &[i64]) -> Vec<i64> {
    let mut out = Vec::with_capacity(batch * len);
    for b in 0..batch {
        let mut c = offset.get(b).copied().unwrap_or(0);
        for j in 0..len {
            c += pad[b * len + j] as i64;
            out.push(c - 1);
        }
    }
    out
}

/// `create_sinusoidal_pos_embedding`, computed in f64 and cast to f32 (as LeRobot): `[B, dim]`.
pub fn time_embedding(
    time: &[f32],
    dim: usize,
    min_period: f64,
    max_period: f64,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(time.len() * dim);
    let scaling: Vec<f64> = (0..half)
        .map(|i| {
            let frac = if half > 1 {
                i as f64 / (half - 1) as f64
            } else {
                0.0
            };
            let period = min_period * (max_period / min_period).powf(frac);
            1.0 / period * 2.0 * std::f64::consts::PI
        })
        .collect();
    for &t in time {
        let t = t as f64;
        out.extend(scaling.iter().map(|s| (s * t).sin() as f32));
        out.extend(scaling.iter().map(|s| (s * t).cos() as f32));
    }
    Tensor::from_data(TensorData::new(out, [time.len(), 2 * half]), device)
}

/// Bilinear interpolation matrix `[out, in]` of `F.interpolate(mode="bilinear", align_corners=False)`
/// along one axis (no antialiasing), computed as PyTorch does in f32.
fn bilinear_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    let scale = n_in as f32 / n_out as f32;
    for o in 0..n_out {
        let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        let l1 = src - i0 as f32;
        let l0 = 1.0 - l1;
        m[o * n_in + i0] += l0;
        m[o * n_in + i1] += l1;
    }
    m
}

/// LeRobot's `resize_with_pad(img, width, height, pad_value=0)` then `x * 2 - 1` (prepare_images).
pub fn resize_with_pad(img: Tensor<4>, width: usize, height: usize) -> Tensor<4> {
    let [b, c, h, w] = img.dims();
    let device = img.device();
    let ratio = f64::max(w as f64 / width as f64, h as f64 / height as f64);
    let rh = (h as f64 / ratio) as usize;
    let rw = (w as f64 / ratio) as usize;
    let ry = Tensor::<2>::from_data(TensorData::new(bilinear_matrix(h, rh), [rh, h]), &device);
    let rx = Tensor::<2>::from_data(TensorData::new(bilinear_matrix(w, rw), [rw, w]), &device);
    // rows then columns: [B*C*H, W] @ Rx^T -> [B, C, H, rw] -> Ry @ . -> [B, C, rh, rw]
    let x = img
        .reshape([b * c * h, w])
        .matmul(rx.transpose())
        .reshape([b * c, h, rw]);
    let x = ry
        .unsqueeze_dim::<3>(0)
        .expand([b * c, rh, h])
        .matmul(x)
        .reshape([b, c, rh, rw]);
    let pad_h = height.saturating_sub(rh);
    let pad_w = width.saturating_sub(rw);
    let x = if pad_w > 0 {
        Tensor::cat(vec![Tensor::zeros([b, c, rh, pad_w], &device), x], 3)
    } else {
        x
    };
    if pad_h > 0 {
        Tensor::cat(vec![Tensor::zeros([b, c, pad_h, rw + pad_w], &device), x], 2)
    } else {
        x
    }
}

/// Zero-pad the last dimension to `dim` (`pad_vector`).
pub fn pad_last<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    let mut shape = x.dims();
    let cur = shape[D - 1];
    if cur >= dim {
        return x;
    }
    shape[D - 1] = dim - cur;
    let device = x.device();
    Tensor::cat(vec![x, Tensor::zeros(shape, &device)], D - 1)
}

fn bool_data(t: Tensor<2, Bool>) -> Result<Vec<bool>> {
    t.into_data()
        .try_into_vec::<bool>()
        .map_err(|e| PolicyError::Tensor {
            what: "token_mask",
            reason: format!("{e:?}"),
        })
}

/// The SmolVLA network (VLM prefix encoder + action expert + projections).
#[derive(Module, Debug)]
pub struct SmolVla {
    pub vision: VisionTower,
    /// `connector.modality_projection.proj` (no bias).
    pub connector: Linear,
    /// `text_model.embed_tokens.weight` `[vocab, width]`.
    pub embed_tokens: Param<Tensor<2>>,
    pub text_layers: Vec<LlamaLayer>,
    pub text_norm: RmsNorm,
    /// `vlm.lm_head.weight` `[vocab, width]` (unused by SmolVLA; kept so checkpoints round-trip).
    pub lm_head: Option<Param<Tensor<2>>>,
    pub expert_layers: Vec<LlamaLayer>,
    pub expert_norm: RmsNorm,
    pub state_proj: Linear,
    pub action_in_proj: Linear,
    pub action_out_proj: Linear,
    pub action_time_mlp_in: Linear,
    pub action_time_mlp_out: Linear,
    #[module(skip)]
    pub dims: SmolVlaDims,
}

/// Keys and values each layer of the action expert reads from the prefix, computed once per
/// observation (`sample_actions`' KV cache; cross-attention layers keep them already re-projected by
/// the expert's k_proj / v_proj, which do not depend on the noisy actions).
#[derive(Debug, Clone)]
pub struct PrefixCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// `[B * Lp]` prefix padding mask.
    pad: Vec<bool>,
    batch: usize,
    len: usize,
}

impl SmolVla {
    /// A SmolVLA of the given shape with Burn's default random initialisation (lazy; weights are
    /// usually loaded over it, see [`super::weights`]).
    pub fn new(dims: SmolVlaDims, device: &Device) -> Self {
        let t = &dims.text;
        let width = t.hidden_size;
        let eh = dims.expert_hidden;
        let kv_width = t.kv_heads() * t.head_dim();
        let v = &dims.vision;
        let norm = |d: usize| RmsNormConfig::new(d).with_epsilon(t.rms_norm_eps).init(device);
        let normal = burn::nn::Initializer::Normal { mean: 0.0, std: 0.02 };
        let expert_layers = (0..dims.expert_layers)
            .map(|j| {
                // SmolVLMWithExpertModel.__init__: expert layers that are not self-attention layers (by
                // expert index) read the VLM's keys/values, so their k/v projections take its KV width.
                let is_self =
                    dims.self_attn_every_n_layers > 0 && j % dims.self_attn_every_n_layers as usize == 0;
                let kv_in = if is_self { eh } else { kv_width };
                LlamaLayer::new(t, eh, dims.expert_intermediate, kv_in, device)
            })
            .collect();
        Self {
            vision: VisionTower::new(v, device),
            connector: linear(
                v.hidden_size * dims.scale_factor * dims.scale_factor,
                width,
                false,
                device,
            ),
            embed_tokens: normal.init([t.vocab_size, width], device),
            text_layers: (0..dims.vlm_layers)
                .map(|_| LlamaLayer::new(t, width, t.intermediate_size, width, device))
                .collect(),
            text_norm: norm(width),
            lm_head: (!dims.tie_word_embeddings).then(|| normal.init([t.vocab_size, width], device)),
            expert_layers,
            expert_norm: norm(eh),
            state_proj: linear(dims.max_state_dim, width, true, device),
            action_in_proj: linear(dims.max_action_dim, eh, true, device),
            action_out_proj: linear(eh, dims.max_action_dim, true, device),
            action_time_mlp_in: linear(2 * eh, eh, true, device),
            action_time_mlp_out: linear(eh, eh, true, device),
            dims,
        }
    }

    /// `prepare_images`: resize-with-padding to the configured size, then `x * 2 - 1`.
    pub fn prepare_image(&self, img: Tensor<4>) -> Tensor<4> {
        let img = match self.dims.resize {
            Some([w, h]) => resize_with_pad(img, w, h),
            None => img,
        };
        img * 2.0 - 1.0
    }

    /// `embed_image`: vision tower, pixel shuffle, modality projection; `[B, tokens, width]`.
    pub fn embed_image(&self, pixels: Tensor<4>, trace: Option<&mut SmolVlaTrace>) -> Tensor<3> {
        let features = self.vision.forward(pixels);
        let out = self
            .connector
            .forward(pixel_shuffle(features.clone(), self.dims.scale_factor));
        if let Some(tr) = trace {
            tr.vision_features.push(features);
            tr.image_embeddings.push(out.clone());
        }
        out
    }

    /// `embed_prefix`: image tokens and language tokens (each scaled by sqrt(width)) then the state
    /// token; returns the embeddings `[B, Lp, width]` and the host-side layout.
    pub fn embed_prefix(
        &self,
        batch: &SmolVlaBatch,
        mut trace: Option<&mut SmolVlaTrace>,
    ) -> Result<(Tensor<3>, PrefixLayout)> {
        let [b, state_dim] = batch.state.dims();
        if state_dim > self.dims.max_state_dim {
            return Err(crate::error::shape_err(
                "observation.state",
                format!("at most max_state_dim = {} dims", self.dims.max_state_dim),
                state_dim,
            ));
        }
        if batch.images.is_empty() {
            return Err(PolicyError::MissingInput {
                policy: "smolvla",
                what: "at least one camera image",
            });
        }
        let width = self.dims.text.hidden_size;
        let scale = (width as f64).sqrt() as f32;
        let mut embs = Vec::new();
        let mut cam_pad: Vec<Vec<bool>> = Vec::new();
        for (i, img) in batch.images.iter().enumerate() {
            if img.dims()[0] != b {
                return Err(crate::error::shape_err(
                    "observation.images",
                    format!("batch {b}"),
                    format!("{:?}", img.dims()),
                ));
            }
            let pixels = self.prepare_image(img.clone());
            if let Some(tr) = trace.as_deref_mut() {
                tr.prepared_images.push(pixels.clone());
            }
            let emb = self.embed_image(pixels, trace.as_deref_mut()) * scale;
            let mask = match batch.image_masks.get(i) {
                Some(m) if !m.is_empty() => {
                    if m.len() != b {
                        return Err(crate::error::shape_err("image_masks", b, m.len()));
                    }
                    m.clone()
                }
                _ => vec![true; b],
            };
            cam_pad.push(mask);
            embs.push(emb);
        }
        let [tb, lt] = batch.tokens.dims();
        if tb != b || batch.token_mask.dims() != [b, lt] {
            return Err(crate::error::shape_err(
                "observation.language",
                format!("tokens and attention mask [{b}, L]"),
                format!("{:?} / {:?}", batch.tokens.dims(), batch.token_mask.dims()),
            ));
        }
        let lang = self
            .embed_tokens
            .val()
            .select(0, batch.tokens.clone().reshape([b * lt]))
            .reshape([b, lt, width])
            * scale;
        embs.push(lang);
        let state = pad_last(batch.state.clone(), self.dims.max_state_dim);
        embs.push(self.state_proj.forward(state).unsqueeze_dim::<3>(1));
        let prefix = Tensor::cat(embs, 1);

        let n_img = self.dims.image_tokens();
        let lang_mask = bool_data(batch.token_mask.clone())?;
        let len = cam_pad.len() * n_img + lt + 1;
        let mut pad = Vec::with_capacity(b * len);
        let mut att = Vec::with_capacity(b * len);
        for s in 0..b {
            for cam in &cam_pad {
                pad.extend(std::iter::repeat_n(cam[s], n_img));
            }
            pad.extend_from_slice(&lang_mask[s * lt..(s + 1) * lt]);
            pad.push(true);
            att.extend(std::iter::repeat_n(false, len - 1));
            att.push(true);
        }
        if let Some(tr) = trace {
            tr.prefix_embs = Some(prefix.clone());
        }
        Ok((
            prefix,
            PrefixLayout {
                batch: b,
                len,
                pad,
                att,
            },
        ))
    }

    /// `embed_suffix`: noisy actions `[B, C, max_action_dim]` and flow times -> `[B, C, expert]`.
    pub fn embed_suffix(&self, noisy_actions: Tensor<3>, time: &[f32]) -> Tensor<3> {
        let [b, c, _] = noisy_actions.dims();
        let device = noisy_actions.device();
        let action = self.action_in_proj.forward(noisy_actions);
        let eh = self.dims.expert_hidden;
        let temb = time_embedding(time, eh, self.dims.min_period, self.dims.max_period, &device)
            .unsqueeze_dim::<3>(1)
            .expand([b, c, eh]);
        let h = self
            .action_time_mlp_in
            .forward(Tensor::cat(vec![action, temb], 2));
        self.action_time_mlp_out.forward(silu(h))
    }

    fn bool_tensor(data: Vec<bool>, shape: [usize; 3], device: &Device) -> Tensor<3, Bool> {
        Tensor::from_data(TensorData::new(data, shape), device)
    }

    /// `VLAFlowMatching.forward`: per-element flow-matching losses `(u_t - v_t)^2`,
    /// `[B, chunk, max_action_dim]` (LeRobot 0.4.4 returns these; see [`super::flow_loss`] for the
    /// reductions). `actions` `[B, chunk, action_dim]` normalised (padded here), `noise`
    /// `[B, chunk, max_action_dim]`, `time` one value per sample.
    pub fn flow_losses(
        &self,
        batch: &SmolVlaBatch,
        actions: Tensor<3>,
        noise: Tensor<3>,
        time: &[f32],
        mut trace: Option<&mut SmolVlaTrace>,
    ) -> Result<Tensor<3>> {
        let [b, c, _] = actions.dims();
        let amax = self.dims.max_action_dim;
        if c != self.dims.chunk_size || noise.dims() != [b, c, amax] || time.len() != b {
            return Err(crate::error::shape_err(
                "actions / noise / time",
                format!(
                    "[{b}, {}, <= {amax}] / [{b}, {}, {amax}] / [{b}]",
                    self.dims.chunk_size, self.dims.chunk_size
                ),
                format!("{:?} / {:?} / [{}]", actions.dims(), noise.dims(), time.len()),
            ));
        }
        let device = actions.device();
        let actions = pad_last(actions, amax);
        let t = Tensor::<1>::from_data(TensorData::new(time.to_vec(), [b]), &device).reshape([b, 1, 1]);
        let x_t = t.clone() * noise.clone() + (t.neg() + 1.0) * actions.clone();
        let u_t = noise - actions;
        let (prefix, layout) = self.embed_prefix(batch, trace.as_deref_mut())?;
        let suffix = self.embed_suffix(x_t, time);
        if let Some(tr) = trace.as_deref_mut() {
            tr.suffix_embs = Some(suffix.clone());
        }
        let out = self.forward_train(prefix, suffix, &layout, trace);
        let v_t = self.action_out_proj.forward(out);
        Ok((u_t - v_t).square())
    }

    /// `SmolVLMWithExpertModel.forward` with both streams and no cache (training): returns the expert
    /// output after its final norm, `[B, chunk, expert]`.
    fn forward_train(
        &self,
        mut prefix: Tensor<3>,
        mut suffix: Tensor<3>,
        layout: &PrefixLayout,
        mut trace: Option<&mut SmolVlaTrace>,
    ) -> Tensor<3> {
        let device = prefix.device();
        let (b, lp) = (layout.batch, layout.len);
        let ls = suffix.dims()[1];
        let l = lp + ls;
        // Full pad / block masks: the action tokens are valid and each starts a block (causal).
        let mut pad = Vec::with_capacity(b * l);
        let mut att = Vec::with_capacity(b * l);
        for s in 0..b {
            pad.extend_from_slice(&layout.pad[s * lp..(s + 1) * lp]);
            pad.extend(std::iter::repeat_n(true, ls));
            att.extend_from_slice(&layout.att[s * lp..(s + 1) * lp]);
            att.extend(std::iter::repeat_n(true, ls));
        }
        let mask = Self::bool_tensor(make_att_2d_masks(&pad, &att, b, l), [b, l, l], &device);
        let pos = position_ids(&pad, b, l, &[]);
        let hd = self.dims.text.head_dim();
        let (cos, sin) = rope_tables(&pos, b, l, hd, &device);
        let prefix_mask = mask.clone().narrow(1, 0, lp).narrow(2, 0, lp);
        let cross_mask = mask.clone().narrow(1, lp, ls).narrow(2, 0, lp);
        let (cos_p, sin_p) = (cos.clone().narrow(1, 0, lp), sin.clone().narrow(1, 0, lp));
        // Expert positions in cross layers restart at 0 (`expert_position_id - min`).
        let expert_pos: Vec<i64> = (0..b)
            .flat_map(|s| {
                let row = &pos[s * l + lp..(s + 1) * l];
                let min = row.iter().copied().min().unwrap_or(0);
                row.iter().map(move |p| p - min).collect::<Vec<_>>()
            })
            .collect();
        let (cos_e, sin_e) = rope_tables(&expert_pos, b, ls, hd, &device);

        let n = self.dims.vlm_layers;
        for i in 0..n {
            let vlm = &self.text_layers[i];
            let expert = self.dims.expert_index(i).map(|j| &self.expert_layers[j]);
            let last = i + 1 == n; // the last VLM layer's output is never read
            if let Some(tr) = trace.as_deref_mut() {
                tr.vlm_layer_in.push(prefix.clone());
                if expert.is_some() {
                    tr.expert_layer_in.push(suffix.clone());
                }
            }
            let (qp, kp, vp) = vlm.qkv(prefix.clone());
            if self.dims.is_self_attn_layer(i) {
                match expert {
                    Some(ex) => {
                        let (qs, ks, vs) = ex.qkv(suffix.clone());
                        let q = apply_rope(Tensor::cat(vec![qp, qs], 1), &cos, &sin);
                        let k = apply_rope(Tensor::cat(vec![kp, ks], 1), &cos, &sin);
                        let v = Tensor::cat(vec![vp, vs], 1);
                        let att = masked_attention(q, k, v, Some(mask.clone()));
                        if !last {
                            prefix = vlm.finish(prefix, att.clone().narrow(1, 0, lp));
                        }
                        suffix = ex.finish(suffix, att.narrow(1, lp, ls));
                    }
                    None => {
                        let q = apply_rope(qp, &cos_p, &sin_p);
                        let k = apply_rope(kp, &cos_p, &sin_p);
                        let att = masked_attention(q, k, vp, Some(prefix_mask.clone()));
                        if !last {
                            prefix = vlm.finish(prefix, att);
                        }
                    }
                }
            } else {
                let q = apply_rope(qp, &cos_p, &sin_p);
                let k = apply_rope(kp, &cos_p, &sin_p);
                if let Some(ex) = expert {
                    let qs = apply_rope(ex.query(suffix.clone()), &cos_e, &sin_e);
                    let (ks, vs) = ex.project_kv(k.clone(), vp.clone());
                    let att_s = masked_attention(qs, ks, vs, Some(cross_mask.clone()));
                    suffix = ex.finish(suffix, att_s);
                }
                if !last {
                    let att = masked_attention(q, k, vp, Some(prefix_mask.clone()));
                    prefix = vlm.finish(prefix, att);
                }
            }
        }
        if let Some(tr) = trace {
            tr.expert_final_in = Some(suffix.clone());
        }
        let c = self.dims.chunk_size;
        self.expert_norm.forward(suffix).narrow(1, ls - c, c)
    }

    /// Encode the prefix once (`fill_kv_cache=True`): every VLM layer's keys (after RoPE) and values,
    /// re-projected for the expert's cross-attention layers.
    pub fn encode_prefix(&self, batch: &SmolVlaBatch) -> Result<PrefixCache> {
        let (mut prefix, layout) = self.embed_prefix(batch, None)?;
        let device = prefix.device();
        let (b, lp) = (layout.batch, layout.len);
        let mask = Self::bool_tensor(
            make_att_2d_masks(&layout.pad, &layout.att, b, lp),
            [b, lp, lp],
            &device,
        );
        let pos = position_ids(&layout.pad, b, lp, &[]);
        let (cos, sin) = rope_tables(&pos, b, lp, self.dims.text.head_dim(), &device);
        let n = self.dims.vlm_layers;
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            let vlm = &self.text_layers[i];
            let (q, k, v) = vlm.qkv(prefix.clone());
            let q = apply_rope(q, &cos, &sin);
            let k = apply_rope(k, &cos, &sin);
            let entry = match self.dims.expert_index(i).map(|j| &self.expert_layers[j]) {
                None => None,
                Some(_) if self.dims.is_self_attn_layer(i) => Some((k.clone(), v.clone())),
                Some(ex) => Some(ex.project_kv(k.clone(), v.clone())),
            };
            layers.push(entry);
            if i + 1 < n {
                let att = masked_attention(q, k, v, Some(mask.clone()));
                prefix = vlm.finish(prefix, att);
            }
        }
        Ok(PrefixCache {
            layers,
            pad: layout.pad,
            batch: b,
            len: lp,
        })
    }

    /// `denoise_step`: the velocity `v_t` `[B, chunk, max_action_dim]` at noisy actions `x_t` and
    /// time `t`, attending to the cached prefix.
    pub fn denoise_step(&self, cache: &PrefixCache, x_t: Tensor<3>, t: f32) -> Tensor<3> {
        let device = x_t.device();
        let [b, ls, _] = x_t.dims();
        let lp = cache.len;
        let mut suffix = self.embed_suffix(x_t, &vec![t; b]);
        // Self layers: [B, Ls, Lp + Ls] = prefix padding, then causal among the actions.
        let mut full = Vec::with_capacity(b * ls * (lp + ls));
        for s in 0..b {
            for i in 0..ls {
                full.extend_from_slice(&cache.pad[s * lp..(s + 1) * lp]);
                full.extend((0..ls).map(|j| j <= i));
            }
        }
        let full = Self::bool_tensor(full, [b, ls, lp + ls], &device);
        let cross = full.clone().narrow(2, 0, lp);
        let offsets: Vec<i64> = (0..b)
            .map(|s| cache.pad[s * lp..(s + 1) * lp].iter().filter(|&&p| p).count() as i64)
            .collect();
        let pos = position_ids(&vec![true; b * ls], b, ls, &offsets);
        let hd = self.dims.text.head_dim();
        let (cos, sin) = rope_tables(&pos, b, ls, hd, &device);
        let expert_pos: Vec<i64> = (0..b).flat_map(|_| 0..ls as i64).collect();
        let (cos_e, sin_e) = rope_tables(&expert_pos, b, ls, hd, &device);
        for i in 0..self.dims.vlm_layers {
            let (Some(j), Some((ck, cv))) = (self.dims.expert_index(i), &cache.layers[i]) else {
                continue;
            };
            let ex = &self.expert_layers[j];
            let att = if self.dims.is_self_attn_layer(i) {
                let (q, k, v) = ex.qkv(suffix.clone());
                let q = apply_rope(q, &cos, &sin);
                let k = Tensor::cat(vec![ck.clone(), apply_rope(k, &cos, &sin)], 1);
                let v = Tensor::cat(vec![cv.clone(), v], 1);
                masked_attention(q, k, v, Some(full.clone()))
            } else {
                let q = apply_rope(ex.query(suffix.clone()), &cos_e, &sin_e);
                masked_attention(q, ck.clone(), cv.clone(), Some(cross.clone()))
            };
            suffix = ex.finish(suffix, att);
        }
        let c = self.dims.chunk_size;
        let out = self.expert_norm.forward(suffix).narrow(1, ls - c, c);
        self.action_out_proj.forward(out)
    }

    /// `sample_actions`: Euler integration of the flow from `noise` (t = 1) to t = 0 in `num_steps`
    /// steps of `dt = -1 / num_steps`, the prefix encoded once. Returns `[B, chunk, max_action_dim]`
    /// in normalised units (slice the first `action_dim` columns, as `predict_action_chunk` does).
    pub fn sample_actions(&self, batch: &SmolVlaBatch, noise: Tensor<3>) -> Result<Tensor<3>> {
        let [b, c, a] = noise.dims();
        if c != self.dims.chunk_size || a != self.dims.max_action_dim || b != batch.state.dims()[0] {
            return Err(crate::error::shape_err(
                "noise",
                format!(
                    "[{}, {}, {}]",
                    batch.state.dims()[0],
                    self.dims.chunk_size,
                    self.dims.max_action_dim
                ),
                format!("{:?}", noise.dims()),
            ));
        }
        let cache = self.encode_prefix(batch)?;
        let steps = self.dims.num_steps;
        let dt = -1.0f64 / steps as f64;
        let mut x_t = noise;
        for step in 0..steps {
            let t = (1.0 + step as f64 * dt) as f32;
            let v_t = self.denoise_step(&cache, x_t.clone(), t);
            x_t = x_t + v_t * dt;
        }
        Ok(x_t)
    }
}

impl PrefixCache {
    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The image and language keys/values of every VLM layer for a batch of frames (no state token, no
/// actions). Image and language tokens never attend to the state token or the actions (LeRobot's
/// block mask), so with a frozen VLM these are constants of the frame: cache them and a training
/// step runs the state token and the expert only ([`SmolVla::flow_losses_with_context`]).
#[derive(Debug, Clone)]
pub struct ContextCache {
    /// Per VLM layer: keys after RoPE and values, `[B, Lc, KVH, head_dim]`, detached.
    layers: Vec<(Tensor<4>, Tensor<4>)>,
    /// `[B * Lc]` validity of the context tokens.
    pad: Vec<bool>,
    batch: usize,
    len: usize,
}

impl ContextCache {
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Memory held by the keys and values (f32).
    pub fn bytes(&self) -> usize {
        let numel = |t: &Tensor<4>| t.dims().iter().product::<usize>();
        self.layers.iter().map(|(k, v)| (numel(k) + numel(v)) * 4).sum()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stack caches of several batches (e.g. one per frame) into one, right-padding shorter contexts
    /// with invalid (masked) tokens.
    pub fn concat(caches: &[ContextCache]) -> Option<ContextCache> {
        let first = caches.first()?;
        let len = caches.iter().map(|c| c.len).max().unwrap_or(0);
        let batch = caches.iter().map(|c| c.batch).sum();
        let mut pad = Vec::with_capacity(batch * len);
        for c in caches {
            for b in 0..c.batch {
                pad.extend_from_slice(&c.pad[b * c.len..(b + 1) * c.len]);
                pad.extend(std::iter::repeat_n(false, len - c.len));
            }
        }
        let grow = |t: &Tensor<4>, l: usize| -> Tensor<4> {
            let [b, tl, h, d] = t.dims();
            if tl == l {
                t.clone()
            } else {
                Tensor::cat(vec![t.clone(), Tensor::zeros([b, l - tl, h, d], &t.device())], 1)
            }
        };
        let layers = (0..first.layers.len())
            .map(|i| {
                let ks = caches.iter().map(|c| grow(&c.layers[i].0, len)).collect();
                let vs = caches.iter().map(|c| grow(&c.layers[i].1, len)).collect();
                (Tensor::cat(ks, 0), Tensor::cat(vs, 0))
            })
            .collect();
        Some(ContextCache {
            layers,
            pad,
            batch,
            len,
        })
    }
}

impl SmolVla {
    /// Encode the image and language tokens of `batch` through the VLM once ([`ContextCache`]).
    /// `batch.state` is only used for its batch size.
    pub fn encode_context(&self, batch: &SmolVlaBatch) -> Result<ContextCache> {
        let (prefix, layout) = self.embed_prefix(batch, None)?;
        let device = prefix.device();
        let (b, lc) = (layout.batch, layout.len - 1); // drop the state token (last)
        let mut h = prefix.narrow(1, 0, lc);
        let pad: Vec<bool> = (0..b)
            .flat_map(|s| layout.pad[s * layout.len..s * layout.len + lc].to_vec())
            .collect();
        let att = vec![false; b * lc];
        let mask = Self::bool_tensor(make_att_2d_masks(&pad, &att, b, lc), [b, lc, lc], &device);
        let pos = position_ids(&pad, b, lc, &[]);
        let (cos, sin) = rope_tables(&pos, b, lc, self.dims.text.head_dim(), &device);
        let n = self.dims.vlm_layers;
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            let vlm = &self.text_layers[i];
            let (q, k, v) = vlm.qkv(h.clone());
            let q = apply_rope(q, &cos, &sin);
            let k = apply_rope(k, &cos, &sin);
            layers.push((k.clone().detach(), v.clone().detach()));
            if i + 1 < n {
                let a = masked_attention(q, k, v, Some(mask.clone()));
                h = vlm.finish(h, a).detach();
            }
        }
        Ok(ContextCache {
            layers,
            pad,
            batch: b,
            len: lc,
        })
    }

    /// [`SmolVla::flow_losses`] with the image/language part of the prefix taken from `context`:
    /// only the state token (through the VLM layers, so `state_proj` still trains) and the action
    /// expert run. Equal to `flow_losses` up to float rounding.
    pub fn flow_losses_with_context(
        &self,
        context: &ContextCache,
        state: Tensor<2>,
        actions: Tensor<3>,
        noise: Tensor<3>,
        time: &[f32],
    ) -> Result<Tensor<3>> {
        let [b, c, _] = actions.dims();
        let amax = self.dims.max_action_dim;
        if b != context.batch
            || c != self.dims.chunk_size
            || noise.dims() != [b, c, amax]
            || time.len() != b
            || state.dims()[0] != b
        {
            return Err(crate::error::shape_err(
                "context / state / actions / noise / time",
                format!("batch {} and chunk {}", context.batch, self.dims.chunk_size),
                format!(
                    "{:?} / {:?} / {:?} / [{}]",
                    state.dims(),
                    actions.dims(),
                    noise.dims(),
                    time.len()
                ),
            ));
        }
        let device = actions.device();
        let actions = pad_last(actions, amax);
        let t = Tensor::<1>::from_data(TensorData::new(time.to_vec(), [b]), &device).reshape([b, 1, 1]);
        let x_t = t.clone() * noise.clone() + (t.neg() + 1.0) * actions.clone();
        let u_t = noise - actions;
        let mut st = self
            .state_proj
            .forward(pad_last(state, self.dims.max_state_dim))
            .unsqueeze_dim::<3>(1);
        let mut suffix = self.embed_suffix(x_t, time);
        let (lc, ls) = (context.len, c);
        let valid: Vec<i64> = (0..b)
            .map(|s| context.pad[s * lc..(s + 1) * lc].iter().filter(|&&p| p).count() as i64)
            .collect();
        // Masks over keys [context, state, actions].
        let mut m_self = Vec::with_capacity(b * (1 + ls) * (lc + 1 + ls));
        let mut m_state = Vec::with_capacity(b * (lc + 1));
        let mut m_cross = Vec::with_capacity(b * ls * (lc + 1));
        for s in 0..b {
            let ctx = &context.pad[s * lc..(s + 1) * lc];
            m_self.extend_from_slice(ctx);
            m_self.push(true);
            m_self.extend(std::iter::repeat_n(false, ls));
            for i in 0..ls {
                m_self.extend_from_slice(ctx);
                m_self.push(true);
                m_self.extend((0..ls).map(|j| j <= i));
                m_cross.extend_from_slice(ctx);
                m_cross.push(true);
            }
            m_state.extend_from_slice(ctx);
            m_state.push(true);
        }
        let m_self = Self::bool_tensor(m_self, [b, 1 + ls, lc + 1 + ls], &device);
        let m_state = Self::bool_tensor(m_state, [b, 1, lc + 1], &device);
        let m_cross = Self::bool_tensor(m_cross, [b, ls, lc + 1], &device);
        let hd = self.dims.text.head_dim();
        let (cos_st, sin_st) = rope_tables(&valid, b, 1, hd, &device);
        let pos_s = position_ids(
            &vec![true; b * ls],
            b,
            ls,
            &valid.iter().map(|v| v + 1).collect::<Vec<_>>(),
        );
        let (cos_s, sin_s) = rope_tables(&pos_s, b, ls, hd, &device);
        let expert_pos: Vec<i64> = (0..b).flat_map(|_| 0..ls as i64).collect();
        let (cos_e, sin_e) = rope_tables(&expert_pos, b, ls, hd, &device);
        let n = self.dims.vlm_layers;
        for i in 0..n {
            let vlm = &self.text_layers[i];
            let expert = self.dims.expert_index(i).map(|j| &self.expert_layers[j]);
            let last = i + 1 == n;
            let (ck, cv) = &context.layers[i];
            let (q, k, v) = vlm.qkv(st.clone());
            let q = apply_rope(q, &cos_st, &sin_st);
            let k = Tensor::cat(vec![ck.clone(), apply_rope(k, &cos_st, &sin_st)], 1);
            let v = Tensor::cat(vec![cv.clone(), v], 1);
            match expert {
                Some(ex) if self.dims.is_self_attn_layer(i) => {
                    let (qe, ke, ve) = ex.qkv(suffix.clone());
                    let q = Tensor::cat(vec![q, apply_rope(qe, &cos_s, &sin_s)], 1);
                    let k = Tensor::cat(vec![k, apply_rope(ke, &cos_s, &sin_s)], 1);
                    let v = Tensor::cat(vec![v, ve], 1);
                    let att = masked_attention(q, k, v, Some(m_self.clone()));
                    if !last {
                        st = vlm.finish(st, att.clone().narrow(1, 0, 1));
                    }
                    suffix = ex.finish(suffix, att.narrow(1, 1, ls));
                }
                _ => {
                    if let Some(ex) = expert {
                        let qe = apply_rope(ex.query(suffix.clone()), &cos_e, &sin_e);
                        let (ke, ve) = ex.project_kv(k.clone(), v.clone());
                        suffix = ex.finish(suffix, masked_attention(qe, ke, ve, Some(m_cross.clone())));
                    }
                    if !last {
                        st = vlm.finish(st, masked_attention(q, k, v, Some(m_state.clone())));
                    }
                }
            }
        }
        let out = self.expert_norm.forward(suffix).narrow(1, ls - c, c);
        let v_t = self.action_out_proj.forward(out);
        Ok((u_t - v_t).square())
    }
}
