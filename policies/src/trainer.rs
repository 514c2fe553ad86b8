//! The training-step API the trainer crate calls: plain-data batches and per-sample weights in, loss
//! out. Callers choose only the device.

use std::path::Path;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    CheckpointMeta, FORMAT_VERSION, LoadedPolicy, OPTIMIZER_FILE, TRAINER_STATE_FILE, TRAINING_WEIGHTS_FILE,
    WEIGHTS_FILE, default_state_features, load_dir, load_weights, save_dir, save_files, strict_from_str,
};
use crate::data::{
    Batch, Normalizer, ValueBatch, read_vec, to_inputs, to_targets, weighted_mean, weights_tensor,
};
use crate::ema::Ema;
use crate::error::{PolicyError, Result, shape_err};
use crate::model::{PolicyConfig, PolicyKind, PolicyNet};
use crate::nets::{RNG_LOCK, seeded_init};
use crate::value::{ValueConfig, ValueMlp};

/// Optimiser settings (AdamW).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Learning rate. Default 1e-3 (small networks, small data).
    pub lr: f64,
    /// AdamW decoupled weight decay. Default 1e-4.
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value; `None` disables. Default 1.0.
    pub grad_clip_norm: Option<f32>,
    /// Seeds parameter initialisation, flow-matching noise and the dropout masks. Default 0.
    pub seed: u64,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999), used as the
    /// policy (evaluation, checkpoints) while training continues on the raw weights; see
    /// [`crate::ema`]. Default `None`.
    pub ema_decay: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            weight_decay: 1e-4,
            grad_clip_norm: Some(1.0),
            seed: 0,
            ema_decay: None,
        }
    }
}

impl TrainConfig {
    fn optimizer(&self) -> Result<ModuleOptimizer> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(PolicyError::Invalid {
                field: "lr",
                reason: format!("{} must be > 0", self.lr),
            });
        }
        if let Some(decay) = self.ema_decay
            && !(decay > 0.0 && decay < 1.0)
        {
            return Err(PolicyError::Invalid {
                field: "ema_decay",
                reason: format!("{decay} must lie strictly between 0 and 1"),
            });
        }
        let clip = self.grad_clip_norm.map(GradientClippingConfig::Norm);
        Ok(AdamWConfig::new()
            .with_weight_decay(self.weight_decay)
            .with_grad_clipping(clip)
            .init())
    }

    /// The optimiser with the moments saved in `dir`'s `optimizer.bpk`.
    fn saved_optimizer(&self, dir: &Path) -> Result<ModuleOptimizer> {
        let path = dir.join(OPTIMIZER_FILE);
        let optimizer = self.optimizer()?;
        // Burn 0.22 panics on a damaged optimiser record ("Optimizer record tensors should carry a
        // parameter id", found by fuzzing); a damaged checkpoint must be an error naming the file.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            optimizer.load(&path).map_err(|e| e.to_string())
        }));
        let reason = match loaded {
            Ok(Ok(optimizer)) => return Ok(optimizer),
            Ok(Err(reason)) => reason,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown error".into());
                format!("damaged optimiser record: {message}")
            }
        };
        Err(PolicyError::Record { path, reason })
    }

    /// Seed of the flow-matching noise stream (distinct from the initialisation and dropout seeds).
    fn noise_seed(&self) -> u64 {
        self.seed.wrapping_add(2)
    }

    /// Seed of the backend RNG, which draws the dropout masks, for optimiser step `step` (counted over
    /// the whole run, resumed steps included). Burn's RNG state cannot be saved, so instead of
    /// continuing one stream it is re-seeded before every step from (seed, step): a resumed run draws
    /// exactly the masks the uninterrupted run would have. Every arm of an experiment trains with the
    /// experiment's seed, so arms see the same masks at the same step, as they share initial weights.
    fn dropout_seed(&self, step: u64) -> u64 {
        crate::backend::mix_seed(self.seed.wrapping_add(1), step)
    }
}

/// Write `optim`'s moments as `dir`'s `optimizer.bpk` (read back by [`TrainConfig::saved_optimizer`]).
fn save_optimizer(optim: &ModuleOptimizer, dir: &Path) -> Result<()> {
    let path = dir.join(OPTIMIZER_FILE);
    optim.save(&path).map_err(|e| PolicyError::Record {
        path,
        reason: e.to_string(),
    })
}

/// Trains one policy: owns the network (on an autodiff device), the optimiser, the normaliser and a
/// seeded RNG for the flow-matching noise.
pub struct Trainer {
    net: PolicyNet,
    optim: ModuleOptimizer,
    config: PolicyConfig,
    normalizer: Normalizer,
    train: TrainConfig,
    rng: ChaCha8Rng,
    device: Device,
    steps: u64,
    state_features: Vec<String>,
    image_size: Option<[usize; 2]>,
    /// The weight average that is the policy when `TrainConfig::ema_decay` is set.
    ema: Option<Ema>,
}

/// `trainer_state.json`: what a resumed run needs beside the weights and the optimiser moments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainerState {
    /// Seed and word position of the flow-matching noise stream.
    rng_seed: u64,
    rng_word_pos: u128,
    /// Updates the weight average has seen (its warm-up position), when one is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ema_updates: Option<u64>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("steps", &self.steps)
            .finish()
    }
}

impl Trainer {
    /// A freshly initialised policy. `normalizer` holds the training data's statistics
    /// ([`Normalizer::fit`]); `device` is any device (autodiff is enabled on it here).
    pub fn new(
        config: PolicyConfig,
        normalizer: Normalizer,
        train: TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        normalizer.check(config.state_dim(), config.action_dim())?;
        let device = device.clone().autodiff();
        let net = config.init(train.seed, &device)?;
        Self::assemble(net, config, normalizer, train, device, 0)
    }

    /// Start from a checkpoint (fine-tuning): weights, config, normaliser and state features come from
    /// `dir`; the optimiser state starts fresh. With `expected`, a checkpoint of another kind is refused.
    pub fn from_checkpoint(
        dir: impl AsRef<Path>,
        expected: Option<PolicyKind>,
        train: TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        let device = device.clone().autodiff();
        let (meta, net) = load_dir(dir.as_ref(), expected, &device)?;
        let mut me = Self::assemble(
            net.train(),
            meta.policy,
            meta.normalizer,
            train,
            device,
            meta.train_steps,
        )?;
        me.state_features = meta.state_features;
        me.image_size = meta.image_size;
        Ok(me)
    }

    /// Continue an interrupted run from a checkpoint written by [`Trainer::save`]: as
    /// [`Trainer::from_checkpoint`], plus the AdamW moments and the position of the flow-matching noise
    /// stream, so the next step is the one the interrupted run would have taken; the dropout masks
    /// follow from (seed, step) (see [`TrainConfig::dropout_seed`]), so they match too.
    pub fn resume(
        dir: impl AsRef<Path>,
        expected: Option<PolicyKind>,
        train: TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let mut me = Self::from_checkpoint(dir, expected, train, device)?;
        me.optim = me.train.saved_optimizer(dir)?;
        let state_path = dir.join(TRAINER_STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|source| PolicyError::Io {
            path: state_path.clone(),
            source,
        })?;
        let state: TrainerState = strict_from_str(&text).map_err(|reason| PolicyError::Config {
            path: state_path,
            reason,
        })?;
        me.rng = ChaCha8Rng::seed_from_u64(state.rng_seed);
        me.rng.set_word_pos(state.rng_word_pos);
        if let Some(decay) = me.train.ema_decay {
            // model.bpk holds the average; training continues from the raw weights beside it.
            let raw = dir.join(TRAINING_WEIGHTS_FILE);
            let (Some(updates), true) = (state.ema_updates, raw.is_file()) else {
                return Err(PolicyError::Config {
                    path: dir.join(TRAINER_STATE_FILE),
                    reason: "train.ema_decay is set but this checkpoint was written without a weight average"
                        .into(),
                });
            };
            let average = me.net.valid();
            me.net = load_weights(me.net, &raw)?;
            me.ema = Some(Ema::new(decay, average, updates));
        }
        Ok(me)
    }

    /// The observation vectors, by feature name, that make up the state input.
    pub fn state_features(&self) -> &[String] {
        &self.state_features
    }

    /// Name the observation vectors concatenated into the state input (recorded in the checkpoint so
    /// that rollouts rebuild the same input). Default: `["observation.state"]`.
    pub fn with_state_features(mut self, features: Vec<String>) -> Self {
        self.state_features = features;
        self
    }

    /// Record the `[height, width]` of the training images in the checkpoint, so that acting resizes
    /// camera frames of any size to it (see [`crate::image_input`]).
    pub fn with_image_size(mut self, size: Option<[usize; 2]>) -> Self {
        self.image_size = size;
        self
    }

    fn assemble(
        net: PolicyNet,
        config: PolicyConfig,
        normalizer: Normalizer,
        train: TrainConfig,
        device: Device,
        steps: u64,
    ) -> Result<Self> {
        let optim = train.optimizer()?;
        let ema = train.ema_decay.map(|decay| Ema::new(decay, net.valid(), 0));
        let rng = ChaCha8Rng::seed_from_u64(train.noise_seed());
        Ok(Self {
            net,
            optim,
            config,
            normalizer,
            train,
            rng,
            device,
            steps,
            state_features: default_state_features(),
            image_size: None,
            ema,
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// Number of scalar parameters of the network.
    pub fn num_params(&self) -> usize {
        self.net.num_params()
    }

    /// Optimiser steps taken so far (including those of the checkpoint this started from).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.train.lr = lr;
    }

    /// One optimiser step on `E[w * loss]` (TOPReward Eq. 3 weights, or clipped AWR weights
    /// `exp(A / beta)`); returns that loss before the update.
    pub fn step(&mut self, batch: &Batch, weights: &[f32]) -> Result<f32> {
        self.config.check_batch(batch)?;
        let w = weights_tensor(weights, batch.len(), &self.device)?;
        let inputs = to_inputs(
            &batch.obs,
            &self.normalizer,
            self.config.text_buckets(),
            &self.device,
        )?;
        let targets = to_targets(batch, &self.normalizer, &self.device)?;
        let loss = {
            // The forward pass draws the dropout masks from the backend's process-wide RNG: seed it for
            // this step and keep other threads from drawing from it meanwhile.
            let _guard = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            self.device.seed(self.train.dropout_seed(self.steps));
            let per_sample = self.net.per_sample_loss(&inputs, &targets, &mut self.rng);
            weighted_mean(per_sample, w)
        };
        let grads = GradientsParams::from_grads(loss.backward(), &self.net);
        let value = loss.into_scalar::<f32>();
        if !value.is_finite() {
            return Err(PolicyError::Invalid {
                field: "loss",
                reason: format!("{value} (diverged)"),
            });
        }
        self.net = self.optim.step(self.train.lr, self.net.clone(), grads);
        self.steps += 1;
        if let Some(ema) = &mut self.ema {
            ema.update(&self.net.valid());
        }
        Ok(value)
    }

    /// Per-sample losses without an update; the flow policy draws its noise from `seed`.
    pub fn per_sample_losses(&self, batch: &Batch, seed: u64) -> Result<Vec<f32>> {
        self.config.check_batch(batch)?;
        let device = self.device.clone().without_autodiff();
        let net = self.net.valid();
        let inputs = to_inputs(&batch.obs, &self.normalizer, self.config.text_buckets(), &device)?;
        let targets = to_targets(batch, &self.normalizer, &device)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        read_vec(
            net.per_sample_loss(&inputs, &targets, &mut rng),
            "per-sample loss",
        )
    }

    /// The training objective without an update: `E[w * loss]` with `weights`, the plain batch mean
    /// without. The flow policy draws its noise from `seed`.
    pub fn loss(&self, batch: &Batch, weights: Option<&[f32]>, seed: u64) -> Result<f32> {
        self.config.check_batch(batch)?;
        let device = self.device.clone().without_autodiff();
        let net = self.net.valid();
        let inputs = to_inputs(&batch.obs, &self.normalizer, self.config.text_buckets(), &device)?;
        let targets = to_targets(batch, &self.normalizer, &device)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let per_sample = net.per_sample_loss(&inputs, &targets, &mut rng);
        let loss = match weights {
            Some(w) => weighted_mean(per_sample, weights_tensor(w, batch.len(), &device)?),
            None => per_sample.mean(),
        };
        Ok(loss.into_scalar::<f32>())
    }

    fn meta(&self) -> CheckpointMeta {
        CheckpointMeta {
            format: FORMAT_VERSION,
            policy: self.config.clone(),
            normalizer: self.normalizer.clone(),
            train_steps: self.steps,
            state_features: self.state_features.clone(),
            image_size: self.image_size,
        }
    }

    /// The weights that are the policy: the EMA when one is kept, else the current weights (an
    /// inference copy, no autodiff).
    fn policy_weights(&self) -> PolicyNet {
        match &self.ema {
            Some(ema) => ema.shadow.clone(),
            None => self.net.valid(),
        }
    }

    /// An inference copy of the policy (the weight average when `ema_decay` is set).
    pub fn policy(&self) -> LoadedPolicy {
        LoadedPolicy::new(
            self.policy_weights(),
            self.meta(),
            self.device.clone().without_autodiff(),
        )
    }

    /// Write a checkpoint directory atomically (see [`crate::checkpoint`]): the policy files that
    /// [`crate::load_policy`] reads, plus the optimiser moments and RNG position that
    /// [`Trainer::resume`] reads.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.save_with(dir, |_| Ok(()))
    }

    /// [`Trainer::save`], letting `extra` add files (run progress, a value function, ...) to the new
    /// checkpoint directory before it is renamed into place, so they appear together or not at all.
    pub fn save_with(&self, dir: impl AsRef<Path>, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let state = TrainerState {
            rng_seed: self.train.noise_seed(),
            rng_word_pos: self.rng.get_word_pos(),
            ema_updates: self.ema.as_ref().map(|ema| ema.updates),
        };
        save_dir(dir.as_ref(), &self.meta(), self.policy_weights(), |tmp| {
            save_optimizer(&self.optim, tmp)?;
            if self.ema.is_some() {
                let raw = tmp.join(TRAINING_WEIGHTS_FILE);
                self.net
                    .valid()
                    .into_record()
                    .save(&raw)
                    .map_err(|e| PolicyError::Record {
                        path: raw.clone(),
                        reason: e.to_string(),
                    })?;
            }
            let state_path = tmp.join(TRAINER_STATE_FILE);
            let json = serde_json::to_string_pretty(&state).map_err(|e| PolicyError::Config {
                path: state_path.clone(),
                reason: e.to_string(),
            })?;
            std::fs::write(&state_path, json).map_err(|source| PolicyError::Io {
                path: state_path,
                source,
            })?;
            extra(tmp)
        })
    }
}

/// Trains the AWR baseline `V(s)` by (weighted) MSE on normalised states.
pub struct ValueTrainer {
    net: ValueMlp,
    optim: ModuleOptimizer,
    config: ValueConfig,
    state_mean: Vec<f32>,
    state_std: Vec<f32>,
    train: TrainConfig,
    device: Device,
}

impl std::fmt::Debug for ValueTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueTrainer")
            .field("config", &self.config)
            .finish()
    }
}

impl ValueTrainer {
    /// `normalizer` supplies the state statistics (its action part is unused).
    pub fn new(
        config: ValueConfig,
        normalizer: &Normalizer,
        train: TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        if config.state_dim == 0 || config.hidden.contains(&0) {
            return Err(PolicyError::Invalid {
                field: "value config",
                reason: "dims must be > 0".into(),
            });
        }
        if normalizer.state_dim() != config.state_dim {
            return Err(shape_err(
                "normalizer.state_mean",
                config.state_dim,
                normalizer.state_dim(),
            ));
        }
        let device = device.clone().autodiff();
        let net = seeded_init(train.seed, &device, |d| config.init(d));
        Ok(Self {
            net,
            optim: train.optimizer()?,
            config,
            state_mean: normalizer.state_mean.clone(),
            state_std: normalizer.state_std.clone(),
            train,
            device,
        })
    }

    fn states(&self, states: &[f32], len: usize, device: &Device) -> Result<Tensor<2>> {
        let d = self.config.state_dim;
        if states.len() != len * d || len == 0 {
            return Err(shape_err("states", format!("{len} x {d}"), states.len()));
        }
        let x: Vec<f32> = states
            .iter()
            .enumerate()
            .map(|(i, v)| (v - self.state_mean[i % d]) / self.state_std[i % d])
            .collect();
        Ok(Tensor::<2>::from_data(TensorData::new(x, [len, d]), device))
    }

    /// One optimiser step on `E[w * (V(s) - target)^2]`; returns that loss before the update.
    pub fn step(&mut self, batch: &ValueBatch, weights: &[f32]) -> Result<f32> {
        if batch.targets.len() != batch.len || batch.targets.iter().any(|t| !t.is_finite()) {
            return Err(PolicyError::Invalid {
                field: "targets",
                reason: "need one finite target per sample".into(),
            });
        }
        let x = self.states(&batch.states, batch.len, &self.device)?;
        let y = Tensor::<1>::from_data(TensorData::new(batch.targets.clone(), [batch.len]), &self.device);
        let w = weights_tensor(weights, batch.len, &self.device)?;
        let loss = weighted_mean((self.net.forward(x) - y).square(), w);
        let grads = GradientsParams::from_grads(loss.backward(), &self.net);
        let value = loss.into_scalar::<f32>();
        self.net = self.optim.step(self.train.lr, self.net.clone(), grads);
        Ok(value)
    }

    /// `V(s)` for `len x state_dim` states.
    pub fn predict(&self, states: &[f32]) -> Result<Vec<f32>> {
        let d = self.config.state_dim;
        let len = states.len() / d.max(1);
        let device = self.device.clone().without_autodiff();
        let x = self.states(states, len, &device)?;
        read_vec(self.net.valid().forward(x), "values")
    }

    /// Write `value.json` (config + state statistics), `model.bpk` and the optimiser moments
    /// (`optimizer.bpk`) to `dir` atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let meta = ValueMeta {
            format: FORMAT_VERSION,
            value: self.config.clone(),
            state_mean: self.state_mean.clone(),
            state_std: self.state_std.clone(),
        };
        let json = serde_json::to_string_pretty(&meta).map_err(|e| PolicyError::Config {
            path: dir.join(VALUE_FILE),
            reason: e.to_string(),
        })?;
        save_files(dir, VALUE_FILE, &json, self.net.valid().into_record(), |tmp| {
            save_optimizer(&self.optim, tmp)
        })
    }

    /// Load a value function saved by [`ValueTrainer::save`] to continue training it exactly where it
    /// stopped (weights and optimiser moments).
    pub fn from_checkpoint(dir: impl AsRef<Path>, train: TrainConfig, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join(VALUE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
            path: path.clone(),
            source,
        })?;
        let meta: ValueMeta = strict_from_str(&text).map_err(|reason| PolicyError::Config {
            path: path.clone(),
            reason,
        })?;
        let d = meta.value.state_dim;
        if meta.format != FORMAT_VERSION || meta.state_mean.len() != d || meta.state_std.len() != d {
            return Err(PolicyError::Config {
                path,
                reason: format!("format {} / state statistics not of length {d}", meta.format),
            });
        }
        let mut norm = Normalizer::identity(d, 1);
        norm.state_mean = meta.state_mean;
        norm.state_std = meta.state_std;
        let mut me = Self::new(meta.value, &norm, train, device)?;
        let weights = dir.join(WEIGHTS_FILE);
        let record = burn::store::ModuleRecord::load(&weights).map_err(|e| PolicyError::Record {
            path: weights.clone(),
            reason: e.to_string(),
        })?;
        me.net = me.net.try_load_record(record).map_err(|e| PolicyError::Record {
            path: weights,
            reason: e.to_string(),
        })?;
        // Continue with the saved Adam moments (checkpoints of this format always have them).
        me.optim = me.train.saved_optimizer(dir)?;
        Ok(me)
    }
}

/// Metadata file of a value-function checkpoint.
pub const VALUE_FILE: &str = "value.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueMeta {
    format: u32,
    value: ValueConfig,
    state_mean: Vec<f32>,
    state_std: Vec<f32>,
}

/// Advantage-weighted regression weights `min(exp(A / beta), max_weight)` (Peng et al. 2019), for
/// [`Trainer::step`]. Errors on a non-positive `beta` or `max_weight`, or a non-finite advantage.
pub fn awr_weights(advantages: &[f32], beta: f32, max_weight: f32) -> Result<Vec<f32>> {
    if !(beta.is_finite() && beta > 0.0) {
        return Err(PolicyError::Invalid {
            field: "beta",
            reason: format!("{beta} must be > 0"),
        });
    }
    if max_weight.is_nan() || max_weight <= 0.0 {
        return Err(PolicyError::Invalid {
            field: "max_weight",
            reason: format!("{max_weight} must be > 0"),
        });
    }
    advantages
        .iter()
        .map(|a| {
            if a.is_finite() {
                Ok((a / beta).exp().min(max_weight))
            } else {
                Err(PolicyError::Invalid {
                    field: "advantages",
                    reason: format!("{a} is not finite"),
                })
            }
        })
        .collect()
}
