//! Training LeRobot's ACT: `ACTPolicy.forward`'s loss (`l1 + kl_weight * kld`) per sample, weighted by
//! per-sample weights (reward-aligned BC, TOPReward Eq. 3, or AWR), and LeRobot's optimiser preset for
//! ACT (`ACTConfig.get_optimizer_preset` + `get_optim_params`): AdamW with `optimizer_lr` for the
//! transformer and `optimizer_lr_backbone` for the ResNet, weight decay `optimizer_weight_decay`, betas
//! (0.9, 0.999), eps 1e-8, after clipping the global gradient norm at 10 (`AdamWConfig.grad_clip_norm`).

use std::path::Path;

use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::config::LeRobotActConfig;
use super::model::{Act, ActBatch, VaeTarget, per_sample_losses};
use super::policy::{ActSample, LeRobotActPolicy};
use super::weights::is_backbone;
use crate::data::weights_tensor;
use crate::error::{PolicyError, Result};
use crate::smolvla::policy::standard_normal;
use crate::smolvla::train::clip_grad_norm;
use crate::smolvla::weights::{Layout, NamedParams, ParamVisitor};

/// LeRobot's `AdamWConfig.grad_clip_norm` default, which ACT's preset keeps.
pub const GRAD_CLIP_NORM: f64 = 10.0;

/// The per-sample ACT loss `l_i = l1_i + kl_weight * kld_i` reduced over the batch: the plain mean
/// without weights (exactly LeRobot's `loss`), else the self-normalised weighted mean
/// `sum_i w_i l_i / sum_i w_i` (weights finite, >= 0, not all zero).
pub fn weighted_act_loss(
    l1: Tensor<1>,
    kld: Tensor<1>,
    kl_weight: f64,
    weights: Option<&[f32]>,
) -> Result<Tensor<1>> {
    let per_sample = l1 + kld * kl_weight;
    let n = per_sample.dims()[0];
    match weights {
        None => Ok(per_sample.mean()),
        Some(w) => {
            let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
            let wt = weights_tensor(w, n, &per_sample.device())?;
            if total <= 0.0 {
                return Err(PolicyError::Invalid {
                    field: "weights",
                    reason: "all sample weights are zero".into(),
                });
            }
            Ok((per_sample * wt).sum() / total)
        }
    }
}

/// The loss terms of one step, as LeRobot's `loss_dict` reports them (batch means).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActLosses {
    /// The optimised (weighted) loss.
    pub loss: f32,
    pub l1_loss: f32,
    pub kld_loss: f32,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
}

/// `ACTPolicy.forward` in training on a prepared batch: the weighted loss (see [`weighted_act_loss`])
/// and LeRobot's reported batch means `(l1_loss, kld_loss)`.
pub fn act_loss(
    model: &Act,
    batch: &ActBatch,
    target: &VaeTarget,
    kl_weight: f64,
    weights: Option<&[f32]>,
) -> Result<(Tensor<1>, f32, f32)> {
    let out = model.forward(batch, Some(target))?;
    let (l1, kld) = per_sample_losses(&out, target.actions.clone(), target.is_pad.clone());
    let scalar = |t: Tensor<1>| t.mean().into_scalar::<f32>();
    let (l1_mean, kld_mean) = (scalar(l1.clone()), scalar(kld.clone()));
    Ok((weighted_act_loss(l1, kld, kl_weight, weights)?, l1_mean, kld_mean))
}

/// LeRobot's optimiser for ACT: global-norm clipping at [`GRAD_CLIP_NORM`], then AdamW with two
/// parameter groups (the backbone at `optimizer_lr_backbone`, the rest at `optimizer_lr`).
pub struct ActOptimizer {
    adamw: ModuleOptimizer,
    lr: f64,
    lr_backbone: f64,
}

impl std::fmt::Debug for ActOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActOptimizer")
            .field("lr", &self.lr)
            .field("lr_backbone", &self.lr_backbone)
            .finish()
    }
}

impl ActOptimizer {
    pub fn new(cfg: &LeRobotActConfig) -> Self {
        let adamw = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8)
            .with_weight_decay(cfg.optimizer_weight_decay as f32)
            .init();
        Self {
            adamw,
            lr: cfg.optimizer_lr,
            lr_backbone: cfg.optimizer_lr_backbone,
        }
    }

    /// Clip, then update `model`; returns it with the gradient norm before clipping.
    pub fn step(&mut self, model: Act, mut grads: GradientsParams) -> Result<(Act, f64)> {
        let grad_norm = clip_grad_norm(&model, &mut grads, Some(GRAD_CLIP_NORM));
        if !grad_norm.is_finite() {
            return Err(PolicyError::Invalid {
                field: "gradients",
                reason: format!("global norm {grad_norm}"),
            });
        }
        let model = if self.lr_backbone == self.lr {
            self.adamw.step(self.lr, model, grads)
        } else {
            let backbone = split_backbone_grads(&model, &mut grads);
            let model = self.adamw.step(self.lr, model, grads);
            self.adamw.step(self.lr_backbone, model, backbone)
        };
        Ok((model, grad_norm))
    }
}

/// Fine-tunes a LeRobot ACT folder: the policy's model on an autodiff device, LeRobot's AdamW preset,
/// the VAE's reparameterisation noise drawn from a seeded stream.
pub struct ActTrainer {
    pub policy: LeRobotActPolicy,
    optim: ActOptimizer,
    rng: ChaCha8Rng,
    pub steps: usize,
}

impl std::fmt::Debug for ActTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActTrainer")
            .field("dir", &self.policy.dir)
            .field("steps", &self.steps)
            .finish()
    }
}

/// Take the backbone's gradients out of `grads` (LeRobot's second optimiser group).
fn split_backbone_grads(model: &Act, grads: &mut GradientsParams) -> GradientsParams {
    struct Split<'a> {
        from: &'a mut GradientsParams,
        to: GradientsParams,
    }
    impl ParamVisitor for Split<'_> {
        fn visit<const D: usize>(&mut self, name: &str, p: Param<Tensor<D>>, _: Layout) -> Param<Tensor<D>> {
            if is_backbone(name)
                && let Some(g) = self.from.remove::<D>(p.id)
            {
                self.to.register::<D>(p.id, g);
            }
            p
        }
    }
    let mut split = Split {
        from: grads,
        to: GradientsParams::new(),
    };
    let _ = model.clone().map_named(&mut split);
    split.to
}

impl ActTrainer {
    /// Load `source` (folder or hub id) for training on `device` (autodiff is enabled here); the VAE
    /// noise stream starts from `seed`.
    pub fn load(source: &str, seed: u64, device: &Device) -> Result<Self> {
        let policy = LeRobotActPolicy::load(source, &device.clone().autodiff())?;
        Ok(Self::from_policy(policy, seed))
    }

    /// Train an already loaded policy (its model must be on an autodiff device). `seed` starts the VAE
    /// noise stream and (offset by one, as the native trainer does) the backend's dropout RNG.
    pub fn from_policy(policy: LeRobotActPolicy, seed: u64) -> Self {
        policy.device().seed(seed.wrapping_add(1));
        let optim = ActOptimizer::new(&policy.config.cfg);
        Self {
            policy,
            optim,
            rng: ChaCha8Rng::seed_from_u64(seed),
            steps: 0,
        }
    }

    /// One optimiser step on raw samples: `actions` per sample `[chunk * action_dim]` in dataset units,
    /// `is_pad` per sample `[chunk]` (true past the episode end), optional per-sample `weights`.
    pub fn step(
        &mut self,
        samples: &[ActSample],
        actions: &[Vec<f32>],
        is_pad: &[Vec<bool>],
        weights: Option<&[f32]>,
    ) -> Result<ActLosses> {
        let latent = self.policy.config.dims.latent_dim;
        let noise = standard_normal(&mut self.rng, samples.len() * latent);
        self.step_with_noise(samples, actions, is_pad, weights, noise)
    }

    /// [`Self::step`] with the VAE noise `[B * latent_dim]` given (parity with LeRobot's `randn_like`).
    pub fn step_with_noise(
        &mut self,
        samples: &[ActSample],
        actions: &[Vec<f32>],
        is_pad: &[Vec<bool>],
        weights: Option<&[f32]>,
        noise: Vec<f32>,
    ) -> Result<ActLosses> {
        let (loss, l1, kld, grads) = self.loss_and_grads(samples, actions, is_pad, weights, noise)?;
        self.apply(grads, loss, l1, kld)
    }

    /// Forward and backward without updating: `(loss, l1, kld, gradients)`.
    pub fn loss_and_grads(
        &self,
        samples: &[ActSample],
        actions: &[Vec<f32>],
        is_pad: &[Vec<bool>],
        weights: Option<&[f32]>,
        noise: Vec<f32>,
    ) -> Result<(f32, f32, f32, GradientsParams)> {
        let (batch, target) = self.policy.training_batch(samples, actions, is_pad, noise)?;
        let kl_weight = self.policy.config.cfg.kl_weight;
        let (loss, l1_mean, kld_mean) = act_loss(&self.policy.model, &batch, &target, kl_weight, weights)?;
        let grads = GradientsParams::from_grads(loss.backward(), &self.policy.model);
        let value = loss.into_scalar::<f32>();
        if !value.is_finite() {
            return Err(PolicyError::Invalid {
                field: "loss",
                reason: format!("{value} (diverged)"),
            });
        }
        Ok((value, l1_mean, kld_mean, grads))
    }

    fn apply(&mut self, grads: GradientsParams, loss: f32, l1: f32, kld: f32) -> Result<ActLosses> {
        let (model, grad_norm) = self.optim.step(self.policy.model.clone(), grads)?;
        self.policy.model = model;
        self.steps += 1;
        Ok(ActLosses {
            loss,
            l1_loss: l1,
            kld_loss: kld,
            grad_norm,
        })
    }

    /// The model without autodiff, for evaluation.
    pub fn inference_model(&self) -> Act {
        self.policy.model.valid()
    }

    /// Save the trained policy as a LeRobot folder (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.policy.save(dir)
    }
}
