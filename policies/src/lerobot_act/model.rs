//! LeRobot 0.4.4's `ACT` network (`lerobot/policies/act/modeling_act.py`) in Burn: the torchvision
//! ResNet backbone with `FrozenBatchNorm2d` (only `layer4`'s output is used, as `IntermediateLayerGetter`
//! returns it), the 1x1 `encoder_img_feat_input_proj`, `ACTSinusoidalPositionEmbedding2d`, the DETR-style
//! transformer encoder/decoder (`ACTEncoderLayer` / `ACTDecoderLayer`, post-norm or pre-norm), the CVAE
//! encoder over `[cls, robot_state, *actions]`, and `action_head`.
//!
//! Tensors are batch-first here (`[B, L, D]`); LeRobot runs its transformer sequence-first, which only
//! changes the layout, not the arithmetic. Parameter names and layouts are LeRobot's (see
//! [`super::weights`]).

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::{gelu, relu, softmax};

use super::config::{ActDims, Activation};
use crate::error::{PolicyError, Result};

/// torchvision's `FrozenBatchNorm2d`: batch norm with fixed statistics and affine parameters
/// (`x * w / sqrt(rv + eps) + (b - rm * w / sqrt(rv + eps))`, eps 1e-5). None of the four trains.
#[derive(Module, Debug)]
pub struct FrozenBatchNorm2d {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: Param<Tensor<1>>,
    pub running_var: Param<Tensor<1>>,
}

const FROZEN_BN_EPS: f64 = 1e-5;

impl FrozenBatchNorm2d {
    pub fn new(channels: usize, device: &Device) -> Self {
        let frozen = |init: Initializer| init.init([channels], device).set_require_grad(false);
        Self {
            weight: frozen(Initializer::Ones),
            bias: frozen(Initializer::Zeros),
            running_mean: frozen(Initializer::Zeros),
            running_var: frozen(Initializer::Ones),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = x.dims()[1];
        let scale = self.weight.val() * (self.running_var.val() + FROZEN_BN_EPS).sqrt().recip();
        let shift = self.bias.val() - self.running_mean.val() * scale.clone();
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }
}

fn conv(c_in: usize, c_out: usize, kernel: usize, stride: usize, device: &Device) -> Conv2d {
    let pad = kernel / 2;
    // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        })
        .init(device)
}

/// `downsample = Sequential(conv1x1(stride), norm)` of a block whose shape changes.
#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
    pub bn: FrozenBatchNorm2d,
}

/// torchvision's `BasicBlock` (expansion 1).
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: FrozenBatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: FrozenBatchNorm2d,
    pub downsample: Option<Downsample>,
}

impl BasicBlock {
    pub fn new(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Self {
        let downsample = (stride != 1 || c_in != c_out).then(|| Downsample {
            conv: conv(c_in, c_out, 1, stride, device),
            bn: FrozenBatchNorm2d::new(c_out, device),
        });
        Self {
            conv1: conv(c_in, c_out, 3, stride, device),
            bn1: FrozenBatchNorm2d::new(c_out, device),
            conv2: conv(c_out, c_out, 3, 1, device),
            bn2: FrozenBatchNorm2d::new(c_out, device),
            downsample,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x.clone())),
            None => x.clone(),
        };
        let out = relu(self.bn1.forward(self.conv1.forward(x)));
        let out = self.bn2.forward(self.conv2.forward(out));
        relu(out + identity)
    }
}

/// torchvision's ResNet up to `layer4` (what `IntermediateLayerGetter(return_layers={"layer4": ...})`
/// keeps: `avgpool` and `fc` are dropped).
#[derive(Module, Debug)]
pub struct ResNetBackbone {
    pub conv1: Conv2d,
    pub bn1: FrozenBatchNorm2d,
    pub maxpool: MaxPool2d,
    pub layers: Vec<Vec<BasicBlock>>,
}

/// Channels of `layer4`'s output (`backbone_model.fc.in_features` for resnet18/34).
pub const BACKBONE_CHANNELS: usize = 512;

impl ResNetBackbone {
    pub fn new(blocks: [usize; 4], device: &Device) -> Self {
        let widths = [64, 128, 256, 512];
        let mut c_in = 64;
        let mut layers = Vec::with_capacity(4);
        for (stage, (&n, &width)) in blocks.iter().zip(&widths).enumerate() {
            let stride = if stage == 0 { 1 } else { 2 };
            let mut stage_blocks = Vec::with_capacity(n);
            for i in 0..n {
                stage_blocks.push(BasicBlock::new(
                    c_in,
                    width,
                    if i == 0 { stride } else { 1 },
                    device,
                ));
                c_in = width;
            }
            layers.push(stage_blocks);
        }
        Self {
            conv1: conv(3, 64, 7, 2, device),
            bn1: FrozenBatchNorm2d::new(64, device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layers,
        }
    }

    /// `[B, 3, H, W]` -> `layer4` feature map `[B, 512, H/32, W/32]` (rounded as the strided convs do).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // The max pool follows a ReLU, so its padding value (-inf in torch) cannot win over zero either way.
        let mut x = self
            .maxpool
            .forward(relu(self.bn1.forward(self.conv1.forward(x))));
        for stage in &self.layers {
            for block in stage {
                x = block.forward(x);
            }
        }
        x
    }
}

/// `torch.nn.MultiheadAttention` (batch-first here): packed `in_proj_weight` `[3D, D]` / `in_proj_bias`
/// kept in PyTorch's layout, `out_proj`, dropout on the attention weights in training.
#[derive(Module, Debug)]
pub struct MultiheadAttention {
    pub in_proj_weight: Param<Tensor<2>>,
    pub in_proj_bias: Param<Tensor<1>>,
    pub out_proj: Linear,
    pub dropout: Dropout,
    pub n_heads: usize,
}

impl MultiheadAttention {
    pub fn new(d: usize, n_heads: usize, dropout: f64, device: &Device) -> Self {
        Self {
            // torch: xavier_uniform_ on in_proj_weight (ACT re-applies xavier to every >1-dim tensor).
            in_proj_weight: Initializer::XavierUniform { gain: 1.0 }.init_with(
                [3 * d, d],
                Some(d),
                Some(d),
                device,
            ),
            in_proj_bias: Initializer::Zeros.init([3 * d], device),
            out_proj: xavier_linear(d, d, device),
            dropout: DropoutConfig::new(dropout).init(),
            n_heads,
        }
    }

    /// `x [B, L, D] @ W[rows]^T + b[rows]` for the `part`-th of the packed projections.
    fn project(&self, x: Tensor<3>, part: usize) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let w = self.in_proj_weight.val().narrow(0, part * d, d);
        let bias = self.in_proj_bias.val().narrow(0, part * d, d);
        (x.reshape([b * l, d]).matmul(w.transpose()) + bias.unsqueeze_dim::<2>(0)).reshape([b, l, d])
    }

    /// `F.multi_head_attention_forward`: `softmax((q / sqrt(hd)) k^T + mask) v`, heads merged, `out_proj`.
    /// `key_padding_mask` `[B, Lk]` is true where the key is padding.
    pub fn forward(
        &self,
        query: Tensor<3>,
        key: Tensor<3>,
        value: Tensor<3>,
        key_padding_mask: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let [b, lq, d] = query.dims();
        let lk = key.dims()[1];
        let h = self.n_heads;
        let hd = d / h;
        let split = |t: Tensor<3>, len: usize| t.reshape([b, len, h, hd]).swap_dims(1, 2);
        let q = split(self.project(query, 0), lq) * (1.0 / (hd as f64).sqrt());
        let k = split(self.project(key, 1), lk);
        let v = split(self.project(value, 2), lk);
        let mut scores = q.matmul(k.swap_dims(2, 3)); // [B, H, Lq, Lk]
        if let Some(mask) = key_padding_mask {
            let mask = mask.clone().reshape([b, 1, 1, lk]).expand([b, h, lq, lk]);
            scores = scores.mask_fill(mask, f32::NEG_INFINITY);
        }
        let probs = self.dropout.forward(softmax(scores, 3));
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, lq, d]);
        self.out_proj.forward(out)
    }
}

fn xavier_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::XavierUniform { gain: 1.0 })
        .init(device)
}

fn layer_norm(d: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(d).with_epsilon(1e-5).init(device)
}

fn activate(a: Activation, x: Tensor<3>) -> Tensor<3> {
    match a {
        Activation::Relu => relu(x),
        Activation::Gelu => gelu(x),
    }
}

/// `x + pos` with `pos` `[1, L, D]` broadcast over the batch.
fn with_pos(x: Tensor<3>, pos: Option<&Tensor<3>>) -> Tensor<3> {
    match pos {
        Some(p) => {
            let dims = x.dims();
            x + p.clone().expand(dims)
        }
        None => x,
    }
}

/// `ACTEncoderLayer`.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub self_attn: MultiheadAttention,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub dropout: Dropout,
    #[module(skip)]
    pub activation: Activation,
    pub pre_norm: bool,
}

impl EncoderLayer {
    pub fn new(dims: &ActDims, device: &Device) -> Self {
        let d = dims.dim_model;
        Self {
            self_attn: MultiheadAttention::new(d, dims.n_heads, dims.dropout, device),
            linear1: xavier_linear(d, dims.dim_feedforward, device),
            linear2: xavier_linear(dims.dim_feedforward, d, device),
            norm1: layer_norm(d, device),
            norm2: layer_norm(d, device),
            dropout: DropoutConfig::new(dims.dropout).init(),
            activation: dims.activation,
            pre_norm: dims.pre_norm,
        }
    }

    pub fn forward(
        &self,
        x: Tensor<3>,
        pos: Option<&Tensor<3>>,
        key_padding_mask: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let mut skip = x.clone();
        let mut x = x;
        if self.pre_norm {
            x = self.norm1.forward(x);
        }
        let qk = with_pos(x.clone(), pos);
        x = self.self_attn.forward(qk.clone(), qk, x, key_padding_mask);
        x = skip + self.dropout.forward(x);
        if self.pre_norm {
            skip = x.clone();
            x = self.norm2.forward(x);
        } else {
            x = self.norm1.forward(x);
            skip = x.clone();
        }
        let ff = self.linear1.forward(x);
        let ff = self
            .linear2
            .forward(self.dropout.forward(activate(self.activation, ff)));
        x = skip + self.dropout.forward(ff);
        if !self.pre_norm {
            x = self.norm2.forward(x);
        }
        x
    }
}

/// `ACTEncoder`: the layers, then a LayerNorm with `pre_norm` (identity otherwise).
#[derive(Module, Debug)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
    pub norm: Option<LayerNorm>,
}

impl Encoder {
    pub fn new(dims: &ActDims, n_layers: usize, device: &Device) -> Self {
        Self {
            layers: (0..n_layers).map(|_| EncoderLayer::new(dims, device)).collect(),
            norm: dims.pre_norm.then(|| layer_norm(dims.dim_model, device)),
        }
    }

    pub fn forward(
        &self,
        mut x: Tensor<3>,
        pos: Option<&Tensor<3>>,
        key_padding_mask: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        for layer in &self.layers {
            x = layer.forward(x, pos, key_padding_mask);
        }
        match &self.norm {
            Some(n) => n.forward(x),
            None => x,
        }
    }
}

/// `ACTDecoderLayer`: self-attention over the action queries, cross-attention into the encoder output.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: MultiheadAttention,
    pub multihead_attn: MultiheadAttention,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub norm3: LayerNorm,
    pub dropout: Dropout,
    #[module(skip)]
    pub activation: Activation,
    pub pre_norm: bool,
}

impl DecoderLayer {
    pub fn new(dims: &ActDims, device: &Device) -> Self {
        let d = dims.dim_model;
        Self {
            self_attn: MultiheadAttention::new(d, dims.n_heads, dims.dropout, device),
            multihead_attn: MultiheadAttention::new(d, dims.n_heads, dims.dropout, device),
            linear1: xavier_linear(d, dims.dim_feedforward, device),
            linear2: xavier_linear(dims.dim_feedforward, d, device),
            norm1: layer_norm(d, device),
            norm2: layer_norm(d, device),
            norm3: layer_norm(d, device),
            dropout: DropoutConfig::new(dims.dropout).init(),
            activation: dims.activation,
            pre_norm: dims.pre_norm,
        }
    }

    pub fn forward(
        &self,
        x: Tensor<3>,
        encoder_out: &Tensor<3>,
        decoder_pos: &Tensor<3>,
        encoder_pos: &Tensor<3>,
    ) -> Tensor<3> {
        let mut skip = x.clone();
        let mut x = x;
        if self.pre_norm {
            x = self.norm1.forward(x);
        }
        let qk = with_pos(x.clone(), Some(decoder_pos));
        x = self.self_attn.forward(qk.clone(), qk, x, None);
        x = skip + self.dropout.forward(x);
        if self.pre_norm {
            skip = x.clone();
            x = self.norm2.forward(x);
        } else {
            x = self.norm1.forward(x);
            skip = x.clone();
        }
        x = self.multihead_attn.forward(
            with_pos(x, Some(decoder_pos)),
            with_pos(encoder_out.clone(), Some(encoder_pos)),
            encoder_out.clone(),
            None,
        );
        x = skip + self.dropout.forward(x);
        if self.pre_norm {
            skip = x.clone();
            x = self.norm3.forward(x);
        } else {
            x = self.norm2.forward(x);
            skip = x.clone();
        }
        let ff = self.linear1.forward(x);
        let ff = self
            .linear2
            .forward(self.dropout.forward(activate(self.activation, ff)));
        x = skip + self.dropout.forward(ff);
        if !self.pre_norm {
            x = self.norm3.forward(x);
        }
        x
    }
}

/// `ACTDecoder`: the layers, then always a LayerNorm.
#[derive(Module, Debug)]
pub struct Decoder {
    pub layers: Vec<DecoderLayer>,
    pub norm: LayerNorm,
}

/// `create_sinusoidal_pos_embedding(n, d)`: `[n, d]`, computed in f64 as numpy does, then f32.
pub fn sinusoidal_1d(num_positions: usize, dimension: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(num_positions * dimension);
    for pos in 0..num_positions {
        for j in 0..dimension {
            let angle = pos as f64 / 10000f64.powf(2.0 * (j / 2) as f64 / dimension as f64);
            out.push(if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
        }
    }
    out
}

/// `ACTSinusoidalPositionEmbedding2d(dim_model / 2)` for an `h x w` feature map, as `[h * w, dim_model]`
/// rows in `(h w)` order: channels `[0, D/2)` encode the row, `[D/2, D)` the column, each interleaving
/// `sin` (even channel) and `cos` (odd channel) of `pos / 10000^(2 (i // 2) / (D/2))`, where the position
/// runs over `(1..=n) / (n + 1e-6) * 2 pi` (f32 arithmetic, as LeRobot computes it).
pub fn sinusoidal_2d(h: usize, w: usize, dim_model: usize) -> Vec<f32> {
    let half = dim_model / 2;
    let two_pi = std::f32::consts::TAU;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 10000f32.powf((2 * (i / 2)) as f32 / half as f32))
        .collect();
    let norm = |i: usize, n: usize| (i + 1) as f32 / (n as f32 + 1e-6) * two_pi;
    let mut out = Vec::with_capacity(h * w * dim_model);
    for y in 0..h {
        let ypos = norm(y, h);
        for x in 0..w {
            let xpos = norm(x, w);
            for pos in [ypos, xpos] {
                for (c, f) in inv_freq.iter().enumerate() {
                    let a = pos / f;
                    out.push(if c % 2 == 0 { a.sin() } else { a.cos() });
                }
            }
        }
    }
    out
}

/// Inputs of [`Act::forward`], already normalised by LeRobot's preprocessor.
#[derive(Debug, Clone)]
pub struct ActBatch {
    /// `observation.state` `[B, state_dim]` (when the config has it).
    pub state: Option<Tensor<2>>,
    /// `observation.environment_state` `[B, env_dim]` (when the config has it).
    pub env_state: Option<Tensor<2>>,
    /// One `[B, 3, H, W]` per camera, in the config's camera order.
    pub images: Vec<Tensor<4>>,
}

/// What the VAE encoder reads in training: the normalised target chunk, its padding, and the standard
/// normal noise of the reparameterisation (`torch.randn_like(mu)`), passed in for determinism.
#[derive(Debug, Clone)]
pub struct VaeTarget {
    /// `[B, chunk, action_dim]`.
    pub actions: Tensor<3>,
    /// `[B, chunk]`, true past the episode end.
    pub is_pad: Tensor<2, Bool>,
    /// `[B, latent_dim]`.
    pub noise: Tensor<2>,
}

/// The action chunk and, when the VAE encoder ran, the latent's `(mu, log_sigma_x2)`.
#[derive(Debug, Clone)]
pub struct ActOutput {
    /// `[B, chunk, action_dim]`, normalised.
    pub actions: Tensor<3>,
    pub latent: Option<(Tensor<2>, Tensor<2>)>,
}

/// LeRobot's `ACT` module. Field names follow the state dict (`model.<field>`).
#[derive(Module, Debug)]
pub struct Act {
    pub vae_encoder: Option<Encoder>,
    pub vae_encoder_cls_embed: Option<Param<Tensor<2>>>,
    pub vae_encoder_robot_state_input_proj: Option<Linear>,
    pub vae_encoder_action_input_proj: Option<Linear>,
    pub vae_encoder_latent_output_proj: Option<Linear>,
    /// Buffer `[1, vae_tokens, D]` (saved in the checkpoint, never trained).
    pub vae_encoder_pos_enc: Option<Param<Tensor<3>>>,
    pub backbone: Option<ResNetBackbone>,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub encoder_robot_state_input_proj: Option<Linear>,
    pub encoder_env_state_input_proj: Option<Linear>,
    pub encoder_latent_input_proj: Linear,
    pub encoder_img_feat_input_proj: Option<Conv2d>,
    pub encoder_1d_feature_pos_embed: Param<Tensor<2>>,
    pub decoder_pos_embed: Param<Tensor<2>>,
    pub action_head: Linear,
    #[module(skip)]
    pub dims: ActDims,
}

fn embedding(n: usize, d: usize, device: &Device) -> Param<Tensor<2>> {
    // nn.Embedding: N(0, 1).
    Initializer::Normal { mean: 0.0, std: 1.0 }.init([n, d], device)
}

fn plain_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out).init(device)
}

impl Act {
    /// A randomly initialised ACT of shape `dims` (ResNet random too: LeRobot's
    /// `pretrained_backbone_weights: null`).
    pub fn new(dims: ActDims, device: &Device) -> Self {
        let d = dims.dim_model;
        let vae = dims.use_vae;
        let vae_pos = TensorData::new(sinusoidal_1d(dims.vae_tokens(), d), [1, dims.vae_tokens(), d]);
        let has_images = !dims.cameras.is_empty();
        Self {
            vae_encoder: vae.then(|| Encoder::new(&dims, dims.n_vae_encoder_layers, device)),
            vae_encoder_cls_embed: vae.then(|| embedding(1, d, device)),
            vae_encoder_robot_state_input_proj: dims
                .state_dim
                .filter(|_| vae)
                .map(|s| plain_linear(s, d, device)),
            vae_encoder_action_input_proj: vae.then(|| plain_linear(dims.action_dim, d, device)),
            vae_encoder_latent_output_proj: vae.then(|| plain_linear(d, 2 * dims.latent_dim, device)),
            vae_encoder_pos_enc: vae
                .then(|| Param::from_tensor(Tensor::from_data(vae_pos, device)).set_require_grad(false)),
            backbone: has_images.then(|| ResNetBackbone::new(dims.resnet_blocks, device)),
            encoder: Encoder::new(&dims, dims.n_encoder_layers, device),
            decoder: Decoder {
                layers: (0..dims.n_decoder_layers)
                    .map(|_| DecoderLayer::new(&dims, device))
                    .collect(),
                norm: layer_norm(d, device),
            },
            encoder_robot_state_input_proj: dims.state_dim.map(|s| plain_linear(s, d, device)),
            encoder_env_state_input_proj: dims.env_state_dim.map(|s| plain_linear(s, d, device)),
            encoder_latent_input_proj: plain_linear(dims.latent_dim, d, device),
            encoder_img_feat_input_proj: has_images
                .then(|| Conv2dConfig::new([BACKBONE_CHANNELS, d], [1, 1]).init(device)),
            encoder_1d_feature_pos_embed: embedding(dims.n_1d_tokens(), d, device),
            decoder_pos_embed: embedding(dims.chunk_size, d, device),
            action_head: plain_linear(d, dims.action_dim, device),
            dims,
        }
    }

    fn shape_err(field: &'static str, expected: String, got: String) -> PolicyError {
        PolicyError::Shape { field, expected, got }
    }

    fn check(&self, batch: &ActBatch) -> Result<usize> {
        let dims = &self.dims;
        let b = match (batch.images.first(), &batch.env_state) {
            (Some(img), _) => img.dims()[0],
            (None, Some(env)) => env.dims()[0],
            (None, None) => {
                return Err(Self::shape_err(
                    "images",
                    format!("{} camera image batches", dims.cameras.len()),
                    "none (and no environment state)".into(),
                ));
            }
        };
        if batch.images.len() != dims.cameras.len() {
            return Err(Self::shape_err(
                "images",
                format!("{} cameras", dims.cameras.len()),
                format!("{}", batch.images.len()),
            ));
        }
        for img in &batch.images {
            let [ib, c, _, _] = img.dims();
            if ib != b || c != 3 {
                return Err(Self::shape_err(
                    "images",
                    format!("[{b}, 3, H, W]"),
                    format!("{:?}", img.dims()),
                ));
            }
        }
        let vector = |t: &Option<Tensor<2>>, want: Option<usize>, field: &'static str| -> Result<()> {
            match (t, want) {
                (Some(t), Some(n)) if t.dims() == [b, n] => Ok(()),
                (None, None) => Ok(()),
                (t, want) => Err(Self::shape_err(
                    field,
                    want.map_or("none".into(), |n| format!("[{b}, {n}]")),
                    t.as_ref().map_or("none".into(), |t| format!("{:?}", t.dims())),
                )),
            }
        };
        vector(&batch.state, dims.state_dim, "state")?;
        vector(&batch.env_state, dims.env_state_dim, "env_state")?;
        Ok(b)
    }

    /// The VAE encoder: `(mu, log_sigma_x2)` `[B, latent]` from `[cls, (state), *actions]`.
    fn encode_latent(
        &self,
        state: Option<&Tensor<2>>,
        target: &VaeTarget,
        b: usize,
    ) -> Result<(Tensor<2>, Tensor<2>)> {
        let dims = &self.dims;
        let (Some(enc), Some(cls), Some(action_proj), Some(out_proj), Some(pos)) = (
            &self.vae_encoder,
            &self.vae_encoder_cls_embed,
            &self.vae_encoder_action_input_proj,
            &self.vae_encoder_latent_output_proj,
            &self.vae_encoder_pos_enc,
        ) else {
            return Err(PolicyError::Invalid {
                field: "vae",
                reason: "this ACT was built with use_vae = false".into(),
            });
        };
        let (d, s, a) = (dims.dim_model, dims.chunk_size, dims.action_dim);
        if target.actions.dims() != [b, s, a]
            || target.is_pad.dims() != [b, s]
            || target.noise.dims() != [b, dims.latent_dim]
        {
            return Err(Self::shape_err(
                "vae target",
                format!(
                    "actions [{b}, {s}, {a}], is_pad [{b}, {s}], noise [{b}, {}]",
                    dims.latent_dim
                ),
                format!(
                    "actions {:?}, is_pad {:?}, noise {:?}",
                    target.actions.dims(),
                    target.is_pad.dims(),
                    target.noise.dims()
                ),
            ));
        }
        let mut tokens = vec![cls.val().unsqueeze_dim::<3>(0).expand([b, 1, d])];
        if let (Some(proj), Some(state)) = (&self.vae_encoder_robot_state_input_proj, state) {
            tokens.push(proj.forward(state.clone()).unsqueeze_dim(1));
        }
        tokens.push(action_proj.forward(target.actions.clone()));
        let x = Tensor::cat(tokens, 1);
        let n_prefix = x.dims()[1] - s;
        let device = x.device();
        let prefix_pad =
            Tensor::<2, Bool>::from_data(TensorData::new(vec![false; b * n_prefix], [b, n_prefix]), &device);
        let key_padding_mask = Tensor::cat(vec![prefix_pad, target.is_pad.clone()], 1);
        let out = enc.forward(x, Some(&pos.val()), Some(&key_padding_mask));
        let cls_out = out.narrow(1, 0, 1).reshape([b, d]);
        let params = out_proj.forward(cls_out);
        let l = dims.latent_dim;
        Ok((params.clone().narrow(1, 0, l), params.narrow(1, l, l)))
    }

    /// `ACT.forward`: with `vae` (training with the variational objective) the latent is sampled from the
    /// VAE encoder's distribution with the given noise; without it the latent is zero (inference).
    pub fn forward(&self, batch: &ActBatch, vae: Option<&VaeTarget>) -> Result<ActOutput> {
        let b = self.check(batch)?;
        let dims = &self.dims;
        let d = dims.dim_model;
        let device = self.action_head.weight.val().device();
        let (latent_sample, latent) = match vae.filter(|_| dims.use_vae) {
            Some(target) => {
                let (mu, log_sigma_x2) = self.encode_latent(batch.state.as_ref(), target, b)?;
                let sample = mu.clone() + (log_sigma_x2.clone() / 2.0).exp() * target.noise.clone();
                (sample, Some((mu, log_sigma_x2)))
            }
            None => (Tensor::zeros([b, dims.latent_dim], &device), None),
        };

        let mut tokens = vec![
            self.encoder_latent_input_proj
                .forward(latent_sample)
                .unsqueeze_dim::<3>(1),
        ];
        let mut pos = vec![self.encoder_1d_feature_pos_embed.val()];
        if let (Some(proj), Some(state)) = (&self.encoder_robot_state_input_proj, &batch.state) {
            tokens.push(proj.forward(state.clone()).unsqueeze_dim(1));
        }
        if let (Some(proj), Some(env)) = (&self.encoder_env_state_input_proj, &batch.env_state) {
            tokens.push(proj.forward(env.clone()).unsqueeze_dim(1));
        }
        if let (Some(backbone), Some(proj)) = (&self.backbone, &self.encoder_img_feat_input_proj) {
            for img in &batch.images {
                let features = backbone.forward(img.clone());
                let [_, _, h, w] = features.dims();
                let cam_pos = TensorData::new(sinusoidal_2d(h, w, d), [h * w, d]);
                pos.push(Tensor::from_data(cam_pos, &device));
                // (B, D, h, w) -> (B, h w, D)
                tokens.push(proj.forward(features).reshape([b, d, h * w]).swap_dims(1, 2));
            }
        }
        let tokens = Tensor::cat(tokens, 1);
        let encoder_pos = Tensor::cat(pos, 0).unsqueeze_dim::<3>(0);
        let encoder_out = self.encoder.forward(tokens, Some(&encoder_pos), None);

        let decoder_pos = self.decoder_pos_embed.val().unsqueeze_dim::<3>(0);
        let mut x = Tensor::zeros([b, dims.chunk_size, d], &device);
        for layer in &self.decoder.layers {
            x = layer.forward(x, &encoder_out, &decoder_pos, &encoder_pos);
        }
        let x = self.decoder.norm.forward(x);
        Ok(ActOutput {
            actions: self.action_head.forward(x),
            latent,
        })
    }
}

/// Per-sample terms of `ACTPolicy.forward`'s loss: the padding-masked L1 (summed over the chunk and the
/// action dimensions, divided by `chunk * action_dim`, so that the batch mean is LeRobot's
/// `(l1 * ~is_pad).mean()`) and the KL divergence to N(0, I) summed over the latent (zero without VAE).
/// Returns `(l1 [B], kld [B])`.
pub fn per_sample_losses(
    out: &ActOutput,
    actions: Tensor<3>,
    is_pad: Tensor<2, Bool>,
) -> (Tensor<1>, Tensor<1>) {
    let [b, s, a] = actions.dims();
    let valid = is_pad.bool_not().float().unsqueeze_dim::<3>(2).expand([b, s, a]);
    let l1 = ((actions - out.actions.clone()).abs() * valid)
        .reshape([b, s * a])
        .sum_dim(1)
        .reshape([b])
        / (s * a) as f64;
    let kld = match &out.latent {
        // Dkl = -0.5 * sum(1 + log_sigma_x2 - mu^2 - exp(log_sigma_x2)) (Kingma & Welling, App. B).
        Some((mu, lv)) => ((lv.clone() + 1.0 - mu.clone().powf_scalar(2.0) - lv.clone().exp()) * -0.5)
            .sum_dim(1)
            .reshape([b]),
        None => Tensor::zeros([b], &out.actions.device()),
    };
    (l1, kld)
}
