//! One environment API over the MuJoCo arm and the real SO-101, with Gymnasium semantics:
//! `reset(seed) -> (observation, task status)` and `step(action) -> transition`
//! (observation, reward, terminated, truncated, task status).
//!
//! Observations are what both sources can give: the joint state in LeRobot units and camera images by
//! feature key (`observation.images.front`). What only a simulator knows is typed as optional rather
//! than invented on hardware: the privileged scene vector (`environment_state`), the reward, and the task
//! status (success, ground-truth progress). A real arm answers `None` for all three; a caller that needs
//! them (a `sparse` reward, an `oracle` arm, a success rate) must get them elsewhere (TOPReward, the
//! operator) or refuse.

use std::collections::BTreeMap;

use image::RgbImage;

use crate::episode::Episode;
use crate::robot::ArmError;
use crate::robot::camera::CameraError;
use crate::sim::{ENVIRONMENT_STATE_DIM, RolloutOptions, SimError, SimObservation, So101Env, StepInfo};
use crate::so101::NUM_JOINTS;

/// What an environment observes after reset and after each step.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Joint positions in LeRobot units (degrees; gripper 0-100), motor order.
    pub state: [f32; NUM_JOINTS],
    /// Camera images by feature key (`observation.images.{camera}`).
    pub images: BTreeMap<String, RgbImage>,
    /// The simulator's privileged scene vector ([`crate::sim::ENVIRONMENT_STATE_NAMES`]); `None` on a
    /// real arm.
    pub environment_state: Option<[f32; ENVIRONMENT_STATE_DIM]>,
}

impl From<SimObservation> for Observation {
    fn from(obs: SimObservation) -> Self {
        Observation {
            state: obs.state,
            images: obs.images,
            environment_state: Some(obs.environment_state),
        }
    }
}

/// Ground truth about the task that only a simulator has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskStatus {
    /// The task is solved in the current state.
    pub success: bool,
    /// Task progress in [0, 1].
    pub progress: f64,
}

impl From<&StepInfo> for TaskStatus {
    fn from(info: &StepInfo) -> Self {
        TaskStatus {
            success: info.success,
            progress: info.progress,
        }
    }
}

/// The result of one control step.
#[derive(Debug, Clone)]
pub struct Transition {
    pub observation: Observation,
    /// The environment's own reward; `None` where there is none (the real arm).
    pub reward: Option<f64>,
    /// The episode ended in a terminal state (a solved task in simulation).
    pub terminated: bool,
    /// The episode ran out of time.
    pub truncated: bool,
    /// Success and progress after the step; `None` where nobody knows them (the real arm).
    pub task: Option<TaskStatus>,
    /// Some value of the action was changed by a safety clamp (joint range, `max_relative_target`).
    pub clipped: bool,
}

/// Everything that can stop an environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("simulation: {0}")]
    Sim(#[from] SimError),
    #[error("arm: {0}")]
    Arm(#[from] ArmError),
    #[error("camera: {0}")]
    Camera(#[from] CameraError),
    #[error("action has {got} values, expected {expected}")]
    ActionLength { expected: usize, got: usize },
    #[error("action value {value} for joint {joint} is not a finite number")]
    NonFiniteAction { joint: usize, value: f32 },
    #[error("step called before reset")]
    NotReset,
    #[error("reset: {0}")]
    Reset(String),
    #[error("stopped by the operator")]
    Stopped,
}

/// A position-controlled SO-101 environment, simulated or real.
pub trait Environment {
    /// Starts an episode. `seed` draws the scene in simulation; the real world is not seeded (the
    /// operator sets the scene) and the arm moves to its start pose.
    fn reset(&mut self, seed: u64) -> Result<(Observation, Option<TaskStatus>), EnvError>;

    /// Applies one position command (LeRobot units, motor order) for one control period.
    fn step(&mut self, action: &[f32]) -> Result<Transition, EnvError>;

    /// The task instruction of the current episode.
    fn instruction(&self) -> &str;

    /// Control rate in steps per second.
    fn fps(&self) -> f64;
}

impl Environment for So101Env {
    fn reset(&mut self, seed: u64) -> Result<(Observation, Option<TaskStatus>), EnvError> {
        let (obs, info) = So101Env::reset(self, Some(seed))?;
        Ok((obs.into(), Some(TaskStatus::from(&info))))
    }

    fn step(&mut self, action: &[f32]) -> Result<Transition, EnvError> {
        let r = So101Env::step(self, action)?;
        Ok(Transition {
            observation: r.observation.into(),
            reward: Some(r.reward),
            terminated: r.terminated,
            truncated: r.truncated,
            task: Some(TaskStatus::from(&r.info)),
            clipped: r.info.clipped,
        })
    }

    fn instruction(&self) -> &str {
        So101Env::instruction(self)
    }

    fn fps(&self) -> f64 {
        crate::so101::CONTROL_HZ
    }
}

/// A finished episode from any [`Environment`].
#[derive(Debug, Clone)]
pub struct EpisodeRollout {
    /// One row per observation, the last being the final observation with the last action repeated
    /// (as [`crate::sim::rollout`] records). `success` and `true_progress` are set only when the
    /// environment reports a task status.
    pub episode: Episode,
    /// Control steps taken.
    pub steps: usize,
    /// Sum of the environment's rewards; `None` when it has none.
    pub total_reward: Option<f64>,
    /// Whether the task was solved at the end; `None` when the environment cannot tell.
    pub success: Option<bool>,
}

/// Resets `env` with `seed` and steps it with `policy` (observation, instruction -> action) until the
/// episode terminates or is truncated, recording every observation and action.
pub fn rollout(
    env: &mut dyn Environment,
    policy: &mut dyn FnMut(&Observation, &str) -> Vec<f32>,
    seed: u64,
    opts: RolloutOptions,
) -> Result<EpisodeRollout, EnvError> {
    let (mut obs, mut task) = env.reset(seed)?;
    let instruction = env.instruction().to_string();
    let mut ep = Episode {
        index: opts.index,
        instruction: instruction.clone(),
        fps: env.fps(),
        ..Episode::default()
    };
    let mut progress: Option<Vec<f32>> = task.map(|_| Vec::new());
    let mut total_reward: Option<f64> = None;
    let mut steps = 0;
    let mut record = |ep: &mut Episode, obs: Observation, action: &[f32], task: Option<TaskStatus>| {
        ep.states.push(obs.state.to_vec());
        if let Some(env_state) = obs.environment_state {
            ep.environment_states.push(env_state.to_vec());
        }
        ep.actions.push(action.to_vec());
        // A source that stops reporting progress mid-episode has no progress curve.
        progress = match (progress.take(), task) {
            (Some(mut p), Some(t)) => {
                p.push(t.progress as f32);
                Some(p)
            }
            _ => None,
        };
        if opts.keep_frames {
            for (k, img) in obs.images {
                ep.cameras.entry(k).or_default().push(img);
            }
        }
    };
    loop {
        let action = policy(&obs, &instruction);
        let t = env.step(&action)?;
        steps += 1;
        if let Some(r) = t.reward {
            *total_reward.get_or_insert(0.0) += r;
        }
        record(&mut ep, std::mem::take(&mut obs), &action, task);
        obs = t.observation;
        task = t.task;
        if t.terminated || t.truncated {
            record(&mut ep, std::mem::take(&mut obs), &action, task);
            break;
        }
    }
    let success = task.map(|t| t.success);
    ep.success = success;
    ep.true_progress = progress;
    Ok(EpisodeRollout {
        episode: ep,
        steps,
        total_reward,
        success,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic environment: the state follows the action, the episode lasts 3 steps, and the
    /// task status is reported or not.
    struct Counter {
        steps: usize,
        knows_task: bool,
    }

    impl Environment for Counter {
        fn reset(&mut self, _seed: u64) -> Result<(Observation, Option<TaskStatus>), EnvError> {
            self.steps = 0;
            let status = TaskStatus {
                success: false,
                progress: 0.0,
            };
            Ok((Observation::default(), self.knows_task.then_some(status)))
        }

        fn step(&mut self, action: &[f32]) -> Result<Transition, EnvError> {
            self.steps += 1;
            let mut observation = Observation::default();
            observation.state[0] = action[0];
            let status = TaskStatus {
                success: self.steps == 3,
                progress: self.steps as f64 / 3.0,
            };
            Ok(Transition {
                observation,
                reward: self.knows_task.then_some(1.0),
                terminated: false,
                truncated: self.steps == 3,
                task: self.knows_task.then_some(status),
                clipped: false,
            })
        }

        fn instruction(&self) -> &str {
            "count"
        }

        fn fps(&self) -> f64 {
            10.0
        }
    }

    #[test]
    fn rollout_records_rows_and_only_the_task_facts_the_env_knows() {
        for knows_task in [true, false] {
            let mut env = Counter { steps: 0, knows_task };
            let mut policy = |obs: &Observation, _: &str| vec![obs.state[0] + 1.0; NUM_JOINTS];
            let r = rollout(&mut env, &mut policy, 0, RolloutOptions::default()).unwrap();
            assert_eq!(r.steps, 3);
            let firsts: Vec<f32> = r.episode.states.iter().map(|s| s[0]).collect();
            assert_eq!(firsts, vec![0.0, 1.0, 2.0, 3.0]);
            assert_eq!(r.episode.actions.len(), 4);
            assert_eq!(r.episode.fps, 10.0);
            assert!(r.episode.environment_states.is_empty());
            if knows_task {
                assert_eq!(r.success, Some(true));
                assert_eq!(r.total_reward, Some(3.0));
                let p = r.episode.true_progress.unwrap();
                assert_eq!(p.len(), 4);
                assert!((p[3] - 1.0).abs() < 1e-6);
            } else {
                assert_eq!(r.success, None);
                assert_eq!(r.total_reward, None);
                assert!(r.episode.true_progress.is_none() && r.episode.success.is_none());
            }
        }
    }
}
