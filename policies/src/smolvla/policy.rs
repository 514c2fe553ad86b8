//! A LeRobot SmolVLA checkpoint folder ready for inference: LeRobot's processors ([`super::processor`])
//! around the Burn model, `predict_action_chunk` with optional fixed noise, and saving in LeRobot's
//! layout (config, processors with their statistics, `model.safetensors`), atomically.

use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::config::{SmolVlaConfig, VlmConfig};
use super::lerobot::{self, LeRobotFolder, STATE_KEY, Stats};
use super::model::{SmolVla, SmolVlaBatch};
use super::processor::{ChwImage, PreparedBatch, RawSample, SmolVlaProcessor, resolve_vlm_dir};
use crate::data::read_vec;
use crate::error::{PolicyError, Result};
use crate::{Observation, Policy};

/// Whether `dir` is a LeRobot policy folder (`config.json` with a `type`) rather than a toprl
/// checkpoint (`policy.json`).
pub fn is_lerobot_folder(dir: &Path) -> bool {
    !dir.join(crate::checkpoint::CONFIG_FILE).is_file() && dir.join(lerobot::CONFIG_FILE).is_file()
}

/// Standard normal samples from `rng` (Box-Muller), for the flow's starting noise.
pub fn standard_normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// A SmolVLA policy read from a LeRobot folder.
#[derive(Debug)]
pub struct SmolVlaPolicy {
    pub folder: LeRobotFolder,
    pub processor: SmolVlaProcessor,
    pub model_config: SmolVlaConfig,
    pub vlm_dir: PathBuf,
    pub model: SmolVla,
    device: Device,
    seed: u64,
    rng: ChaCha8Rng,
}

impl SmolVlaPolicy {
    /// Read `dir`: `config.json` (type `smolvla`), both processor pipelines and their statistics, the
    /// VLM's config and tokenizer (from `vlm_model_name`: a folder, or a hub id), and `model.safetensors`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let folder = LeRobotFolder::read(dir)?;
        let model_config = SmolVlaConfig::from_file(dir.join(lerobot::CONFIG_FILE))?;
        let vlm_name = folder
            .tokenizer_step()
            .tokenizer_name
            .clone()
            .unwrap_or_else(|| folder.config.io.vlm_model_name.clone());
        let vlm_dir = resolve_vlm_dir(&vlm_name, dir)?;
        let processor = SmolVlaProcessor::new(&folder, &vlm_dir)?;
        let vlm_config = VlmConfig::from_file(vlm_dir.join("config.json"))?;
        // Parameters are marked trainable as LeRobot does for this config (freeze_vision_encoder, ...).
        let model = SmolVla::load(
            &model_config,
            &vlm_config,
            dir.join(lerobot::WEIGHTS_FILE),
            device,
        )?;
        Ok(Self {
            folder,
            processor,
            model_config,
            vlm_dir,
            model,
            device: device.clone(),
            seed: 0,
            rng: ChaCha8Rng::seed_from_u64(0),
        })
    }

    pub fn chunk_size(&self) -> usize {
        self.folder.config.io.chunk_size
    }

    pub fn max_action_dim(&self) -> usize {
        self.processor.max_action_dim()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Restart the sampling-noise stream from `seed`.
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    /// The model's batch for prepared inputs.
    pub fn model_batch(&self, p: &PreparedBatch) -> SmolVlaBatch {
        let d = &self.device;
        let b = p.batch;
        let max_state = p.state.len() / b;
        SmolVlaBatch {
            images: p
                .images
                .iter()
                .map(|im| Tensor::from_data(TensorData::new(im.data.clone(), [b, 3, im.height, im.width]), d))
                .collect(),
            image_masks: p.image_masks.clone(),
            state: Tensor::from_data(TensorData::new(p.state.clone(), [b, max_state]), d),
            tokens: Tensor::<2, Int>::from_data(
                TensorData::new(
                    p.tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(),
                    [b, p.token_len],
                ),
                d,
            ),
            token_mask: Tensor::<2, Bool>::from_data(
                TensorData::new(p.token_mask.clone(), [b, p.token_len]),
                d,
            ),
        }
    }

    /// LeRobot's preprocessor, `predict_action_chunk(batch, noise)` and postprocessor: one chunk
    /// `[chunk][action_dim]` in dataset units per sample. `noise` is `[batch, chunk, max_action_dim]`
    /// row-major (or `[chunk, max_action_dim]` for a batch of one); without it the noise is drawn from
    /// this policy's seeded stream.
    pub fn predict_chunks(
        &mut self,
        samples: &[RawSample],
        noise: Option<&[f32]>,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let prepared = self.processor.prepare(samples)?;
        let (b, c, a) = (prepared.batch, self.chunk_size(), self.max_action_dim());
        let noise = match noise {
            Some(n) if n.len() == b * c * a => n.to_vec(),
            Some(n) => {
                return Err(PolicyError::Shape {
                    field: "noise",
                    expected: format!("[{b}, {c}, {a}] = {} values", b * c * a),
                    got: format!("{} values", n.len()),
                });
            }
            None => standard_normal(&mut self.rng, b * c * a),
        };
        let batch = self.model_batch(&prepared);
        let noise = Tensor::from_data(TensorData::new(noise, [b, c, a]), &self.device);
        let out = self.model.sample_actions(&batch, noise)?;
        let flat = read_vec(out.reshape([b * c * a]), "sampled actions")?;
        flat.chunks(c * a)
            .map(|chunk| self.processor.postprocess(chunk))
            .collect()
    }

    /// [`Self::predict_chunks`] with the noise seed reset to `seed` first when no noise is given.
    pub fn predict(
        &mut self,
        samples: &[RawSample],
        noise: Option<&[f32]>,
        seed: u64,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        if noise.is_none() {
            self.set_seed(seed);
        }
        self.predict_chunks(samples, noise)
    }

    /// Replace the normalisation statistics (fine-tuning on new data).
    pub fn replace_stats(&mut self, stats: &Stats) {
        self.folder.replace_stats(stats);
        self.processor.set_stats(&self.folder);
    }

    /// Write this policy as a LeRobot folder at `dir`, atomically. A VLM given as a local folder is
    /// recorded by its absolute path so the new folder loads from anywhere (hub ids are kept).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_with(dir, |_| Ok(()))
    }

    /// [`Self::save`] with `extra` writing more files into the folder before it is renamed into place
    /// (a trainer's progress, a value baseline); LeRobot ignores files it does not know.
    pub fn save_with(&self, dir: &Path, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let mut folder = self.folder.clone();
        let is_local = self.vlm_dir.is_dir()
            && !self
                .vlm_dir
                .starts_with(hf_cache_root().unwrap_or_else(|| PathBuf::from("/nonexistent")));
        if is_local {
            let abs = std::fs::canonicalize(&self.vlm_dir).map_err(|source| PolicyError::Io {
                path: self.vlm_dir.clone(),
                source,
            })?;
            let abs = Value::String(abs.to_string_lossy().into_owned());
            folder.config.set_raw("vlm_model_name", abs.clone());
            folder.set_tokenizer_name(abs);
        }
        lerobot::write_dir_atomically(dir, |tmp| {
            self.model.save_safetensors(tmp.join(lerobot::WEIGHTS_FILE))?;
            folder.write_into(tmp)?;
            extra(tmp)
        })
    }
}

/// The Hugging Face cache folder (`HF_HOME/hub`), where hub downloads land.
fn hf_cache_root() -> Option<PathBuf> {
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))?;
    Some(home.join("hub"))
}

impl Policy for SmolVlaPolicy {
    fn action_dim(&self) -> usize {
        self.processor.action_dim()
    }

    /// One chunk for a toprl observation: `state` is `observation.state`, images are matched to the
    /// config's cameras by key (`observation.images.<camera>`), RGB8 scaled to [0, 1].
    fn act(&mut self, observation: &Observation) -> Result<Vec<Vec<f32>>> {
        let mut sample = RawSample {
            task: observation.instruction.clone(),
            ..RawSample::default()
        };
        sample
            .vectors
            .insert(STATE_KEY.to_string(), observation.state.clone());
        for im in &observation.images {
            sample
                .images
                .insert(im.key.clone(), ChwImage::from_rgb8(im.height, im.width, &im.rgb)?);
        }
        let mut chunks = self.predict_chunks(std::slice::from_ref(&sample), None)?;
        Ok(chunks.pop().unwrap_or_default())
    }

    fn reset(&mut self) {
        self.rng = ChaCha8Rng::seed_from_u64(self.seed);
    }
}
