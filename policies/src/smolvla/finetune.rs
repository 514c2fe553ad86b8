//! Fine-tuning a LeRobot SmolVLA folder with per-sample weights (reward-aligned BC, TOPReward Eq. 3, or
//! AWR): LeRobot's flow-matching training step (`SmolVLAPolicy.forward`: t ~ Beta(1.5, 1) * 0.999 +
//! 0.001, noise ~ N(0, 1)), the per-sample loss masked to the real action dimensions and steps, weighted,
//! then LeRobot's optimiser (global-norm clip, AdamW). Normalisation statistics can be replaced by the
//! training data's, as LeRobot does when fine-tuning on a new dataset; saving writes LeRobot's layout.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::lerobot::Stats;
use super::model::{ContextCache, SmolVla};
use super::policy::{SmolVlaPolicy, standard_normal};
use super::processor::RawSample;
use super::train::{LossPadding, SmolVlaOptimizer, per_sample_flow_loss, weighted_flow_loss};
use super::weights::{Layout, ParamVisitor};
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

/// Folder of a checkpoint with what resuming needs beyond the LeRobot files ([`SmolVlaFinetuner::save_training`]).
pub const TRAINING_STATE_DIR: &str = "training_state";
const MOMENTS_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "trainer_state.json";

/// `training_state/trainer_state.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainingState {
    steps: u64,
    /// ChaCha8 word position of the noise and time stream (a u128, as a decimal string).
    noise_word_pos: String,
    /// LeRobot weight name -> Burn parameter id the saved moments are keyed by.
    param_ids: BTreeMap<String, u64>,
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| PolicyError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(path, json).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// `model` with each parameter's id set to `ids[name]` (values and trainability kept); every parameter
/// must be named in `ids` (read from `file`).
fn with_param_ids(model: SmolVla, ids: &BTreeMap<String, u64>, file: &Path) -> Result<SmolVla> {
    struct Renumber<'a> {
        ids: &'a BTreeMap<String, u64>,
        missing: Option<String>,
    }
    impl ParamVisitor for Renumber<'_> {
        fn visit<const D: usize>(&mut self, name: &str, p: Param<Tensor<D>>, _: Layout) -> Param<Tensor<D>> {
            match self.ids.get(name) {
                Some(&id) => {
                    let (_, value, mapper) = p.consume();
                    Param::from_mapped_value(ParamId::from(id), value, mapper)
                }
                None => {
                    self.missing.get_or_insert_with(|| name.to_string());
                    p
                }
            }
        }
    }
    let mut renumber = Renumber { ids, missing: None };
    let model = model.map_named(&mut renumber);
    match renumber.missing {
        Some(name) => Err(PolicyError::Config {
            path: file.to_path_buf(),
            reason: format!("param_ids has no entry for the weight `{name}`"),
        }),
        None => Ok(model),
    }
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

    /// [`Self::save_with`] plus what resuming needs, in `dir/training_state/` (LeRobot's checkpoints
    /// keep theirs in a folder of that name; LeRobot's loaders ignore it): AdamW's moments, the
    /// parameter id of every weight name (the moments are keyed by id, and a reloaded model gets new
    /// ids), the step count and the position of the noise stream.
    pub fn save_training(&self, dir: &Path, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        self.policy.save_with(dir, |tmp| {
            let state = tmp.join(TRAINING_STATE_DIR);
            std::fs::create_dir_all(&state).map_err(|source| PolicyError::Io {
                path: state.clone(),
                source,
            })?;
            self.optim.save_moments(&state.join(MOMENTS_FILE))?;
            let record = TrainingState {
                steps: self.steps,
                noise_word_pos: self.rng.get_word_pos().to_string(),
                param_ids: self
                    .policy
                    .model
                    .param_ids()
                    .into_iter()
                    .map(|(name, id)| (name, id.val()))
                    .collect(),
            };
            write_json(&state.join(STATE_FILE), &record)?;
            extra(tmp)
        })
    }

    /// Continue a run from a folder [`Self::save_training`] wrote: its weights and statistics, AdamW's
    /// moments, the step count and the noise stream, so the next step is the one an uninterrupted
    /// run would take.
    pub fn resume(dir: &Path, lr: f64, seed: u64, device: &Device) -> Result<Self> {
        let mut me = Self::load(dir, lr, seed, device)?;
        let state_dir = dir.join(TRAINING_STATE_DIR);
        let path = state_dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
            path: path.clone(),
            source,
        })?;
        let record: TrainingState = serde_json::from_str(&text).map_err(|e| PolicyError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let word_pos: u128 = record.noise_word_pos.parse().map_err(|e| PolicyError::Config {
            path: path.clone(),
            reason: format!("noise_word_pos: {e}"),
        })?;
        me.policy.model = with_param_ids(me.policy.model.clone(), &record.param_ids, &path)?;
        me.optim =
            SmolVlaOptimizer::with_saved_moments(&me.policy.model_config, &state_dir.join(MOMENTS_FILE))?;
        me.rng.set_word_pos(word_pos);
        me.steps = record.steps;
        Ok(me)
    }

    /// Save the current weights, config and processors (with their statistics) in LeRobot's layout.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.policy.save(dir)
    }

    /// [`Self::save`] with more files written into the folder by `extra` before it is renamed into place.
    pub fn save_with(&self, dir: &Path, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        self.policy.save_with(dir, extra)
    }

    /// The model without autodiff, for evaluation.
    pub fn inference_model(&self) -> super::model::SmolVla {
        self.policy.model.valid()
    }
}
