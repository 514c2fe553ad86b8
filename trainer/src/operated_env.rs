//! Episodes on the real arm with the operator in the loop (issue: online AWR on the real SO-101). The
//! real arm knows neither when the scene is ready nor whether the task succeeded; this wrapper around its
//! [`Environment`] supplies both, as LeRobot's recording loop does with its reset phase and keyboard:
//!
//! - before each episode the operator resets the scene and presses Enter (`[robot] operator_reset`);
//! - during an episode, Enter ends it early (it still counts, truncated);
//! - when it ends, success is decided by `[robot] success`: the operator's y/n, or TOPReward's success
//!   detector on the reward camera's frames (the mean log p(" True") of the last three prefixes against a
//!   calibrated threshold, paper Sec. 4), or nobody (`None`, reported as not measured).
//!
//! Success is reported as the last transition's [`TaskStatus`]; no progress curve is invented for the
//! steps before it (`progress` is NaN there and [`toprl_envs::environment::rollout`] keeps none).

use std::cell::RefCell;
use std::rc::Rc;

use image::RgbImage;
use toprl_envs::environment::{EnvError, Environment, Observation, TaskStatus, Transition};

use crate::config::ArmSuccess;
use crate::operator;

/// Scores an episode's frames (sampled at `fps`) for success: returns TOPReward's success score.
pub type SuccessScoreFn = dyn FnMut(&[RgbImage], f64, &str) -> Result<f64, String>;

/// The reward model's success score, shared between the trainer's scoring and the arm's episodes (one
/// model in memory).
#[derive(Clone)]
pub struct SuccessScorer(pub Rc<RefCell<Box<SuccessScoreFn>>>);

impl std::fmt::Debug for SuccessScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SuccessScorer")
    }
}

/// The success detector of a run on the arm: the shared scorer and the threshold, resolved once when the run
/// starts (`success_threshold`, or the `success_calibration` file read then).
#[derive(Debug, Clone)]
pub struct ArmDetector {
    pub scorer: SuccessScorer,
    pub threshold: f64,
}

/// How [`OperatedEnv`] judges success when `success = "topreward"`.
#[derive(Debug, Clone)]
pub struct DetectorSettings {
    pub scorer: SuccessScorer,
    /// Success when the score is at least this.
    pub threshold: f64,
    /// Camera feature the reward model watches (`observation.images.front`).
    pub camera: String,
    /// Frames per second the reward model sees (every `round(env fps / fps)`-th frame is kept).
    pub fps: f64,
}

/// A real-arm [`Environment`] with the operator's reset, early end and success judgement.
pub struct OperatedEnv {
    inner: Box<dyn Environment>,
    operator_reset: bool,
    success: ArmSuccess,
    detector: Option<DetectorSettings>,
    /// Reward-camera frames of the running episode, already subsampled.
    frames: Vec<RgbImage>,
    steps: usize,
    episodes: usize,
}

impl OperatedEnv {
    pub fn new(
        inner: Box<dyn Environment>,
        operator_reset: bool,
        success: ArmSuccess,
        detector: Option<DetectorSettings>,
    ) -> Result<Self, EnvError> {
        if success == ArmSuccess::Topreward && detector.is_none() {
            return Err(EnvError::Reset(
                "success = \"topreward\" needs the reward model's success detector".into(),
            ));
        }
        Ok(Self {
            inner,
            operator_reset,
            success,
            detector,
            frames: Vec::new(),
            steps: 0,
            episodes: 0,
        })
    }

    fn stride(&self) -> usize {
        self.detector
            .as_ref()
            .map_or(1, |d| (self.inner.fps() / d.fps).round().max(1.0) as usize)
    }

    /// Keep the reward camera's frame of this step when the detector will read it.
    fn keep_frame(&mut self, obs: &Observation) -> Result<(), EnvError> {
        let stride = self.stride();
        let Some(d) = &self.detector else {
            return Ok(());
        };
        if self.steps.is_multiple_of(stride) {
            let frame = obs.images.get(&d.camera).ok_or_else(|| {
                EnvError::Reset(format!(
                    "the success detector watches `{}`, which the arm does not deliver",
                    d.camera
                ))
            })?;
            self.frames.push(frame.clone());
        }
        Ok(())
    }

    /// The success of the episode that just ended, by `[robot] success`.
    fn judge(&mut self, instruction: &str) -> Result<Option<bool>, EnvError> {
        match self.success {
            ArmSuccess::None => Ok(None),
            ArmSuccess::Operator => {
                let question = format!(
                    "episode {}: did the arm succeed at {instruction:?}?",
                    self.episodes
                );
                operator::ask_yes_no(&question)
                    .map(Some)
                    .map_err(|e| EnvError::Reset(e.to_string()))
            }
            ArmSuccess::Topreward => {
                let stride = self.stride();
                let d = self
                    .detector
                    .as_ref()
                    .ok_or_else(|| EnvError::Reset("no success detector".into()))?;
                let fps = self.inner.fps() / stride as f64;
                let score = (d.scorer.0.borrow_mut())(&self.frames, fps, instruction)
                    .map_err(|e| EnvError::Reset(format!("TOPReward success detection: {e}")))?;
                let success = score >= d.threshold;
                tracing::info!(
                    episode = self.episodes,
                    score,
                    threshold = d.threshold,
                    success,
                    "TOPReward success detector"
                );
                Ok(Some(success))
            }
        }
    }
}

impl Environment for OperatedEnv {
    fn reset(&mut self, seed: u64) -> Result<(Observation, Option<TaskStatus>), EnvError> {
        self.episodes += 1;
        if self.operator_reset {
            operator::wait_for_enter(&format!(
                "episode {}: reset the scene, then press Enter (Enter again ends the episode early)",
                self.episodes
            ))
            .map_err(|e| EnvError::Reset(e.to_string()))?;
        }
        let (obs, task) = self.inner.reset(seed)?;
        self.frames.clear();
        self.steps = 0;
        self.keep_frame(&obs)?;
        Ok((obs, task))
    }

    fn step(&mut self, action: &[f32]) -> Result<Transition, EnvError> {
        let mut t = self.inner.step(action)?;
        self.steps += 1;
        if !(t.terminated || t.truncated) && self.operator_reset && operator::end_requested() {
            tracing::info!(
                episode = self.episodes,
                steps = self.steps,
                "episode ended by the operator"
            );
            t.truncated = true;
        }
        self.keep_frame(&t.observation)?;
        if (t.terminated || t.truncated) && t.task.is_none() {
            let instruction = self.inner.instruction().to_string();
            t.task = self.judge(&instruction)?.map(|success| TaskStatus {
                success,
                progress: f64::NAN,
            });
        }
        Ok(t)
    }

    fn instruction(&self) -> &str {
        self.inner.instruction()
    }

    fn fps(&self) -> f64 {
        self.inner.fps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toprl_envs::environment::rollout;
    use toprl_envs::sim::{RolloutOptions, SimConfig, So101Env, Task};

    /// The real simulator seen as a real arm sees itself: frames and joints, but no reward and no task
    /// status, so the wrapper has to decide success.
    struct Blind(So101Env);

    impl Environment for Blind {
        fn reset(&mut self, seed: u64) -> Result<(Observation, Option<TaskStatus>), EnvError> {
            Ok((Environment::reset(&mut self.0, seed)?.0, None))
        }
        fn step(&mut self, action: &[f32]) -> Result<Transition, EnvError> {
            let mut t = Environment::step(&mut self.0, action)?;
            t.task = None;
            t.reward = None;
            Ok(t)
        }
        fn instruction(&self) -> &str {
            Environment::instruction(&self.0)
        }
        fn fps(&self) -> f64 {
            Environment::fps(&self.0)
        }
    }

    fn blind_arm() -> Box<dyn Environment> {
        let sim = So101Env::new(SimConfig {
            task: Task::Reach,
            image_size: 48,
            cameras: vec!["front".into()],
            max_steps: Some(12),
            ..SimConfig::default()
        })
        .expect("MuJoCo scene (run scripts/setup.sh for the SO-101 assets)");
        Box::new(Blind(sim))
    }

    #[test]
    fn topreward_detector_scores_the_reward_camera_and_applies_the_threshold() {
        // The tiny random Qwen3-VL committed as a fixture, through the trainer's own reward-model loader.
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rewards/fixtures/qwen3vl-tiny");
        let rm: crate::config::RewardModelConfig =
            toml::from_str(&format!("model = {:?}", model.display().to_string()))
                .expect("reward model config");
        let mut score = crate::commands::remote::reward_model_scorer(&rm, None).expect("tiny model loads");
        let seen: Rc<RefCell<Vec<(usize, f64)>>> = Rc::default();
        let log = Rc::clone(&seen);
        let detect: Box<SuccessScoreFn> = Box::new(move |frames, fps, instruction| {
            log.borrow_mut().push((frames.len(), fps));
            let s = score(frames, fps, instruction).map_err(|e| e.to_string())?;
            toprl_rewards::metrics::success_score(&s.log_probs, 3).ok_or_else(|| "no prefix".to_string())
        });
        let scorer = SuccessScorer(Rc::new(RefCell::new(detect)));
        let mut still = |_: &Observation, _: &str| vec![0.0; toprl_envs::so101::NUM_JOINTS];
        let mut outcomes = Vec::new();
        for threshold in [-1e9, 1e9] {
            let detector = DetectorSettings {
                scorer: scorer.clone(),
                threshold,
                camera: "observation.images.front".into(),
                fps: 10.0,
            };
            let mut env =
                OperatedEnv::new(blind_arm(), false, ArmSuccess::Topreward, Some(detector)).unwrap();
            let r = rollout(&mut env, &mut still, 3, RolloutOptions::default()).unwrap();
            assert!(r.episode.true_progress.is_none(), "no progress curve is invented");
            outcomes.push(r.success);
        }
        assert_eq!(outcomes, [Some(true), Some(false)]);
        // 30 Hz seen at 10 Hz: every third of the 13 observations (reset + 12 steps), i.e. 5 frames at 10 fps.
        assert_eq!(*seen.borrow(), [(5, 10.0), (5, 10.0)]);
    }

    #[test]
    fn without_a_judge_success_stays_unknown_and_topreward_needs_a_detector() {
        let mut still = |_: &Observation, _: &str| vec![0.0; toprl_envs::so101::NUM_JOINTS];
        let mut env = OperatedEnv::new(blind_arm(), false, ArmSuccess::None, None).unwrap();
        let r = rollout(&mut env, &mut still, 0, RolloutOptions::default()).unwrap();
        assert_eq!((r.success, r.steps), (None, 12));
        assert!(OperatedEnv::new(blind_arm(), false, ArmSuccess::Topreward, None).is_err());
    }
}
