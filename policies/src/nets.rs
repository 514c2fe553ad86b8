//! Building blocks shared by the policies: an MLP, a small CNN image tokenizer, a sinusoidal time
//! embedding, and seeded initialisation.

use std::sync::Mutex;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Burn's backends keep one process-wide RNG each; holding this lock while seeding it and drawing from it
/// (parameter initialisation here, dropout masks in [`crate::Trainer::step`]) makes the draws depend on
/// the seed alone, even with several trainers (or tests) running in parallel.
pub(crate) static RNG_LOCK: Mutex<()> = Mutex::new(());

struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Build a module with parameters drawn from `seed` (parameters are lazy in Burn 0.22, so they are
/// materialised before the lock is released). They are always drawn by the `flex` backend's RNG and then
/// forked onto `device`, so one seed gives the same initial weights on flex, LibTorch's CPU and a GPU.
pub(crate) fn seeded_init<M: Module>(seed: u64, device: &Device, init: impl FnOnce(&Device) -> M) -> M {
    let _guard = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let flex = if device.is_autodiff() {
        Device::flex().autodiff()
    } else {
        Device::flex()
    };
    flex.seed(seed);
    let module = init(&flex);
    module.visit(&mut Materialize);
    if &flex == device {
        module
    } else {
        // `fork` (not `to_device`) keeps the parameters trainable leaves on the new device.
        module.fork(device)
    }
}

/// A ReLU MLP.
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    pub fn new(d_in: usize, hidden: &[usize], d_out: usize, device: &Device) -> Self {
        let mut dims = vec![d_in];
        dims.extend_from_slice(hidden);
        dims.push(d_out);
        let layers = dims
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Self { layers }
    }

    pub fn forward<const D: usize>(&self, mut x: Tensor<D>) -> Tensor<D> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

/// Small CNN image tokenizer configuration.
#[derive(Config, Debug)]
pub struct CnnConfig {
    /// Output channels of the 3x3 stride-2 convolutions (each halves the resolution).
    #[config(default = "vec![16, 32, 64]")]
    pub channels: Vec<usize>,
    /// The feature map is average-pooled to `token_grid x token_grid` tokens per camera.
    #[config(default = 4)]
    pub token_grid: usize,
}

/// CNN shared by all cameras: conv3x3/2 + ReLU blocks, adaptive average pooling to a token grid, a 1x1
/// projection to `d_model`, and a learned embedding per (camera, grid cell).
#[derive(Module, Debug)]
pub struct CnnEncoder {
    pub convs: Vec<Conv2d>,
    pub pool: AdaptiveAvgPool2d,
    pub proj: Conv2d,
    pub pos: Param<Tensor<2>>,
    pub cameras: usize,
    pub grid: usize,
}

impl CnnEncoder {
    pub fn new(cfg: &CnnConfig, cameras: usize, d_model: usize, device: &Device) -> Self {
        let mut c_in = 3;
        let mut convs = Vec::new();
        for &c_out in &cfg.channels {
            convs.push(
                Conv2dConfig::new([c_in, c_out], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            );
            c_in = c_out;
        }
        let grid = cfg.token_grid;
        Self {
            convs,
            pool: AdaptiveAvgPool2dConfig::new([grid, grid]).init(),
            proj: Conv2dConfig::new([c_in, d_model], [1, 1]).init(device),
            pos: Initializer::Normal { mean: 0.0, std: 0.02 }.init([cameras * grid * grid, d_model], device),
            cameras,
            grid,
        }
    }

    /// Number of tokens for all cameras of one sample.
    pub fn tokens(&self) -> usize {
        self.cameras * self.grid * self.grid
    }

    /// `[n * cameras, 3, h, w]` -> `[n, cameras * grid^2, d_model]`.
    pub fn forward(&self, images: Tensor<4>, n: usize) -> Tensor<3> {
        let mut x = images;
        for conv in &self.convs {
            x = relu(conv.forward(x));
        }
        let x = self.proj.forward(self.pool.forward(x)); // [n*c, d, g, g]
        let [_, d, g, _] = x.dims();
        let x = x
            .reshape([n, self.cameras, d, g * g])
            .swap_dims(2, 3)
            .reshape([n, self.cameras * g * g, d]);
        x + self.pos.val().unsqueeze_dim::<3>(0)
    }
}

/// Sinusoidal embedding of the flow time tau in [0, 1] (`[n]` -> `[n, dim]`), with periods spaced
/// geometrically from 4e-3 to 4 as in pi0's `create_sinusoidal_pos_embedding`.
pub fn time_embedding(tau: Tensor<1>, dim: usize) -> Tensor<2> {
    let half = dim / 2;
    let device = tau.device();
    let (min_p, max_p) = (4e-3f64, 4.0f64);
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let frac = if half > 1 {
                i as f64 / (half - 1) as f64
            } else {
                0.0
            };
            let period = min_p * (max_p / min_p).powf(frac);
            (2.0 * std::f64::consts::PI / period) as f32
        })
        .collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &device).unsqueeze_dim::<2>(0);
    let n = tau.dims()[0];
    let arg = tau.reshape([n, 1]) * freqs;
    let emb = Tensor::cat(vec![arg.clone().sin(), arg.cos()], 1);
    if dim % 2 == 1 {
        Tensor::cat(vec![emb, Tensor::zeros([n, 1], &device)], 1)
    } else {
        emb
    }
}
