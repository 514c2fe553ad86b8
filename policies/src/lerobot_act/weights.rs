//! The name map between [`Act`] and LeRobot's ACT `model.safetensors` (`model.` + the `ACT` module's
//! state dict: parameters and the persistent buffers `vae_encoder_pos_enc` and the backbone's
//! `FrozenBatchNorm2d` statistics). Loading and saving go through the shared strict
//! [`load_named`] / [`save_named`].

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use super::config::ActDims;
use super::model::{
    Act, BasicBlock, Decoder, DecoderLayer, Encoder, EncoderLayer, FrozenBatchNorm2d, MultiheadAttention,
    ResNetBackbone,
};
use crate::error::{PolicyError, Result};
use crate::smolvla::lerobot::{NamedTensors, read_f32_tensors};
use crate::smolvla::weights::{
    Layout, NamedParams, ParamVisitor, load_named, map_layer_norm, map_linear, save_named, with_trainable_of,
};

fn map_conv<V: ParamVisitor>(mut c: Conv2d, p: &str, v: &mut V) -> Conv2d {
    c.weight = v.visit(&format!("{p}.weight"), c.weight, Layout::Same);
    c.bias = c.bias.map(|b| v.visit(&format!("{p}.bias"), b, Layout::Same));
    c
}

fn map_bn<V: ParamVisitor>(mut n: FrozenBatchNorm2d, p: &str, v: &mut V) -> FrozenBatchNorm2d {
    n.weight = v.visit(&format!("{p}.weight"), n.weight, Layout::Same);
    n.bias = v.visit(&format!("{p}.bias"), n.bias, Layout::Same);
    n.running_mean = v.visit(&format!("{p}.running_mean"), n.running_mean, Layout::Same);
    n.running_var = v.visit(&format!("{p}.running_var"), n.running_var, Layout::Same);
    n
}

fn map_block<V: ParamVisitor>(mut b: BasicBlock, p: &str, v: &mut V) -> BasicBlock {
    b.conv1 = map_conv(b.conv1, &format!("{p}.conv1"), v);
    b.bn1 = map_bn(b.bn1, &format!("{p}.bn1"), v);
    b.conv2 = map_conv(b.conv2, &format!("{p}.conv2"), v);
    b.bn2 = map_bn(b.bn2, &format!("{p}.bn2"), v);
    b.downsample = b.downsample.map(|mut d| {
        d.conv = map_conv(d.conv, &format!("{p}.downsample.0"), v);
        d.bn = map_bn(d.bn, &format!("{p}.downsample.1"), v);
        d
    });
    b
}

fn map_backbone<V: ParamVisitor>(mut r: ResNetBackbone, p: &str, v: &mut V) -> ResNetBackbone {
    r.conv1 = map_conv(r.conv1, &format!("{p}.conv1"), v);
    r.bn1 = map_bn(r.bn1, &format!("{p}.bn1"), v);
    r.layers = r
        .layers
        .into_iter()
        .enumerate()
        .map(|(s, stage)| {
            stage
                .into_iter()
                .enumerate()
                .map(|(i, b)| map_block(b, &format!("{p}.layer{}.{i}", s + 1), v))
                .collect()
        })
        .collect();
    r
}

fn map_mha<V: ParamVisitor>(mut a: MultiheadAttention, p: &str, v: &mut V) -> MultiheadAttention {
    // Kept in PyTorch's `[3D, D]` layout; the forward multiplies by its transpose.
    a.in_proj_weight = v.visit(&format!("{p}.in_proj_weight"), a.in_proj_weight, Layout::Same);
    a.in_proj_bias = v.visit(&format!("{p}.in_proj_bias"), a.in_proj_bias, Layout::Same);
    a.out_proj = map_linear(a.out_proj, &format!("{p}.out_proj"), v);
    a
}

fn map_encoder_layer<V: ParamVisitor>(mut l: EncoderLayer, p: &str, v: &mut V) -> EncoderLayer {
    l.self_attn = map_mha(l.self_attn, &format!("{p}.self_attn"), v);
    l.linear1 = map_linear(l.linear1, &format!("{p}.linear1"), v);
    l.linear2 = map_linear(l.linear2, &format!("{p}.linear2"), v);
    l.norm1 = map_layer_norm(l.norm1, &format!("{p}.norm1"), v);
    l.norm2 = map_layer_norm(l.norm2, &format!("{p}.norm2"), v);
    l
}

fn map_encoder<V: ParamVisitor>(mut e: Encoder, p: &str, v: &mut V) -> Encoder {
    e.layers = e
        .layers
        .into_iter()
        .enumerate()
        .map(|(i, l)| map_encoder_layer(l, &format!("{p}.layers.{i}"), v))
        .collect();
    e.norm = e.norm.map(|n| map_layer_norm(n, &format!("{p}.norm"), v));
    e
}

fn map_decoder_layer<V: ParamVisitor>(mut l: DecoderLayer, p: &str, v: &mut V) -> DecoderLayer {
    l.self_attn = map_mha(l.self_attn, &format!("{p}.self_attn"), v);
    l.multihead_attn = map_mha(l.multihead_attn, &format!("{p}.multihead_attn"), v);
    l.linear1 = map_linear(l.linear1, &format!("{p}.linear1"), v);
    l.linear2 = map_linear(l.linear2, &format!("{p}.linear2"), v);
    l.norm1 = map_layer_norm(l.norm1, &format!("{p}.norm1"), v);
    l.norm2 = map_layer_norm(l.norm2, &format!("{p}.norm2"), v);
    l.norm3 = map_layer_norm(l.norm3, &format!("{p}.norm3"), v);
    l
}

fn map_decoder<V: ParamVisitor>(mut d: Decoder, p: &str, v: &mut V) -> Decoder {
    d.layers = d
        .layers
        .into_iter()
        .enumerate()
        .map(|(i, l)| map_decoder_layer(l, &format!("{p}.layers.{i}"), v))
        .collect();
    d.norm = map_layer_norm(d.norm, &format!("{p}.norm"), v);
    d
}

fn map_param<V: ParamVisitor, const D: usize>(
    p: Param<Tensor<D>>,
    name: &str,
    v: &mut V,
) -> Param<Tensor<D>> {
    v.visit(name, p, Layout::Same)
}

/// The prefix of every tensor in the policy's state dict (`ACTPolicy.model`).
pub const PREFIX: &str = "model";

impl NamedParams for Act {
    fn map_named<V: ParamVisitor>(mut self, v: &mut V) -> Self {
        let n = |s: &str| format!("{PREFIX}.{s}");
        self.vae_encoder = self.vae_encoder.map(|e| map_encoder(e, &n("vae_encoder"), v));
        self.vae_encoder_cls_embed = self
            .vae_encoder_cls_embed
            .map(|p| map_param(p, &n("vae_encoder_cls_embed.weight"), v));
        self.vae_encoder_robot_state_input_proj = self
            .vae_encoder_robot_state_input_proj
            .map(|l| map_linear(l, &n("vae_encoder_robot_state_input_proj"), v));
        self.vae_encoder_action_input_proj = self
            .vae_encoder_action_input_proj
            .map(|l| map_linear(l, &n("vae_encoder_action_input_proj"), v));
        self.vae_encoder_latent_output_proj = self
            .vae_encoder_latent_output_proj
            .map(|l| map_linear(l, &n("vae_encoder_latent_output_proj"), v));
        self.vae_encoder_pos_enc = self
            .vae_encoder_pos_enc
            .map(|p| map_param(p, &n("vae_encoder_pos_enc"), v));
        self.backbone = self.backbone.map(|b| map_backbone(b, &n("backbone"), v));
        self.encoder = map_encoder(self.encoder, &n("encoder"), v);
        self.decoder = map_decoder(self.decoder, &n("decoder"), v);
        self.encoder_robot_state_input_proj = self
            .encoder_robot_state_input_proj
            .map(|l| map_linear(l, &n("encoder_robot_state_input_proj"), v));
        self.encoder_env_state_input_proj = self
            .encoder_env_state_input_proj
            .map(|l| map_linear(l, &n("encoder_env_state_input_proj"), v));
        self.encoder_latent_input_proj =
            map_linear(self.encoder_latent_input_proj, &n("encoder_latent_input_proj"), v);
        self.encoder_img_feat_input_proj = self
            .encoder_img_feat_input_proj
            .map(|c| map_conv(c, &n("encoder_img_feat_input_proj"), v));
        self.encoder_1d_feature_pos_embed = map_param(
            self.encoder_1d_feature_pos_embed,
            &n("encoder_1d_feature_pos_embed.weight"),
            v,
        );
        self.decoder_pos_embed = map_param(self.decoder_pos_embed, &n("decoder_pos_embed.weight"), v);
        self.action_head = map_linear(self.action_head, &n("action_head"), v);
        self
    }
}

/// Whether LeRobot trains the tensor called `name`: buffers never do (the backbone's frozen batch-norm
/// statistics and affines, `vae_encoder_pos_enc`); every parameter does.
pub fn lerobot_trainable(name: &str) -> bool {
    let frozen_bn =
        name.starts_with("model.backbone.") && (name.contains(".bn") || name.contains(".downsample.1."));
    !(frozen_bn || name == "model.vae_encoder_pos_enc")
}

/// Whether `name` belongs to the vision backbone (LeRobot's second optimiser group, `optimizer_lr_backbone`).
pub fn is_backbone(name: &str) -> bool {
    name.starts_with("model.backbone.")
}

/// Copies a torchvision ResNet state dict (`conv1.weight`, `bn1.running_var`, `layer1.0.conv1.weight`,
/// ...) into `model.backbone.*`; other parameters pass through.
struct BackboneLoader {
    tensors: NamedTensors,
    used: BTreeSet<String>,
    errors: Vec<String>,
    device: Device,
}

impl ParamVisitor for BackboneLoader {
    fn visit<const D: usize>(&mut self, name: &str, p: Param<Tensor<D>>, _: Layout) -> Param<Tensor<D>> {
        let Some(key) = name.strip_prefix("model.backbone.") else {
            return p;
        };
        let expected = p.lazy_shape().to_vec();
        match self.tensors.get(key) {
            None => self
                .errors
                .push(format!("missing tensor {key} (expected shape {expected:?})")),
            Some((shape, _)) if *shape != expected => self
                .errors
                .push(format!("tensor {key} has shape {shape:?}, expected {expected:?}")),
            Some((_, values)) => {
                self.used.insert(key.to_string());
                let t = Tensor::<D>::from_data(TensorData::new(values.clone(), expected), &self.device);
                return Param::from_tensor(t);
            }
        }
        p
    }
}

impl Act {
    /// Replace the backbone by a torchvision ResNet checkpoint (what `pretrained_backbone_weights` loads
    /// in LeRobot, e.g. ImageNet weights), given as safetensors of the model's `state_dict()`; `fc.*`
    /// and `*.num_batches_tracked` are ignored, any other missing, extra or misshaped tensor is an error.
    pub fn load_torchvision_backbone(self, path: &Path) -> Result<Self> {
        if self.backbone.is_none() {
            return Err(PolicyError::Invalid {
                field: "backbone",
                reason: "this ACT has no camera, so no backbone".into(),
            });
        }
        let device = self.action_head.weight.val().device();
        let mut loader = BackboneLoader {
            tensors: read_f32_tensors(path)?,
            used: BTreeSet::new(),
            errors: Vec::new(),
            device,
        };
        let model = self.map_named(&mut loader);
        let mut errors = loader.errors;
        let unused: Vec<&String> = loader
            .tensors
            .keys()
            .filter(|k| {
                !loader.used.contains(*k) && !k.starts_with("fc.") && !k.ends_with("num_batches_tracked")
            })
            .collect();
        if !unused.is_empty() {
            errors.push(format!("tensors that are not part of this ResNet: {unused:?}"));
        }
        if !errors.is_empty() {
            return Err(PolicyError::Record {
                path: path.to_path_buf(),
                reason: errors.join("; "),
            });
        }
        Ok(model.with_lerobot_trainability())
    }

    /// Load LeRobot's `model.safetensors` strictly into an ACT of shape `dims`, with LeRobot's
    /// trainability ([`lerobot_trainable`]).
    pub fn load_safetensors(dims: ActDims, path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let model = load_named(Act::new(dims, device), path.as_ref(), device, "LeRobot ACT")?;
        Ok(model.with_lerobot_trainability())
    }

    /// Write every tensor as f32 under LeRobot's names and layouts (temp file, then rename).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        save_named(self, path.as_ref())
    }

    /// Mark buffers frozen and parameters trainable, as in LeRobot.
    pub fn with_lerobot_trainability(self) -> Self {
        with_trainable_of(self, lerobot_trainable)
    }
}
