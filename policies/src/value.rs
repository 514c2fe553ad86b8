//! State-value MLP (state -> V) trained by MSE: the baseline of advantage-weighted regression.

use burn::prelude::*;

use crate::nets::Mlp;

#[derive(Config, Debug)]
pub struct ValueConfig {
    /// Joint-state dimension.
    pub state_dim: usize,
    /// Hidden layer widths (ReLU).
    #[config(default = "vec![256, 256]")]
    pub hidden: Vec<usize>,
}

#[derive(Module, Debug)]
pub struct ValueMlp {
    pub mlp: Mlp,
}

impl ValueConfig {
    pub fn init(&self, device: &Device) -> ValueMlp {
        ValueMlp {
            mlp: Mlp::new(self.state_dim, &self.hidden, 1, device),
        }
    }
}

impl ValueMlp {
    /// `[n, state_dim]` normalised states -> `[n]` values.
    pub fn forward(&self, states: Tensor<2>) -> Tensor<1> {
        let n = states.dims()[0];
        self.mlp.forward(states).reshape([n])
    }
}
