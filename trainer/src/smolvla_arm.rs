//! `[policy] kind = "smolvla"`: an arm fine-tunes LeRobot's SmolVLA (`pretrained`, a folder or a hub
//! id) with reward-aligned BC and, for `algorithm = "awr"`, online AWR ([`crate::awr`], through
//! [`SmolVlaRun`]'s [`AwrLearner`]). Each step is LeRobot's flow-matching training step with the arm's
//! per-frame weights multiplying the per-sample loss ([`SmolVlaFinetuner`]), at LeRobot's
//! cosine-decay-with-warmup learning rate scaled to the arm's steps ([`CosineDecayWithWarmup`]); the
//! normalisation statistics are replaced by the demonstrations' before the first step (as LeRobot does
//! when fine-tuning on a new dataset); evaluation runs the policy in the simulator through the
//! [`Policy`] wrapper; checkpoints are LeRobot folders (`runs/<arm>/seed-<s>/checkpoint/`) that LeRobot
//! loads, with `progress.json`, `training_state/` (AdamW moments, noise stream) and for AWR `value/`
//! inside, so `--resume` continues an arm where it stopped.
//!
//! Everything the model needs is located by [`prepare`] before any work: a missing folder, or a hub id
//! that is neither cached nor downloadable (`HF_HUB_OFFLINE=1` never touches the network), is an error
//! that says what to download. The checkpoint's cameras and state/action sizes must match the task.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use toprl_envs::environment::{
    Environment, EpisodeRollout, Observation as EnvObservation, rollout as env_rollout,
};
use toprl_envs::episode::Episode;
use toprl_envs::sim::{ActionSource, Rollout, RolloutOptions, SimConfig, So101Env, rollout};
use toprl_policies::smolvla::SmolVlaPolicy;
use toprl_policies::smolvla::finetune::{SmolVlaFinetuner, TRAINING_STATE_DIR, TrainSample};
use toprl_policies::smolvla::lerobot::Stats;
use toprl_policies::smolvla::processor::{ChwImage, RawSample};
use toprl_policies::smolvla::train::CosineDecayWithWarmup;
use toprl_policies::smolvla::{ContextCache, SmolVlaConfig};
use toprl_policies::{Normalizer, Observation, Policy, PolicyError};

use crate::awr::{AwrLearner, ExtraFiles, RunContext};
use crate::config::{Algorithm, ArmConfig, ExperimentConfig};
use crate::driver::{ChunkDriver, DriveError, STATE_FEATURE, camera_key};
use crate::experiment::{
    AwrInputs, ExperimentError, PROGRESS_FILE, RunOptions, RunProgress, Samples, TASK_FILE, bar,
    check_progress, drive_err, eval_seed, policy_err, run_dir,
};
use crate::results::SeedResult;
use crate::tensorboard::EventWriter;

/// The `[policy] kind` of a SmolVLA arm.
pub const KIND: &str = "smolvla";
/// Most memory the frozen-VLM context cache may hold (4 GiB).
const CONTEXT_CACHE_BYTES: usize = 4 << 30;
/// Joints of the SO-101 (state and action size the checkpoint must have).
const JOINTS: usize = toprl_envs::so101::NUM_JOINTS;

type Result<T> = std::result::Result<T, ExperimentError>;

/// Field checks of `[policy]` for SmolVLA (called by the config's validation): `(field, message)`.
pub(crate) fn validate_fields(config: &ExperimentConfig) -> std::result::Result<(), (&'static str, String)> {
    let p = &config.policy;
    if p.kind != KIND {
        let set = [
            ("policy.pretrained", p.pretrained.is_some()),
            ("policy.freeze_vision_encoder", p.freeze_vision_encoder.is_some()),
            ("policy.train_expert_only", p.train_expert_only.is_some()),
            ("policy.train_state_proj", p.train_state_proj.is_some()),
            ("policy.camera_features", p.camera_features.is_some()),
            (
                "policy.scheduler_warmup_steps",
                p.scheduler_warmup_steps.is_some(),
            ),
            ("policy.scheduler_decay_steps", p.scheduler_decay_steps.is_some()),
            ("policy.scheduler_decay_lr", p.scheduler_decay_lr.is_some()),
        ];
        if let Some((field, _)) = set.iter().find(|(_, s)| *s) {
            return Err((field, format!("only used with kind = \"{KIND}\"")));
        }
        return Ok(());
    }
    if p.pretrained.as_deref().is_none_or(str::is_empty) {
        return Err((
            "policy.pretrained",
            "kind = \"smolvla\" fine-tunes a LeRobot SmolVLA checkpoint: set pretrained to a folder or a hub \
             id such as \"lerobot/smolvla_base\""
                .into(),
        ));
    }
    if let Some(bad) = p
        .camera_features
        .iter()
        .flat_map(|m| m.keys())
        .find(|c| !config.task.cameras.contains(c))
    {
        return Err((
            "policy.camera_features",
            format!("`{bad}` is not one of task.cameras {:?}", config.task.cameras),
        ));
    }
    let refused = [
        (
            "policy.network",
            p.network.is_some(),
            "the network is the checkpoint's",
        ),
        ("policy.init", p.init.is_some(), "use policy.pretrained"),
        (
            "policy.environment_state",
            p.environment_state,
            "SmolVLA reads the joint state and the cameras only",
        ),
    ];
    if let Some((field, _, why)) = refused.iter().find(|(_, set, _)| *set) {
        return Err((field, format!("not available with kind = \"{KIND}\": {why}")));
    }
    let t = &config.train;
    let schedule = "SmolVLA trains with LeRobot's cosine-decay-with-warmup schedule; set \
                    policy.scheduler_warmup_steps, scheduler_decay_steps or scheduler_decay_lr instead";
    for (field, set) in [
        ("train.warmup_steps", t.warmup_steps != 0),
        ("train.cosine", t.cosine),
        ("train.min_lr", t.min_lr != 0.0),
    ] {
        if set {
            return Err((field, format!("not used with kind = \"{KIND}\": {schedule}")));
        }
    }
    if p.scheduler_decay_steps == Some(0) {
        return Err(("policy.scheduler_decay_steps", "expected at least 1".into()));
    }
    if let Some(lr) = p.scheduler_decay_lr
        && !(lr.is_finite() && lr >= 0.0 && lr <= t.lr)
    {
        return Err((
            "policy.scheduler_decay_lr",
            format!("expected a number in [0, train.lr = {}], got {lr}", t.lr),
        ));
    }
    Ok(())
}

/// Whether hf-hub must stay off the network (`HF_HUB_OFFLINE=1`, as the Python tools read it).
fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
}

fn looks_like_hub_id(name: &str) -> bool {
    name.split('/').count() == 2 && !name.starts_with('.') && !name.starts_with('/') && !name.ends_with('/')
}

fn needs(repo: &str, field: &str, why: &str) -> String {
    format!(
        "{field}: needs the model {repo} ({why}); download it with `huggingface-cli download {repo}` or set \
         {field} to a local folder"
    )
}

/// `file` of hub repo `repo`: from the local Hugging Face cache, else downloaded (unless offline).
fn hub_file(repo: &str, file: &str, field: &str) -> std::result::Result<PathBuf, String> {
    if let Some(path) = hf_hub::Cache::from_env().model(repo.to_string()).get(file) {
        return Ok(path);
    }
    if hub_offline() {
        return Err(needs(
            repo,
            field,
            &format!("{file} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"),
        ));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| needs(repo, field, &format!("no Hugging Face client: {e}")))?;
    api.model(repo.to_string())
        .get(file)
        .map_err(|e| needs(repo, field, &format!("cannot download {file}: {e}")))
}

/// The `state_file`s a LeRobot processor pipeline (`policy_preprocessor.json`) refers to.
fn state_files(pipeline: &Path) -> std::result::Result<Vec<String>, String> {
    let text = std::fs::read_to_string(pipeline).map_err(|e| format!("{}: {e}", pipeline.display()))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", pipeline.display()))?;
    Ok(json["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["state_file"].as_str().map(str::to_string))
        .collect())
}

/// The local folder of the `pretrained` checkpoint (downloading a hub id's files when allowed).
fn locate_checkpoint(name: &str) -> std::result::Result<PathBuf, String> {
    let field = "policy.pretrained";
    let local = PathBuf::from(name);
    if local.is_dir() {
        return Ok(local);
    }
    if !looks_like_hub_id(name) {
        return Err(format!(
            "{field}: the folder `{name}` does not exist (and it is not a hub id such as lerobot/smolvla_base)"
        ));
    }
    let config = hub_file(name, "config.json", field)?;
    for pipeline in ["policy_preprocessor.json", "policy_postprocessor.json"] {
        let path = hub_file(name, pipeline, field)?;
        for state in state_files(&path)? {
            hub_file(name, &state, field)?;
        }
    }
    hub_file(name, "model.safetensors", field)?;
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{field}: {} has no folder", config.display()))
}

/// Make sure the VLM (`vlm_model_name`: tokenizer and config) can be had, as the policy loader looks
/// for it: a folder as given, inside the checkpoint, beside it, or a hub id.
fn check_vlm(name: &str, checkpoint: &Path) -> std::result::Result<(), String> {
    let candidates = [
        Some(PathBuf::from(name)),
        Some(checkpoint.join(name)),
        checkpoint.parent().map(|p| p.join(name)),
    ];
    if candidates.iter().flatten().any(|c| c.is_dir()) {
        return Ok(());
    }
    let field = format!("vlm_model_name in {}", checkpoint.join("config.json").display());
    if !looks_like_hub_id(name) {
        return Err(format!("{field}: the VLM folder `{name}` does not exist"));
    }
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        hub_file(name, file, &field)?;
    }
    Ok(())
}

/// Simulator camera key (`observation.images.front`) -> the checkpoint image feature it feeds.
pub type CameraMap = BTreeMap<String, String>;

/// The experiment's camera map: `policy.camera_features` where given, else the same name.
fn camera_map(config: &ExperimentConfig) -> CameraMap {
    config
        .task
        .cameras
        .iter()
        .map(|c| {
            let feature = config
                .policy
                .camera_features
                .as_ref()
                .and_then(|m| m.get(c))
                .cloned();
            (camera_key(c), feature.unwrap_or_else(|| camera_key(c)))
        })
        .collect()
}

/// Check that a SmolVLA config fits the SO-101 task: the cameras in `map` feed the checkpoint's image
/// features one to one (toprl's processor refuses a missing camera), and its state and action have the
/// 6 joints.
pub fn check_features(
    cfg: &SmolVlaConfig,
    map: &CameraMap,
    source: &Path,
) -> std::result::Result<(), String> {
    let file = source.join("config.json");
    let got = cfg.image_features();
    let mut fed = Vec::new();
    for (camera, feature) in map {
        if !got.contains(feature) || fed.contains(&feature) {
            return Err(format!(
                "{}: input_features has the cameras {got:?}, so the task camera `{camera}` cannot feed \
                 `{feature}` (missing or already fed); set policy.camera_features (LeRobot's rename_map) or \
                 task.cameras (the simulator has {:?})",
                file.display(),
                toprl_envs::sim::env::CAMERAS
            ));
        }
        fed.push(feature);
    }
    if let Some(unfed) = got.iter().find(|f| !fed.contains(f)) {
        return Err(format!(
            "{}: the checkpoint camera `{unfed}` is fed by none of the task's cameras {:?}; add a camera to \
             task.cameras and map it in policy.camera_features (LeRobot's rename_map)",
            file.display(),
            map.keys().collect::<Vec<_>>()
        ));
    }
    for (what, dim) in [
        ("observation.state", cfg.state_dim()),
        ("action", cfg.action_dim()),
    ] {
        if dim != Some(JOINTS) {
            return Err(format!(
                "{}: `{what}` has shape {dim:?}, the SO-101 has {JOINTS} joints",
                file.display()
            ));
        }
    }
    Ok(())
}

/// Locate and check everything a SmolVLA experiment needs, before any work: the checkpoint folder (or
/// hub files), its config against the task, and its VLM. Returns the checkpoint folder.
pub fn prepare(config: &ExperimentConfig) -> Result<PathBuf> {
    let name = config.policy.pretrained.as_deref().unwrap_or_default();
    let dir = locate_checkpoint(name).map_err(ExperimentError::Invalid)?;
    let cfg = SmolVlaConfig::from_file(dir.join("config.json")).map_err(policy_err("policy.pretrained"))?;
    check_features(&cfg, &camera_map(config), &dir)
        .map_err(|e| ExperimentError::Invalid(format!("policy.pretrained: {e}")))?;
    check_vlm(&cfg.vlm_model_name, &dir).map_err(ExperimentError::Invalid)?;
    Ok(dir)
}

/// Mean, standard deviation (population, as LeRobot's `compute_stats`), min and max of `rows`.
fn feature_stats<'a>(rows: impl Iterator<Item = &'a Vec<f32>>) -> BTreeMap<String, Vec<f32>> {
    let rows: Vec<&Vec<f32>> = rows.collect();
    let dim = rows.first().map_or(0, |r| r.len());
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0f64; dim];
    let (mut min, mut max) = (vec![f32::INFINITY; dim], vec![f32::NEG_INFINITY; dim]);
    for r in &rows {
        for (i, &v) in r.iter().enumerate().take(dim) {
            mean[i] += f64::from(v) / n;
            min[i] = min[i].min(v);
            max[i] = max[i].max(v);
        }
    }
    let mut var = vec![0f64; dim];
    for r in &rows {
        for (i, &v) in r.iter().enumerate().take(dim) {
            var[i] += (f64::from(v) - mean[i]).powi(2) / n;
        }
    }
    BTreeMap::from([
        ("mean".to_string(), mean.iter().map(|&m| m as f32).collect()),
        ("std".to_string(), var.iter().map(|&v| v.sqrt() as f32).collect()),
        ("min".to_string(), min),
        ("max".to_string(), max),
    ])
}

/// The demonstrations' state and action statistics, which replace the checkpoint's.
fn data_stats(episodes: &[Episode]) -> Stats {
    Stats::from([
        (
            STATE_FEATURE.to_string(),
            feature_stats(episodes.iter().flat_map(|e| &e.states)),
        ),
        (
            "action".to_string(),
            feature_stats(episodes.iter().flat_map(|e| &e.actions)),
        ),
    ])
}

/// Frame `t` of `ep` as a training sample: its observation and the `chunk` actions from it (past the
/// episode end the last action repeats, flagged as padding so the loss ignores it).
fn train_sample(ep: &Episode, t: usize, cameras: &CameraMap, chunk: usize) -> Result<TrainSample> {
    let mut obs = RawSample {
        task: ep.instruction.clone(),
        ..RawSample::default()
    };
    obs.vectors
        .insert(STATE_FEATURE.to_string(), ep.states[t].clone());
    for (key, feature) in cameras {
        let frame = ep.cameras.get(key).and_then(|f| f.get(t)).ok_or_else(|| {
            ExperimentError::Invalid(format!("episode {} has no `{key}` frame {t}", ep.index))
        })?;
        let image = ChwImage::from_rgb8(frame.height() as usize, frame.width() as usize, frame.as_raw())
            .map_err(policy_err(format!("episode {} frame {t}", ep.index)))?;
        obs.images.insert(feature.clone(), image);
    }
    let last = ep.len() - 1;
    Ok(TrainSample {
        obs,
        actions: (0..chunk)
            .flat_map(|k| ep.actions[(t + k).min(last)].clone())
            .collect(),
        action_is_pad: (0..chunk).map(|k| t + k > last).collect(),
    })
}

/// A SmolVLA policy seeing the simulator's cameras under its own feature names.
struct RenamedCameras<'a> {
    policy: &'a mut SmolVlaPolicy,
    cameras: &'a CameraMap,
}

impl Policy for RenamedCameras<'_> {
    fn action_dim(&self) -> usize {
        self.policy.action_dim()
    }

    fn act(&mut self, observation: &Observation) -> std::result::Result<Vec<Vec<f32>>, PolicyError> {
        let mut observation = observation.clone();
        for image in &mut observation.images {
            if let Some(feature) = self.cameras.get(&image.key) {
                image.key = feature.clone();
            }
        }
        self.policy.act(&observation)
    }

    fn reset(&mut self) {
        self.policy.reset();
    }
}

/// One episode of a SmolVLA policy in the simulator from scene `seed` (its chunks executed in full), the
/// simulator cameras (the keys of `cameras`) feeding the checkpoint features they map to.
pub fn smolvla_rollout(
    env: &mut So101Env,
    policy: &mut SmolVlaPolicy,
    cameras: &CameraMap,
    seed: u64,
    opts: RolloutOptions,
) -> std::result::Result<Rollout, DriveError> {
    drive_smolvla(policy, cameras, seed, None, |driver| {
        let mut act = |obs: &toprl_envs::sim::SimObservation, instruction: &str| driver.act(obs, instruction);
        rollout(env, ActionSource::Policy(&mut act), seed, opts)
    })
}

/// One episode of a SmolVLA policy in any [`Environment`], each chunk offset by `exploration = Some((std,
/// seed))` as [`ChunkDriver::with_exploration`] does (AWR's rollouts).
pub fn smolvla_rollout_exploring(
    env: &mut dyn Environment,
    policy: &mut SmolVlaPolicy,
    cameras: &CameraMap,
    seed: u64,
    opts: RolloutOptions,
    exploration: Option<(f32, u64)>,
) -> std::result::Result<EpisodeRollout, DriveError> {
    drive_smolvla(policy, cameras, seed, exploration, |driver| {
        let mut act = |obs: &EnvObservation, instruction: &str| driver.act(obs, instruction);
        env_rollout(env, &mut act, seed, opts)
    })
}

/// Runs `episode` with a [`ChunkDriver`] over the SmolVLA policy (seeded by `seed`, cameras renamed to
/// the checkpoint's features); a policy failure inside the episode is returned as the error.
fn drive_smolvla<R, E: Into<DriveError>>(
    policy: &mut SmolVlaPolicy,
    cameras: &CameraMap,
    seed: u64,
    exploration: Option<(f32, u64)>,
    episode: impl FnOnce(&mut ChunkDriver<'_>) -> std::result::Result<R, E>,
) -> std::result::Result<R, DriveError> {
    policy.set_seed(seed);
    let mut renamed = RenamedCameras { policy, cameras };
    let mut driver = ChunkDriver::new(
        &mut renamed,
        cameras.keys().cloned().collect(),
        vec![STATE_FEATURE.to_string()],
    );
    if let Some((std, noise_seed)) = exploration {
        driver = driver.with_exploration(std, noise_seed);
    }
    let r = episode(&mut driver).map_err(Into::into)?;
    match driver.error.take() {
        Some(e) => Err(e.into()),
        None => Ok(r),
    }
}

/// Success rate and mean return over the evaluation scenes of `seed` (the same scenes as other policies),
/// in simulation or on the `[robot]` arm; NaN for what the environment cannot tell (the arm's return, and
/// its success unless the operator or TOPReward judges it, see [`crate::operated_env`]).
fn evaluate(
    policy: &mut SmolVlaPolicy,
    sim: &SimConfig,
    config: &ExperimentConfig,
    seed: u64,
    run_opts: &RunOptions,
) -> Result<(f64, f64)> {
    let cameras = camera_map(config);
    let mut env = crate::experiment::open_env(config, sim, true, run_opts)?;
    let (mut successes, mut total) = (Some(0usize), Some(0.0));
    for i in 0..config.eval.episodes as usize {
        let opts = RolloutOptions {
            keep_frames: false,
            index: i,
        };
        let r = smolvla_rollout_exploring(env.as_mut(), policy, &cameras, eval_seed(seed, i), opts, None)
            .map_err(drive_err(format!("evaluation episode {i}")))?;
        successes = successes.zip(r.success).map(|(n, s)| n + usize::from(s));
        total = total.zip(r.total_reward).map(|(sum, r)| sum + r);
    }
    let n = f64::from(config.eval.episodes.max(1));
    Ok((
        successes.map_or(f64::NAN, |s| s as f64 / n),
        total.map_or(f64::NAN, |t| t / n),
    ))
}

/// One SmolVLA arm x seed in training: the fine-tuner, LeRobot's learning-rate schedule, the frozen-VLM
/// context cache, and what the run has done (the same [`RunProgress`] the native arms keep).
pub(crate) struct SmolVlaRun<'c> {
    ctx: RunContext<'c>,
    tuner: SmolVlaFinetuner,
    schedule: CosineDecayWithWarmup,
    cameras: CameraMap,
    /// Encoded image + language context per frame key `(episode << 32) | frame` (frozen VLM only).
    cache: Option<HashMap<u64, ContextCache>>,
    /// State statistics of the demonstrations, for the AWR value baseline.
    state_norm: Normalizer,
    last_eval: Option<(f64, f64)>,
    clock: Instant,
}

impl<'c> SmolVlaRun<'c> {
    /// Load `pretrained` for `arm` (or, resuming, the arm's checkpoint), apply the experiment's freezing and schedule options (saved into
    /// the checkpoint's config as LeRobot's CLI would) and replace the normalisation statistics with
    /// the demonstrations'.
    #[allow(clippy::too_many_arguments)]
    fn start(
        config: &'c ExperimentConfig,
        sim: &'c SimConfig,
        data: &Samples<'_>,
        arm: &ArmConfig,
        seed: u64,
        opts: &'c RunOptions,
        pretrained: &Path,
    ) -> Result<Self> {
        let device = config
            .train
            .policy_device()
            .map_err(policy_err("[train] backend / device"))?;
        let dir = run_dir(&opts.out, &arm.name, seed);
        let checkpoint = dir.join("checkpoint");
        let progress_path = checkpoint.join(PROGRESS_FILE);
        // `--resume` continues from the arm's last checkpoint (weights, AdamW moments, noise stream,
        // progress); otherwise, or before its first checkpoint, it starts from `pretrained`.
        let resuming = opts.resume && progress_path.is_file() && checkpoint.join(TRAINING_STATE_DIR).is_dir();
        let (mut tuner, progress) = if resuming {
            let bytes = std::fs::read(&progress_path).map_err(|source| ExperimentError::Io {
                what: format!("reading {}", progress_path.display()),
                source,
            })?;
            let progress: RunProgress = serde_json::from_slice(&bytes)
                .map_err(|e| ExperimentError::Invalid(format!("{}: {e}", progress_path.display())))?;
            check_progress(config, &arm.name, &progress, &progress_path)?;
            tracing::info!(
                arm = arm.name,
                seed,
                step = progress.step,
                "resuming from checkpoint"
            );
            let tuner = SmolVlaFinetuner::resume(&checkpoint, config.train.lr, seed, &device)
                .map_err(policy_err(format!("resuming {}", checkpoint.display())))?;
            (tuner, progress)
        } else {
            let tuner = SmolVlaFinetuner::load(pretrained, config.train.lr, seed, &device).map_err(
                policy_err(format!("loading policy.pretrained {}", pretrained.display())),
            )?;
            (tuner, RunProgress::default())
        };
        // LeRobot's freezing and schedule options: the config's where given, else the checkpoint's.
        let p = &config.policy;
        let cfg = &mut tuner.policy.model_config;
        for (key, value, slot) in [
            (
                "freeze_vision_encoder",
                p.freeze_vision_encoder,
                &mut cfg.freeze_vision_encoder,
            ),
            (
                "train_expert_only",
                p.train_expert_only,
                &mut cfg.train_expert_only,
            ),
            ("train_state_proj", p.train_state_proj, &mut cfg.train_state_proj),
        ] {
            if let Some(v) = value {
                *slot = v;
                tuner.policy.folder.config.set_raw(key, Value::Bool(v));
            }
        }
        for (key, value, slot) in [
            (
                "scheduler_warmup_steps",
                p.scheduler_warmup_steps,
                &mut cfg.scheduler_warmup_steps,
            ),
            (
                "scheduler_decay_steps",
                p.scheduler_decay_steps,
                &mut cfg.scheduler_decay_steps,
            ),
        ] {
            if let Some(v) = value {
                *slot = v;
                tuner.policy.folder.config.set_raw(key, Value::from(v));
            }
        }
        if let Some(v) = p.scheduler_decay_lr {
            cfg.scheduler_decay_lr = v;
            tuner
                .policy
                .folder
                .config
                .set_raw("scheduler_decay_lr", Value::from(v));
        }
        // The experiment's lr is the peak (LeRobot's optimizer_lr), recorded with the folder.
        cfg.optimizer_lr = config.train.lr;
        tuner
            .policy
            .folder
            .config
            .set_raw("optimizer_lr", Value::from(config.train.lr));
        let cfg = tuner.policy.model_config.clone();
        tuner.policy.model = tuner.policy.model.clone().with_lerobot_trainability(&cfg);
        tuner.replace_stats(&data_stats(data.episodes()));
        // LeRobot scales the schedule to the run's optimiser steps (BC plus AWR).
        let total = crate::experiment::total_policy_steps(config, arm);
        let schedule = CosineDecayWithWarmup::from_config(&cfg, None, total as usize);
        let tb = EventWriter::create(
            &opts
                .out
                .join("tensorboard")
                .join(&arm.name)
                .join(format!("seed-{seed}")),
        )?;
        Ok(Self {
            ctx: RunContext {
                config,
                sim,
                opts,
                arm: arm.name.clone(),
                seed,
                dir,
                progress,
                tb,
            },
            tuner,
            schedule,
            cameras: camera_map(config),
            // With the VLM frozen a frame's image + language context never changes: encode it once
            // and train the state token and the expert only (`step_cached`).
            cache: cfg.train_expert_only.then(HashMap::new),
            state_norm: data.normalizer()?,
            last_eval: None,
            clock: Instant::now(),
        })
    }
}

impl<'c> AwrLearner<'c> for SmolVlaRun<'c> {
    fn ctx(&self) -> &RunContext<'c> {
        &self.ctx
    }
    fn ctx_mut(&mut self) -> &mut RunContext<'c> {
        &mut self.ctx
    }
    fn state_normalizer(&self) -> Result<Normalizer> {
        Ok(self.state_norm.clone())
    }

    fn rollout(
        &mut self,
        env: &mut dyn Environment,
        seed: u64,
        opts: RolloutOptions,
        exploration: Option<(f32, u64)>,
    ) -> std::result::Result<EpisodeRollout, DriveError> {
        smolvla_rollout_exploring(
            env,
            &mut self.tuner.policy,
            &self.cameras,
            seed,
            opts,
            exploration,
        )
    }

    /// Rollout frames are new: their cached contexts go (the demonstrations' stay, same keys).
    fn new_buffer(&mut self, demos: usize) {
        if let Some(cache) = &mut self.cache {
            cache.retain(|key, _| (key >> 32) < demos as u64);
        }
    }

    /// One weighted flow-matching step (`E[w * loss]`) on frames drawn uniformly from `data` (the batch
    /// of step k depends only on (seed, k)) at LeRobot's scheduled learning rate.
    fn train_step(&mut self, data: &Samples<'_>, weights: &[Vec<f32>]) -> Result<f32> {
        let step = self.ctx.progress.step;
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.ctx.seed ^ (u64::from(step) << 20) ^ 0x736d_6f6c_7600_0000);
        let (positions, episodes) = (data.positions(), data.episodes());
        let size = self.ctx.config.train.batch_size;
        let chunk = self.tuner.policy.chunk_size();
        let (mut samples, mut w, mut keys) = (
            Vec::with_capacity(size),
            Vec::with_capacity(size),
            Vec::with_capacity(size),
        );
        for _ in 0..size {
            let (e, t) = positions[rng.random_range(0..positions.len())];
            samples.push(train_sample(&episodes[e], t, &self.cameras, chunk)?);
            w.push(weights[e][t]);
            keys.push(((e as u64) << 32) | t as u64);
        }
        let lr = self.schedule.lr(step as usize);
        self.tuner.lr = lr;
        let loss = match &mut self.cache {
            Some(cache) => {
                let loss = self.tuner.step_cached(&samples, &w, &keys, cache);
                let held: usize = cache.values().map(ContextCache::bytes).sum();
                if held > CONTEXT_CACHE_BYTES {
                    cache.clear();
                }
                loss
            }
            None => self.tuner.step(&samples, &w),
        }
        .map_err(policy_err(format!("training step {step}")))?;
        self.ctx.progress.step += 1;
        if step.is_multiple_of(10) {
            self.ctx.tb.scalar("train/loss", u64::from(step), loss)?;
            let mean_w = w.iter().sum::<f32>() / w.len() as f32;
            self.ctx.tb.scalar("train/weight_mean", u64::from(step), mean_w)?;
            self.ctx.tb.scalar("train/lr", u64::from(step), lr as f32)?;
        }
        Ok(loss)
    }

    /// Evaluate (in simulation or on the arm) and write the LeRobot checkpoint with `progress.json`, `task.json` and
    /// `extra` inside, as one folder renamed into place.
    fn evaluate_and_save(&mut self, extra: &ExtraFiles<'_>) -> Result<f64> {
        let (success, mean_return) = evaluate(
            &mut self.tuner.policy,
            self.ctx.sim,
            self.ctx.config,
            self.ctx.seed,
            self.ctx.opts,
        )?;
        let done = u64::from(self.ctx.progress.step);
        // Unknown on the arm without a success judge: neither logged nor put on the curve.
        if !success.is_nan() {
            self.ctx.tb.scalar("eval/success", done, success as f32)?;
            self.ctx.progress.curve.push((self.ctx.progress.step, success));
        }
        if !mean_return.is_nan() {
            self.ctx.tb.scalar("eval/return", done, mean_return as f32)?;
        }
        self.ctx.tb.flush()?;
        self.ctx.progress.wall_time_s += self.clock.elapsed().as_secs_f64();
        self.clock = Instant::now();
        let progress = serde_json::to_vec_pretty(&self.ctx.progress)
            .map_err(|e| ExperimentError::Invalid(e.to_string()))?;
        let task = serde_json::json!({ "task": self.ctx.config.task.name }).to_string();
        let checkpoint = self.ctx.dir.join("checkpoint");
        self.tuner
            .save_training(&checkpoint, |tmp| {
                for (file, bytes) in [(PROGRESS_FILE, progress.as_slice()), (TASK_FILE, task.as_bytes())] {
                    let path = tmp.join(file);
                    std::fs::write(&path, bytes).map_err(|source| PolicyError::Io { path, source })?;
                }
                extra(tmp)
            })
            .map_err(policy_err(format!("saving {}", checkpoint.display())))?;
        self.last_eval = Some((success, mean_return));
        Ok(success)
    }
}

/// Fine-tune the checkpoint in `pretrained` for one arm and seed: the arm's BC steps (weighted
/// flow-matching, LeRobot's schedule), evaluating and writing the LeRobot checkpoint every `eval_every`
/// steps and at the end, then for `algorithm = "awr"` the online AWR iterations ([`crate::awr`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_one(
    config: &ExperimentConfig,
    sim: &SimConfig,
    data: &Samples<'_>,
    weights: &[Vec<f32>],
    arm: &ArmConfig,
    seed: u64,
    opts: &RunOptions,
    pretrained: &Path,
    awr_inputs: Option<AwrInputs<'_, '_, '_>>,
) -> Result<SeedResult> {
    let mut run = SmolVlaRun::start(config, sim, data, arm, seed, opts, pretrained)?;
    let steps = arm.steps.unwrap_or(config.train.steps);
    let progress = bar(opts, u64::from(steps), "training");
    progress.set_message(format!("{} seed {seed}", arm.name));
    progress.set_position(u64::from(run.ctx.progress.step.min(steps)));
    while run.ctx.progress.step < steps {
        run.train_step(data, weights)?;
        progress.inc(1);
        let done = run.ctx.progress.step;
        if done % config.train.eval_every == 0 || done == steps {
            run.evaluate_and_save(&|_| Ok(()))?;
        }
    }
    progress.finish_and_clear();
    if arm.algorithm == Algorithm::Awr {
        let inputs = awr_inputs.ok_or_else(|| {
            ExperimentError::Invalid(format!("arm `{}`: AWR inputs were not prepared", arm.name))
        })?;
        crate::awr::improve(&mut run, inputs)?;
    }
    let (success, mean_return) = match run.last_eval {
        Some(r) => r,
        None => evaluate(&mut run.tuner.policy, sim, config, seed, opts)?,
    };
    tracing::info!(arm = arm.name, seed, success, "run finished");
    Ok(SeedResult {
        seed,
        success,
        episodes: config.eval.episodes,
        mean_return,
        wall_time_s: run.ctx.progress.wall_time_s + run.clock.elapsed().as_secs_f64(),
        last_k_mean: crate::stats::last_k_mean(&run.ctx.progress.curve, config.train.last_k as usize),
        curve: run.ctx.progress.curve,
        weights: None,
        reward_voc: None,
        noise_sigma: None,
    })
}

/// `so101 sim`'s view of a SmolVLA folder: the simulator cameras and the image features they feed,
/// from `renames` (`SIM=FEATURE`, LeRobot's rename_map) where given, else the folder's own
/// `observation.images.<camera>` names, which must then be simulator cameras.
pub fn sim_cameras(
    policy: &SmolVlaPolicy,
    dir: &Path,
    renames: &[String],
) -> std::result::Result<(Vec<String>, CameraMap), String> {
    let features = policy.model_config.image_features();
    let mut pairs = Vec::new();
    if renames.is_empty() {
        for feature in &features {
            let camera = feature.strip_prefix("observation.images.").unwrap_or(feature);
            pairs.push((camera.to_string(), feature.clone()));
        }
    } else {
        for r in renames {
            let (camera, feature) = r.split_once('=').ok_or_else(|| {
                format!("--camera {r}: expected SIM=FEATURE, e.g. front=observation.images.camera1")
            })?;
            pairs.push((camera.to_string(), feature.to_string()));
        }
    }
    let sim = toprl_envs::sim::env::CAMERAS;
    if let Some((bad, _)) = pairs.iter().find(|(c, _)| !sim.contains(&c.as_str())) {
        return Err(format!(
            "`{bad}` is not a simulator camera ({}); map the folder's cameras {features:?} with --camera SIM=FEATURE",
            sim.join(", ")
        ));
    }
    let map: CameraMap = pairs.iter().map(|(c, f)| (camera_key(c), f.clone())).collect();
    if map.len() != pairs.len() {
        return Err("a simulator camera is given twice in --camera".into());
    }
    check_features(&policy.model_config, &map, dir)?;
    Ok((pairs.into_iter().map(|(c, _)| c).collect(), map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_population_mean_std_min_max_as_lerobots() {
        let rows = [vec![1.0, -2.0], vec![3.0, 2.0]];
        let s = feature_stats(rows.iter());
        assert_eq!(s["mean"], [2.0, 0.0]);
        assert_eq!(s["std"], [1.0, 2.0]);
        assert_eq!(s["min"], [1.0, -2.0]);
        assert_eq!(s["max"], [3.0, 2.0]);
    }

    #[test]
    fn hub_ids_and_folders_are_told_apart() {
        assert!(looks_like_hub_id("lerobot/smolvla_base"));
        for folder in [
            "policies/fixtures/smolvla/so101_tiny",
            "./a/b",
            "/abs/model",
            "model/",
        ] {
            assert!(!looks_like_hub_id(folder), "{folder}");
        }
    }
}
