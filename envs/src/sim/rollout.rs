//! Runs one episode into a [`crate::episode::Episode`] with frames, actions, success and ground-truth
//! progress, from a scripted expert, a random walk, or any caller-supplied policy closure.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::SimError;
use super::env::{SimObservation, So101Env, action_bounds, normal};
use super::expert::ScriptedExpert;
use crate::episode::Episode;
use crate::so101::{CONTROL_HZ, NUM_JOINTS};

/// Where actions come from.
pub enum ActionSource<'a> {
    /// A scripted expert (reset at episode start by the rollout).
    Expert(&'a mut ScriptedExpert),
    /// A random walk from the home pose: each step moves every joint by N(0, `step_deg`) degrees (the
    /// gripper by N(0, 2 * `step_deg`)), clipped to the ranges. Seeded from the episode seed.
    Random { step_deg: f32 },
    /// Any policy: (observation, instruction) -> action in LeRobot units.
    Policy(&'a mut dyn FnMut(&SimObservation, &str) -> Vec<f32>),
}

impl std::fmt::Debug for ActionSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActionSource::Expert(e) => write!(f, "Expert({e:?})"),
            ActionSource::Random { step_deg } => write!(f, "Random {{ step_deg: {step_deg} }}"),
            ActionSource::Policy(_) => f.write_str("Policy(..)"),
        }
    }
}

/// Rollout settings.
#[derive(Debug, Clone, Copy)]
pub struct RolloutOptions {
    /// Keep camera frames in the episode (they are rendered either way when the env has cameras).
    pub keep_frames: bool,
    /// Episode index written into the [`Episode`].
    pub index: usize,
}

impl Default for RolloutOptions {
    fn default() -> Self {
        RolloutOptions {
            keep_frames: true,
            index: 0,
        }
    }
}

/// A finished episode and its totals.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Rows: one per observation, the last row being the final observation with the last action repeated
    /// (so a successful episode ends on a success frame and `true_progress` ends at 1).
    pub episode: Episode,
    /// Sum of the env's rewards (dense or sparse per the config).
    pub total_reward: f64,
    /// Control steps taken.
    pub steps: usize,
    /// Whether the task was solved when the episode ended.
    pub success: bool,
}

/// Resets `env` with `seed`, runs until terminated or truncated, and records the episode.
pub fn rollout(
    env: &mut So101Env,
    mut source: ActionSource<'_>,
    seed: u64,
    opts: RolloutOptions,
) -> Result<Rollout, SimError> {
    let (mut obs, mut info) = env.reset(Some(seed))?;
    let instruction = env.instruction().to_string();
    if let ActionSource::Expert(expert) = &mut source {
        expert.reset(env);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ RANDOM_WALK_SALT);
    let (lo, hi) = action_bounds();
    let mut walk = obs.state;
    let mut ep = Episode {
        index: opts.index,
        instruction: instruction.clone(),
        fps: CONTROL_HZ,
        ..Episode::default()
    };
    let mut cameras: BTreeMap<String, Vec<image::RgbImage>> = BTreeMap::new();
    let mut progress = Vec::new();
    let mut total_reward = 0.0;
    let mut steps = 0;
    let mut record = |obs: SimObservation, action: &[f32], p: f64, cameras: &mut BTreeMap<_, Vec<_>>| {
        ep.states.push(obs.state.to_vec());
        ep.environment_states.push(obs.environment_state.to_vec());
        ep.actions.push(action.to_vec());
        progress.push(p as f32);
        if opts.keep_frames {
            for (k, img) in obs.images {
                cameras.entry(k).or_default().push(img);
            }
        }
    };
    loop {
        let action: Vec<f32> = match &mut source {
            ActionSource::Expert(expert) => expert.act(env).to_vec(),
            ActionSource::Random { step_deg } => {
                for i in 0..NUM_JOINTS {
                    let scale = if i == NUM_JOINTS - 1 {
                        2.0 * *step_deg
                    } else {
                        *step_deg
                    };
                    walk[i] = (walk[i] + scale * normal(&mut rng) as f32).clamp(lo[i], hi[i]);
                }
                walk.to_vec()
            }
            ActionSource::Policy(policy) => policy(&obs, &instruction),
        };
        let result = env.step(&action)?;
        steps += 1;
        total_reward += result.reward;
        record(std::mem::take(&mut obs), &action, info.progress, &mut cameras);
        obs = result.observation;
        info = result.info;
        if result.terminated || result.truncated {
            record(std::mem::take(&mut obs), &action, info.progress, &mut cameras);
            break;
        }
    }
    ep.cameras = cameras;
    ep.success = Some(info.success);
    ep.true_progress = Some(progress);
    Ok(Rollout {
        episode: ep,
        total_reward,
        steps,
        success: info.success,
    })
}

/// Salt so the random walk's noise differs from the env's own stream for the same seed.
const RANDOM_WALK_SALT: u64 = 0x5eed_0f7a_9d00_0001;
