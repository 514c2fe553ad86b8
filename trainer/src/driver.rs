//! Driving a chunking [`Policy`] in any [`Environment`] (the simulator or the real arm): the environment
//! asks for one action per control step, a policy answers with a chunk of actions; the chunk is executed
//! in full before the policy is asked again.

use std::collections::VecDeque;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use image::RgbImage;
use toprl_envs::environment::{
    EnvError, Environment, EpisodeRollout, Observation as EnvObservation, rollout,
};
use toprl_envs::sim::{RolloutOptions, SimError, SimObservation};
use toprl_policies::{CameraImage, LoadedPolicy, Observation, Policy, PolicyError};

/// LeRobot's feature names of the joint state and of the simulator's privileged scene vector, as the
/// dataset reader and writer spell them.
pub use toprl_envs::dataset::{
    ENVIRONMENT_STATE_KEY as ENVIRONMENT_STATE_FEATURE, STATE_KEY as STATE_FEATURE,
};

/// LeRobot's feature key of camera `name` (`front` -> `observation.images.front`).
pub fn camera_key(name: &str) -> String {
    format!("observation.images.{name}")
}

/// Why an episode driven by a learned policy stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("the policy failed: {0}")]
    Policy(#[from] PolicyError),
}

/// One episode of `policy` in `env` (simulated scene `seed`, or the real arm), its action chunks executed
/// in full (see [`ChunkDriver`]); the policy's state input is rebuilt from its checkpoint's state
/// features. With `exploration = Some((std, seed))` each chunk is offset as
/// [`ChunkDriver::with_exploration`] does.
pub fn policy_rollout(
    env: &mut dyn Environment,
    policy: &mut LoadedPolicy,
    camera_keys: &[String],
    seed: u64,
    opts: RolloutOptions,
    exploration: Option<(f32, u64)>,
) -> Result<EpisodeRollout, DriveError> {
    let features = policy.state_features().to_vec();
    let mut driver = ChunkDriver::new(policy, camera_keys.to_vec(), features);
    if let Some((std, noise_seed)) = exploration {
        driver = driver.with_exploration(std, noise_seed);
    }
    let mut act = |obs: &EnvObservation, instruction: &str| driver.act(obs, instruction);
    let r = rollout(env, &mut act, seed, opts)?;
    match driver.error.take() {
        Some(e) => Err(e.into()),
        None => Ok(r),
    }
}

/// The policy's state input: the named vectors (`observation.state`, `observation.environment_state`)
/// concatenated in order. Errors on an unknown name or a vector the source does not have.
pub fn policy_state(
    state: &[f32],
    environment_state: Option<&[f32]>,
    features: &[String],
) -> Result<Vec<f32>, PolicyError> {
    let mut out = Vec::with_capacity(state.len() + environment_state.map_or(0, <[f32]>::len));
    for feature in features {
        match feature.as_str() {
            STATE_FEATURE => out.extend_from_slice(state),
            ENVIRONMENT_STATE_FEATURE => {
                out.extend_from_slice(environment_state.ok_or_else(|| PolicyError::Invalid {
                    field: "state_features",
                    reason: format!("the policy reads `{feature}`, which this source does not provide"),
                })?)
            }
            other => {
                return Err(PolicyError::Invalid {
                    field: "state_features",
                    reason: format!(
                        "unknown feature `{other}`, expected `{STATE_FEATURE}` or `{ENVIRONMENT_STATE_FEATURE}`"
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// What a policy reads from an environment's observation, for the simulator's own observation type and
/// the [`Environment`] one (which has no scene vector on the real arm).
pub trait ObservationView {
    /// Joint state in LeRobot units.
    fn joint_state(&self) -> &[f32];
    /// The simulator's privileged scene vector, when the source has one.
    fn scene_state(&self) -> Option<&[f32]>;
    /// The image of camera feature `key`.
    fn image(&self, key: &str) -> Option<&RgbImage>;
}

impl ObservationView for SimObservation {
    fn joint_state(&self) -> &[f32] {
        &self.state
    }
    fn scene_state(&self) -> Option<&[f32]> {
        Some(&self.environment_state)
    }
    fn image(&self, key: &str) -> Option<&RgbImage> {
        self.images.get(key)
    }
}

impl ObservationView for EnvObservation {
    fn joint_state(&self) -> &[f32] {
        &self.state
    }
    fn scene_state(&self) -> Option<&[f32]> {
        self.environment_state.as_ref().map(|s| s.as_slice())
    }
    fn image(&self, key: &str) -> Option<&RgbImage> {
        self.images.get(key)
    }
}

/// The policies crate's view of an observation. `camera_keys` (e.g. `observation.images.front`) fixes
/// which cameras the policy sees and in which order, the order it was trained with; `state_features`
/// which vectors make up its state input.
pub fn policy_observation(
    obs: &impl ObservationView,
    instruction: &str,
    camera_keys: &[String],
    state_features: &[String],
) -> Result<Observation, PolicyError> {
    Ok(Observation {
        state: policy_state(obs.joint_state(), obs.scene_state(), state_features)?,
        images: camera_keys
            .iter()
            .filter_map(|key| {
                obs.image(key).map(|img| CameraImage {
                    key: key.clone(),
                    height: img.height() as usize,
                    width: img.width() as usize,
                    rgb: img.as_raw().clone(),
                })
            })
            .collect(),
        instruction: instruction.to_string(),
    })
}

/// Feeds a policy's action chunks to the simulator one action at a time.
pub struct ChunkDriver<'a> {
    policy: &'a mut dyn Policy,
    camera_keys: Vec<String>,
    state_features: Vec<String>,
    queue: VecDeque<Vec<f32>>,
    exploration: Option<(f32, ChaCha8Rng)>,
    /// The first error the policy returned; after it the arm holds its pose until the episode ends.
    pub error: Option<PolicyError>,
}

impl<'a> ChunkDriver<'a> {
    /// Start an episode: the policy is reset and no actions are queued.
    pub fn new(policy: &'a mut dyn Policy, camera_keys: Vec<String>, state_features: Vec<String>) -> Self {
        policy.reset();
        Self {
            policy,
            camera_keys,
            state_features,
            queue: VecDeque::new(),
            exploration: None,
            error: None,
        }
    }

    /// Explore: every chunk the policy returns is shifted by one Gaussian offset of standard deviation
    /// `std` (action units) per joint, drawn from `seed`'s stream; a per-chunk offset keeps the motion
    /// smooth, unlike per-step noise.
    pub fn with_exploration(mut self, std: f32, seed: u64) -> Self {
        if std > 0.0 {
            self.exploration = Some((std, ChaCha8Rng::seed_from_u64(seed)));
        }
        self
    }

    /// The action for this control step.
    pub fn act(&mut self, obs: &impl ObservationView, instruction: &str) -> Vec<f32> {
        if self.queue.is_empty() && self.error.is_none() {
            match policy_observation(obs, instruction, &self.camera_keys, &self.state_features)
                .and_then(|o| self.policy.act(&o))
            {
                Ok(mut chunk) => {
                    if let Some((std, rng)) = &mut self.exploration
                        && let Some(dim) = chunk.first().map(Vec::len)
                    {
                        let offset: Vec<f32> = (0..dim)
                            .map(|_| *std * toprl_envs::sim::standard_normal(rng) as f32)
                            .collect();
                        for action in &mut chunk {
                            action.iter_mut().zip(&offset).for_each(|(a, o)| *a += o);
                        }
                    }
                    self.queue.extend(chunk)
                }
                Err(e) => self.error = Some(e),
            }
        }
        self.queue
            .pop_front()
            .unwrap_or_else(|| obs.joint_state().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(usize);
    impl Policy for Counting {
        fn action_dim(&self) -> usize {
            6
        }
        fn act(&mut self, obs: &Observation) -> Result<Vec<Vec<f32>>, PolicyError> {
            self.0 += 1;
            assert_eq!(obs.images.len(), 1, "only the requested camera is passed");
            if self.0 == 3 {
                return Err(PolicyError::Invalid {
                    field: "test",
                    reason: "third call fails".into(),
                });
            }
            Ok(vec![vec![self.0 as f32; 6], vec![-(self.0 as f32); 6]])
        }
    }

    #[test]
    fn chunks_run_in_order_and_an_error_holds_the_pose() {
        let mut obs = SimObservation {
            state: [7.0; 6],
            ..Default::default()
        };
        obs.images.insert(
            "observation.images.front".into(),
            toprl_envs::episode::Frame::new(2, 2),
        );
        obs.images.insert(
            "observation.images.wrist".into(),
            toprl_envs::episode::Frame::new(2, 2),
        );
        let mut policy = Counting(0);
        let mut driver = ChunkDriver::new(
            &mut policy,
            vec!["observation.images.front".into()],
            vec![STATE_FEATURE.into()],
        );
        let got: Vec<f32> = (0..6).map(|_| driver.act(&obs, "pick")[0]).collect();
        assert_eq!(got, vec![1.0, -1.0, 2.0, -2.0, 7.0, 7.0]);
        assert!(driver.error.is_some());
    }

    #[test]
    fn state_input_concatenates_the_named_features_in_order() {
        let both = [ENVIRONMENT_STATE_FEATURE.to_string(), STATE_FEATURE.to_string()];
        let s = policy_state(&[1.0, 2.0], Some(&[3.0]), &both).unwrap();
        assert_eq!(s, vec![3.0, 1.0, 2.0]);
        assert!(policy_state(&[1.0], None, &both).is_err());
        assert!(policy_state(&[1.0], Some(&[3.0]), &["observation.velocity".into()]).is_err());
    }
}
