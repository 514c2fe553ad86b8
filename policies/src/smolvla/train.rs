//! Training pieces: reductions of the per-element flow-matching loss (LeRobot 0.4.4's plain mean, or
//! the padding-masked mean of later LeRobot versions), per-sample weights (reward-aligned BC, AWR),
//! and LeRobot's optimiser step: global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`)
//! followed by `torch.optim.AdamW`.

use std::path::Path;

use burn::module::Param;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use super::config::SmolVlaConfig;
use super::model::SmolVla;
use super::weights::{Layout, NamedParams, ParamVisitor};
use crate::data::weights_tensor;
use crate::error::{PolicyError, Result};

/// Which elements of the `[B, chunk, max_action_dim]` loss count.
#[derive(Debug, Clone, Default)]
#[allow(clippy::large_enum_variant)] // built once per batch; boxing would only add noise
pub enum LossPadding {
    /// Every element, padded action dimensions included: LeRobot 0.4.4 (its padding mask is read
    /// from the misspelled key `actions_id_pad` and never applied). Use for parity.
    #[default]
    AllElements,
    /// Only the first `action_dim` dimensions and, when given, the time steps whose `is_pad` is
    /// false (`[B, chunk]`, true past the episode end): what real fine-tuning should use.
    Valid {
        action_dim: usize,
        is_pad: Option<Tensor<2, Bool>>,
    },
}

/// Per-sample loss `[B]`: the mean over the counted elements of each sample.
pub fn per_sample_flow_loss(losses: Tensor<3>, padding: &LossPadding) -> Tensor<1> {
    let [b, c, a] = losses.dims();
    match padding {
        LossPadding::AllElements => losses.reshape([b, c * a]).mean_dim(1).reshape([b]),
        LossPadding::Valid { action_dim, is_pad } => {
            let d = (*action_dim).min(a);
            let kept = losses.narrow(2, 0, d).sum_dim(2).reshape([b, c]);
            match is_pad {
                None => kept.sum_dim(1).reshape([b]) / (c * d) as f64,
                Some(is_pad) => {
                    let valid = is_pad.clone().bool_not().float();
                    let count = valid.clone().sum_dim(1).reshape([b]).clamp_min(1.0) * d as f64;
                    (kept * valid).sum_dim(1).reshape([b]) / count
                }
            }
        }
    }
}

/// `E[w * loss]` over the batch (TOPReward Eq. 3 weights or AWR weights); the plain mean without
/// weights. Weights must be finite and >= 0.
pub fn weighted_flow_loss(per_sample: Tensor<1>, weights: Option<&[f32]>) -> Result<Tensor<1>> {
    let n = per_sample.dims()[0];
    match weights {
        None => Ok(per_sample.mean()),
        Some(w) => {
            let w = weights_tensor(w, n, &per_sample.device())?;
            Ok((per_sample * w).mean())
        }
    }
}

/// LeRobot's optimiser: AdamW (lr, betas, eps, weight decay from the config) after clipping the
/// global gradient norm. Burn's own clipping is per tensor, so the global clip is done here; Burn's
/// AdamW update (`p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)`) is torch's.
pub struct SmolVlaOptimizer {
    adamw: ModuleOptimizer,
    max_grad_norm: Option<f64>,
}

impl std::fmt::Debug for SmolVlaOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmolVlaOptimizer")
            .field("max_grad_norm", &self.max_grad_norm)
            .finish()
    }
}

impl SmolVlaOptimizer {
    /// From the config's `optimizer_*` fields (`optimizer_grad_clip_norm <= 0` disables clipping).
    pub fn new(cfg: &SmolVlaConfig) -> Self {
        let adamw = AdamWConfig::new()
            .with_beta_1(cfg.optimizer_betas[0] as f32)
            .with_beta_2(cfg.optimizer_betas[1] as f32)
            .with_epsilon(cfg.optimizer_eps as f32)
            .with_weight_decay(cfg.optimizer_weight_decay as f32)
            .init();
        let clip = cfg.optimizer_grad_clip_norm;
        Self {
            adamw,
            max_grad_norm: (clip > 0.0).then_some(clip),
        }
    }

    /// The underlying Burn optimiser (to save or load its moments).
    pub fn inner(&self) -> &ModuleOptimizer {
        &self.adamw
    }

    pub fn inner_mut(&mut self) -> &mut ModuleOptimizer {
        &mut self.adamw
    }

    /// Write AdamW's moments to `path` (a Burn record keyed by parameter id).
    pub fn save_moments(&self, path: &Path) -> Result<()> {
        self.adamw.save(path).map_err(|e| PolicyError::Record {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// The optimiser of `cfg` ([`Self::new`]) with the moments [`Self::save_moments`] wrote (for a model
    /// whose parameter ids are the saved model's). A damaged record is an error naming the file (Burn
    /// 0.22 panics on some).
    pub fn with_saved_moments(cfg: &SmolVlaConfig, path: &Path) -> Result<Self> {
        let Self { adamw, max_grad_norm } = Self::new(cfg);
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            adamw.load(path).map_err(|e| e.to_string())
        }));
        let reason = match loaded {
            Ok(Ok(adamw)) => return Ok(Self { adamw, max_grad_norm }),
            Ok(Err(reason)) => reason,
            Err(_) => "damaged optimiser record".to_string(),
        };
        Err(PolicyError::Record {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Clip then step; returns the updated model and the gradient norm before clipping.
    pub fn step(&mut self, lr: f64, model: SmolVla, mut grads: GradientsParams) -> Result<(SmolVla, f64)> {
        let norm = clip_grad_norm(&model, &mut grads, self.max_grad_norm);
        if !norm.is_finite() {
            return Err(PolicyError::Invalid {
                field: "gradient norm",
                reason: format!("{norm} (diverged)"),
            });
        }
        Ok((self.adamw.step(lr, model, grads), norm))
    }
}

/// `torch.nn.utils.clip_grad_norm_`: the L2 norm over every gradient; when above `max_norm`, every
/// gradient is scaled by `max_norm / (norm + 1e-6)`. Returns the norm before clipping.
pub fn clip_grad_norm<M: NamedParams>(model: &M, grads: &mut GradientsParams, max_norm: Option<f64>) -> f64 {
    struct SumSq<'a> {
        grads: &'a GradientsParams,
        total: f64,
    }
    impl ParamVisitor for SumSq<'_> {
        fn visit<const D: usize>(&mut self, _: &str, p: Param<Tensor<D>>, _: Layout) -> Param<Tensor<D>> {
            if let Some(g) = self.grads.get::<D>(p.id) {
                self.total += g.square().sum().into_scalar::<f32>() as f64;
            }
            p
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ParamVisitor for Scale<'_> {
        fn visit<const D: usize>(&mut self, _: &str, p: Param<Tensor<D>>, _: Layout) -> Param<Tensor<D>> {
            if let Some(g) = self.grads.remove::<D>(p.id) {
                self.grads.register::<D>(p.id, g * self.factor);
            }
            p
        }
    }
    let mut sum = SumSq { grads, total: 0.0 };
    let _ = model.clone().map_named(&mut sum);
    let norm = sum.total.sqrt();
    if let Some(max) = max_norm {
        // torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1.
        let coef = (max / (norm + 1e-6)).min(1.0);
        if coef < 1.0 {
            let mut scale = Scale { grads, factor: coef };
            let _ = model.clone().map_named(&mut scale);
        }
    }
    norm
}

/// LeRobot's `CosineDecayWithWarmupSchedulerConfig` (lerobot/optim/schedulers.py, SmolVLA's
/// `get_scheduler_preset`): a linear warmup from `peak_lr / (warmup + 1)` to `peak_lr`, then a cosine
/// from `peak_lr` at step 0 to `decay_lr` at `decay_steps`, constant after. The multiplier of step k is
/// the one `LambdaLR` applies to the k-th optimiser step (LeRobot steps the scheduler after it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineDecayWithWarmup {
    pub peak_lr: f64,
    pub decay_lr: f64,
    pub warmup_steps: usize,
    pub decay_steps: usize,
}

impl CosineDecayWithWarmup {
    /// The schedule `build(optimizer, num_training_steps)` makes: when the run is shorter than
    /// `decay_steps`, warmup is scaled by `run_steps / decay_steps` (truncated, Python's `int`) and the
    /// decay ends with the run.
    pub fn for_run(
        peak_lr: f64,
        decay_lr: f64,
        warmup_steps: usize,
        decay_steps: usize,
        run_steps: usize,
    ) -> Self {
        let (mut warmup, mut decay) = (warmup_steps, decay_steps);
        if run_steps < decay_steps {
            let scale = run_steps as f64 / decay_steps as f64;
            warmup = (warmup_steps as f64 * scale) as usize;
            decay = run_steps;
        }
        Self {
            peak_lr,
            decay_lr,
            warmup_steps: warmup,
            decay_steps: decay,
        }
    }

    /// SmolVLA's preset from its config (`optimizer_lr` unless `peak_lr` is given) for a run of
    /// `run_steps` optimiser steps.
    pub fn from_config(cfg: &SmolVlaConfig, peak_lr: Option<f64>, run_steps: usize) -> Self {
        Self::for_run(
            peak_lr.unwrap_or(cfg.optimizer_lr),
            cfg.scheduler_decay_lr,
            cfg.scheduler_warmup_steps,
            cfg.scheduler_decay_steps,
            run_steps,
        )
    }

    /// Learning rate of optimiser step `step` (0-based): `peak_lr * lr_lambda(step)`.
    pub fn lr(&self, step: usize) -> f64 {
        self.peak_lr * self.multiplier(step)
    }

    fn multiplier(&self, step: usize) -> f64 {
        let warmup = self.warmup_steps as f64;
        if step < self.warmup_steps {
            if step == 0 {
                return 1.0 / (warmup + 1.0);
            }
            let frac = 1.0 - step as f64 / warmup;
            return (1.0 / (warmup + 1.0) - 1.0) * frac + 1.0;
        }
        // A zero-length decay (a run of zero steps) would divide by zero in LeRobot; stay at the peak.
        if self.decay_steps == 0 {
            return 1.0;
        }
        let at = step.min(self.decay_steps) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * at / self.decay_steps as f64).cos());
        let alpha = self.decay_lr / self.peak_lr;
        (1.0 - alpha) * cosine + alpha
    }
}
