//! Fine-tuning a LeRobot SmolVLA folder with per-sample weights (reward-aligned BC, TOPReward Eq. 3, or
//! AWR): LeRobot's flow-matching training step (`SmolVLAPolicy.forward`: t ~ Beta(1.5, 1) * 0.999 +
//! 0.001, noise ~ N(0, 1)), the per-sample loss masked to the real action dimensions and steps, weighted,
//! then LeRobot's optimiser (global-norm clip, AdamW). Normalisation statistics can be replaced by the
//! training data's, as LeRobot does when fine-tuning on a new dataset; saving writes LeRobot's layout.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::lerobot::Stats;
use super::model::ContextCache;
use super::policy::{SmolVlaPolicy, standard_normal};
use super::processor::RawSample;
use super::train::{LossPadding, SmolVlaOptimizer, per_sample_flow_loss, weighted_flow_loss};
use crate::error::{PolicyError, Result};

/// One training sample: the observation and the action chunk that followed it (dataset units).
#[derive(Debug, Clone)]
pub struct TrainSample {
    pub obs: RawSample,
    /// `[chunk_size, action_dim]` row-major.
    pub actions: Vec<f32>,
    /// `[chunk_size]`: true for steps past the episode end (padding), excluded from the loss.
    pub action_is_pad: Vec<bool>,
}

/// A SmolVLA policy being fine-tuned.
#[derive(Debug)]
pub struct SmolVlaFinetuner {
    /// The policy, its model on an autodiff device.
    pub policy: SmolVlaPolicy,
    optim: SmolVlaOptimizer,
    rng: ChaCha8Rng,
    pub lr: f64,
    pub steps: u64,
}

/// `sample_beta(1.5, 1.0) * 0.999 + 0.001` (`VLAFlowMatching.sample_time`); Beta(a, 1) is `U^(1/a)`.
fn sample_time(rng: &mut ChaCha8Rng) -> f32 {
    let u: f64 = rng.random();
    (u.powf(1.0 / 1.5) * 0.999 + 0.001) as f32
}

impl SmolVlaFinetuner {
    /// Load `dir` for training on `device` (autodiff is enabled here), with LeRobot's trainability for
    /// its config, the config's optimiser settings and learning rate `lr` (LeRobot: `optimizer_lr`).
    pub fn load(dir: &Path, lr: f64, seed: u64, device: &Device) -> Result<Self> {
        let policy = SmolVlaPolicy::load(dir, &device.clone().autodiff())?;
        let optim = SmolVlaOptimizer::new(&policy.model_config);
        Ok(Self {
            policy,
            optim,
            rng: ChaCha8Rng::seed_from_u64(seed),
            lr,
            steps: 0,
        })
    }

    /// Replace the state/action statistics with the training data's (before the first step).
    pub fn replace_stats(&mut self, stats: &Stats) {
        self.policy.replace_stats(stats);
    }

    /// One optimiser step on `E[w * loss]` over `samples`; returns that loss before the update.
    pub fn step(&mut self, samples: &[TrainSample], weights: &[f32]) -> Result<f32> {
        self.step_inner(samples, weights, None)
    }

    /// [`Self::step`] for a frozen VLM (`train_expert_only`): the image and language keys/values of a
    /// frame never change then, so each sample's [`ContextCache`] is taken from `cache` under its key
    /// in `frames` (encoded on first use) and the step runs the state token and the expert only. Draws
    /// the same noise and times as `step`, and gives the same loss and update.
    pub fn step_cached(
        &mut self,
        samples: &[TrainSample],
        weights: &[f32],
        frames: &[u64],
        cache: &mut HashMap<u64, ContextCache>,
    ) -> Result<f32> {
        if !self.policy.model_config.train_expert_only {
            return Err(PolicyError::Invalid {
                field: "train_expert_only",
                reason: "the context cache needs a frozen VLM (train_expert_only = true)".into(),
            });
        }
        if frames.len() != samples.len() {
            return Err(PolicyError::Shape {
                field: "frames",
                expected: samples.len().to_string(),
                got: frames.len().to_string(),
            });
        }
        for (sample, &key) in samples.iter().zip(frames) {
            if let Entry::Vacant(slot) = cache.entry(key) {
                let prepared = self.policy.processor.prepare(std::slice::from_ref(&sample.obs))?;
                let batch = self.policy.model_batch(&prepared);
                slot.insert(self.policy.model.encode_context(&batch)?);
            }
        }
        let contexts: Vec<ContextCache> = frames.iter().filter_map(|k| cache.get(k).cloned()).collect();
        let context = ContextCache::concat(&contexts).ok_or_else(|| PolicyError::Invalid {
            field: "samples",
            reason: "an empty batch".into(),
        })?;
        self.step_inner(samples, weights, Some(&context))
    }

    fn step_inner(
        &mut self,
        samples: &[TrainSample],
        weights: &[f32],
        context: Option<&ContextCache>,
    ) -> Result<f32> {
        let b = samples.len();
        if weights.len() != b {
            return Err(PolicyError::Shape {
                field: "weights",
                expected: b.to_string(),
                got: weights.len().to_string(),
            });
        }
        let obs: Vec<RawSample> = samples.iter().map(|s| s.obs.clone()).collect();
        let proc = &self.policy.processor;
        let prepared = proc.prepare(&obs)?;
        let (c, a, amax) = (self.policy.chunk_size(), proc.action_dim(), proc.max_action_dim());
        let mut actions = Vec::with_capacity(b * c * amax);
        let mut is_pad = Vec::with_capacity(b * c);
        for s in samples {
            if s.actions.len() != c * a || s.action_is_pad.len() != c {
                return Err(PolicyError::Shape {
                    field: "actions",
                    expected: format!("[{c}, {a}] actions and [{c}] padding flags"),
                    got: format!("{} actions, {} flags", s.actions.len(), s.action_is_pad.len()),
                });
            }
            actions.extend(proc.prepare_actions(&s.actions)?);
            is_pad.extend_from_slice(&s.action_is_pad);
        }
        let device = self.policy.device().clone();
        let batch = self.policy.model_batch(&prepared);
        let noise = standard_normal(&mut self.rng, b * c * amax);
        let time: Vec<f32> = (0..b).map(|_| sample_time(&mut self.rng)).collect();
        let actions = Tensor::<3>::from_data(TensorData::new(actions, [b, c, amax]), &device);
        let noise = Tensor::<3>::from_data(TensorData::new(noise, [b, c, amax]), &device);
        let is_pad = Tensor::<2, Bool>::from_data(TensorData::new(is_pad, [b, c]), &device);
        let losses = match context {
            Some(ctx) => {
                self.policy
                    .model
                    .flow_losses_with_context(ctx, batch.state, actions, noise, &time)?
            }
            None => self
                .policy
                .model
                .flow_losses(&batch, actions, noise, &time, None)?,
        };
        let padding = LossPadding::Valid {
            action_dim: a,
            is_pad: Some(is_pad),
        };
        let loss = weighted_flow_loss(per_sample_flow_loss(losses, &padding), Some(weights))?;
        let grads = GradientsParams::from_grads(loss.backward(), &self.policy.model);
        let value = loss.into_scalar::<f32>();
        if !value.is_finite() {
            return Err(PolicyError::Invalid {
                field: "loss",
                reason: format!("{value} (diverged)"),
            });
        }
        let model = self.policy.model.clone();
        let (model, _norm) = self.optim.step(self.lr, model, grads)?;
        self.policy.model = model;
        self.steps += 1;
        Ok(value)
    }

    /// Save the current weights, config and processors (with their statistics) in LeRobot's layout.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.policy.save(dir)
    }

    /// The model without autodiff, for evaluation.
    pub fn inference_model(&self) -> super::model::SmolVla {
        self.policy.model.valid()
    }
}
