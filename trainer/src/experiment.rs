//! One experiment, top to bottom: demonstrations -> per-frame weights per arm -> weighted behaviour
//! cloning -> evaluation in simulation -> results table, plots and TensorBoard logs.
//!
//! Layout of the output directory (`runs/<config stem>/` by default):
//! ```text
//! experiment.toml                      the resolved config this run was started with
//! runs/<arm>/seed-<s>/checkpoint/      latest policy checkpoint: weights, policy.json, AdamW moments,
//!                                      progress.json (steps and evaluation curve so far) and, for AWR
//!                                      arms, value/ (the baseline); replaced as one directory
//! runs/<arm>/seed-<s>/result.json      written once the run is finished; `--resume` skips it
//! tensorboard/<arm>/seed-<s>/          TensorBoard event files
//! plots/success.png, plots/progress_examples.png
//! results.md, results.json
//! ```
//! Every random choice derives from the seed: demonstrations (expert noise and scene randomisation),
//! network initialisation, the mini-batch drawn at each step, and evaluation scenes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use toprl_envs::episode::Episode;
use toprl_envs::sim::{BuiltinPolicy, RolloutOptions, SimConfig, So101Env, Task, parallel_rollouts};
use toprl_policies::{Batch, LoadedPolicy, Normalizer, ObsBatch, PolicyConfig, Trainer};
use toprl_rewards::metrics::WeightParams;
use toprl_rewards::score::EpisodeScore;

use crate::arm_weights::{ArmLabels, LabelSettings, frame_weights};
use crate::atomic::write_atomic;
use crate::awr::RunContext;
use crate::config::{Algorithm, ArmConfig, DataConfig, ExperimentConfig, RewardSource};
use crate::driver::{
    DriveError, ENVIRONMENT_STATE_FEATURE, STATE_FEATURE, camera_key, policy_rollout, policy_state,
};
use crate::plot::{Bar, Chart, Series, render_grid, save_bars, save_grid};
use crate::results::{ArmResult, Results, SeedResult};
use crate::run_folder::StartMode;
use crate::tensorboard::EventWriter;
use crate::weighting::{WeightStats, WeightingParams, learning_rate, self_normalise};

/// Why an experiment stopped. Each names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("simulation ({what}): {source}")]
    Sim {
        what: String,
        source: toprl_envs::sim::SimError,
    },
    #[error("environment ({what}): {source}")]
    Env {
        what: String,
        source: toprl_envs::environment::EnvError,
    },
    #[error("dataset {path}: {source}")]
    Dataset {
        path: String,
        source: toprl_envs::dataset::DatasetError,
    },
    #[error("policy ({what}): {source}")]
    Policy {
        what: String,
        source: toprl_policies::PolicyError,
    },
    #[error("labelling arm `{arm}`: {source}")]
    Label {
        arm: String,
        source: crate::arm_weights::LabelError,
    },
    #[error("reward model: {0}")]
    Reward(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tensorboard(#[from] crate::tensorboard::TensorboardError),
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    #[error(transparent)]
    Results(#[from] crate::results::ResultsError),
    #[error(transparent)]
    RunFolder(#[from] crate::run_folder::RunFolderError),
}

type Result<T> = std::result::Result<T, ExperimentError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExperimentError {
    let what = what.into();
    move |source| ExperimentError::Io { what, source }
}

pub(crate) fn drive_err(what: impl Into<String>) -> impl FnOnce(DriveError) -> ExperimentError {
    let what = what.into();
    move |e| match e {
        DriveError::Sim(source) => ExperimentError::Sim { what, source },
        DriveError::Env(source) => ExperimentError::Env { what, source },
        DriveError::Policy(source) => ExperimentError::Policy { what, source },
    }
}

/// Feature keys of the config's cameras, in order.
pub(crate) fn camera_keys(cameras: &[String]) -> Vec<String> {
    cameras.iter().map(|c| camera_key(c)).collect()
}

pub(crate) fn sim_err(what: impl Into<String>) -> impl FnOnce(toprl_envs::sim::SimError) -> ExperimentError {
    let what = what.into();
    move |source| ExperimentError::Sim { what, source }
}

pub(crate) fn policy_err(
    what: impl Into<String>,
) -> impl FnOnce(toprl_policies::PolicyError) -> ExperimentError {
    let what = what.into();
    move |source| ExperimentError::Policy { what, source }
}

/// Scores episodes with TOPReward for `topreward` arms: returns one score per episode and the number of
/// original frames between two sampled frames. The binary supplies the real Qwen3-VL scorer.
pub type EpisodeScorer<'a> =
    dyn FnMut(&[Episode]) -> std::result::Result<Vec<(EpisodeScore, f64)>, String> + 'a;

/// Each episode's TOPReward score and the frame stride it was sampled at.
pub(crate) type EpisodeScores = Vec<(EpisodeScore, f64)>;

/// TOPReward scores of `episodes` from the loaded reward model.
pub(crate) fn score_with(
    scorer: Option<&mut EpisodeScorer<'_>>,
    episodes: &[Episode],
) -> Result<Vec<(EpisodeScore, f64)>> {
    let scorer = scorer.ok_or_else(|| {
        ExperimentError::Reward("an arm uses `topreward` but no reward model was loaded".into())
    })?;
    scorer(episodes).map_err(ExperimentError::Reward)
}

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Continue the run in `out` (refused when its config or code version differ).
    pub resume: bool,
    /// Start over in `out`, moving a previous run there aside (see [`crate::run_folder`]).
    pub restart: bool,
    /// Threads for simulated rollouts. Default: available parallelism.
    pub threads: usize,
    /// Show progress bars.
    pub progress: bool,
    /// The reward model's success score and its threshold, for `[robot] success = "topreward"` (the binary
    /// shares the loaded reward model and reads `success_calibration` once, before the run). `None`
    /// elsewhere.
    pub arm_success: Option<crate::operated_env::ArmDetector>,
}

/// What a run has done so far, saved beside its checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RunProgress {
    /// Policy gradient steps taken (BC, then AWR).
    pub step: u32,
    /// (step, evaluation success) so far.
    pub curve: Vec<(u32, f64)>,
    pub wall_time_s: f64,
    /// AWR iterations finished (0 for BC arms).
    #[serde(default)]
    pub awr_iterations: u32,
}

/// Run every arm x seed of `config` and write the results into `opts.out`.
pub fn run(
    config: &ExperimentConfig,
    opts: &RunOptions,
    scorer: Option<&mut EpisodeScorer<'_>>,
) -> Result<Results> {
    let out = &opts.out;
    // The same checks as `train --check`, before anything is written. A SmolVLA checkpoint is located
    // (downloaded when allowed) and checked here too.
    let source = Path::new(config.name.as_deref().unwrap_or("experiment"));
    config
        .check_resources(source)
        .map_err(|e| ExperimentError::Invalid(e.to_string()))?;
    let smolvla = if config.policy.kind == crate::smolvla_arm::KIND {
        Some(crate::smolvla_arm::prepare(config)?)
    } else {
        policy_config(config)?;
        None
    };
    let resolved = toml::to_string_pretty(config).map_err(|e| ExperimentError::Invalid(e.to_string()))?;
    let mode = match (opts.resume, opts.restart) {
        (true, true) => {
            return Err(ExperimentError::Invalid(
                "--resume and --restart exclude each other".into(),
            ));
        }
        (true, false) => StartMode::Resume,
        (false, true) => StartMode::Restart,
        (false, false) => StartMode::Fresh,
    };
    // Held until this function returns: a second `train` on `out` is refused meanwhile.
    let folder = crate::run_folder::open(out, &resolved, mode)?;
    if let Some(moved) = &folder.moved_to {
        tracing::warn!(
            "--restart: the previous run in {} was moved to {} (delete it when it is no longer needed)",
            out.display(),
            moved.display()
        );
    }

    let task = parse_task(&config.task.name)?;
    let sim = sim_config(config, task);
    let name = config.name.clone().unwrap_or_else(|| "experiment".into());
    let mut scorer = scorer;
    let mut per_arm: BTreeMap<String, Vec<SeedResult>> = BTreeMap::new();
    let mut example_progress: Vec<Chart> = Vec::new();

    for &seed in &config.seeds {
        let pending: Vec<_> = config
            .arms
            .iter()
            .filter(|arm| !run_dir(out, &arm.name, seed).join("result.json").exists())
            .collect();
        if pending.is_empty() {
            for arm in &config.arms {
                per_arm
                    .entry(arm.name.clone())
                    .or_default()
                    .push(read_result(&run_dir(out, &arm.name, seed))?);
            }
            continue;
        }
        let (episodes, scores) = demonstrations(config, &sim, seed, opts, scorer.as_deref_mut())?;
        let successes = episodes.iter().filter(|e| e.success == Some(true)).count();
        tracing::info!(seed, episodes = episodes.len(), successes, "demonstrations ready");
        if example_progress.is_empty() {
            example_progress = progress_charts(&episodes, scores.as_deref());
        }

        let data = Samples::new(
            &episodes,
            &config.task.cameras,
            &state_features(config),
            config.policy.chunk,
        )?;
        for arm in &config.arms {
            let dir = run_dir(out, &arm.name, seed);
            let result = if dir.join("result.json").exists() {
                read_result(&dir)?
            } else {
                let settings = label_settings(config, arm, seed);
                let labels =
                    frame_weights(arm.reward, &episodes, scores.as_deref(), &settings).map_err(|source| {
                        ExperimentError::Label {
                            arm: arm.name.clone(),
                            source,
                        }
                    })?;
                let weight_stats = WeightStats::of(&labels.weights);
                log_weight_stats(&arm.name, seed, weight_stats.as_ref(), &labels);
                let weights = labels.weights;
                let awr_inputs = if arm.algorithm == Algorithm::Awr {
                    Some(AwrInputs {
                        demos: &episodes,
                        demo_signal: crate::awr::reward_signal(arm.reward, &episodes, scores.as_deref())
                            .map_err(|source| ExperimentError::Label {
                                arm: arm.name.clone(),
                                source,
                            })?,
                        reward: arm.reward,
                        scorer: scorer.as_deref_mut(),
                    })
                } else {
                    None
                };
                let mut result = match &smolvla {
                    Some(pretrained) => crate::smolvla_arm::train_one(
                        config, &sim, &data, &weights, arm, seed, opts, pretrained, awr_inputs,
                    )?,
                    None => train_one(config, &sim, &data, &weights, arm, seed, opts, awr_inputs)?,
                };
                result.weights = weight_stats;
                result.reward_voc = labels.reward_voc;
                result.noise_sigma = labels.noise_sigma;
                let json = serde_json::to_vec_pretty(&result)
                    .map_err(|e| ExperimentError::Invalid(e.to_string()))?;
                write_atomic(&dir.join("result.json"), &json)
                    .map_err(io(format!("writing {}", dir.display())))?;
                result
            };
            per_arm.entry(arm.name.clone()).or_default().push(result);
        }
    }

    let results = Results::new(
        name.clone(),
        config
            .reward_model
            .as_ref()
            .filter(|_| config.arms.iter().any(|a| a.reward == RewardSource::Topreward))
            .map(|r| r.model.clone()),
        config
            .arms
            .iter()
            .map(|arm| {
                ArmResult::from_seeds(
                    &arm.name,
                    arm.reward,
                    &describe_arm(config, arm),
                    per_arm.remove(&arm.name).unwrap_or_default(),
                )
            })
            .collect(),
    );
    results.write(out)?;
    save_grid(
        &out.join("plots/success.png"),
        &[success_chart(&name, &results)],
        1,
        (900, 540),
    )?;
    let bars: Vec<Bar> = results
        .arms
        .iter()
        .map(|arm| Bar {
            label: arm.name.clone(),
            value: arm.success_mean,
            error: arm.success_std,
        })
        .collect();
    save_bars(
        &out.join("plots/final_success.png"),
        &format!("{name}: final success (mean ± std over seeds)"),
        "success rate",
        &bars,
        (0.0, 1.05),
    )?;
    if let Some(chart) = crate::reward_quality::success_vs_voc_chart(&results) {
        save_grid(&out.join("plots/success_vs_voc.png"), &[chart], 1, (900, 540))?;
    }
    if !example_progress.is_empty() {
        save_grid(
            &out.join("plots/progress_examples.png"),
            &example_progress,
            2,
            (480, 320),
        )?;
    }
    Ok(results)
}

/// How much an arm's per-frame weights vary: with near-constant weights (ESS near 1) an arm is plain BC.
fn log_weight_stats(arm: &str, seed: u64, stats: Option<&WeightStats>, labels: &ArmLabels) {
    if let Some(s) = stats {
        tracing::info!(
            arm,
            seed,
            mean = s.mean,
            std = s.std,
            min = s.min,
            max = s.max,
            ess = s.ess,
            zero_fraction = s.zero_fraction,
            reward_voc = labels.reward_voc,
            noise_sigma = labels.noise_sigma,
            "per-frame weights"
        );
    }
}

/// The weighting settings of `arm`: `[train]` with the arm's overrides.
fn label_settings(config: &ExperimentConfig, arm: &ArmConfig, seed: u64) -> LabelSettings {
    let t = &config.train;
    LabelSettings {
        delta: t.delta,
        chunk: config.policy.chunk,
        weighting: WeightingParams {
            weighting: arm.weighting.unwrap_or(t.weighting),
            eq3: WeightParams {
                tau: t.tau,
                delta_max: t.delta_max,
                min_weight: t.min_weight,
            },
            kappa: t.kappa,
        },
        progress: t.progress,
        voc: arm.voc,
        seed,
    }
}

/// What an arm does, in words, for the results table.
fn describe_arm(config: &ExperimentConfig, arm: &ArmConfig) -> String {
    let bc_steps = arm.steps.unwrap_or(config.train.steps);
    let weighting = match arm.weighting.unwrap_or(config.train.weighting) {
        crate::weighting::Weighting::Eq3 => "Eq. 3",
        crate::weighting::Weighting::Rabc => "RA-BC",
    };
    let delta = match config.train.delta {
        crate::weighting::DeltaKind::Chunk => format!("chunk ({}) deltas", config.policy.chunk),
        crate::weighting::DeltaKind::Prefix => "prefix deltas".to_string(),
        crate::weighting::DeltaKind::Frame => "frame deltas".to_string(),
    };
    let signal = match arm.reward {
        RewardSource::None => "BC".to_string(),
        RewardSource::Sparse => "success-filtered BC".to_string(),
        RewardSource::Oracle => format!("{weighting}, true progress, {delta}"),
        RewardSource::OracleNoisy => format!(
            "{weighting}, true progress + noise to VOC {}, {delta}",
            arm.voc.unwrap_or(f64::NAN)
        ),
        RewardSource::TimeBias => format!("{weighting}, progress = time, {delta}"),
        RewardSource::Topreward => format!("{weighting}, TOPReward, {delta}"),
    };
    let described = match arm.algorithm {
        Algorithm::RewardAlignedBc => format!("{signal}, {bc_steps} steps"),
        Algorithm::Awr if arm.reward == RewardSource::None => format!(
            "{bc_steps} BC + {} AWR steps, zero advantages",
            config.awr.iterations * config.awr.policy_steps
        ),
        Algorithm::Awr => format!(
            "{signal} {bc_steps} steps + {} AWR steps",
            config.awr.iterations * config.awr.policy_steps
        ),
    };
    match config.train.ema_decay {
        Some(decay) => format!("{described}, EMA {decay}"),
        None => described,
    }
}

/// Policy gradient steps an arm takes in all: its BC steps, plus the AWR iterations' for AWR arms.
pub(crate) fn total_policy_steps(config: &ExperimentConfig, arm: &ArmConfig) -> u32 {
    let bc = arm.steps.unwrap_or(config.train.steps);
    match arm.algorithm {
        Algorithm::Awr => bc + config.awr.iterations * config.awr.policy_steps,
        Algorithm::RewardAlignedBc => bc,
    }
}

/// The run's progress, saved inside its checkpoint directory.
pub(crate) const PROGRESS_FILE: &str = "progress.json";

pub(crate) fn run_dir(out: &Path, arm: &str, seed: u64) -> PathBuf {
    out.join("runs").join(arm).join(format!("seed-{seed}"))
}

fn read_result(dir: &Path) -> Result<SeedResult> {
    let path = dir.join("result.json");
    let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| ExperimentError::Invalid(format!("{}: {e}", path.display())))
}

/// The simulator task named in the config.
pub fn parse_task(name: &str) -> Result<Task> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| ExperimentError::Invalid(format!("unknown task `{name}`")))
}

fn sim_config(config: &ExperimentConfig, task: Task) -> SimConfig {
    SimConfig {
        task,
        image_size: config.task.image_size,
        cameras: if config.policy.kind == "gaussian" && !needs_frames(config) {
            Vec::new()
        } else {
            config.task.cameras.clone()
        },
        max_steps: config.task.max_steps.map(|s| s as usize),
        ..SimConfig::default()
    }
}

/// `[height, width]` of a toprl image policy's camera input (`act`, `flow`): the task's square image
/// size. `None` for state-only policies and for SmolVLA, which resizes (with padding, to 512x512)
/// itself and so is given frames at their native size.
pub(crate) fn policy_image_size(config: &ExperimentConfig) -> Option<[usize; 2]> {
    let size = config.task.image_size as usize;
    matches!(config.policy.kind.as_str(), "act" | "flow").then_some([size, size])
}

/// Whether camera frames must be kept in the demonstrations (image policies, the reward model).
fn needs_frames(config: &ExperimentConfig) -> bool {
    config.policy.kind != "gaussian" || config.arms.iter().any(|a| a.reward == RewardSource::Topreward)
}

/// Demonstrations for one seed, and their TOPReward scores when an arm uses them: scripted experts at
/// mixed noise in simulation, or a LeRobotDataset.
fn demonstrations(
    config: &ExperimentConfig,
    sim: &SimConfig,
    seed: u64,
    opts: &RunOptions,
    scorer: Option<&mut EpisodeScorer<'_>>,
) -> Result<(Vec<Episode>, Option<EpisodeScores>)> {
    let topreward = config.arms.iter().any(|a| a.reward == RewardSource::Topreward);
    match &config.data {
        DataConfig::Sim {
            episodes,
            noise_levels,
        } => {
            if noise_levels.is_empty() {
                return Err(ExperimentError::Invalid(
                    "data.noise_levels: expected at least one level".into(),
                ));
            }
            let bar = bar(opts, *episodes as u64, "demonstrations");
            let mut all: Vec<Option<Episode>> = vec![None; *episodes as usize];
            // Episode i uses noise level i mod L and the scene seed derived from (seed, i).
            for (level_index, &noise) in noise_levels.iter().enumerate() {
                let indices: Vec<usize> = (0..*episodes as usize)
                    .filter(|i| i % noise_levels.len() == level_index)
                    .collect();
                let seeds: Vec<u64> = indices.iter().map(|&i| demo_seed(seed, i)).collect();
                if seeds.is_empty() {
                    continue;
                }
                let rollouts = parallel_rollouts(
                    sim,
                    BuiltinPolicy::Scripted { noise },
                    &seeds,
                    opts.threads,
                    needs_frames(config),
                )
                .map_err(sim_err("demonstrations"))?;
                for (&i, r) in indices.iter().zip(rollouts) {
                    let mut episode = r.episode;
                    episode.index = i;
                    all[i] = Some(episode);
                    bar.inc(1);
                }
            }
            bar.finish_and_clear();
            let episodes: Vec<Episode> = all.into_iter().flatten().collect();
            let scores = if topreward {
                Some(score_with(scorer, &episodes)?)
            } else {
                None
            };
            Ok((episodes, scores))
        }
        DataConfig::Lerobot { path, .. } => {
            let dataset = toprl_envs::dataset::LeRobotDataset::open(path).map_err(|source| {
                ExperimentError::Dataset {
                    path: path.clone(),
                    source,
                }
            })?;
            // Only the cameras something reads are decoded: the policy's, resized to its input while
            // decoding, and the reward model's at native size, scored episode by episode and then
            // dropped (or resized, when the policy sees the same camera). Memory thus grows with the
            // policy's resolution, not the cameras'.
            let resize_to = policy_image_size(config);
            let policy_keys = if config.policy.kind == "gaussian" {
                Vec::new()
            } else {
                camera_keys(&config.task.cameras)
            };
            let resize = |frame: &image::RgbImage| match resize_to {
                Some([h, w]) => toprl_policies::resize_frame(frame, w as u32, h as u32),
                None => frame.clone(),
            };
            let reward_key = match (&config.reward_model, topreward) {
                (Some(rm), true) => Some(rm.camera.clone()),
                (None, true) => {
                    return Err(ExperimentError::Reward(
                        "an arm uses `topreward` but the config has no [reward_model]".into(),
                    ));
                }
                (_, false) => None,
            };
            let mut keys = policy_keys.clone();
            if let Some(key) = &reward_key
                && !keys.contains(key)
            {
                keys.push(key.clone());
            }
            let resize_now = |key: &str| {
                resize_to.is_some()
                    && policy_keys.iter().any(|k| k == key)
                    && reward_key.as_deref() != Some(key)
            };
            let bar = bar(opts, dataset.num_episodes() as u64, "loading dataset");
            let mut episodes = Vec::with_capacity(dataset.num_episodes());
            let mut scores = reward_key
                .as_ref()
                .map(|_| Vec::with_capacity(dataset.num_episodes()));
            let mut scorer = scorer;
            for i in 0..dataset.num_episodes() {
                let mut episode = dataset
                    .episode_with_cameras_mapped(i, &keys, |key, frame| {
                        if resize_now(key) { resize(&frame) } else { frame }
                    })
                    .map_err(|source| ExperimentError::Dataset {
                        path: path.clone(),
                        source,
                    })?;
                let env_dim = episode.environment_states.first().map(Vec::len);
                if config.policy.environment_state && env_dim != Some(toprl_envs::sim::ENVIRONMENT_STATE_DIM)
                {
                    return Err(ExperimentError::Invalid(format!(
                        "dataset {path}: policy.environment_state = true needs `{ENVIRONMENT_STATE_FEATURE}` \
                         of {} values (datasets recorded with `so101 sim --record` have it); episode {i} has {}",
                        toprl_envs::sim::ENVIRONMENT_STATE_DIM,
                        env_dim.map_or("none".to_string(), |d| format!("{d} values")),
                    )));
                }
                if let Some(action) = episode.actions.first()
                    && action.len() != toprl_envs::so101::NUM_JOINTS
                {
                    return Err(ExperimentError::Invalid(format!(
                        "dataset {path}: episode {i} has actions of size {}, the SO-101 policy expects {}",
                        action.len(),
                        toprl_envs::so101::NUM_JOINTS
                    )));
                }
                if let (Some(key), Some(scores)) = (&reward_key, scores.as_mut()) {
                    scores.extend(score_with(scorer.as_deref_mut(), std::slice::from_ref(&episode))?);
                    if policy_keys.contains(key) {
                        if resize_to.is_some()
                            && let Some(frames) = episode.cameras.get_mut(key)
                        {
                            for frame in frames.iter_mut() {
                                *frame = resize(frame);
                            }
                        }
                    } else {
                        episode.cameras.remove(key);
                    }
                }
                episodes.push(episode);
                bar.inc(1);
            }
            bar.finish_and_clear();
            Ok((episodes, scores))
        }
    }
}

fn demo_seed(seed: u64, episode: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(episode as u64)
}

/// Scene seed of AWR rollout `episode` in `iteration`: disjoint from demonstration and evaluation scenes.
pub(crate) fn awr_seed(seed: u64, iteration: u32, episode: usize) -> u64 {
    seed.wrapping_mul(1_000_003)
        .wrapping_add(1_000_000 + 10_000 * u64::from(iteration) + episode as u64)
}

pub(crate) fn eval_seed(seed: u64, episode: usize) -> u64 {
    // Disjoint from demonstration scenes: offset far beyond any episode count.
    seed.wrapping_mul(1_000_003)
        .wrapping_add(500_000 + episode as u64)
}

pub(crate) fn bar(opts: &RunOptions, len: u64, msg: &'static str) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg);
    bar
}

/// Every frame of every episode as a training sample: its observation and the action chunk after it.
pub(crate) struct Samples<'a> {
    episodes: &'a [Episode],
    index: Vec<(usize, usize)>,
    camera_keys: Vec<String>,
    state_features: Vec<String>,
    chunk: usize,
}

impl<'a> Samples<'a> {
    pub(crate) fn new(
        episodes: &'a [Episode],
        cameras: &[String],
        state_features: &[String],
        chunk: usize,
    ) -> Result<Self> {
        let index: Vec<(usize, usize)> = episodes
            .iter()
            .enumerate()
            .flat_map(|(e, ep)| (0..ep.len()).map(move |t| (e, t)))
            .collect();
        if index.is_empty() {
            return Err(ExperimentError::Invalid(
                "no demonstration frames to train on".into(),
            ));
        }
        Ok(Self {
            episodes,
            index,
            camera_keys: camera_keys(cameras),
            state_features: state_features.to_vec(),
            chunk,
        })
    }

    /// The policy's state input at frame `t` of episode `e`.
    pub(crate) fn state(&self, e: usize, t: usize) -> Result<Vec<f32>> {
        let ep = &self.episodes[e];
        let env_state = ep.environment_states.get(t).map(Vec::as_slice);
        policy_state(&ep.states[t], env_state, &self.state_features)
            .map_err(policy_err(format!("episode {} frame {t}", ep.index)))
    }

    /// Every frame's state input, row-major, in the order of [`Samples::positions`].
    pub(crate) fn all_states(&self) -> Result<Vec<f32>> {
        let mut states = Vec::new();
        for &(e, t) in &self.index {
            states.extend(self.state(e, t)?);
        }
        Ok(states)
    }

    /// (episode, frame) of every sample.
    pub(crate) fn positions(&self) -> &[(usize, usize)] {
        &self.index
    }

    /// The episodes the samples are drawn from.
    pub(crate) fn episodes(&self) -> &'a [Episode] {
        self.episodes
    }

    pub(crate) fn normalizer(&self) -> Result<Normalizer> {
        let states = self.all_states()?;
        let dim = states.len() / self.index.len();
        let actions: Vec<f32> = self
            .episodes
            .iter()
            .flat_map(|e| e.actions.iter().flatten().copied())
            .collect();
        Normalizer::fit(&states, dim, &actions, toprl_envs::so101::NUM_JOINTS)
            .map_err(policy_err("normalisation statistics"))
    }

    /// The mini-batch for one step: `size` frames drawn uniformly, with their per-frame weights.
    pub(crate) fn batch(
        &self,
        rng: &mut ChaCha8Rng,
        size: usize,
        weights: &[Vec<f32>],
        images: bool,
    ) -> Result<(Batch, Vec<f32>)> {
        let dim = toprl_envs::so101::NUM_JOINTS;
        let picks: Vec<(usize, usize)> = (0..size)
            .map(|_| self.index[rng.random_range(0..self.index.len())])
            .collect();
        let mut states = Vec::new();
        let mut actions = Vec::with_capacity(size * self.chunk * dim);
        let mut mask = Vec::with_capacity(size * self.chunk);
        let mut rgb = Vec::new();
        let mut instructions = Vec::with_capacity(size);
        let mut w = Vec::with_capacity(size);
        let mut hw = (0, 0);
        for &(e, t) in &picks {
            let ep = &self.episodes[e];
            states.extend(self.state(e, t)?);
            for k in 0..self.chunk {
                // Past the episode end the last action is repeated and masked out of the loss.
                let j = (t + k).min(ep.len() - 1);
                actions.extend_from_slice(&ep.actions[j]);
                mask.push(if t + k < ep.len() { 1.0 } else { 0.0 });
            }
            if images {
                for key in &self.camera_keys {
                    let frame = ep.cameras.get(key).and_then(|f| f.get(t)).ok_or_else(|| {
                        ExperimentError::Invalid(format!("episode {} has no `{key}` frame {t}", ep.index))
                    })?;
                    hw = (frame.height() as usize, frame.width() as usize);
                    rgb.extend_from_slice(frame.as_raw());
                }
            }
            instructions.push(ep.instruction.clone());
            w.push(weights[e][t]);
        }
        let state_dim = states.len() / size.max(1);
        let mut obs = ObsBatch::new(states, state_dim).map_err(policy_err("batch"))?;
        if images {
            obs = obs
                .with_images(rgb, self.camera_keys.len(), hw.0, hw.1)
                .map_err(policy_err("batch"))?;
        }
        obs = obs.with_instructions(instructions).map_err(policy_err("batch"))?;
        let batch = Batch::new(obs, actions, self.chunk, dim)
            .and_then(|b| b.with_action_mask(mask))
            .map_err(policy_err("batch"))?;
        Ok((batch, w))
    }
}

/// The observation vectors the policy's state input is made of, by LeRobot feature name.
pub fn state_features(config: &ExperimentConfig) -> Vec<String> {
    let mut features = vec![STATE_FEATURE.to_string()];
    if config.policy.environment_state {
        features.push(ENVIRONMENT_STATE_FEATURE.to_string());
    }
    features
}

/// The policy config from the experiment's `[policy]` table and its `network` overrides.
pub fn policy_config(config: &ExperimentConfig) -> Result<PolicyConfig> {
    use toprl_policies::act::ActConfig;
    use toprl_policies::flow::FlowConfig;
    use toprl_policies::gaussian::GaussianMlpConfig;
    let dim = toprl_envs::so101::NUM_JOINTS;
    let state_dim = dim
        + if config.policy.environment_state {
            toprl_envs::sim::ENVIRONMENT_STATE_DIM
        } else {
            0
        };
    let cameras = config.task.cameras.len();
    let base = match config.policy.kind.as_str() {
        "gaussian" => PolicyConfig::Gaussian(
            GaussianMlpConfig::new(state_dim, dim).with_chunk_size(config.policy.chunk),
        ),
        "act" => PolicyConfig::Act(
            ActConfig::new(state_dim, dim)
                .with_cameras(cameras)
                .with_chunk_size(config.policy.chunk),
        ),
        "flow" => PolicyConfig::Flow(
            FlowConfig::new(state_dim, dim)
                .with_cameras(cameras)
                .with_chunk_size(config.policy.chunk),
        ),
        other => {
            return Err(ExperimentError::Invalid(format!(
                "policy.kind: unknown policy `{other}`"
            )));
        }
    };
    let Some(overrides) = &config.policy.network else {
        return Ok(base);
    };
    let mut value = serde_json::to_value(&base).map_err(|e| ExperimentError::Invalid(e.to_string()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| ExperimentError::Invalid("policy config is not a table".into()))?;
    for (key, v) in overrides {
        if !object.contains_key(key) || key == "kind" {
            let known: Vec<&String> = object.keys().filter(|k| *k != "kind").collect();
            return Err(ExperimentError::Invalid(format!(
                "policy.network: unknown field `{key}` for a `{}` policy, expected one of {known:?}",
                config.policy.kind
            )));
        }
        let v = serde_json::to_value(v).map_err(|e| ExperimentError::Invalid(e.to_string()))?;
        object.insert(key.clone(), v);
    }
    let config: PolicyConfig = serde_json::from_value(value)
        .map_err(|e| ExperimentError::Invalid(format!("policy.network: {e}")))?;
    config.validate().map_err(policy_err("policy.network"))?;
    Ok(config)
}

/// Train one arm with one seed: reward-aligned BC for `train.steps` steps, evaluating every
/// `eval_every`, then, for `algorithm = "awr"`, the online AWR iterations. Resumes from its checkpoint.
#[allow(clippy::too_many_arguments)]
fn train_one(
    config: &ExperimentConfig,
    sim: &SimConfig,
    data: &Samples<'_>,
    weights: &[Vec<f32>],
    arm: &ArmConfig,
    seed: u64,
    opts: &RunOptions,
    awr_inputs: Option<AwrInputs<'_, '_, '_>>,
) -> Result<SeedResult> {
    let mut run = Run::start(config, sim, data, &arm.name, seed, opts)?;
    run.total_steps = total_policy_steps(config, arm);
    let steps = arm.steps.unwrap_or(config.train.steps);
    let bar = bar(opts, u64::from(steps), "training");
    bar.set_message(format!("{} seed {seed}", arm.name));
    bar.set_position(u64::from(run.ctx.progress.step.min(steps)));
    while run.ctx.progress.step < steps {
        run.train_step(data, weights)?;
        bar.inc(1);
        if run.ctx.progress.step % config.train.eval_every == 0 || run.ctx.progress.step == steps {
            bar.suspend(|| tracing::debug!(arm = arm.name, seed, step = run.ctx.progress.step, "evaluating"));
            run.evaluate_and_save(|_| Ok(()))?;
        }
    }
    bar.finish_and_clear();
    if arm.algorithm == Algorithm::Awr {
        let inputs = awr_inputs.ok_or_else(|| {
            ExperimentError::Invalid(format!("arm `{}`: AWR inputs were not prepared", arm.name))
        })?;
        crate::awr::improve(&mut run, inputs)?;
    }
    let eval = match run.last_eval.take() {
        Some(eval) => eval,
        None => evaluate(&mut run.trainer.policy().with_seed(seed), sim, config, seed, opts)?,
    };
    tracing::info!(arm = arm.name, seed, success = ?eval.success, "run finished");
    Ok(SeedResult {
        seed,
        // Not measured on the real arm: NaN, written as `null`.
        success: eval.success.unwrap_or(f64::NAN),
        episodes: config.eval.episodes,
        mean_return: eval.mean_return.unwrap_or(f64::NAN),
        wall_time_s: run.ctx.progress.wall_time_s,
        last_k_mean: crate::stats::last_k_mean(&run.ctx.progress.curve, config.train.last_k as usize),
        curve: run.ctx.progress.curve,
        weights: None,
        reward_voc: None,
        noise_sigma: None,
    })
}

/// What AWR needs beyond a BC run: the demonstrations with their reward signal, and the reward model.
pub(crate) struct AwrInputs<'e, 's, 'f> {
    pub demos: &'e [Episode],
    /// Per demonstration frame, the potential whose differences are the rewards (see [`crate::awr`]).
    pub demo_signal: Vec<Vec<f64>>,
    pub reward: RewardSource,
    pub scorer: Option<&'s mut EpisodeScorer<'f>>,
}

/// One arm x seed in progress: its trainer, what it has done, where it writes.
pub(crate) struct Run<'c> {
    pub ctx: RunContext<'c>,
    pub trainer: Trainer,
    pub images: bool,
    /// Policy steps of the whole run, the length of the learning-rate schedule.
    pub total_steps: u32,
    last_eval: Option<Evaluation>,
    clock: Instant,
}

impl<'c> Run<'c> {
    fn start(
        config: &'c ExperimentConfig,
        sim: &'c SimConfig,
        data: &Samples<'_>,
        arm: &str,
        seed: u64,
        opts: &'c RunOptions,
    ) -> Result<Self> {
        let dir = run_dir(&opts.out, arm, seed);
        let checkpoint = dir.join("checkpoint");
        let progress_path = checkpoint.join(PROGRESS_FILE);
        let device = config
            .train
            .policy_device()
            .map_err(policy_err("[train] backend / device"))?;
        tracing::debug!(
            arm,
            seed,
            backend = %config.train.backend,
            device = %config.train.device,
            "policy device"
        );
        let train = toprl_policies::TrainConfig {
            lr: config.train.lr,
            seed,
            ema_decay: config.train.ema_decay,
            ..Default::default()
        };
        let policy_cfg = policy_config(config)?;
        let images = policy_cfg.cameras() > 0;
        let features = state_features(config);
        let mut progress = RunProgress::default();
        let trainer = if opts.resume && checkpoint.join("policy.json").exists() && progress_path.exists() {
            let bytes =
                std::fs::read(&progress_path).map_err(io(format!("reading {}", progress_path.display())))?;
            progress = serde_json::from_slice(&bytes)
                .map_err(|e| ExperimentError::Invalid(format!("{}: {e}", progress_path.display())))?;
            check_progress(config, arm, &progress, &progress_path)?;
            tracing::info!(arm, seed, step = progress.step, "resuming from checkpoint");
            if checkpoint
                .join(toprl_policies::checkpoint::OPTIMIZER_FILE)
                .exists()
            {
                Trainer::resume(&checkpoint, Some(policy_cfg.kind()), train, &device)
            } else {
                // Written before optimiser state was checkpointed: continue with fresh moments.
                tracing::warn!(
                    arm,
                    seed,
                    "checkpoint has no optimiser state; AdamW moments restart"
                );
                Trainer::from_checkpoint(&checkpoint, Some(policy_cfg.kind()), train, &device)
            }
            .map_err(policy_err(format!("resuming {}", checkpoint.display())))?
        } else if let Some(init) = &config.policy.init {
            // Fine-tuning across tasks is what `policy.init` is for, so another task is allowed; said aloud.
            if let Some(trained_on) = checkpoint_task(init)?
                && trained_on != config.task.name
            {
                tracing::warn!(
                    "policy.init {} was trained on `{trained_on}`; fine-tuning it on `{}`",
                    init.display(),
                    config.task.name
                );
            }
            Trainer::from_checkpoint(init, Some(policy_cfg.kind()), train, &device)
                .map_err(policy_err(format!("policy.init {}", init.display())))?
        } else {
            Trainer::new(policy_cfg, data.normalizer()?, train, &device)
                .map_err(policy_err("building the policy"))?
                .with_state_features(features.clone())
        };
        // Demonstration frames are at the task's image size (rendered so, or resized while decoding);
        // recorded so that acting resizes any camera to it.
        let trainer = trainer.with_image_size(policy_image_size(config));
        if trainer.state_features() != features.as_slice() {
            return Err(ExperimentError::Invalid(format!(
                "policy.environment_state: the checkpoint reads {:?} but the config asks for {:?}",
                trainer.state_features(),
                features
            )));
        }
        let tb = EventWriter::create(
            &opts
                .out
                .join("tensorboard")
                .join(arm)
                .join(format!("seed-{seed}")),
        )?;
        Ok(Self {
            ctx: RunContext {
                config,
                sim,
                opts,
                arm: arm.to_string(),
                seed,
                dir,
                progress,
                tb,
            },
            trainer,
            images,
            total_steps: config.train.steps,
            last_eval: None,
            clock: Instant::now(),
        })
    }

    /// One weighted-BC step on a mini-batch of `data` with the self-normalised loss
    /// `sum w l / sum w` (a batch whose weights are all zero moves nothing but AdamW's decay), at the
    /// step's scheduled learning rate. The batch of step k depends only on (seed, k), so a resumed run
    /// draws the same batches.
    pub(crate) fn train_step(&mut self, data: &Samples<'_>, weights: &[Vec<f32>]) -> Result<f32> {
        let step = self.ctx.progress.step;
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.ctx.seed ^ (u64::from(step) << 20) ^ 0x6261_7463_6800_0000);
        let (batch, w) = data.batch(&mut rng, self.ctx.config.train.batch_size, weights, self.images)?;
        let t = &self.ctx.config.train;
        let lr = learning_rate(t.lr, t.min_lr, t.warmup_steps, t.cosine, step, self.total_steps);
        self.trainer.set_lr(lr);
        let loss = self
            .trainer
            .step(&batch, &self_normalise(&w))
            .map_err(policy_err(format!("training step {step}")))?;
        if !loss.is_finite() {
            return Err(ExperimentError::Invalid(format!(
                "arm `{}` seed {}: the training loss became {loss} at step {step}; lower train.lr",
                self.ctx.arm, self.ctx.seed
            )));
        }
        self.ctx.progress.step += 1;
        if step.is_multiple_of(10) {
            let mean_w = w.iter().sum::<f32>() / w.len() as f32;
            self.ctx.tb.scalar("train/loss", u64::from(step), loss)?;
            self.ctx.tb.scalar("train/weight_mean", u64::from(step), mean_w)?;
            self.ctx.tb.scalar("train/lr", u64::from(step), lr as f32)?;
        }
        Ok(loss)
    }

    /// Evaluate the current policy, log it, and write the checkpoint with `progress.json` and whatever
    /// `extra` adds inside it, as one directory renamed into place: a crash leaves the previous
    /// checkpoint or this one, never a mix, so a resumed run is identical to an uninterrupted one.
    pub(crate) fn evaluate_and_save(
        &mut self,
        extra: impl FnOnce(&Path) -> std::result::Result<(), toprl_policies::PolicyError>,
    ) -> Result<&Evaluation> {
        let step = u64::from(self.ctx.progress.step);
        let mut policy = self.trainer.policy().with_seed(self.ctx.seed);
        let eval = evaluate(
            &mut policy,
            self.ctx.sim,
            self.ctx.config,
            self.ctx.seed,
            self.ctx.opts,
        )?;
        if let Some(success) = eval.success {
            self.ctx.tb.scalar("eval/success", step, success as f32)?;
        }
        if let Some(mean_return) = eval.mean_return {
            self.ctx.tb.scalar("eval/return", step, mean_return as f32)?;
        }
        self.ctx.tb.scalar("eval/steps", step, eval.mean_steps as f32)?;
        if let Some(episode) = &eval.example {
            self.ctx.tb.image(
                "eval/rollout",
                step,
                &rollout_strip(episode, &self.ctx.config.task.cameras),
            )?;
        }
        self.ctx.tb.flush()?;
        if let Some(success) = eval.success {
            self.ctx.progress.curve.push((self.ctx.progress.step, success));
        }
        self.ctx.progress.wall_time_s += self.clock.elapsed().as_secs_f64();
        self.clock = Instant::now();
        let checkpoint = self.ctx.dir.join("checkpoint");
        let json = serde_json::to_vec_pretty(&self.ctx.progress)
            .map_err(|e| ExperimentError::Invalid(e.to_string()))?;
        let task_json = serde_json::json!({ "task": self.ctx.config.task.name }).to_string();
        self.trainer
            .save_with(&checkpoint, |tmp| {
                let path = tmp.join(PROGRESS_FILE);
                std::fs::write(&path, &json)
                    .map_err(|source| toprl_policies::PolicyError::Io { path, source })?;
                let path = tmp.join(TASK_FILE);
                std::fs::write(&path, &task_json)
                    .map_err(|source| toprl_policies::PolicyError::Io { path, source })?;
                extra(tmp)
            })
            .map_err(policy_err(format!("saving {}", checkpoint.display())))?;
        Ok(self.last_eval.insert(eval))
    }
}

/// A saved progress must lie within what the config asks for: a step or AWR iteration past the end
/// (a file from another run, or edited) would be reported as a finished run that never happened.
pub(crate) fn check_progress(
    config: &ExperimentConfig,
    arm: &str,
    progress: &RunProgress,
    path: &Path,
) -> Result<()> {
    let awr = config
        .arms
        .iter()
        .any(|a| a.name == arm && a.algorithm == Algorithm::Awr);
    let (iterations, max_step) = if awr {
        let extra = u64::from(config.awr.iterations) * u64::from(config.awr.policy_steps);
        (config.awr.iterations, u64::from(config.train.steps) + extra)
    } else {
        (0, u64::from(config.train.steps))
    };
    if u64::from(progress.step) > max_step || progress.awr_iterations > iterations {
        return Err(ExperimentError::Invalid(format!(
            "{}: step {} / AWR iteration {} is past this config's {max_step} steps / {iterations} iterations; \
             the checkpoint is not from this run",
            path.display(),
            progress.step,
            progress.awr_iterations
        )));
    }
    Ok(())
}

/// File in every checkpoint naming the task it was trained on (`{"task": "reach"}`).
pub const TASK_FILE: &str = "task.json";

/// The task a checkpoint was trained on, from its [`TASK_FILE`]; `None` for checkpoints without one.
pub fn checkpoint_task(dir: &Path) -> Result<Option<String>> {
    #[derive(Deserialize)]
    struct TaskRecord {
        task: String,
    }
    let path = dir.join(TASK_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<TaskRecord>(&bytes)
            .map(|r| Some(r.task))
            .map_err(|e| ExperimentError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

pub(crate) struct Evaluation {
    /// Success rate; `None` where success is not known (the real arm).
    pub success: Option<f64>,
    /// Mean return; `None` where the environment has no reward (the real arm).
    pub mean_return: Option<f64>,
    /// Mean control steps per episode.
    pub mean_steps: f64,
    /// The first evaluation episode with its frames, for TensorBoard.
    example: Option<Episode>,
}

/// The environment policies are rolled out in: the real arm of `[robot]` when the config has one, else
/// the simulator with `sim` (cameras rendered only when `images`).
/// On the arm, the operator resets the scene, may end an episode early, and success is decided as
/// `[robot] success` says (see [`crate::operated_env`]).
pub(crate) fn open_env(
    config: &ExperimentConfig,
    sim: &SimConfig,
    images: bool,
    opts: &RunOptions,
) -> Result<Box<dyn toprl_envs::environment::Environment>> {
    let Some(robot) = &config.robot else {
        let mut sim = sim.clone();
        if !images {
            sim.cameras.clear();
        }
        return Ok(Box::new(So101Env::new(sim).map_err(sim_err("evaluation env"))?));
    };
    let detector = match (robot.success, &config.reward_model) {
        (crate::config::ArmSuccess::Topreward, Some(rm)) => {
            let detector = opts.arm_success.clone().ok_or_else(|| {
                ExperimentError::Reward(
                    "robot.success = \"topreward\" but no reward model or threshold was loaded".into(),
                )
            })?;
            Some(crate::operated_env::DetectorSettings {
                scorer: detector.scorer,
                threshold: detector.threshold,
                camera: rm.camera.clone(),
                fps: rm.fps,
            })
        }
        _ => None,
    };
    let arm = robot_env(config, robot, images)?;
    let env =
        crate::operated_env::OperatedEnv::new(Box::new(arm), robot.operator_reset, robot.success, detector)
            .map_err(|source| ExperimentError::Env {
            what: "[robot]".into(),
            source,
        })?;
    Ok(Box::new(env))
}

/// Connects the `[robot]` follower (torque on) and opens its cameras when the policy sees images.
fn robot_env(
    config: &ExperimentConfig,
    robot: &crate::config::RobotConfig,
    images: bool,
) -> Result<toprl_envs::robot::RobotEnv> {
    use toprl_envs::robot::{ArmConfig as FollowerConfig, ArmRole, RobotEnv, RobotEnvConfig, So101Arm};
    let mut arm_cfg = FollowerConfig::new(&robot.port, &robot.id, ArmRole::Follower);
    arm_cfg.calibration_dir = robot.calibration_dir.clone();
    arm_cfg.max_relative_target = robot
        .max_relative()
        .map_err(|e| ExperimentError::Invalid(format!("robot.max_relative_target: {e}")))?;
    arm_cfg.watchdog = (robot.watchdog_ms > 0).then(|| std::time::Duration::from_millis(robot.watchdog_ms));
    let arm = So101Arm::connect(arm_cfg).map_err(|e| ExperimentError::Env {
        what: format!("connecting the follower on {} (robot.port)", robot.port),
        source: e.into(),
    })?;
    // The policy's cameras when it sees images, and the reward camera when TOPReward judges success.
    let detector_camera = config
        .reward_model
        .as_ref()
        .filter(|_| robot.success == crate::config::ArmSuccess::Topreward)
        .map(|rm| {
            rm.camera
                .strip_prefix("observation.images.")
                .unwrap_or(&rm.camera)
                .to_string()
        });
    let mut cameras = Vec::new();
    {
        for cam in robot.cameras.iter().filter(|c| {
            (images && config.task.cameras.contains(&c.name))
                || detector_camera.as_deref() == Some(c.name.as_str())
        }) {
            cameras.push(
                toprl_envs::robot::open_camera(cam).map_err(|e| ExperimentError::Env {
                    what: "robot.cameras".into(),
                    source: e.into(),
                })?,
            );
        }
    }
    let task = parse_task(&config.task.name)?;
    let env_cfg = RobotEnvConfig {
        instruction: robot
            .instruction
            .clone()
            .unwrap_or_else(|| task.instruction("red")),
        fps: f64::from(robot.fps),
        max_steps: robot.episode_steps(),
        start_pose: robot.start_pose.unwrap_or_else(RobotEnvConfig::sim_home_pose),
        reset_speed: robot.reset_speed,
        reset_tolerance: robot.reset_tolerance,
        reset_timeout: std::time::Duration::from_secs_f64(robot.reset_timeout_seconds),
    };
    RobotEnv::new(arm, cameras, env_cfg).map_err(|source| ExperimentError::Env {
        what: "[robot]".into(),
        source,
    })
}

/// Success rate and mean return of `policy` over the evaluation scenes of `seed` (in simulation), or
/// over `eval.episodes` episodes on the `[robot]` arm, where neither is known. Each predicted chunk is
/// executed in full before the policy is queried again.
fn evaluate(
    policy: &mut LoadedPolicy,
    sim: &SimConfig,
    config: &ExperimentConfig,
    seed: u64,
    run_opts: &RunOptions,
) -> Result<Evaluation> {
    let images = policy.config().cameras() > 0;
    let camera_keys = camera_keys(&config.task.cameras);
    let mut env = open_env(config, sim, images, run_opts)?;
    let (mut successes, mut returns, mut steps, mut example) = (Some(0usize), Some(0.0), 0usize, None);
    for i in 0..config.eval.episodes as usize {
        let opts = RolloutOptions {
            keep_frames: i == 0 && images,
            index: i,
        };
        let r = policy_rollout(env.as_mut(), policy, &camera_keys, eval_seed(seed, i), opts, None)
            .map_err(drive_err(format!("evaluation episode {i}")))?;
        successes = successes.zip(r.success).map(|(n, s)| n + usize::from(s));
        returns = returns.zip(r.total_reward).map(|(sum, r)| sum + r);
        steps += r.steps;
        if i == 0 {
            example = Some(r.episode);
        }
    }
    let n = config.eval.episodes.max(1) as f64;
    Ok(Evaluation {
        success: successes.map(|s| s as f64 / n),
        mean_return: returns.map(|r| r / n),
        mean_steps: steps as f64 / n,
        example,
    })
}

/// Eight frames of an episode's first camera above its ground-truth progress curve.
fn rollout_strip(episode: &Episode, cameras: &[String]) -> image::RgbImage {
    let frames = cameras
        .first()
        .and_then(|c| episode.cameras.get(&camera_key(c)))
        .filter(|f| !f.is_empty());
    let progress: Vec<(f64, f64)> = episode
        .true_progress
        .iter()
        .flatten()
        .enumerate()
        .map(|(t, &p)| (t as f64, f64::from(p)))
        .collect();
    let chart = Chart {
        title: format!(
            "{} (success: {})",
            episode.instruction,
            episode.success.unwrap_or(false)
        ),
        x_label: "frame".into(),
        y_label: "true progress".into(),
        series: vec![Series {
            name: String::new(),
            points: progress,
            errors: None,
        }],
        y_range: Some((0.0, 1.0)),
    };
    let Some(frames) = frames else {
        return render_grid(&[chart], 1, (640, 240)).unwrap_or_default();
    };
    let (w, h) = (frames[0].width(), frames[0].height());
    let strip_w = w * 8;
    let chart_img = render_grid(&[chart], 1, (strip_w, 200)).unwrap_or_default();
    let mut out = image::RgbImage::from_pixel(strip_w, h + chart_img.height(), image::Rgb([255, 255, 255]));
    for k in 0..8u32 {
        let t = (k as usize * (frames.len() - 1)) / 7;
        image::imageops::replace(&mut out, &frames[t], i64::from(k * w), 0);
    }
    image::imageops::replace(&mut out, &chart_img, 0, i64::from(h));
    out
}

/// Charts of the first episodes' progress: ground truth and, when scored, TOPReward.
fn progress_charts(episodes: &[Episode], scores: Option<&[(EpisodeScore, f64)]>) -> Vec<Chart> {
    episodes
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, ep)| {
            let mut series = Vec::new();
            if let Some(p) = &ep.true_progress {
                series.push(Series {
                    name: "ground truth".into(),
                    points: p
                        .iter()
                        .enumerate()
                        .map(|(t, &v)| (t as f64, f64::from(v)))
                        .collect(),
                    errors: None,
                });
            }
            if let Some((score, stride)) = scores.and_then(|s| s.get(i)) {
                series.push(Series {
                    name: "TOPReward".into(),
                    points: crate::arm_weights::progress_per_frame(score, *stride, ep.len())
                        .into_iter()
                        .enumerate()
                        .map(|(t, v)| (t as f64, v))
                        .collect(),
                    errors: None,
                });
            }
            Chart {
                title: format!("episode {} (success: {})", ep.index, ep.success.unwrap_or(false)),
                x_label: "frame".into(),
                y_label: "progress".into(),
                series,
                y_range: Some((0.0, 1.0)),
            }
        })
        .collect()
}

/// Success rate against training step, mean and standard deviation over seeds, one line per arm.
fn success_chart(name: &str, results: &Results) -> Chart {
    let series = results
        .arms
        .iter()
        .map(|arm| {
            let mut by_step: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            for run in &arm.per_seed {
                for &(step, success) in &run.curve {
                    by_step.entry(step).or_default().push(success);
                }
            }
            let (points, errors): (Vec<_>, Vec<_>) = by_step
                .iter()
                .map(|(&step, v)| {
                    let (m, s) = crate::results::mean_std(v);
                    ((f64::from(step), m), s)
                })
                .unzip();
            Series {
                name: arm.name.clone(),
                points,
                errors: Some(errors),
            }
        })
        .collect();
    Chart {
        title: format!("{name}: evaluation success"),
        x_label: "training step".into(),
        y_label: "success rate".into(),
        series,
        y_range: Some((0.0, 1.0)),
    }
}
