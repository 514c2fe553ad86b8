//! Experiment configuration: one TOML file describes a whole comparison (data, policy, reward arms,
//! algorithm, seeds, evaluation). Every table rejects unknown keys so a typo never silently falls back
//! to a default; every default is documented here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toprl_rewards::qwen3_vl::{DeviceSpec, Precision};
use toprl_rewards::topreward::prompt::PromptConfig;

use crate::weighting::{DeltaKind, ProgressScale, Weighting};

/// Why a config could not be used. Messages name the file and, for TOML errors, line, column and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read experiment config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid experiment config {path}:\n{source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid experiment config {path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// A whole experiment: every arm is trained for every seed and evaluated the same way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Human-readable name, used in logs and the results table. Default: the config file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// Seeds; each arm runs once per seed. Default: [0].
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The simulated task used for demonstrations (when `data.source = "sim"`) and evaluation.
    pub task: TaskConfig,
    /// Where demonstrations come from.
    pub data: DataConfig,
    /// The policy trained in every arm.
    pub policy: PolicyConfig,
    /// The reward model used by `topreward` arms. Optional when no arm uses it.
    #[serde(default)]
    pub reward_model: Option<RewardModelConfig>,
    /// Optimisation settings shared by every arm.
    #[serde(default)]
    pub train: TrainConfig,
    /// Evaluation in simulation.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Online advantage-weighted regression, for arms with `algorithm = "awr"`.
    #[serde(default)]
    pub awr: AwrConfig,
    /// The arms to compare (at least one).
    pub arms: Vec<ArmConfig>,
    /// A real SO-101 follower: when present, evaluation and AWR rollouts run on this arm instead of in
    /// MuJoCo (demonstrations still come from `data`).
    #[serde(default)]
    pub robot: Option<RobotConfig>,
}

/// The real arm an experiment evaluates on (`[robot]`). Success, progress and the simulator's reward do
/// not exist on hardware: evaluation on the arm reports them as not measured (NaN) and records what the
/// policy did; AWR arms need a reward that does not come from the simulator (`topreward` or `none`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobotConfig {
    /// Serial port of the follower (e.g. `/dev/ttyACM0`, or the `port:` line of `so101 sim-bus`).
    pub port: String,
    /// The follower's id: its LeRobot calibration file is `<id>.json`.
    pub id: String,
    /// Folder holding `<id>.json`. Default: LeRobot's calibration folder
    /// (`$HF_LEROBOT_CALIBRATION/robots/so_follower`, then the older `so101_follower`).
    #[serde(default)]
    pub calibration_dir: Option<PathBuf>,
    /// Cameras (`[[robot.cameras]]` with `name`, `path`, `width`, `height`); image policies need one per
    /// `task.cameras` entry. Default: none.
    #[serde(default)]
    pub cameras: Vec<toprl_envs::robot::CameraConfig>,
    /// Control rate in Hz. Default: 30 (LeRobot's).
    #[serde(default = "default_robot_fps")]
    pub fps: u32,
    /// Largest change per step from the present position, in action units (degrees; gripper 0-100):
    /// one number for every motor or a list of six. Default: none (only the calibrated range clamps).
    #[serde(default)]
    pub max_relative_target: Option<MaxRelativeTarget>,
    /// Length of one evaluation episode on the arm, in seconds. Default: 20.
    #[serde(default = "default_episode_seconds")]
    pub episode_seconds: f64,
    /// Joint positions the arm moves to before each episode (LeRobot units, motor order). Default: the
    /// simulator's start pose, the one the policy was trained from.
    #[serde(default)]
    pub start_pose: Option<[f64; 6]>,
    /// Speed of the move to the start pose, degrees (gripper %) per second. Default: 30.
    #[serde(default = "default_reset_speed")]
    pub reset_speed: f64,
    /// How close (LeRobot units) every joint must come to the start pose. Default: 5.
    #[serde(default = "default_reset_tolerance")]
    pub reset_tolerance: f64,
    /// Seconds allowed for the move to the start pose. Default: 20.
    #[serde(default = "default_reset_timeout")]
    pub reset_timeout_seconds: f64,
    /// Torque goes off when no command reached the arm for this many milliseconds. Default: 500.
    #[serde(default = "default_watchdog_ms")]
    pub watchdog_ms: u64,
    /// The instruction given to the policy. Default: the simulated task's, for a red cube.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Before every episode on the arm (evaluation and AWR rollouts) wait for the operator to reset the
    /// scene and press Enter; during an episode, Enter ends it early. Default: true.
    #[serde(default = "default_true")]
    pub operator_reset: bool,
    /// Who decides whether an episode on the arm succeeded: `operator` (asked y/n after each episode),
    /// `topreward` (the reward model's success detector, paper Sec. 4: the mean log p(" True") of the last
    /// three prefixes of the `reward_model.camera` frames at `reward_model.fps`, against
    /// `success_threshold` or the threshold `topreward calibrate` wrote to `success_calibration`), or
    /// `none` (success not measured: reported as null). Default: operator.
    #[serde(default)]
    pub success: ArmSuccess,
    /// `success = "topreward"`: the success-score threshold (a log-probability, e.g. -1.0).
    #[serde(default)]
    pub success_threshold: Option<f64>,
    /// `success = "topreward"`: a calibration file from `topreward calibrate` (made with the same model),
    /// whose threshold is used.
    #[serde(default)]
    pub success_calibration: Option<PathBuf>,
}

/// How success is decided on the real arm (`[robot] success`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmSuccess {
    /// The operator answers y/n after each episode.
    #[default]
    Operator,
    /// TOPReward's success detector with a calibrated threshold.
    Topreward,
    /// Not measured.
    None,
}

fn default_true() -> bool {
    true
}

/// `max_relative_target`: one limit for every motor, or one per motor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaxRelativeTarget {
    All(f64),
    PerMotor(Vec<f64>),
}

fn default_robot_fps() -> u32 {
    30
}
fn default_episode_seconds() -> f64 {
    20.0
}
fn default_reset_speed() -> f64 {
    30.0
}
fn default_reset_tolerance() -> f64 {
    5.0
}
fn default_reset_timeout() -> f64 {
    20.0
}
fn default_watchdog_ms() -> u64 {
    500
}

impl RobotConfig {
    /// Per-motor `max_relative_target`, checked: positive finite numbers, one or six of them.
    pub fn max_relative(&self) -> Result<Option<[f64; 6]>, String> {
        let values: [f64; 6] = match &self.max_relative_target {
            None => return Ok(None),
            Some(MaxRelativeTarget::All(v)) => [*v; 6],
            Some(MaxRelativeTarget::PerMotor(v)) => match <[f64; 6]>::try_from(v.as_slice()) {
                Ok(a) => a,
                Err(_) => {
                    return Err(format!(
                        "expected one number or a list of 6 ({}), got {} values",
                        toprl_envs::so101::MOTOR_NAMES.join(", "),
                        v.len()
                    ));
                }
            },
        };
        match values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            Some(v) => Err(format!("{v} is not a positive number")),
            None => Ok(Some(values)),
        }
    }

    /// Control steps of one episode.
    pub fn episode_steps(&self) -> usize {
        (self.episode_seconds * f64::from(self.fps)).round().max(1.0) as usize
    }

    /// Everything about the config alone that connecting would refuse, as (field, message).
    fn validate(
        &self,
        policy: &PolicyConfig,
        task: &TaskConfig,
        arms: &[ArmConfig],
        reward_model: Option<&RewardModelConfig>,
    ) -> Result<(), (String, String)> {
        let bad = |field: &str, message: String| Err((format!("robot.{field}"), message));
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.port.trim().is_empty() {
            return bad(
                "port",
                "is empty; give the follower's serial port, e.g. /dev/ttyACM0".into(),
            );
        }
        if self.id.trim().is_empty() || self.id.contains(['/', '\\']) {
            return bad("id", format!("`{}` is not a calibration file name", self.id));
        }
        if !(1..=200).contains(&self.fps) {
            return bad("fps", format!("{} is outside 1..=200", self.fps));
        }
        if let Err(message) = self.max_relative() {
            return bad("max_relative_target", message);
        }
        for (field, v) in [
            ("episode_seconds", self.episode_seconds),
            ("reset_speed", self.reset_speed),
            ("reset_tolerance", self.reset_tolerance),
            ("reset_timeout_seconds", self.reset_timeout_seconds),
        ] {
            if !positive(v) {
                return bad(field, format!("{v} must be a positive number"));
            }
        }
        if let Some(pose) = &self.start_pose
            && let Some(v) = pose.iter().find(|v| !v.is_finite())
        {
            return bad("start_pose", format!("{v} is not a finite number"));
        }
        for (i, c) in self.cameras.iter().enumerate() {
            if self.cameras[..i].iter().any(|o| o.name == c.name) {
                return bad("cameras", format!("camera `{}` is listed twice", c.name));
            }
        }
        match (self.success, self.success_threshold, &self.success_calibration) {
            (ArmSuccess::Topreward, None, None) => {
                return bad(
                    "success_threshold",
                    "success = \"topreward\" needs success_threshold (a log-probability, e.g. -1.0) or \
                     success_calibration (a file from `topreward calibrate`)"
                        .into(),
                );
            }
            (ArmSuccess::Topreward, Some(_), Some(_)) => {
                return bad(
                    "success_calibration",
                    "give success_threshold or success_calibration, not both".into(),
                );
            }
            (ArmSuccess::Topreward, Some(t), None) if !t.is_finite() => {
                return bad(
                    "success_threshold",
                    format!("{t} is not a finite log-probability"),
                );
            }
            (ArmSuccess::Topreward, ..) => {
                let Some(rm) = reward_model else {
                    return bad(
                        "success",
                        "success = \"topreward\" scores episodes with [reward_model]; add one".into(),
                    );
                };
                let camera = rm
                    .camera
                    .strip_prefix("observation.images.")
                    .unwrap_or(&rm.camera);
                if !self.cameras.iter().any(|c| c.name == camera) {
                    return bad(
                        "cameras",
                        format!(
                            "success = \"topreward\" watches reward_model.camera `{}`, which [robot] does not list",
                            rm.camera
                        ),
                    );
                }
            }
            (_, Some(_), _) | (_, _, Some(_)) => {
                return bad(
                    "success",
                    "success_threshold and success_calibration are read only with success = \"topreward\""
                        .into(),
                );
            }
            _ => {}
        }
        if policy.environment_state {
            return Err((
                "policy.environment_state".into(),
                "the policy would read the simulator's cube pose, which a real arm does not have; set it to false to evaluate on [robot]".into(),
            ));
        }
        if policy.kind != "gaussian" {
            for cam in &task.cameras {
                if !self.cameras.iter().any(|c| &c.name == cam) {
                    return bad(
                        "cameras",
                        format!("the image policy sees task camera `{cam}`, which [robot] does not list"),
                    );
                }
            }
        }
        for arm in arms {
            if arm.algorithm == Algorithm::Awr
                && !matches!(arm.reward, RewardSource::Topreward | RewardSource::None)
            {
                return Err((
                    format!("arms.{}.reward", arm.name),
                    format!(
                        "AWR on the real arm needs a reward that does not come from the simulator: `topreward` or `none`, not `{}`",
                        serde_json::to_value(arm.reward)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The checks that look at the machine: the port exists and the calibration file is found and valid.
    fn check_resources(&self) -> Result<(), (String, String)> {
        if !Path::new(&self.port).exists() {
            return Err((
                "robot.port".into(),
                format!(
                    "{} does not exist; is the arm plugged in (or `so101 sim-bus` running)?",
                    self.port
                ),
            ));
        }
        toprl_envs::robot::calibration::find_calibration(
            toprl_envs::robot::ArmRole::Follower,
            &self.id,
            self.calibration_dir.as_deref(),
        )
        .map_err(|e| {
            let field = if self.calibration_dir.is_some() {
                "robot.calibration_dir"
            } else {
                "robot.id"
            };
            (field.to_string(), e.to_string())
        })?;
        Ok(())
    }
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// The simulated SO-101 task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// One of `reach`, `push_cube`, `pick_cube`, `pick_place`.
    pub name: String,
    /// Square camera image size in pixels. Default: 128.
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    /// Episode length limit in control steps at 30 Hz. Default: the task's own limit.
    #[serde(default)]
    pub max_steps: Option<u32>,
    /// Cameras rendered and fed to image policies and the reward model (`front`, `top`, `wrist`).
    /// Default: ["front", "wrist"].
    #[serde(default = "default_cameras")]
    pub cameras: Vec<String>,
}

fn default_image_size() -> u32 {
    128
}
fn default_cameras() -> Vec<String> {
    vec!["front".into(), "wrist".into()]
}

/// Demonstration source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "source", rename_all = "snake_case")]
pub enum DataConfig {
    /// Scripted experts in simulation at mixed skill.
    Sim {
        /// Number of demonstration episodes.
        episodes: u32,
        /// Expert noise levels (0 = clean); episodes cycle through them, giving mixed-quality data.
        #[serde(default = "default_noise_levels")]
        noise_levels: Vec<f64>,
    },
    /// An existing LeRobotDataset (v2.1 or v3.0) folder or hub id.
    Lerobot {
        /// Local folder or hub repo id.
        path: String,
        /// Camera key fed to the reward model and image policies. Default: `observation.images.front`.
        #[serde(default = "default_camera")]
        camera: String,
    },
}

fn default_noise_levels() -> Vec<f64> {
    vec![0.0, 0.5, 1.0]
}
fn default_camera() -> String {
    "observation.images.front".to_string()
}

/// The policy architecture and its initial weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// One of `gaussian` (Gaussian MLP on state), `act` (ACT-style), `flow` (flow-matching action chunks),
    /// `smolvla` (LeRobot's SmolVLA fine-tuned from `pretrained`, see [`crate::smolvla_arm`]).
    pub kind: String,
    /// Checkpoint directory to fine-tune from. Default: random initialisation.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Actions predicted per step (and executed before the policy is queried again). Default: 10.
    #[serde(default = "default_chunk")]
    pub chunk: usize,
    /// Feed the simulator's privileged `observation.environment_state` (cube position and yaw, target
    /// position) to the policy after the joint state: what lets a state-only policy find the cube.
    /// Simulated demonstrations, or a dataset recorded in simulation (`so101 sim --record` writes the
    /// feature); a real robot has no such sensor. Default: false.
    #[serde(default)]
    pub environment_state: bool,
    /// Overrides of the network's own config (field names of the policies crate's `GaussianMlpConfig`,
    /// `ActConfig` or `FlowConfig`, e.g. `d_model = 64`). Default: none.
    #[serde(default)]
    pub network: Option<toml::Table>,
    /// `smolvla` only: the LeRobot SmolVLA checkpoint to fine-tune, a local folder or a hub id
    /// (`lerobot/smolvla_base`). Its `chunk_size` replaces `chunk`. Required for `smolvla`.
    #[serde(default)]
    pub pretrained: Option<String>,
    /// `smolvla` only: LeRobot's freezing options. Default: the checkpoint's values.
    #[serde(default)]
    pub freeze_vision_encoder: Option<bool>,
    #[serde(default)]
    pub train_expert_only: Option<bool>,
    #[serde(default)]
    pub train_state_proj: Option<bool>,
    /// `smolvla` only: the checkpoint image feature each task camera feeds, LeRobot's `rename_map`
    /// (`lerobot/smolvla_base` expects `observation.images.camera1` .. `camera3`), e.g.
    /// `{ front = "observation.images.camera1", top = "observation.images.camera2", wrist =
    /// "observation.images.camera3" }`; every checkpoint camera must be fed. Default:
    /// `observation.images.<camera>`.
    #[serde(default)]
    pub camera_features: Option<std::collections::BTreeMap<String, String>>,
    /// `smolvla` only: LeRobot's learning-rate schedule (`CosineDecayWithWarmupSchedulerConfig`, peak
    /// `train.lr`), scaled to the arm's steps when it is shorter than the decay as LeRobot does.
    /// Default: the checkpoint's `scheduler_warmup_steps`, `scheduler_decay_steps`, `scheduler_decay_lr`
    /// (SmolVLA's: 1000, 30000, 2.5e-6).
    #[serde(default)]
    pub scheduler_warmup_steps: Option<usize>,
    #[serde(default)]
    pub scheduler_decay_steps: Option<usize>,
    #[serde(default)]
    pub scheduler_decay_lr: Option<f64>,
}

fn default_chunk() -> usize {
    10
}

/// TOPReward settings for `topreward` arms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardModelConfig {
    /// Local checkpoint directory or Hugging Face hub id (e.g. `Qwen/Qwen3-VL-8B-Instruct`).
    pub model: String,
    /// `exact` (re-encode every prefix, as the reference) or `incremental` (KV-cache reuse). Default: incremental,
    /// which scores every prefix at the whole episode's resolution: it differs from exact (and the paper)
    /// whenever smart_resize would resize a prefix differently (see `topreward label --help`).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Device of the reward model: `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`. Default: cpu.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Precision: `auto` (stored dtype on a GPU, f32 on the CPU), `f32`, `bf16` or `f16`. Default: auto.
    #[serde(default)]
    pub dtype: Precision,
    /// Frame rate the episode is sampled at before scoring. Default: 2.0 (the paper's).
    #[serde(default = "default_fps")]
    pub fps: f64,
    /// Camera key scored. Default: `observation.images.front`.
    #[serde(default = "default_camera")]
    pub camera: String,
    /// Wrap the prompt in the chat template (the paper reports lower VOC with it). Default: false.
    #[serde(default)]
    pub chat_template: bool,
    /// Replace the paper's prompt prefix (text after the video). Default: the paper's.
    #[serde(default)]
    pub prompt_prefix: Option<String>,
    /// Replace the paper's suffix template; must contain `{instruction}` and end with the scored answer
    /// word. Default: the paper's.
    #[serde(default)]
    pub prompt_suffix: Option<String>,
    /// `topreward` (the paper's method) or `gvl` (its baseline: completion percentages decoded from shuffled
    /// frames). Default: topreward.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Hub revision (commit, tag or branch) of `model`; cached scores are keyed by it. Default: main.
    #[serde(default)]
    pub revision: Option<String>,
    /// Score on these servers (`topreward serve` or OpenAI-compatible such as vLLM) instead of loading
    /// `model` here. Default: none.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// What `endpoints` speak: "toprl" or "openai". Default: "toprl".
    #[serde(default = "default_api")]
    pub api: String,
    /// With `api = "openai"`: what a prompt that differs from toprl's own (e.g. a vLLM that keeps the
    /// chat template's vision markers around the video) does: "error", "warn" or "off". Default: "error".
    #[serde(default = "default_token_check")]
    pub token_check: String,
    /// With `api = "openai"`: a folder with the served checkpoint's processor files and tokenizer.json, for
    /// toprl's own prompt count. Default: Qwen3-VL's class defaults and the Qwen3 tokenizer.
    #[serde(default)]
    pub processor: Option<PathBuf>,
}

impl RewardModelConfig {
    /// The TOPReward prompt these settings describe (the paper's where not overridden).
    pub fn prompt(&self) -> PromptConfig {
        PromptConfig::paper_with(
            self.chat_template,
            self.prompt_prefix.as_deref(),
            self.prompt_suffix.as_deref(),
        )
    }
}

fn default_mode() -> String {
    "incremental".to_string()
}
fn default_kind() -> String {
    "topreward".to_string()
}
fn default_api() -> String {
    "toprl".to_string()
}
fn default_token_check() -> String {
    "error".to_string()
}
fn default_fps() -> f64 {
    2.0
}

/// Optimisation settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Gradient steps per arm and seed. Default: 2000.
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Mini-batch size. Default: 64.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Adam learning rate. Default: 1e-3.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Paper Eq. 3 scale. Default: 2.0.
    #[serde(default = "default_tau")]
    pub tau: f64,
    /// Paper Eq. 3 upper clip. Default: 2.0.
    #[serde(default = "default_tau")]
    pub delta_max: f64,
    /// Lower clip of the Eq. 3 weight (the paper clips at 0). Default: 0.0.
    #[serde(default)]
    pub min_weight: f64,
    /// Evaluate every this many steps. Default: 500.
    #[serde(default = "default_eval_every")]
    pub eval_every: u32,
    /// Progress difference credited to a frame: `chunk` (s(t+H) - s(t), H = `policy.chunk`, as LeRobot's
    /// RA-BC), `prefix` (between scored prefixes) or `frame` (s(t) - s(t-1)). Default: chunk.
    #[serde(default)]
    pub delta: DeltaKind,
    /// Weight formula: `eq3` (paper Eq. 3 with tau, delta_max, min_weight) or `rabc` (LeRobot's RA-BC
    /// with `kappa`). Arms may override it. Default: eq3.
    #[serde(default)]
    pub weighting: Weighting,
    /// RA-BC threshold: a delta above it weighs 1. Default: 0.01 (LeRobot's).
    #[serde(default = "default_kappa")]
    pub kappa: f64,
    /// TOPReward progress scale: `dataset` (min-max of log p over the whole dataset, so a failed
    /// episode stays low), `log_prob` (raw log p) or `episode` (the paper's per-episode min-max).
    /// Default: dataset.
    #[serde(default)]
    pub progress: ProgressScale,
    /// Linear learning-rate warmup from 0, in steps. Default: 0.
    #[serde(default)]
    pub warmup_steps: u32,
    /// Cosine decay of the learning rate from `lr` to `min_lr` over the arm's policy steps (BC plus AWR).
    /// Default: false (constant).
    #[serde(default)]
    pub cosine: bool,
    /// Final learning rate of the cosine decay. Default: 0.
    #[serde(default)]
    pub min_lr: f64,
    /// Results report the mean of the last this many evaluations beside the final one. Default: 3.
    #[serde(default = "default_last_k")]
    pub last_k: u32,
    /// Evaluate and save an exponential moving average of the policy's weights with this decay (e.g.
    /// 0.999, warmed up as TensorFlow's ExponentialMovingAverage), while the optimiser trains the raw
    /// weights. `act`, `flow` and `gaussian` policies. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
    /// Burn backend of the policy networks: `flex` (pure Rust, CPU) or `tch` (LibTorch, in binaries
    /// built with `--features toprl-trainer/tch`; README "LibTorch and GPUs"). `train --backend`
    /// overrides it. Default: flex.
    #[serde(default)]
    pub backend: toprl_policies::Backend,
    /// Device of that backend: `cpu`, `cuda:N` or `mps` (the last two need backend `tch`).
    /// `train --device` overrides it. Default: cpu.
    #[serde(default)]
    pub device: toprl_policies::DeviceKind,
}

fn default_kappa() -> f64 {
    0.01
}
fn default_last_k() -> u32 {
    3
}

fn default_steps() -> u32 {
    2000
}
fn default_batch_size() -> usize {
    64
}
fn default_lr() -> f64 {
    1e-3
}
fn default_tau() -> f64 {
    2.0
}
fn default_eval_every() -> u32 {
    500
}

impl TrainConfig {
    /// The Burn device the policy networks train and run on (`backend` on `device`).
    pub fn policy_device(&self) -> Result<toprl_policies::Device, toprl_policies::PolicyError> {
        toprl_policies::device(self.backend, self.device)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            batch_size: default_batch_size(),
            lr: default_lr(),
            tau: default_tau(),
            delta_max: default_tau(),
            min_weight: 0.0,
            eval_every: default_eval_every(),
            delta: DeltaKind::default(),
            weighting: Weighting::default(),
            kappa: default_kappa(),
            progress: ProgressScale::default(),
            warmup_steps: 0,
            cosine: false,
            min_lr: 0.0,
            last_k: default_last_k(),
            ema_decay: None,
            backend: Default::default(),
            device: Default::default(),
        }
    }
}

/// Evaluation in simulation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluation episodes per checkpoint. Default: 20.
    #[serde(default = "default_eval_episodes")]
    pub episodes: u32,
}

fn default_eval_episodes() -> u32 {
    20
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            episodes: default_eval_episodes(),
        }
    }
}

/// Online advantage-weighted regression (Peng et al. 2019) after the offline warm start: each iteration
/// rolls the current policy out in simulation, scores the rollouts with the arm's reward source, fits a
/// value baseline to the discounted returns and takes weighted-BC steps with weights
/// `min(exp(A / beta), max_weight)` on the demonstrations plus the new rollouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwrConfig {
    /// Roll-out / update iterations. Default: 5.
    #[serde(default = "default_awr_iterations")]
    pub iterations: u32,
    /// Episodes rolled out per iteration. Default: 16.
    #[serde(default = "default_awr_rollouts")]
    pub rollouts: u32,
    /// Policy gradient steps per iteration. Default: 200.
    #[serde(default = "default_awr_steps")]
    pub policy_steps: u32,
    /// Value-function gradient steps per iteration. Default: 200.
    #[serde(default = "default_awr_steps")]
    pub value_steps: u32,
    /// Advantage temperature, in the reward's units (progress, or log-probability for TOPReward).
    /// Default: 0.1.
    #[serde(default = "default_awr_beta")]
    pub beta: f64,
    /// Upper clip of the AWR weight. Default: 20.
    #[serde(default = "default_awr_max_weight")]
    pub max_weight: f64,
    /// Discount per control step. Default: 0.99.
    #[serde(default = "default_awr_gamma")]
    pub gamma: f64,
    /// Exploration: standard deviation of the Gaussian offset added to each executed action chunk
    /// during rollouts, in degrees (gripper: the same number in its 0-100 units). Default: 3.0.
    #[serde(default = "default_awr_action_noise")]
    pub action_noise: f64,
}

fn default_awr_iterations() -> u32 {
    5
}
fn default_awr_rollouts() -> u32 {
    16
}
fn default_awr_steps() -> u32 {
    200
}
fn default_awr_beta() -> f64 {
    0.1
}
fn default_awr_max_weight() -> f64 {
    20.0
}
fn default_awr_gamma() -> f64 {
    0.99
}
fn default_awr_action_noise() -> f64 {
    3.0
}

impl Default for AwrConfig {
    fn default() -> Self {
        Self {
            iterations: default_awr_iterations(),
            rollouts: default_awr_rollouts(),
            policy_steps: default_awr_steps(),
            value_steps: default_awr_steps(),
            beta: default_awr_beta(),
            max_weight: default_awr_max_weight(),
            gamma: default_awr_gamma(),
            action_noise: default_awr_action_noise(),
        }
    }
}

/// Which signal weights the demonstrations in an arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardSource {
    /// Plain behaviour cloning: every sample weighs 1.
    None,
    /// Episode success only.
    Sparse,
    /// TOPReward progress through paper Eq. 3.
    Topreward,
    /// The simulator's ground-truth progress through the same Eq. 3 (an upper bound).
    Oracle,
    /// Ground-truth progress degraded with temporally correlated noise until its VOC equals the arm's
    /// `voc` (see [`crate::reward_quality`]).
    OracleNoisy,
    /// Progress t / (T - 1) whatever happens: the time bias of a reward model that ignores the video.
    TimeBias,
}

/// How an arm updates the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Offline reward-aligned behaviour cloning (weighted imitation on the demonstrations).
    RewardAlignedBc,
    /// Reward-aligned BC as a warm start, then online advantage-weighted regression in simulation
    /// (see [`AwrConfig`]).
    Awr,
}

/// One arm of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    /// Name in the results table.
    pub name: String,
    /// Reward signal.
    pub reward: RewardSource,
    /// Update rule. Default: `reward_aligned_bc`. `awr` with `reward = "none"` is the zero-advantage
    /// control: the same rollouts are added to the data, every weight is 1.
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    /// Target VOC of an `oracle_noisy` reward, in (-1, 1]. Required for it, refused otherwise.
    #[serde(default)]
    pub voc: Option<f64>,
    /// Override of `train.weighting` for this arm.
    #[serde(default)]
    pub weighting: Option<Weighting>,
    /// Override of `train.steps` for this arm's BC phase (e.g. BC for as many steps as the AWR arms).
    #[serde(default)]
    pub steps: Option<u32>,
}

fn default_algorithm() -> Algorithm {
    Algorithm::RewardAlignedBc
}

impl ExperimentConfig {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// [`ExperimentConfig::load`] with the backend and device of `train --backend/--device` put in
    /// place of `[train] backend/device` before validation, so a config asking for a backend this
    /// binary lacks can still run on one it has.
    pub fn load_on(
        path: &Path,
        backend: Option<toprl_policies::Backend>,
        device: Option<toprl_policies::DeviceKind>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_with(&text, path, |config| {
            if let Some(backend) = backend {
                config.train.backend = backend;
            }
            if let Some(device) = device {
                config.train.device = device;
            }
        })
    }

    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with(text, path, |_| {})
    }

    fn parse_with(text: &str, path: &Path, edit: impl FnOnce(&mut Self)) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        edit(&mut config);
        if config.name.is_none() {
            config.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_string(),
            message,
        };
        const TASKS: [&str; 4] = ["reach", "push_cube", "pick_cube", "pick_place"];
        if !TASKS.contains(&self.task.name.as_str()) {
            return Err(invalid(
                "task.name",
                format!("unknown task `{}`, expected one of {TASKS:?}", self.task.name),
            ));
        }
        const POLICIES: [&str; 4] = ["gaussian", "act", "flow", "smolvla"];
        if !POLICIES.contains(&self.policy.kind.as_str()) {
            return Err(invalid(
                "policy.kind",
                format!(
                    "unknown policy `{}`, expected one of {POLICIES:?}",
                    self.policy.kind
                ),
            ));
        }
        if self.policy.chunk == 0 {
            return Err(invalid(
                "policy.chunk",
                "expected at least 1 action per chunk".into(),
            ));
        }
        if self.task.cameras.is_empty() && self.policy.kind != "gaussian" {
            return Err(invalid(
                "task.cameras",
                format!("policy `{}` needs at least one camera", self.policy.kind),
            ));
        }
        if self.train.batch_size == 0 || self.train.eval_every == 0 {
            return Err(invalid(
                "train",
                "batch_size and eval_every must be at least 1".into(),
            ));
        }
        if self.seeds.is_empty() {
            return Err(invalid("seeds", "expected at least one seed".into()));
        }
        if self.arms.is_empty() {
            return Err(invalid("arms", "expected at least one [[arms]] table".into()));
        }
        for (i, arm) in self.arms.iter().enumerate() {
            if self.arms[..i].iter().any(|a| a.name == arm.name) {
                return Err(invalid(
                    &format!("arms[{i}].name"),
                    format!("duplicate arm name `{}`", arm.name),
                ));
            }
        }
        if self.arms.iter().any(|a| a.reward == RewardSource::Topreward) {
            match &self.reward_model {
                None => {
                    return Err(invalid(
                        "reward_model",
                        "an arm uses `reward = \"topreward\"`, so a [reward_model] table is required".into(),
                    ));
                }
                Some(rm) if !["exact", "incremental"].contains(&rm.mode.as_str()) => {
                    return Err(invalid(
                        "reward_model.mode",
                        format!(
                            "unknown mode `{}`, expected \"exact\" or \"incremental\"",
                            rm.mode
                        ),
                    ));
                }
                Some(rm) if let Err(e) = rm.prompt().validate() => {
                    return Err(invalid(
                        "reward_model.prompt_prefix / prompt_suffix",
                        e.to_string(),
                    ));
                }
                Some(rm) if !["topreward", "gvl"].contains(&rm.kind.as_str()) => {
                    return Err(invalid(
                        "reward_model.kind",
                        format!("unknown kind `{}`, expected \"topreward\" or \"gvl\"", rm.kind),
                    ));
                }
                Some(rm) if !["toprl", "openai"].contains(&rm.api.as_str()) => {
                    return Err(invalid(
                        "reward_model.api",
                        format!("unknown api `{}`, expected \"toprl\" or \"openai\"", rm.api),
                    ));
                }
                Some(rm)
                    if let Some(e) = rm
                        .endpoints
                        .iter()
                        .find(|e| !(e.starts_with("http://") || e.starts_with("https://"))) =>
                {
                    return Err(invalid(
                        "reward_model.endpoints",
                        format!("`{e}` is not a URL; expected http://host:port"),
                    ));
                }
                Some(rm) if rm.kind == "gvl" && !rm.endpoints.is_empty() && rm.api != "openai" => {
                    return Err(invalid(
                        "reward_model.api",
                        "remote GVL generates text through the chat endpoint: set api = \"openai\" (toprl's \
                         server has one too)"
                            .into(),
                    ));
                }
                Some(rm) if rm.fps.is_nan() || rm.fps <= 0.0 => {
                    return Err(invalid(
                        "reward_model.fps",
                        format!("expected a positive frame rate, got {}", rm.fps),
                    ));
                }
                Some(_) => {}
            }
        }
        crate::weighting::validate_config(self).map_err(|(field, message)| invalid(&field, message))?;
        if self.arms.iter().any(|a| a.algorithm == Algorithm::Awr) {
            let a = &self.awr;
            let positive = |v: f64| v.is_finite() && v > 0.0;
            let checks = [
                ("awr.iterations", a.iterations > 0, "at least 1"),
                ("awr.rollouts", a.rollouts > 0, "at least 1"),
                ("awr.policy_steps", a.policy_steps > 0, "at least 1"),
                ("awr.beta", positive(a.beta), "a positive number"),
                ("awr.max_weight", positive(a.max_weight), "a positive number"),
                ("awr.gamma", (0.0..=1.0).contains(&a.gamma), "in [0, 1]"),
                (
                    "awr.action_noise",
                    a.action_noise.is_finite() && a.action_noise >= 0.0,
                    "a number >= 0",
                ),
            ];
            if let Some((field, _, expected)) = checks.iter().find(|c| !c.1) {
                return Err(invalid(field, format!("expected {expected}")));
            }
        }
        crate::smolvla_arm::validate_fields(self).map_err(|(field, message)| invalid(field, message))?;
        if let Some(init) = &self.policy.init
            && !init.exists()
        {
            return Err(invalid(
                "policy.init",
                format!("checkpoint {} does not exist", init.display()),
            ));
        }
        self.validate_values()
            .map_err(|(field, message)| invalid(&field, message))?;
        if let Some(robot) = &self.robot {
            robot
                .validate(&self.policy, &self.task, &self.arms, self.reward_model.as_ref())
                .map_err(|(field, message)| invalid(&field, message))?;
        }
        Ok(())
    }

    /// Whether the run needs the reward model: an arm rewarded by TOPReward, or success on the arm
    /// decided by TOPReward's success detector.
    pub fn loads_reward_model(&self) -> bool {
        self.reward_model.is_some()
            && (self.arms.iter().any(|a| a.reward == RewardSource::Topreward)
                || self
                    .robot
                    .as_ref()
                    .is_some_and(|r| r.success == ArmSuccess::Topreward))
    }

    /// The success-score threshold of `[robot] success = "topreward"`: the configured value, or the
    /// one in its calibration file.
    pub fn arm_success_threshold(&self) -> anyhow::Result<Option<f64>> {
        let Some(robot) = self.robot.as_ref().filter(|r| r.success == ArmSuccess::Topreward) else {
            return Ok(None);
        };
        if let Some(t) = robot.success_threshold {
            return Ok(Some(t));
        }
        match &robot.success_calibration {
            Some(path) => {
                let model = self.reward_model.as_ref().map(|rm| rm.model.as_str());
                Ok(Some(
                    crate::commands::calibrate::read_calibration(path, model)?
                        .choice
                        .threshold,
                ))
            }
            None => Ok(None),
        }
    }

    /// Every value the run would refuse or misuse, refused here so `train --check` and the run agree:
    /// finite and in-range numbers, Eq. 3's clip range, no duplicate seeds, something to train and to
    /// evaluate, arm names that are plain folder names, cameras that exist, bounded memory.
    fn validate_values(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, message: String| Err((field.to_string(), message));
        let positive = |v: f64| v.is_finite() && v > 0.0;
        for (i, seed) in self.seeds.iter().enumerate() {
            if self.seeds[..i].contains(seed) {
                return bad(
                    "seeds",
                    format!("seed {seed} is listed twice; each seed is one independent run"),
                );
            }
        }
        let t = &self.task;
        if t.image_size == 0 || t.image_size > MAX_IMAGE_SIZE {
            return bad(
                "task.image_size",
                format!("expected 1 to {MAX_IMAGE_SIZE} pixels, got {}", t.image_size),
            );
        }
        if t.max_steps == Some(0) {
            return bad("task.max_steps", "expected at least 1 step".into());
        }
        for (i, camera) in t.cameras.iter().enumerate() {
            if !toprl_envs::sim::CAMERAS.contains(&camera.as_str()) {
                return bad(
                    &format!("task.cameras[{i}]"),
                    format!(
                        "unknown camera `{camera}`, expected one of {:?}",
                        toprl_envs::sim::CAMERAS
                    ),
                );
            }
            if t.cameras[..i].contains(camera) {
                return bad(
                    &format!("task.cameras[{i}]"),
                    format!("camera `{camera}` is listed twice"),
                );
            }
        }
        match &self.data {
            DataConfig::Sim {
                episodes,
                noise_levels,
            } => {
                if *episodes == 0 {
                    return bad("data.episodes", "expected at least 1 demonstration".into());
                }
                if noise_levels.is_empty() {
                    return bad("data.noise_levels", "expected at least one level".into());
                }
                if let Some(v) = noise_levels.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                    return bad(
                        "data.noise_levels",
                        format!("expected finite levels >= 0, got {v}"),
                    );
                }
            }
            DataConfig::Lerobot { path, camera } => {
                if path.trim().is_empty() {
                    return bad("data.path", "expected a dataset folder or hub id".into());
                }
                if camera.trim().is_empty() {
                    return bad("data.camera", "expected a camera key".into());
                }
            }
        }
        let tr = &self.train;
        if let Err(e) = toprl_policies::device(tr.backend, tr.device) {
            let field = match &e {
                toprl_policies::PolicyError::Invalid { field, .. } => format!("train.{field}"),
                _ => "train.backend".to_string(),
            };
            return bad(&field, e.to_string());
        }
        if tr.steps == 0 {
            return bad(
                "train.steps",
                "expected at least 1 gradient step (0 would report an untrained policy)".into(),
            );
        }
        if tr.batch_size > MAX_BATCH_SIZE {
            return bad(
                "train.batch_size",
                format!("expected at most {MAX_BATCH_SIZE}, got {}", tr.batch_size),
            );
        }
        if !positive(tr.lr) {
            return bad(
                "train.lr",
                format!("expected a positive finite learning rate, got {}", tr.lr),
            );
        }
        if let Some(decay) = tr.ema_decay {
            if !(decay > 0.0 && decay < 1.0) {
                return bad(
                    "train.ema_decay",
                    format!("expected a decay strictly between 0 and 1 (e.g. 0.999), got {decay}"),
                );
            }
            if self.policy.kind == "smolvla" {
                return bad(
                    "train.ema_decay",
                    "the smolvla policy keeps no weight average (LeRobot's SmolVLA recipe has none); \
                     remove ema_decay"
                        .into(),
                );
            }
        }
        let weights = toprl_rewards::metrics::WeightParams {
            tau: tr.tau,
            delta_max: tr.delta_max,
            min_weight: tr.min_weight,
        };
        if let Err(e) = weights.validate() {
            return bad("train.tau / delta_max / min_weight", e.to_string());
        }
        if self.eval.episodes == 0 {
            return bad(
                "eval.episodes",
                "expected at least 1 evaluation episode (0 would report a success rate of 0)".into(),
            );
        }
        for (i, arm) in self.arms.iter().enumerate() {
            if let Err(e) = toprl_envs::safe_path::safe_component(&arm.name, "arm name") {
                return bad(
                    &format!("arms[{i}].name"),
                    format!("{e}; it names the arm's folder under runs/"),
                );
            }
        }
        if let Some(rm) = self
            .reward_model
            .as_ref()
            .filter(|_| self.arms.iter().any(|a| a.reward == RewardSource::Topreward))
        {
            if rm.model.trim().is_empty() {
                return bad(
                    "reward_model.model",
                    "expected a checkpoint folder or hub id".into(),
                );
            }
            if let DataConfig::Sim { .. } = self.data {
                let rendered: Vec<String> = t
                    .cameras
                    .iter()
                    .map(|c| format!("observation.images.{c}"))
                    .collect();
                if !rendered.contains(&rm.camera) {
                    return bad(
                        "reward_model.camera",
                        format!("`{}` is not rendered; task.cameras gives {rendered:?}", rm.camera),
                    );
                }
                if t.image_size < 32 {
                    return bad(
                        "task.image_size",
                        format!(
                            "the reward model needs frames of at least 32 pixels, got {}",
                            t.image_size
                        ),
                    );
                }
            }
        }
        // Memory before work: one mini-batch of camera images as f32, and the demonstrations' frames.
        let cameras = if self.policy.kind == "gaussian" {
            0
        } else {
            t.cameras.len()
        };
        let pixels = u64::from(t.image_size) * u64::from(t.image_size) * 3;
        let batch_bytes = tr.batch_size as u64 * (cameras as u64 * pixels * 4 + 4096);
        if batch_bytes > MAX_BATCH_BYTES {
            return bad(
                "train.batch_size",
                format!(
                    "a batch of {} with {cameras} camera(s) at {}px needs about {:.1} GiB; the limit is {:.0} GiB",
                    tr.batch_size,
                    t.image_size,
                    batch_bytes as f64 / GIB,
                    MAX_BATCH_BYTES as f64 / GIB
                ),
            );
        }
        // Simulated demonstrations keep their camera frames in memory when an image policy or the reward
        // model needs them: refuse a config whose frames alone would not fit.
        let keeps_frames =
            self.policy.kind != "gaussian" || self.arms.iter().any(|a| a.reward == RewardSource::Topreward);
        if let DataConfig::Sim { episodes, .. } = &self.data
            && keeps_frames
            && let Ok(task) = t.name.parse::<toprl_envs::sim::Task>()
        {
            let steps = t.max_steps.map_or(task.default_max_steps() as u64, u64::from);
            let frame_bytes = u64::from(*episodes) * (steps + 1) * t.cameras.len() as u64 * pixels;
            let available = memory_bytes();
            if frame_bytes > available {
                return bad(
                    "data.episodes",
                    format!(
                        "{episodes} episodes of up to {steps} steps with {} camera(s) at {}px need about {:.1} GiB \
                         of frames; this machine has {:.1} GiB",
                        t.cameras.len(),
                        t.image_size,
                        frame_bytes as f64 / GIB,
                        available as f64 / GIB
                    ),
                );
            }
        }
        if self.arms.iter().any(|a| a.algorithm == Algorithm::Awr) && self.awr.value_steps == 0 {
            return bad("awr.value_steps", "expected at least 1".into());
        }
        Ok(())
    }
}

impl ExperimentConfig {
    /// The checks that look outside the config file, run by `train --check` and before every run: the
    /// reward model's checkpoint folder holds a checkpoint, and a local LeRobotDataset opens and has
    /// the cameras the config names. Nothing is loaded beyond metadata; hub ids are resolved at run time.
    pub fn check_resources(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_string(),
            message,
        };
        if let Some(robot) = &self.robot {
            robot
                .check_resources()
                .map_err(|(field, message)| invalid(&field, message))?;
        }
        let topreward = self.arms.iter().any(|a| a.reward == RewardSource::Topreward);
        if let Some(rm) = self.reward_model.as_ref().filter(|_| self.loads_reward_model()) {
            toprl_rewards::qwen3_vl::CheckpointFiles::check(&rm.model)
                .map_err(|e| invalid("reward_model.model", e.to_string()))?;
            if let Some(path) = self.robot.as_ref().and_then(|r| r.success_calibration.as_ref()) {
                crate::commands::calibrate::read_calibration(path, Some(&rm.model))
                    .map_err(|e| invalid("robot.success_calibration", format!("{e:#}")))?;
            }
        }
        if let DataConfig::Lerobot {
            path: dataset,
            camera,
        } = &self.data
            && Path::new(dataset).is_dir()
        {
            let ds = toprl_envs::dataset::LeRobotDataset::open(dataset)
                .map_err(|e| invalid("data.path", e.to_string()))?;
            let available = ds.camera_keys();
            let mut wanted = Vec::new();
            if self.policy.kind != "gaussian" || topreward {
                wanted.push(("data.camera", camera.clone()));
            }
            if self.policy.kind != "gaussian" {
                wanted.extend(
                    self.task
                        .cameras
                        .iter()
                        .map(|c| ("task.cameras", format!("observation.images.{c}"))),
                );
            }
            if let Some(rm) = self.reward_model.as_ref().filter(|_| topreward) {
                wanted.push(("reward_model.camera", rm.camera.clone()));
            }
            for (field, key) in wanted {
                if !available.contains(&key) {
                    return Err(invalid(
                        field,
                        format!("dataset {dataset} has no camera `{key}` (cameras: {available:?})"),
                    ));
                }
            }
            // act/flow keep every frame of their cameras at task.image_size (resized while decoding).
            if matches!(self.policy.kind.as_str(), "act" | "flow") {
                let pixels = u64::from(self.task.image_size).pow(2) * 3;
                let bytes = ds.num_frames() as u64 * self.task.cameras.len() as u64 * pixels;
                let available = memory_bytes();
                if bytes > available {
                    return Err(invalid(
                        "task.image_size",
                        format!(
                            "dataset {dataset} has {} frames; {} camera(s) at {}px need about {:.1} GiB, \
                             this machine has {:.1} GiB: lower task.image_size or use fewer cameras",
                            ds.num_frames(),
                            self.task.cameras.len(),
                            self.task.image_size,
                            bytes as f64 / GIB,
                            available as f64 / GIB
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Physical memory (Linux `MemTotal`), or 64 GiB where it cannot be read.
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(64 << 30)
}

/// Largest `task.image_size` accepted.
pub const MAX_IMAGE_SIZE: u32 = 1024;
/// Largest `train.batch_size` accepted.
pub const MAX_BATCH_SIZE: usize = 65_536;
/// Largest estimated size of one training batch's inputs.
const MAX_BATCH_BYTES: u64 = 4 << 30;
const GIB: f64 = (1u64 << 30) as f64;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [task]
        name = "pick_cube"
        [data]
        source = "sim"
        episodes = 4
        [policy]
        kind = "gaussian"
        [[arms]]
        name = "bc"
        reward = "none"
    "#;

    #[test]
    fn minimal_config_takes_documented_defaults() {
        let c = ExperimentConfig::parse(MINIMAL, Path::new("experiments/min.toml")).unwrap();
        assert_eq!(c.name.as_deref(), Some("min"));
        assert_eq!(c.seeds, vec![0]);
        assert_eq!(c.train.steps, 2000);
        assert_eq!(c.arms[0].algorithm, Algorithm::RewardAlignedBc);
    }

    #[test]
    fn robot_table_takes_defaults_and_refuses_bad_values_by_field() {
        let robot = format!("{MINIMAL}\n[robot]\nport = \"/dev/ttyACM0\"\nid = \"arm\"\n");
        let c = ExperimentConfig::parse(&robot, Path::new("r.toml")).unwrap();
        let r = c.robot.as_ref().unwrap();
        assert_eq!((r.fps, r.episode_steps(), r.watchdog_ms), (30, 600, 500));
        assert_eq!(r.max_relative().unwrap(), None);
        let with = |extra: &str| ExperimentConfig::parse(&format!("{robot}{extra}\n"), Path::new("r.toml"));
        let six = with("max_relative_target = [1, 2, 3, 4, 5, 6]").unwrap();
        let six = six.robot.unwrap().max_relative().unwrap().unwrap();
        assert_eq!(six, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        for (extra, field) in [
            ("max_relative_target = [1.0, 2.0]", "robot.max_relative_target"),
            ("max_relative_target = -1.0", "robot.max_relative_target"),
            ("fps = 0", "robot.fps"),
            ("episode_seconds = 0.0", "robot.episode_seconds"),
            ("reset_speed = nan", "robot.reset_speed"),
            ("portt = \"x\"", "portt"),
        ] {
            let err = with(extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
        // What the arm cannot provide is refused before any training.
        let env_state = robot.replace(
            "kind = \"gaussian\"",
            "kind = \"gaussian\"\nenvironment_state = true",
        );
        let err = ExperimentConfig::parse(&env_state, Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("policy.environment_state"), "{err}");
        let image = robot.replace("kind = \"gaussian\"", "kind = \"act\"");
        let err = ExperimentConfig::parse(&image, Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("robot.cameras"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_by_name_with_line() {
        let text = MINIMAL.replace("kind = \"gaussian\"", "kind = \"gaussian\"\nhiden = 3");
        let err = ExperimentConfig::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml"), "{err}");
        assert!(err.contains("unknown field `hiden`"), "{err}");
        assert!(err.contains("line 9"), "{err}");
    }

    #[test]
    fn topreward_arm_needs_reward_model() {
        let text = MINIMAL.replace("reward = \"none\"", "reward = \"topreward\"");
        let err = ExperimentConfig::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("reward_model"), "{err}");
    }

    #[test]
    fn awr_arms_need_a_supported_reward_and_sane_hyper_parameters() {
        // `none` with AWR is the zero-advantage control.
        let text = MINIMAL.replace("reward = \"none\"", "reward = \"none\"\nalgorithm = \"awr\"");
        ExperimentConfig::parse(&text, Path::new("x.toml")).unwrap();
        let text = MINIMAL.replace("reward = \"none\"", "reward = \"time_bias\"\nalgorithm = \"awr\"");
        let err = ExperimentConfig::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("arms[0].reward") && err.contains("awr"), "{err}");
        let text = MINIMAL.replace("reward = \"none\"", "reward = \"oracle\"\nalgorithm = \"awr\"")
            + "\n[awr]\nbeta = 0.0\n";
        let err = ExperimentConfig::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("awr.beta"), "{err}");
    }

    #[test]
    fn a_prompt_suffix_without_the_instruction_is_refused_before_loading_the_model() {
        let text = MINIMAL.replace("reward = \"none\"", "reward = \"topreward\"")
            + "\n[reward_model]\nmodel = \"m\"\nprompt_suffix = \"Done? The answer is: True\"\n";
        let err = ExperimentConfig::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prompt_suffix") && err.contains("{instruction}"),
            "{err}"
        );
    }

    #[test]
    fn values_the_run_would_refuse_are_refused_by_field() {
        let train = |extra: &str| MINIMAL.to_string() + "[train]\n" + extra + "\n";
        let cases = [
            (train("min_weight = 5.0\ndelta_max = 1.0"), "min_weight"),
            (train("delta_max = nan"), "delta_max"),
            (train("tau = nan"), "tau"),
            (train("lr = nan"), "train.lr"),
            (train("lr = 0.0"), "train.lr"),
            (train("steps = 0"), "train.steps"),
            (train("ema_decay = 1.0"), "train.ema_decay"),
            (train("ema_decay = 0.0"), "train.ema_decay"),
            (train("batch_size = 100000000"), "train.batch_size"),
            (MINIMAL.to_string() + "[eval]\nepisodes = 0\n", "eval.episodes"),
            (format!("seeds = [0, 0]\n{MINIMAL}"), "seeds"),
            (
                MINIMAL.replace("episodes = 4", "episodes = 4\nnoise_levels = [nan]"),
                "data.noise_levels",
            ),
            (MINIMAL.replace("episodes = 4", "episodes = 0"), "data.episodes"),
            (
                MINIMAL.replace("name = \"pick_cube\"", "name = \"pick_cube\"\nimage_size = 0"),
                "task.image_size",
            ),
            (
                MINIMAL.replace("name = \"bc\"", "name = \"../../escape\""),
                "arms[0].name",
            ),
            (MINIMAL.replace("name = \"bc\"", "name = \"\""), "arms[0].name"),
            (
                MINIMAL.replace(
                    "name = \"pick_cube\"",
                    "name = \"pick_cube\"\ncameras = [\"side\"]",
                ),
                "task.cameras[0]",
            ),
            (
                MINIMAL.replace("reward = \"none\"", "reward = \"topreward\"")
                    + "[reward_model]\nmodel = \"m/n\"\ncamera = \"observation.images.top\"\n",
                "reward_model.camera",
            ),
            (
                MINIMAL
                    .replace("kind = \"gaussian\"", "kind = \"act\"")
                    .replace("episodes = 4", "episodes = 1000000")
                    .replace("name = \"pick_cube\"", "name = \"pick_cube\"\nimage_size = 512"),
                "data.episodes",
            ),
        ];
        for (text, field) in cases {
            let err = ExperimentConfig::parse(&text, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("x.toml") && err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn a_missing_local_model_folder_is_refused_by_check_resources() {
        let text = MINIMAL.replace("reward = \"none\"", "reward = \"topreward\"")
            + "[reward_model]\nmodel = \"/no/such/model\"\n";
        let c = ExperimentConfig::parse(&text, Path::new("x.toml")).unwrap();
        let err = c.check_resources(Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("reward_model.model"), "{err}");
    }

    #[test]
    fn oracle_noisy_needs_a_target_voc_and_nothing_else_takes_one() {
        let noisy = MINIMAL.replace("reward = \"none\"", "reward = \"oracle_noisy\"");
        let err = ExperimentConfig::parse(&noisy, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("arms[0].voc"), "{err}");
        let ok = noisy.replace(
            "oracle_noisy\"",
            "oracle_noisy\"\nvoc = 0.8\nweighting = \"rabc\"",
        );
        let c = ExperimentConfig::parse(&ok, Path::new("x.toml")).unwrap();
        assert_eq!(c.arms[0].voc, Some(0.8));
        assert_eq!(c.train.delta, DeltaKind::Chunk, "chunk deltas by default");
        let bad = MINIMAL.replace("reward = \"none\"", "reward = \"none\"\nvoc = 0.8");
        let err = ExperimentConfig::parse(&bad, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("arms[0].voc"), "{err}");
        let bad = ok.replace("voc = 0.8", "voc = 1.5");
        assert!(ExperimentConfig::parse(&bad, Path::new("x.toml")).is_err());
    }

    #[test]
    fn reward_model_device_and_dtype_parse_and_bad_ones_are_named() {
        let base = MINIMAL.replace("reward = \"none\"", "reward = \"topreward\"")
            + "\n[reward_model]\nmodel = \"m\"\n";
        let cfg = ExperimentConfig::parse(&base, Path::new("x.toml")).unwrap();
        let rm = cfg.reward_model.unwrap();
        assert_eq!((rm.device, rm.dtype), (DeviceSpec::Cpu, Precision::Auto));
        let cfg = ExperimentConfig::parse(
            &(base.clone() + "device = \"cuda:1\"\ndtype = \"bf16\"\n"),
            Path::new("x.toml"),
        )
        .unwrap();
        let rm = cfg.reward_model.unwrap();
        assert_eq!((rm.device, rm.dtype), (DeviceSpec::Cuda(1), Precision::Bf16));
        let err = ExperimentConfig::parse(&(base.clone() + "device = \"tpu\"\n"), Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown device"), "{err}");
        let err = ExperimentConfig::parse(&(base + "dtpye = \"bf16\"\n"), Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dtpye"),
            "toprl's own config refuses unknown fields: {err}"
        );
    }

    #[test]
    fn unknown_task_names_the_field() {
        let text = MINIMAL.replace("pick_cube", "juggle");
        let err = ExperimentConfig::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("task.name") && err.contains("juggle"), "{err}");
    }

    #[test]
    fn reward_model_kind_api_and_endpoints_are_checked() {
        let with = |extra: &str| {
            MINIMAL.replace("reward = \"none\"", "reward = \"topreward\"")
                + "\n[reward_model]\nmodel = \"m\"\n"
                + extra
        };
        let parse = |extra: &str| ExperimentConfig::parse(&with(extra), Path::new("x.toml"));
        let ok = parse("kind = \"gvl\"\nrevision = \"abc123\"\n").unwrap();
        let rm = ok.reward_model.unwrap();
        assert_eq!(
            (rm.kind.as_str(), rm.revision.as_deref()),
            ("gvl", Some("abc123"))
        );
        let ok = parse("endpoints = [\"http://a:8000\", \"http://b:8000\"]\napi = \"openai\"\n").unwrap();
        assert_eq!(ok.reward_model.unwrap().endpoints.len(), 2);
        for (extra, want) in [
            ("kind = \"clip\"\n", "reward_model.kind"),
            ("api = \"grpc\"\n", "reward_model.api"),
            ("endpoints = [\"gpu1:8000\"]\n", "not a URL"),
            (
                "kind = \"gvl\"\nendpoints = [\"http://a:1\"]\n",
                "set api = \"openai\"",
            ),
        ] {
            let err = parse(extra).unwrap_err().to_string();
            assert!(err.contains(want), "{extra}: {err}");
        }
    }
}
