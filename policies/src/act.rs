//! ACT-style policy (Zhao et al. 2023, "Action Chunking with Transformers"), without the CVAE latent:
//! a CNN turns each camera image into a grid of tokens, a transformer encoder mixes them with a state
//! token, and a transformer decoder turns `chunk_size` learned action queries into an action chunk.
//! Trained with L1, as ACT. The CVAE style variable is omitted (at inference ACT sets it to zero).

use burn::module::Param;
use burn::nn::transformer::{
    TransformerDecoder, TransformerDecoderConfig, TransformerDecoderInput, TransformerEncoder,
    TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

use crate::data::{Inputs, Targets, masked_mean};
use crate::nets::{CnnConfig, CnnEncoder};

#[derive(Config, Debug)]
pub struct ActConfig {
    /// Joint-state dimension (6 for SO-101).
    pub state_dim: usize,
    /// Action dimension (6 for SO-101).
    pub action_dim: usize,
    /// Number of cameras per observation (images are taken in the observation's order).
    #[config(default = 1)]
    pub cameras: usize,
    /// Actions predicted per observation (ACT uses 100 at 50 Hz; 20 suits 30 Hz SO-101 data).
    #[config(default = 20)]
    pub chunk_size: usize,
    /// Transformer width.
    #[config(default = 128)]
    pub d_model: usize,
    #[config(default = 4)]
    pub n_heads: usize,
    /// Feed-forward width.
    #[config(default = 512)]
    pub d_ff: usize,
    #[config(default = 2)]
    pub encoder_layers: usize,
    /// ACT's reference code effectively uses one decoder layer.
    #[config(default = 1)]
    pub decoder_layers: usize,
    /// Dropout in the transformer (ACT: 0.1). Burn draws dropout masks from its process-wide RNG.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Image tokenizer.
    #[config(default = "CnnConfig::new()")]
    pub cnn: CnnConfig,
}

#[derive(Module, Debug)]
pub struct Act {
    pub cnn: CnnEncoder,
    pub state_proj: Linear,
    pub state_pos: Param<Tensor<2>>,
    pub encoder: TransformerEncoder,
    pub decoder: TransformerDecoder,
    pub queries: Param<Tensor<2>>,
    pub head: Linear,
    pub chunk_size: usize,
    pub action_dim: usize,
}

impl ActConfig {
    pub fn init(&self, device: &Device) -> Act {
        let d = self.d_model;
        Act {
            cnn: CnnEncoder::new(&self.cnn, self.cameras, d, device),
            state_proj: LinearConfig::new(self.state_dim, d).init(device),
            state_pos: Initializer::Normal { mean: 0.0, std: 0.02 }.init([1, d], device),
            encoder: TransformerEncoderConfig::new(d, self.d_ff, self.n_heads, self.encoder_layers)
                .with_dropout(self.dropout)
                .with_norm_first(true)
                .init(device),
            decoder: TransformerDecoderConfig::new(d, self.d_ff, self.n_heads, self.decoder_layers)
                .with_dropout(self.dropout)
                .with_norm_first(true)
                .init(device),
            queries: Initializer::Normal { mean: 0.0, std: 0.02 }.init([self.chunk_size, d], device),
            head: LinearConfig::new(d, self.action_dim).init(device),
            chunk_size: self.chunk_size,
            action_dim: self.action_dim,
        }
    }
}

impl Act {
    /// Predicted action chunk `[n, chunk, action_dim]` (normalised units).
    pub fn forward(&self, states: Tensor<2>, images: Tensor<4>) -> Tensor<3> {
        let n = states.dims()[0];
        let image_tokens = self.cnn.forward(images, n);
        let state_token =
            self.state_proj.forward(states).unsqueeze_dim::<3>(1) + self.state_pos.val().unsqueeze_dim(0);
        let tokens = Tensor::cat(vec![state_token, image_tokens], 1);
        let memory = self.encoder.forward(TransformerEncoderInput::new(tokens));
        let queries = self.queries.val().unsqueeze_dim::<3>(0).repeat_dim(0, n);
        let decoded = self
            .decoder
            .forward(TransformerDecoderInput::new(queries, memory));
        self.head.forward(decoded)
    }

    pub(crate) fn predict(&self, inputs: &Inputs) -> Tensor<3> {
        // `PolicyNet` checks that images are present before calling.
        let images = inputs.images.clone().expect("images checked by PolicyNet");
        self.forward(inputs.states.clone(), images)
    }

    /// Per-sample L1 loss (ACT's reconstruction loss) `[n]`.
    pub(crate) fn per_sample_loss(&self, inputs: &Inputs, targets: &Targets) -> Tensor<1> {
        let pred = self.predict(inputs);
        masked_mean((pred - targets.actions.clone()).abs(), targets.mask.clone())
    }
}
