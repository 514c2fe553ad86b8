//! A LeRobot ACT checkpoint folder ready for inference: LeRobot's pre/post-processing
//! (`processor_act.make_act_pre_post_processors`: rename, batch, normalise the state / images / action;
//! un-normalise the action) read from the folder's pipeline files, `predict_action_chunk`,
//! `select_action` with the `n_action_steps` queue or `ACTTemporalEnsembler`, and saving in LeRobot's
//! layout, atomically. A folder is a local path or a Hugging Face Hub model id.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use serde_json::{Value, json};

use super::config::{ActFolderConfig, ENV_STATE_KEY, LeRobotActConfig, derive_dims};
use super::model::{Act, ActBatch, ActOutput, VaeTarget};
use crate::data::read_vec;
use crate::error::{PolicyError, Result, config_err, input_err};
use crate::nets::seeded_init;
use crate::smolvla::lerobot::{
    self, ACTION_KEY, Feature, FeatureType, NormMode, NormalizerStep, Pipeline, STATE_KEY, Stats,
};
use crate::smolvla::processor::{ChwImage, RawSample};
use crate::{Observation, Policy};

/// One raw sample in LeRobot feature names (`observation.state`, `observation.images.<camera>`, ...),
/// in dataset units and images in `[0, 1]`; the task text is ignored by ACT.
pub type ActSample = RawSample;

/// `ACTTemporalEnsembler` (Algorithm 2 of the ACT paper, LeRobot's online form): every step a new chunk
/// is averaged into the running per-timestep means with weights `w_i = exp(-coeff * i)`, `w_0` for the
/// oldest prediction, and the first timestep is popped.
#[derive(Debug, Clone)]
pub struct TemporalEnsembler {
    chunk_size: usize,
    weights: Vec<f32>,
    weights_cumsum: Vec<f32>,
    /// Running means `[remaining timesteps][batch * action_dim]` and how many chunks each holds.
    actions: Vec<Vec<f32>>,
    counts: Vec<usize>,
}

impl TemporalEnsembler {
    pub fn new(coeff: f64, chunk_size: usize) -> Self {
        // torch: exp(-coeff * arange(chunk)) and its cumsum, in f32.
        let weights: Vec<f32> = (0..chunk_size)
            .map(|i| (-(coeff as f32) * i as f32).exp())
            .collect();
        let weights_cumsum = weights
            .iter()
            .scan(0f32, |acc, w| {
                *acc += w;
                Some(*acc)
            })
            .collect();
        Self {
            chunk_size,
            weights,
            weights_cumsum,
            actions: Vec::new(),
            counts: Vec::new(),
        }
    }

    pub fn reset(&mut self) {
        self.actions.clear();
        self.counts.clear();
    }

    /// `update(actions)`: `chunk` is `[chunk_size][values]` (values = batch * action_dim, one row per
    /// timestep); returns the ensembled action of the current step.
    pub fn update(&mut self, chunk: &[Vec<f32>]) -> Result<Vec<f32>> {
        if chunk.len() != self.chunk_size {
            return Err(PolicyError::Shape {
                field: "action chunk",
                expected: format!("{} timesteps", self.chunk_size),
                got: format!("{}", chunk.len()),
            });
        }
        if self.actions.is_empty() {
            self.actions = chunk.to_vec();
            self.counts = vec![1; self.chunk_size];
        } else {
            for (t, (mean, count)) in self.actions.iter_mut().zip(self.counts.iter_mut()).enumerate() {
                // A running mean holds at most chunk_size - 1 chunks when it is updated.
                let n = (*count).min(self.chunk_size - 1).max(1);
                let (prev_sum, w, new_sum) = (
                    self.weights_cumsum[n - 1],
                    self.weights[n],
                    self.weights_cumsum[n],
                );
                for (m, a) in mean.iter_mut().zip(&chunk[t]) {
                    *m = (*m * prev_sum + a * w) / new_sum;
                }
                *count = (*count + 1).min(self.chunk_size);
            }
            self.actions.push(chunk[self.chunk_size - 1].clone());
            self.counts.push(1);
        }
        self.counts.remove(0);
        Ok(self.actions.remove(0))
    }
}

/// A LeRobot ACT folder: config, both processor pipelines, the network.
#[derive(Debug)]
pub struct LeRobotActPolicy {
    pub dir: PathBuf,
    pub config: ActFolderConfig,
    pub preprocessor: Pipeline,
    pub postprocessor: Pipeline,
    pub model: Act,
    device: Device,
    queue: VecDeque<Vec<f32>>,
    ensembler: Option<TemporalEnsembler>,
}

/// A local folder as given, else a Hugging Face Hub model id whose `config.json`, `model.safetensors`,
/// processor pipelines and the statistics files they name are fetched (or reused from the cache).
pub fn resolve_policy_dir(name: &str) -> Result<PathBuf> {
    let as_given = PathBuf::from(name);
    if as_given.is_dir() {
        return Ok(as_given);
    }
    if !crate::smolvla::lerobot::looks_like_hub_id(name) {
        return Err(PolicyError::Io {
            path: as_given,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such policy folder, and not a Hugging Face Hub id (owner/name)",
            ),
        });
    }
    let hub_err = |file: &str, e: hf_hub::api::sync::ApiError| PolicyError::Io {
        path: PathBuf::from(format!("hf://{name}/{file}")),
        source: std::io::Error::other(format!(
            "cannot fetch {file} from the Hugging Face Hub ({e}); it needs network access to huggingface.co \
             (or HF_ENDPOINT) once, or pass a local LeRobot policy folder"
        )),
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| hub_err("(client)", e))?;
    let repo = api.model(name.to_string());
    let config = repo
        .get(lerobot::CONFIG_FILE)
        .map_err(|e| hub_err(lerobot::CONFIG_FILE, e))?;
    repo.get(lerobot::WEIGHTS_FILE)
        .map_err(|e| hub_err(lerobot::WEIGHTS_FILE, e))?;
    for pipeline in [lerobot::PREPROCESSOR_FILE, lerobot::POSTPROCESSOR_FILE] {
        let path = repo.get(pipeline).map_err(|e| hub_err(pipeline, e))?;
        let raw = lerobot::read_json(&path)?;
        let steps = raw
            .get("steps")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for file in steps
            .iter()
            .filter_map(|s| s.get("state_file").and_then(Value::as_str))
        {
            repo.get(file).map_err(|e| hub_err(file, e))?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

impl LeRobotActPolicy {
    /// Read a LeRobot ACT folder (a path or a hub id): `config.json` (type `act`), both pipelines and
    /// their statistics, and `model.safetensors` (strict).
    pub fn load(source: &str, device: &Device) -> Result<Self> {
        let dir = resolve_policy_dir(source)?;
        let config = ActFolderConfig::read(&dir)?;
        let preprocessor = Pipeline::read(&dir, lerobot::PREPROCESSOR_FILE)?;
        let postprocessor = Pipeline::read(&dir, lerobot::POSTPROCESSOR_FILE)?;
        check_pipelines(&config, &preprocessor, &postprocessor)?;
        let model = Act::load_safetensors(config.dims.clone(), dir.join(lerobot::WEIGHTS_FILE), device)?;
        let ensembler = config
            .cfg
            .temporal_ensemble_coeff
            .map(|c| TemporalEnsembler::new(c, config.cfg.chunk_size));
        Ok(Self {
            dir,
            config,
            preprocessor,
            postprocessor,
            model,
            device: device.clone(),
            queue: VecDeque::new(),
            ensembler,
        })
    }

    /// Start a new LeRobot ACT folder at `dir` (atomically; an existing folder is replaced only once the
    /// new one is complete) and load it: `config.json` from `cfg`, the processor pipelines LeRobot's
    /// `make_act_pre_post_processors` makes with `stats` (dataset statistics by feature), and a random
    /// network drawn from `seed` (a torchvision ResNet checkpoint, when given as `backbone`, replaces the
    /// random backbone; see [`Act::load_torchvision_backbone`]).
    pub fn create(
        dir: &Path,
        cfg: &LeRobotActConfig,
        stats: &Stats,
        seed: u64,
        backbone: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        let config_path = dir.join(lerobot::CONFIG_FILE);
        let dims = derive_dims(cfg).map_err(|r| config_err(&config_path, r))?;
        let mut model = seeded_init(seed, device, |d| Act::new(dims, d));
        if let Some(path) = backbone {
            model = model.load_torchvision_backbone(path)?;
        }
        let norm_map = serde_json::to_value(&cfg.normalization_mapping)
            .map_err(|e| config_err(&config_path, e.to_string()))?;
        let mut all = cfg.input_features.clone();
        all.0.extend(cfg.output_features.0.iter().cloned());
        let device_step =
            json!({"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": null}});
        let pre = json!({"name": "policy_preprocessor", "steps": [
            {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
            {"registry_name": "to_batch_processor", "config": {}},
            device_step,
            {"registry_name": "normalizer_processor", "config": {"eps": 1e-8, "features": all, "norm_map": norm_map}},
        ]});
        let post = json!({"name": "policy_postprocessor", "steps": [
            {"registry_name": "unnormalizer_processor",
             "config": {"eps": 1e-8, "features": cfg.output_features, "norm_map": norm_map}},
            device_step,
        ]});
        lerobot::write_dir_atomically(dir, |tmp| {
            let write = |name: &str, value: &Value| {
                let out = tmp.join(name);
                let text =
                    serde_json::to_string_pretty(value).map_err(|e| config_err(&out, e.to_string()))?;
                std::fs::write(&out, text).map_err(|source| PolicyError::Io { path: out, source })
            };
            write(lerobot::CONFIG_FILE, &cfg.to_config_json())?;
            for (file, raw) in [
                (lerobot::PREPROCESSOR_FILE, &pre),
                (lerobot::POSTPROCESSOR_FILE, &post),
            ] {
                write(file, raw)?;
                let mut pipeline = Pipeline::read(tmp, file)?;
                if let Some(n) = pipeline.normalizer_mut() {
                    n.stats = stats
                        .iter()
                        .filter(|(k, _)| n.features.get(k).is_some())
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                }
                pipeline.write(tmp, file)?;
            }
            model.save_safetensors(tmp.join(lerobot::WEIGHTS_FILE))
        })?;
        Self::load(&dir.to_string_lossy(), device)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn chunk_size(&self) -> usize {
        self.config.cfg.chunk_size
    }

    pub fn action_dim(&self) -> usize {
        self.config.dims.action_dim
    }

    fn normalizer(&self) -> Option<&NormalizerStep> {
        self.preprocessor.normalizer()
    }

    /// The preprocessor on raw samples: the model's normalised batch.
    pub fn preprocess(&self, samples: &[ActSample]) -> Result<ActBatch> {
        let b = samples.len();
        if b == 0 {
            return Err(input_err("an empty batch"));
        }
        let rename = self.preprocessor.rename_map();
        let renamed: Vec<ActSample> = samples
            .iter()
            .map(|s| {
                let key = |k: &String| rename.get(k).cloned().unwrap_or_else(|| k.clone());
                ActSample {
                    vectors: s.vectors.iter().map(|(k, v)| (key(k), v.clone())).collect(),
                    images: s.images.iter().map(|(k, v)| (key(k), v.clone())).collect(),
                    task: s.task.clone(),
                }
            })
            .collect();
        let dims = &self.config.dims;
        let vector = |key: &str, dim: Option<usize>, kind: FeatureType| -> Result<Option<Tensor<2>>> {
            let Some(dim) = dim else { return Ok(None) };
            let mut flat = Vec::with_capacity(b * dim);
            for s in &renamed {
                let mut v = s
                    .vectors
                    .get(key)
                    .ok_or_else(|| input_err(format!("no `{key}` ({dim} values)")))?
                    .clone();
                if v.len() != dim {
                    return Err(input_err(format!(
                        "`{key}` has {} values, expected {dim}",
                        v.len()
                    )));
                }
                if let Some(n) = self.normalizer() {
                    n.apply(key, kind, &mut v, false).map_err(input_err)?;
                }
                flat.extend(v);
            }
            Ok(Some(Tensor::from_data(
                TensorData::new(flat, [b, dim]),
                &self.device,
            )))
        };
        let state = vector(STATE_KEY, dims.state_dim, FeatureType::State)?;
        let env_key = self
            .config
            .cfg
            .input_features
            .of_kind(FeatureType::Env)
            .next()
            .map_or(ENV_STATE_KEY.to_string(), |f| f.key.clone());
        let env_state = vector(&env_key, dims.env_state_dim, FeatureType::Env)?;
        let mut images = Vec::with_capacity(dims.cameras.len());
        for cam in &dims.cameras {
            let first = renamed[0]
                .images
                .get(&cam.key)
                .ok_or_else(|| input_err(format!("no image `{}`", cam.key)))?;
            let (h, w) = (first.height, first.width);
            let mut flat = Vec::with_capacity(b * 3 * h * w);
            for s in &renamed {
                let img = s
                    .images
                    .get(&cam.key)
                    .ok_or_else(|| input_err(format!("no image `{}`", cam.key)))?;
                if (img.height, img.width) != (h, w) || img.data.len() != 3 * h * w {
                    return Err(input_err(format!(
                        "image `{}` is {}x{} ({} values); every sample of a batch needs the same 3x{h}x{w}",
                        cam.key,
                        img.height,
                        img.width,
                        img.data.len()
                    )));
                }
                flat.extend(self.normalize_image(cam, img)?);
            }
            images.push(Tensor::from_data(
                TensorData::new(flat, [b, 3, h, w]),
                &self.device,
            ));
        }
        Ok(ActBatch {
            state,
            env_state,
            images,
        })
    }

    /// `NormalizerProcessorStep` on one `[3, H, W]` image: statistics of shape `[3, 1, 1]` (what
    /// LeRobot's dataset statistics hold) broadcast per channel, or of the image's full shape.
    fn normalize_image(&self, cam: &Feature, img: &ChwImage) -> Result<Vec<f32>> {
        let mut data = img.data.clone();
        let Some(step) = self.normalizer() else {
            return Ok(data);
        };
        let mode = step
            .norm_map
            .get(&FeatureType::Visual)
            .copied()
            .unwrap_or(NormMode::Identity);
        let (lo, hi) = match mode {
            NormMode::Identity => return Ok(data),
            NormMode::MeanStd => ("mean", "std"),
            NormMode::MinMax => ("min", "max"),
            NormMode::Quantiles => ("q01", "q99"),
            NormMode::Quantile10 => ("q10", "q90"),
        };
        if !step.stats.contains_key(&cam.key) {
            // LeRobot passes a feature without statistics through.
            return Ok(data);
        }
        let (Some(a), Some(b)) = (step.stat(&cam.key, lo), step.stat(&cam.key, hi)) else {
            return Err(input_err(format!(
                "{mode:?} normalisation of `{}` needs statistics `{lo}` and `{hi}`",
                cam.key
            )));
        };
        let plane = img.height * img.width;
        let per_channel = a.len() == 3 && b.len() == 3;
        if !per_channel && (a.len() != data.len() || b.len() != data.len()) {
            return Err(input_err(format!(
                "statistics of `{}` have {} values, expected 3 (per channel) or {}",
                cam.key,
                a.len(),
                data.len()
            )));
        }
        let eps = step.eps as f32;
        for (i, v) in data.iter_mut().enumerate() {
            let j = if per_channel { i / plane } else { i };
            let (a, b) = (a[j], b[j]);
            *v = if mode == NormMode::MeanStd {
                (*v - a) / (b + eps)
            } else {
                let denom = if b - a == 0.0 { eps } else { b - a };
                2.0 * (*v - a) / denom - 1.0
            };
        }
        Ok(data)
    }

    /// The preprocessor's normalisation of a target chunk `[chunk * action_dim]` (training).
    pub fn normalize_actions(&self, actions: &[f32]) -> Result<Vec<f32>> {
        let a = self.action_dim();
        let mut out = actions.to_vec();
        if let Some(n) = self.normalizer() {
            for row in out.chunks_mut(a) {
                n.apply(ACTION_KEY, FeatureType::Action, row, false)
                    .map_err(input_err)?;
            }
        }
        Ok(out)
    }

    /// The postprocessor (`UnnormalizerProcessorStep`) on one normalised action.
    pub fn unnormalize_action(&self, action: &[f32]) -> Result<Vec<f32>> {
        let mut out = action.to_vec();
        if let Some(n) = self.postprocessor.normalizer() {
            n.apply(ACTION_KEY, FeatureType::Action, &mut out, true)
                .map_err(input_err)?;
        }
        Ok(out)
    }

    /// `predict_action_chunk` before the postprocessor: per sample `[chunk][action_dim]`, normalised.
    pub fn predict_normalized(&self, samples: &[ActSample]) -> Result<Vec<Vec<Vec<f32>>>> {
        let batch = self.preprocess(samples)?;
        let out = if self.device.is_autodiff() {
            // LeRobot predicts in eval mode: a model being trained runs without dropout and graph.
            let batch = ActBatch {
                state: batch.state.map(Tensor::inner),
                env_state: batch.env_state.map(Tensor::inner),
                images: batch.images.into_iter().map(Tensor::inner).collect(),
            };
            self.model.valid().forward(&batch, None)?
        } else {
            self.model.forward(&batch, None)?
        };
        self.read_chunks(&out)
    }

    fn read_chunks(&self, out: &ActOutput) -> Result<Vec<Vec<Vec<f32>>>> {
        let [b, c, a] = out.actions.dims();
        let flat = read_vec(out.actions.clone().reshape([b * c * a]), "action chunk")?;
        Ok(flat
            .chunks(c * a)
            .map(|chunk| chunk.chunks(a).map(<[f32]>::to_vec).collect())
            .collect())
    }

    /// Preprocessor, `predict_action_chunk`, postprocessor: per sample `[chunk][action_dim]` in dataset units.
    pub fn predict_chunks(&self, samples: &[ActSample]) -> Result<Vec<Vec<Vec<f32>>>> {
        self.predict_normalized(samples)?
            .into_iter()
            .map(|chunk| chunk.iter().map(|a| self.unnormalize_action(a)).collect())
            .collect()
    }

    /// `ACTPolicy.select_action` for one sample, then the postprocessor: with temporal ensembling a new
    /// chunk every step, ensembled; otherwise the first `n_action_steps` of a chunk are queued and a new
    /// chunk is predicted when the queue is empty.
    pub fn select_action(&mut self, sample: &ActSample) -> Result<Vec<f32>> {
        let normalized = if let Some(mut ensembler) = self.ensembler.take() {
            let action = self
                .predict_normalized(std::slice::from_ref(sample))
                .and_then(|mut chunks| ensembler.update(&chunks.remove(0)));
            self.ensembler = Some(ensembler);
            action?
        } else {
            if self.queue.is_empty() {
                let chunk = self.predict_normalized(std::slice::from_ref(sample))?.remove(0);
                self.queue
                    .extend(chunk.into_iter().take(self.config.cfg.n_action_steps));
            }
            self.queue
                .pop_front()
                .ok_or_else(|| input_err("the action queue is empty"))?
        };
        self.unnormalize_action(&normalized)
    }

    /// Forget queued and ensembled actions (`ACTPolicy.reset`).
    pub fn reset_queue(&mut self) {
        self.queue.clear();
        if let Some(e) = &mut self.ensembler {
            e.reset();
        }
    }

    /// A training batch: normalised inputs and the [`VaeTarget`] (normalised target chunks, padding,
    /// VAE noise `[B * latent_dim]`). `actions` is per sample `[chunk * action_dim]` in dataset units.
    pub fn training_batch(
        &self,
        samples: &[ActSample],
        actions: &[Vec<f32>],
        is_pad: &[Vec<bool>],
        noise: Vec<f32>,
    ) -> Result<(ActBatch, VaeTarget)> {
        let b = samples.len();
        let (c, a, l) = (self.chunk_size(), self.action_dim(), self.config.dims.latent_dim);
        if actions.len() != b || is_pad.len() != b || noise.len() != b * l {
            return Err(PolicyError::Shape {
                field: "training batch",
                expected: format!("{b} action chunks, {b} padding masks, {} noise values", b * l),
                got: format!("{}, {}, {}", actions.len(), is_pad.len(), noise.len()),
            });
        }
        let mut flat = Vec::with_capacity(b * c * a);
        let mut pad = Vec::with_capacity(b * c);
        for (chunk, p) in actions.iter().zip(is_pad) {
            if chunk.len() != c * a || p.len() != c {
                return Err(PolicyError::Shape {
                    field: "action chunk",
                    expected: format!("{c} x {a} actions and {c} padding flags"),
                    got: format!("{} values and {} flags", chunk.len(), p.len()),
                });
            }
            flat.extend(self.normalize_actions(chunk)?);
            pad.extend_from_slice(p);
        }
        let batch = self.preprocess(samples)?;
        let target = VaeTarget {
            actions: Tensor::from_data(TensorData::new(flat, [b, c, a]), &self.device),
            is_pad: Tensor::<2, Bool>::from_data(TensorData::new(pad, [b, c]), &self.device),
            noise: Tensor::from_data(TensorData::new(noise, [b, l]), &self.device),
        };
        Ok((batch, target))
    }

    /// Replace the normalisation statistics of both pipelines (training on a new dataset).
    pub fn replace_stats(&mut self, stats: &Stats) {
        crate::smolvla::lerobot::replace_pipeline_stats(
            &mut self.preprocessor,
            &mut self.postprocessor,
            stats,
        );
    }

    /// Write this policy as a LeRobot folder at `dir` (config, pipelines and statistics as read,
    /// `model.safetensors` in f32), atomically: a temporary sibling folder renamed into place.
    pub fn save(&self, dir: &Path) -> Result<()> {
        lerobot::write_dir_atomically(dir, |tmp| {
            self.model.save_safetensors(tmp.join(lerobot::WEIGHTS_FILE))?;
            let text = serde_json::to_string_pretty(&self.config.raw)
                .map_err(|e| config_err(&self.config.path, e.to_string()))?;
            let out = tmp.join(lerobot::CONFIG_FILE);
            std::fs::write(&out, text).map_err(|source| PolicyError::Io { path: out, source })?;
            self.preprocessor.write(tmp, lerobot::PREPROCESSOR_FILE)?;
            self.postprocessor.write(tmp, lerobot::POSTPROCESSOR_FILE)
        })
    }
}

/// The preprocessor must normalise the state and the action, the postprocessor un-normalise the
/// action, with the statistics their modes need (LeRobot would silently pass them through).
fn check_pipelines(config: &ActFolderConfig, pre: &Pipeline, post: &Pipeline) -> Result<()> {
    let norm = pre
        .normalizer()
        .ok_or_else(|| config_err(&pre.path, "no `normalizer_processor` step"))?;
    let unnorm = post
        .normalizer()
        .ok_or_else(|| config_err(&post.path, "no `unnormalizer_processor` step"))?;
    let action = Feature {
        key: ACTION_KEY.into(),
        kind: FeatureType::Action,
        shape: vec![config.dims.action_dim],
    };
    if let Some(state_dim) = config.dims.state_dim {
        let state = Feature {
            key: STATE_KEY.into(),
            kind: FeatureType::State,
            shape: vec![state_dim],
        };
        lerobot::require_stats(norm, &state, &pre.path)?;
    }
    lerobot::require_stats(norm, &action, &pre.path)?;
    lerobot::require_stats(unnorm, &action, &post.path)
}

impl Policy for LeRobotActPolicy {
    fn action_dim(&self) -> usize {
        self.config.dims.action_dim
    }

    /// LeRobot's `select_action` semantics for a driver that executes every returned row before asking
    /// again: with temporal ensembling one ensembled action per call; otherwise the first
    /// `n_action_steps` actions of a fresh chunk. Images are matched by key
    /// (`observation.images.<camera>`), RGB8 scaled to [0, 1].
    fn act(&mut self, observation: &Observation) -> Result<Vec<Vec<f32>>> {
        let mut sample = ActSample::default();
        sample
            .vectors
            .insert(STATE_KEY.to_string(), observation.state.clone());
        for im in &observation.images {
            sample
                .images
                .insert(im.key.clone(), ChwImage::from_rgb8(im.height, im.width, &im.rgb)?);
        }
        if self.ensembler.is_some() {
            return Ok(vec![self.select_action(&sample)?]);
        }
        let chunk = self.predict_chunks(std::slice::from_ref(&sample))?.remove(0);
        Ok(chunk.into_iter().take(self.config.cfg.n_action_steps).collect())
    }

    fn reset(&mut self) {
        self.reset_queue();
    }
}
