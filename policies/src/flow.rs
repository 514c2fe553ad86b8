//! Flow-matching action-chunk policy in the style of pi0 (Black et al. 2024), the policy of
//! TOPReward's reward-aligned BC (Eq. 5).
//!
//! Prefix tokens: CNN image tokens, one state token and one instruction token (averaged hashed-trigram
//! embeddings, see [`crate::text`]). Suffix tokens: the noisy action chunk `a_tau`, each step embedded
//! and summed with a sinusoidal embedding of `tau`. A transformer encoder runs over prefix + suffix and
//! a linear head reads the velocity `v(a_tau, tau | o)` at the action tokens.
//!
//! Training (Eq. 5): `a_tau = (1 - tau) eps + tau a`, loss `||v - (a - eps)||^2`, with
//! `eps ~ N(0, I)` and `tau ~ U[0, 1)` drawn from the trainer's seeded RNG (pi0 samples tau from a
//! Beta distribution; uniform is the plain rectified-flow choice). Sampling integrates
//! `da/dtau = v` with `num_steps` Euler steps from `tau = 0` (noise) to `tau = 1`.

use burn::module::Param;
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::data::{Inputs, Targets, masked_mean};
use crate::nets::{CnnConfig, CnnEncoder, time_embedding};

#[derive(Config, Debug)]
pub struct FlowConfig {
    /// Joint-state dimension (6 for SO-101).
    pub state_dim: usize,
    /// Action dimension (6 for SO-101).
    pub action_dim: usize,
    /// Number of cameras per observation.
    #[config(default = 1)]
    pub cameras: usize,
    /// Actions per chunk (pi0 uses 50).
    #[config(default = 20)]
    pub chunk_size: usize,
    #[config(default = 128)]
    pub d_model: usize,
    #[config(default = 4)]
    pub n_heads: usize,
    #[config(default = 512)]
    pub d_ff: usize,
    #[config(default = 3)]
    pub layers: usize,
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Hash buckets of the instruction embedding table.
    #[config(default = 4096)]
    pub text_buckets: usize,
    /// Euler steps when sampling (pi0 uses 10).
    #[config(default = 10)]
    pub num_steps: usize,
    /// Image tokenizer.
    #[config(default = "CnnConfig::new()")]
    pub cnn: CnnConfig,
}

#[derive(Module, Debug)]
pub struct Flow {
    pub cnn: CnnEncoder,
    pub state_proj: Linear,
    pub text_proj: Linear,
    /// Learned embeddings of the state and instruction token positions.
    pub prefix_pos: Param<Tensor<2>>,
    pub action_in: Linear,
    pub action_pos: Param<Tensor<2>>,
    pub time_in: Linear,
    pub time_out: Linear,
    pub encoder: TransformerEncoder,
    pub norm: LayerNorm,
    pub head: Linear,
    pub chunk_size: usize,
    pub action_dim: usize,
    pub d_model: usize,
    pub num_steps: usize,
}

impl FlowConfig {
    pub fn init(&self, device: &Device) -> Flow {
        let d = self.d_model;
        let normal = Initializer::Normal { mean: 0.0, std: 0.02 };
        Flow {
            cnn: CnnEncoder::new(&self.cnn, self.cameras, d, device),
            state_proj: LinearConfig::new(self.state_dim, d).init(device),
            text_proj: LinearConfig::new(self.text_buckets, d)
                .with_bias(false)
                .with_initializer(Initializer::Normal { mean: 0.0, std: 1.0 })
                .init(device),
            prefix_pos: normal.init([2, d], device),
            action_in: LinearConfig::new(self.action_dim, d).init(device),
            action_pos: normal.init([self.chunk_size, d], device),
            time_in: LinearConfig::new(d, d).init(device),
            time_out: LinearConfig::new(d, d).init(device),
            encoder: TransformerEncoderConfig::new(d, self.d_ff, self.n_heads, self.layers)
                .with_dropout(self.dropout)
                .with_norm_first(true)
                .init(device),
            norm: LayerNormConfig::new(d).init(device),
            head: LinearConfig::new(d, self.action_dim).init(device),
            chunk_size: self.chunk_size,
            action_dim: self.action_dim,
            d_model: d,
            num_steps: self.num_steps,
        }
    }
}

/// `n * len` standard normal samples (Box-Muller) from a seeded RNG.
pub(crate) fn normal_vec(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push((r * th.cos()) as f32);
        out.push((r * th.sin()) as f32);
    }
    out.truncate(len);
    out
}

impl Flow {
    /// Prefix tokens `[n, 2 + image tokens, d]` (computed once per observation when sampling).
    pub fn prefix(&self, states: Tensor<2>, images: Tensor<4>, text: Tensor<2>) -> Tensor<3> {
        let n = states.dims()[0];
        let image_tokens = self.cnn.forward(images, n);
        let st = self.state_proj.forward(states).unsqueeze_dim::<3>(1);
        let tx = self.text_proj.forward(text).unsqueeze_dim::<3>(1);
        let pos = self.prefix_pos.val().unsqueeze_dim::<3>(0);
        Tensor::cat(vec![Tensor::cat(vec![st, tx], 1) + pos, image_tokens], 1)
    }

    /// Velocity `v(a_tau, tau | o)`: `[n, chunk, action_dim]`.
    pub fn velocity(&self, prefix: Tensor<3>, a_tau: Tensor<3>, tau: Tensor<1>) -> Tensor<3> {
        let p = prefix.dims()[1];
        let t = self
            .time_out
            .forward(silu(self.time_in.forward(time_embedding(tau, self.d_model))));
        let actions = self.action_in.forward(a_tau)
            + self.action_pos.val().unsqueeze_dim::<3>(0)
            + t.unsqueeze_dim::<3>(1);
        let x = self.encoder.forward(TransformerEncoderInput::new(Tensor::cat(
            vec![prefix, actions],
            1,
        )));
        self.head
            .forward(self.norm.forward(x.narrow(1, p, self.chunk_size)))
    }

    fn prefix_of(&self, inputs: &Inputs) -> Tensor<3> {
        let images = inputs.images.clone().expect("images checked by PolicyNet");
        let text = inputs.text.clone().expect("text computed for flow policies");
        self.prefix(inputs.states.clone(), images, text)
    }

    /// Per-sample flow-matching loss `[n]` (TOPReward Eq. 5).
    pub(crate) fn per_sample_loss(
        &self,
        inputs: &Inputs,
        targets: &Targets,
        rng: &mut ChaCha8Rng,
    ) -> Tensor<1> {
        let device = inputs.states.device();
        let [n, k, d] = targets.actions.dims();
        let eps = Tensor::<3>::from_data(TensorData::new(normal_vec(rng, n * k * d), [n, k, d]), &device);
        let tau_v: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        let tau = Tensor::<1>::from_data(TensorData::new(tau_v, [n]), &device);
        let tau3 = tau.clone().reshape([n, 1, 1]);
        let a = targets.actions.clone();
        // a_tau = (1 - tau) eps + tau a ; target velocity u = a - eps.
        let a_tau = eps.clone() * tau3.clone().neg().add_scalar(1.0) + a.clone() * tau3;
        let u = a - eps;
        let v = self.velocity(self.prefix_of(inputs), a_tau, tau);
        masked_mean((v - u).square(), targets.mask.clone())
    }

    /// Sample an action chunk by Euler integration from seeded noise: `[n, chunk, action_dim]`.
    pub(crate) fn sample(&self, inputs: &Inputs, rng: &mut ChaCha8Rng) -> Tensor<3> {
        let device = inputs.states.device();
        let n = inputs.len;
        let (k, d) = (self.chunk_size, self.action_dim);
        let prefix = self.prefix_of(inputs);
        let mut a = Tensor::<3>::from_data(TensorData::new(normal_vec(rng, n * k * d), [n, k, d]), &device);
        let steps = self.num_steps.max(1);
        let dt = 1.0 / steps as f32;
        for i in 0..steps {
            let tau = Tensor::<1>::full([n], i as f32 * dt, &device);
            let v = self.velocity(prefix.clone(), a.clone(), tau);
            a = a + v.mul_scalar(dt);
        }
        a
    }
}
