//! An exponential moving average (EMA) of a policy's weights, the averaged copy that evaluation and
//! deployment use when `TrainConfig::ema_decay` is set (as Diffusion Policy and many VLA recipes do):
//! after optimiser step n, `shadow = d_n * shadow + (1 - d_n) * weights` with
//! `d_n = min(decay, (1 + n) / (10 + n))`, the warm-up of TensorFlow's
//! `tf.train.ExponentialMovingAverage(num_updates=n)`, so early averages are not dominated by the
//! random initialisation.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::model::PolicyNet;

/// The averaged weights (on the inference device, no autodiff) and how many updates they have seen.
#[derive(Debug, Clone)]
pub(crate) struct Ema {
    decay: f64,
    pub(crate) shadow: PolicyNet,
    pub(crate) updates: u64,
}

impl Ema {
    /// Start the average at `weights` (an inference copy, e.g. `net.valid()`).
    pub(crate) fn new(decay: f64, weights: PolicyNet, updates: u64) -> Self {
        Self {
            decay,
            shadow: weights,
            updates,
        }
    }

    /// The decay used for the next update.
    pub(crate) fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// Blend the new `weights` (same architecture, inference copy) into the average.
    pub(crate) fn update(&mut self, weights: &PolicyNet) {
        let decay = self.current_decay() as f32;
        let mut flat = Flatten(Vec::new());
        weights.visit(&mut flat);
        let mut blend = Blend {
            decay,
            weights: flat.0.into_iter(),
        };
        self.shadow = self.shadow.clone().map(&mut blend);
        self.updates += 1;
    }
}

/// Every float parameter, flattened, in the module's visiting order.
struct Flatten(Vec<Tensor<1>>);

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        self.0.push(value.reshape([n]));
    }
}

/// `shadow * decay + weights * (1 - decay)`, parameter by parameter in the same visiting order.
struct Blend {
    decay: f32,
    weights: std::vec::IntoIter<Tensor<1>>,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(current) = self.weights.next() else {
            // The modules share one architecture, so the visits line up; a mismatch leaves the average.
            return param;
        };
        let decay = self.decay;
        param.map(|shadow| {
            let dims = shadow.dims();
            shadow.mul_scalar(decay) + current.reshape(dims).mul_scalar(1.0 - decay)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaussian::GaussianMlpConfig;
    use crate::model::PolicyConfig;

    fn flat(net: &PolicyNet) -> Vec<f32> {
        let mut f = Flatten(Vec::new());
        net.visit(&mut f);
        f.0.into_iter()
            .flat_map(|t| t.into_data().try_to_vec::<f32>().unwrap_or_default())
            .collect()
    }

    #[test]
    fn updates_blend_parameter_by_parameter_with_the_warmed_up_decay() {
        let device = crate::cpu_device();
        let cfg = PolicyConfig::Gaussian(GaussianMlpConfig::new(3, 2));
        let a = cfg.init(1, &device).unwrap();
        let b = cfg.init(2, &device).unwrap();
        let c = cfg.init(3, &device).unwrap();
        let (fa, fb, fc) = (flat(&a), flat(&b), flat(&c));
        assert_ne!(fa, fb);
        let mut ema = Ema::new(0.9, a, 0);
        // Update 0 uses min(0.9, 1/10) = 0.1, update 1 min(0.9, 2/11).
        ema.update(&b);
        ema.update(&c);
        let (d0, d1) = (0.1f32, 2.0f32 / 11.0);
        let got = flat(&ema.shadow);
        for (i, g) in got.iter().enumerate() {
            let after_b = d0 * fa[i] + (1.0 - d0) * fb[i];
            let want = d1 * after_b + (1.0 - d1) * fc[i];
            assert!((g - want).abs() < 1e-6, "parameter {i}: {g} vs {want}");
        }
        assert_eq!(ema.updates, 2);
        // Far into training the configured decay takes over.
        ema.updates = 1_000_000;
        assert!((ema.current_decay() - 0.9).abs() < 1e-12);
    }
}
