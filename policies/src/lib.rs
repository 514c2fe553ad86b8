//! Policies that map an observation (joint state, camera images, instruction) to a chunk of actions,
//! written in Burn and generic over the backend (`flex` on CPU by default, libtorch behind the `tch` feature).
//!
//! All policies implement one [`Policy`] trait so that simulation rollouts, real-robot control and
//! evaluation drive them the same way. This crate depends on no other toprl crate.

/// What a policy sees at one control step.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Joint positions in LeRobot units: degrees for the body joints, 0-100 for the gripper.
    pub state: Vec<f32>,
    /// Camera images as (key, height, width, RGB bytes in row-major HWC order).
    pub images: Vec<CameraImage>,
    /// The task instruction in natural language.
    pub instruction: String,
}

/// One camera frame, RGB8, row-major height x width x 3.
#[derive(Debug, Clone)]
pub struct CameraImage {
    pub key: String,
    pub height: usize,
    pub width: usize,
    pub rgb: Vec<u8>,
}

/// A policy maps an observation to a chunk of future actions (one action per control step).
pub trait Policy {
    /// Number of action dimensions (6 for SO-101).
    fn action_dim(&self) -> usize;
    /// Predict the next actions; the first row is executed first.
    fn act(&mut self, observation: &Observation) -> Vec<Vec<f32>>;
    /// Forget any state carried between steps (call at episode start).
    fn reset(&mut self) {}
}
