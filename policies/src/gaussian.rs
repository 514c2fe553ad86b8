//! Gaussian MLP policy on the joint state: state -> mean of an action chunk, with a learned
//! state-independent log-std per chunk element; trained by Gaussian NLL or MSE.

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Inputs, Targets, masked_mean};
use crate::nets::Mlp;

/// Loss of the Gaussian MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GaussianLoss {
    /// Negative log-likelihood of the normalised actions under N(mean, exp(log_std)^2).
    Nll,
    /// Mean squared error of the mean (the log-std is then unused).
    Mse,
}

#[derive(Config, Debug)]
pub struct GaussianMlpConfig {
    /// Joint-state dimension (6 for SO-101).
    pub state_dim: usize,
    /// Action dimension (6 for SO-101).
    pub action_dim: usize,
    /// Actions predicted per observation.
    #[config(default = 10)]
    pub chunk_size: usize,
    /// Hidden layer widths (ReLU).
    #[config(default = "vec![256, 256]")]
    pub hidden: Vec<usize>,
    /// Training loss.
    #[config(default = "GaussianLoss::Nll")]
    pub loss: GaussianLoss,
    /// The log-std is clamped to [min_log_std, max_log_std] (normalised action units).
    #[config(default = "-5.0")]
    pub min_log_std: f32,
    #[config(default = "2.0")]
    pub max_log_std: f32,
}

#[derive(Module, Debug)]
pub struct GaussianMlp {
    pub mlp: Mlp,
    pub log_std: Param<Tensor<1>>,
    pub chunk_size: usize,
    pub action_dim: usize,
    pub nll: bool,
    pub min_log_std: f32,
    pub max_log_std: f32,
}

impl GaussianMlpConfig {
    pub fn init(&self, device: &Device) -> GaussianMlp {
        let out = self.chunk_size * self.action_dim;
        GaussianMlp {
            mlp: Mlp::new(self.state_dim, &self.hidden, out, device),
            log_std: Initializer::Zeros.init([out], device),
            chunk_size: self.chunk_size,
            action_dim: self.action_dim,
            nll: self.loss == GaussianLoss::Nll,
            min_log_std: self.min_log_std,
            max_log_std: self.max_log_std,
        }
    }
}

impl GaussianMlp {
    /// Mean action chunk `[n, chunk, action_dim]` (normalised units).
    pub fn forward(&self, states: Tensor<2>) -> Tensor<3> {
        let n = states.dims()[0];
        self.mlp
            .forward(states)
            .reshape([n, self.chunk_size, self.action_dim])
    }

    pub(crate) fn per_sample_loss(&self, inputs: &Inputs, targets: &Targets) -> Tensor<1> {
        let mean = self.forward(inputs.states.clone());
        let diff = targets.actions.clone() - mean;
        let elementwise = if self.nll {
            let log_std = self
                .log_std
                .val()
                .clamp(self.min_log_std, self.max_log_std)
                .reshape([1, self.chunk_size, self.action_dim]);
            let z = diff / log_std.clone().exp();
            (z.square().mul_scalar(0.5) + log_std).add_scalar(0.5 * (2.0 * std::f32::consts::PI).ln())
        } else {
            diff.square()
        };
        masked_mean(elementwise, targets.mask.clone())
    }
}
