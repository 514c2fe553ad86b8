//! Experiment configuration: one TOML file describes a whole comparison (data, policy, reward arms,
//! algorithm, seeds, evaluation). Every table rejects unknown keys so a typo never silently falls back
//! to a default; every default is documented here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toprl_rewards::topreward::prompt::PromptConfig;

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
    /// `exact` (re-encode every prefix, as the reference) or `incremental` (KV-cache reuse). Default: incremental.
    #[serde(default = "default_mode")]
    pub mode: String,
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
    /// Update rule. Default: `reward_aligned_bc`.
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
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

    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
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
                Some(rm) if rm.fps.is_nan() || rm.fps <= 0.0 => {
                    return Err(invalid(
                        "reward_model.fps",
                        format!("expected a positive frame rate, got {}", rm.fps),
                    ));
                }
                Some(_) => {}
            }
        }
        for (i, arm) in self.arms.iter().enumerate() {
            if arm.algorithm == Algorithm::Awr && arm.reward == RewardSource::None {
                return Err(invalid(
                    &format!("arms[{i}].reward"),
                    "`awr` needs a reward to compute advantages: \"sparse\", \"oracle\" or \"topreward\""
                        .into(),
                ));
            }
        }
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
        Ok(())
    }
}

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
    fn awr_arms_need_a_reward_and_sane_hyper_parameters() {
        let text = MINIMAL.replace("reward = \"none\"", "reward = \"none\"\nalgorithm = \"awr\"");
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
    fn unknown_task_names_the_field() {
        let text = MINIMAL.replace("pick_cube", "juggle");
        let err = ExperimentConfig::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("task.name") && err.contains("juggle"), "{err}");
    }
}
