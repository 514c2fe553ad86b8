//! Policies that map an observation (joint state, camera images, instruction) to a chunk of actions,
//! written in Burn 0.22 and independent of the backend: Burn 0.22 tensors carry their backend in their
//! [`Device`], so every network here runs on [`cpu_device`] (the pure-Rust `flex` backend) or, behind the
//! `tch` cargo feature, on LibTorch's CPU, CUDA or MPS devices; [`device`] picks one from a
//! [`Backend`] and a [`DeviceKind`].
//!
//! Three toprl-native policies share one training API ([`Trainer`]): a Gaussian MLP on the joint state, an
//! ACT-style transformer over CNN image tokens, and a pi0-style flow-matching action-chunk policy
//! (TOPReward Eq. 5). Every loss accepts per-sample weights (reward-aligned BC, Eq. 3, or AWR), and a small
//! value MLP ([`ValueTrainer`]) provides the AWR baseline. Their checkpoints are one directory:
//! `policy.json` (config + normalisation statistics) and `model.bpk` (Burn record), written atomically.
//!
//! Two LeRobot policies are ported weight for weight and read and write LeRobot's own folders
//! (`config.json`, `model.safetensors`, pre/post-processors): [`smolvla`] (the VLA users fine-tune) and
//! [`lerobot_act`] (LeRobot's ACT with its ResNet18 backbone and CVAE), each parity-tested against
//! LeRobot 0.4.4.
//!
//! All policies implement one [`Policy`] trait so that simulation rollouts, real-robot control and
//! evaluation drive them the same way. This crate depends on no other toprl crate.

pub mod act;
pub mod backend;
pub mod checkpoint;
pub mod data;
mod ema;
pub mod error;
pub mod flow;
pub mod gaussian;
pub mod image_input;
pub mod lerobot_act;
pub mod model;
pub mod nets;
pub mod smolvla;
pub mod text;
pub mod trainer;
pub mod value;

pub use backend::{Backend, DeviceKind, device};
pub use burn::tensor::Device;
pub use checkpoint::{LoadedPolicy, load_policy};
pub use data::{Batch, ImageBatch, Normalizer, ObsBatch, ValueBatch};
pub use error::PolicyError;
pub use image_input::resize_frame;
pub use model::{PolicyConfig, PolicyKind, PolicyNet};
pub use trainer::{TrainConfig, Trainer, ValueTrainer, awr_weights};

/// The pure-Rust CPU device (Burn's `flex` backend); what CI and the tests use.
pub fn cpu_device() -> Device {
    Device::flex()
}

/// The LibTorch CPU device (Burn's deprecated `tch` backend); needs the `tch` cargo feature and a torch
/// install at build time (`LIBTORCH_USE_PYTORCH=1`). Other LibTorch devices: [`device`].
#[cfg(feature = "tch")]
#[allow(deprecated)]
pub fn libtorch_device() -> Device {
    Device::libtorch()
}

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
    fn act(&mut self, observation: &Observation) -> Result<Vec<Vec<f32>>, PolicyError>;
    /// Forget any state carried between steps (call at episode start).
    fn reset(&mut self) {}
}
