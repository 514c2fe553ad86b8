//! Checkpoint directories: `policy.json` (format version, policy config, normalisation statistics,
//! training steps) and `model.bpk` (the Burn record of the network, burnpack format). Saving writes a
//! sibling temporary directory and renames it into place, so a reader never sees half a checkpoint.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::data::{Normalizer, ObsBatch, read_vec, to_inputs};
use crate::error::{PolicyError, Result, shape_err};
use crate::model::{PolicyConfig, PolicyKind, PolicyNet};
use crate::{Observation, Policy};

pub const CONFIG_FILE: &str = "policy.json";
pub const WEIGHTS_FILE: &str = "model.bpk";
/// Optimiser moments of a training run (present in checkpoints written by [`crate::Trainer::save`]).
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// The raw training weights when an EMA is kept (`model.bpk` then holds the average, which is the
/// policy); [`crate::Trainer::resume`] continues from these.
pub const TRAINING_WEIGHTS_FILE: &str = "training_weights.bpk";
/// Trainer state beside the optimiser: seed and position of the flow-matching noise stream.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
pub const FORMAT_VERSION: u32 = 1;

/// The contents of `policy.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub format: u32,
    pub policy: PolicyConfig,
    pub normalizer: Normalizer,
    /// Optimiser steps taken to produce these weights (cumulative over fine-tuning).
    pub train_steps: u64,
    /// The observation vectors concatenated, in this order, into the policy's state input, by LeRobot
    /// feature name (e.g. `observation.state`, `observation.environment_state`). Callers build
    /// [`Observation::state`] accordingly. Default: `["observation.state"]`.
    #[serde(default = "default_state_features")]
    pub state_features: Vec<String>,
    /// `[height, width]` of the camera images the policy was trained on. Images of another size are
    /// resized to it before acting ([`crate::image_input`]). Absent in older checkpoints and for
    /// state-only policies: images are used as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[usize; 2]>,
}

/// The LeRobot feature holding the robot's joint state.
pub const STATE_FEATURE: &str = "observation.state";

pub(crate) fn default_state_features() -> Vec<String> {
    vec![STATE_FEATURE.to_string()]
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyError + '_ {
    move |source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `net` and its metadata to `dir` atomically (replacing an existing checkpoint there), with
/// whatever `extra` adds to the new directory before it is renamed into place.
pub(crate) fn save_dir(
    dir: &Path,
    meta: &CheckpointMeta,
    net: PolicyNet,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let json = serde_json::to_string_pretty(meta).map_err(|e| PolicyError::Config {
        path: dir.join(CONFIG_FILE),
        reason: e.to_string(),
    })?;
    save_files(dir, CONFIG_FILE, &json, net.into_record(), extra)
}

/// Write `json_name` and the weights record into a fresh temporary directory, let `extra` add files to
/// it, then rename it over `dir`.
pub(crate) fn save_files(
    dir: &Path,
    json_name: &str,
    json: &str,
    record: ModuleRecord,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    write_dir_atomically(dir, |tmp| {
        let cfg = tmp.join(json_name);
        std::fs::write(&cfg, json).map_err(io_err(&cfg))?;
        let weights = tmp.join(WEIGHTS_FILE);
        record.save(&weights).map_err(|e| PolicyError::Record {
            path: weights.clone(),
            reason: e.to_string(),
        })?;
        extra(tmp)
    })
}

/// Build `dir` atomically: `fill` writes into a fresh sibling temporary folder, which then replaces
/// `dir` (an existing `dir` is moved aside first and removed only after the rename succeeded).
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .ok_or_else(|| PolicyError::Invalid {
            field: "checkpoint dir",
            reason: format!("{} has no name", dir.display()),
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = parent.join(format!(".{name}.tmp-{}-{nonce}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        fill(&tmp)?;
        if dir.exists() {
            let old = parent.join(format!(".{name}.old-{}-{nonce}", std::process::id()));
            // rename(2) cannot replace a non-empty directory: move the old one aside first.
            std::fs::rename(dir, &old).map_err(io_err(dir))?;
            std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        } else {
            std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Parse JSON into `T`, refusing keys `T` does not know at any depth (Burn's `#[derive(Config)]`
/// serde impl ignores unknown fields; this restores `deny_unknown_fields` for nested configs).
pub(crate) fn strict_from_str<T: Serialize + DeserializeOwned>(text: &str) -> std::result::Result<T, String> {
    let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let parsed: T = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
    let round = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
    unknown_key(&raw, &round, "").map_or(Ok(parsed), |k| Err(format!("unknown field `{k}`")))
}

pub(crate) fn unknown_key(raw: &serde_json::Value, known: &serde_json::Value, at: &str) -> Option<String> {
    match (raw, known) {
        (serde_json::Value::Object(r), serde_json::Value::Object(k)) => r.iter().find_map(|(key, v)| {
            let path = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            match k.get(key) {
                None => Some(path),
                Some(kv) => unknown_key(v, kv, &path),
            }
        }),
        _ => None,
    }
}

/// Read `policy.json` of a checkpoint directory.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let meta: CheckpointMeta = strict_from_str(&text).map_err(|reason| PolicyError::Config {
        path: path.clone(),
        reason,
    })?;
    if meta.format != FORMAT_VERSION {
        return Err(PolicyError::Config {
            path,
            reason: format!("format {} (this build reads {FORMAT_VERSION})", meta.format),
        });
    }
    meta.policy.validate().map_err(|e| PolicyError::Config {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    meta.normalizer
        .check(meta.policy.state_dim(), meta.policy.action_dim())
        .map_err(|e| PolicyError::Config {
            path,
            reason: e.to_string(),
        })?;
    Ok(meta)
}

/// Read a checkpoint: its metadata and the network on `device`. With `expected`, a checkpoint of
/// another kind is refused.
pub fn load_dir(
    dir: &Path,
    expected: Option<PolicyKind>,
    device: &Device,
) -> Result<(CheckpointMeta, PolicyNet)> {
    let meta = read_meta(dir)?;
    if let Some(kind) = expected
        && kind != meta.policy.kind()
    {
        return Err(PolicyError::KindMismatch {
            path: dir.to_path_buf(),
            expected: kind.to_string(),
            found: meta.policy.kind().to_string(),
        });
    }
    let net = load_weights(meta.policy.init(0, device)?, &dir.join(WEIGHTS_FILE))?;
    Ok((meta, net))
}

/// Load the Burn record at `path` into `net` (same architecture).
pub(crate) fn load_weights(net: PolicyNet, path: &Path) -> Result<PolicyNet> {
    if !path.is_file() {
        return Err(PolicyError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing weights file"),
        });
    }
    let record = ModuleRecord::load(path).map_err(|e| PolicyError::Record {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    net.try_load_record(record).map_err(|e| PolicyError::Record {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A policy ready for inference (no autodiff): what rollouts and evaluation use.
#[derive(Debug)]
pub struct LoadedPolicy {
    net: PolicyNet,
    meta: CheckpointMeta,
    device: Device,
    seed: u64,
    rng: ChaCha8Rng,
}

/// Load a checkpoint directory for inference on `device`.
pub fn load_policy(dir: impl AsRef<Path>, device: &Device) -> Result<LoadedPolicy> {
    let device = device.clone().without_autodiff();
    let (meta, net) = load_dir(dir.as_ref(), None, &device)?;
    Ok(LoadedPolicy::new(net.valid(), meta, device))
}

impl LoadedPolicy {
    pub(crate) fn new(net: PolicyNet, meta: CheckpointMeta, device: Device) -> Self {
        Self {
            net,
            meta,
            device,
            seed: 0,
            rng: ChaCha8Rng::seed_from_u64(0),
        }
    }

    /// Seed of the flow policy's sampling noise; [`Policy::reset`] restarts this stream.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.set_seed(seed);
        self
    }

    /// Restart the sampling-noise stream from `seed`.
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.meta.policy
    }

    /// The observation vectors, by feature name, that make up the state input (see
    /// [`CheckpointMeta::state_features`]).
    pub fn state_features(&self) -> &[String] {
        &self.meta.state_features
    }

    pub fn normalizer(&self) -> &Normalizer {
        &self.meta.normalizer
    }

    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    pub fn chunk_size(&self) -> usize {
        self.meta.policy.chunk_size()
    }

    /// Action chunks for a batch of observations: `len x chunk_size x action_dim`, dataset units.
    pub fn act_batch(&mut self, obs: &ObsBatch) -> Result<Vec<f32>> {
        self.meta.policy.check_obs(obs)?;
        let inputs = to_inputs(
            obs,
            &self.meta.normalizer,
            self.meta.policy.text_buckets(),
            &self.device,
        )?;
        let pred = self.net.predict(&inputs, &mut self.rng);
        let n: usize = pred.dims().iter().product();
        let flat = read_vec(pred.reshape([n]), "predicted actions")?;
        Ok(self.meta.normalizer.denormalize_actions(&flat))
    }

    /// Save this policy as a checkpoint directory.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        save_dir(dir.as_ref(), &self.meta, self.net.clone(), |_| Ok(()))
    }
}

impl Policy for LoadedPolicy {
    fn action_dim(&self) -> usize {
        self.meta.policy.action_dim()
    }

    fn act(&mut self, observation: &Observation) -> Result<Vec<Vec<f32>>> {
        if observation.state.len() != self.meta.policy.state_dim() {
            return Err(shape_err(
                "observation.state",
                self.meta.policy.state_dim(),
                observation.state.len(),
            ));
        }
        let obs = match self.meta.image_size {
            Some(size) => {
                let mut resized = observation.clone();
                resized.images = observation
                    .images
                    .iter()
                    .map(|image| crate::image_input::resize_camera_image(image, size))
                    .collect::<Result<_>>()?;
                ObsBatch::from_observations(std::slice::from_ref(&resized))?
            }
            None => ObsBatch::from_observations(std::slice::from_ref(observation))?,
        };
        let flat = self.act_batch(&obs)?;
        Ok(flat.chunks(self.action_dim()).map(<[f32]>::to_vec).collect())
    }

    fn reset(&mut self) {
        self.rng = ChaCha8Rng::seed_from_u64(self.seed);
    }
}
