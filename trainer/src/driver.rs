//! Driving a chunking [`Policy`] in the simulator: the simulator asks for one action per control step,
//! a policy answers with a chunk of actions; the chunk is executed in full before the policy is asked again.

use std::collections::VecDeque;

use toprl_envs::sim::SimObservation;
use toprl_policies::{CameraImage, Observation, Policy, PolicyError};

/// The policies crate's view of a simulator observation. `camera_keys` (e.g. `observation.images.front`)
/// fixes which cameras the policy sees and in which order, the order it was trained with.
pub fn policy_observation(obs: &SimObservation, instruction: &str, camera_keys: &[String]) -> Observation {
    Observation {
        state: obs.state.to_vec(),
        images: camera_keys
            .iter()
            .filter_map(|key| {
                obs.images.get(key).map(|img| CameraImage {
                    key: key.clone(),
                    height: img.height() as usize,
                    width: img.width() as usize,
                    rgb: img.as_raw().clone(),
                })
            })
            .collect(),
        instruction: instruction.to_string(),
    }
}

/// Feeds a policy's action chunks to the simulator one action at a time.
pub struct ChunkDriver<'a> {
    policy: &'a mut dyn Policy,
    camera_keys: Vec<String>,
    queue: VecDeque<Vec<f32>>,
    /// The first error the policy returned; after it the arm holds its pose until the episode ends.
    pub error: Option<PolicyError>,
}

impl<'a> ChunkDriver<'a> {
    /// Start an episode: the policy is reset and no actions are queued.
    pub fn new(policy: &'a mut dyn Policy, camera_keys: Vec<String>) -> Self {
        policy.reset();
        Self {
            policy,
            camera_keys,
            queue: VecDeque::new(),
            error: None,
        }
    }

    /// The action for this control step.
    pub fn act(&mut self, obs: &SimObservation, instruction: &str) -> Vec<f32> {
        if self.queue.is_empty() && self.error.is_none() {
            match self
                .policy
                .act(&policy_observation(obs, instruction, &self.camera_keys))
            {
                Ok(chunk) => self.queue.extend(chunk),
                Err(e) => self.error = Some(e),
            }
        }
        self.queue.pop_front().unwrap_or_else(|| obs.state.to_vec())
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
        let mut driver = ChunkDriver::new(&mut policy, vec!["observation.images.front".into()]);
        let got: Vec<f32> = (0..6).map(|_| driver.act(&obs, "pick")[0]).collect();
        assert_eq!(got, vec![1.0, -1.0, 2.0, -2.0, 7.0, 7.0]);
        assert!(driver.error.is_some());
    }
}
