//! The SO-101 arm in MuJoCo 3.17 on a table with a cube and a target zone: four tasks, rendered cameras,
//! scripted experts, vectorised environments and rollouts into [`crate::episode::Episode`].
//!
//! The arm is position-controlled like LeRobot's `so101_follower`: actions and states are the six motors
//! in bus order, body joints in degrees (zero at the middle of each joint's range, "new calib"), the
//! gripper 0 (closed) to 100 (open); commands outside the range are clipped. Control runs at 30 Hz with
//! physics substeps inside a step.

// Index loops over joints and xyz components read closer to the maths than iterator chains.
#![allow(clippy::needless_range_loop)]

pub mod env;
pub mod expert;
pub mod mesh;
pub mod rollout;
pub mod scene;
pub mod task;
pub mod vec_env;

use std::path::PathBuf;

pub use env::{
    CAMERAS, ENVIRONMENT_STATE_DIM, ENVIRONMENT_STATE_NAMES, SimConfig, SimObservation, So101Env, StepInfo,
    StepResult, normal as standard_normal,
};
pub use expert::ScriptedExpert;
pub use rollout::{ActionSource, Rollout, RolloutOptions, rollout};
pub use task::Task;
pub use vec_env::{BuiltinPolicy, VecEnv, parallel_rollouts};

/// Everything that can go wrong in the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("action has {got} values, expected {expected} (one per motor: {motors})", motors = crate::so101::MOTOR_NAMES.join(", "))]
    ActionLength { expected: usize, got: usize },
    #[error("action value for `{motor}` is {value}, expected a finite number")]
    NonFiniteAction { motor: &'static str, value: f32 },
    #[error("unknown task `{name}`, expected one of reach, push_cube, pick_cube, pick_place")]
    UnknownTask { name: String },
    #[error("unknown camera `{name}`, expected one of front, top, wrist")]
    UnknownCamera { name: String },
    #[error("invalid config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("step called before reset")]
    NotReset,
    #[error("the simulation became unstable (non-finite state) at step {step}; reset the environment")]
    Unstable { step: usize },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("mesh {path}: {reason}")]
    Mesh { path: PathBuf, reason: String },
    #[error("scene {path}: {reason}")]
    Scene { path: PathBuf, reason: String },
    #[error("MuJoCo could not load {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("model has no {kind} named `{name}`")]
    MissingName { kind: &'static str, name: String },
    #[error("offscreen rendering failed: {0}")]
    Render(String),
    #[error(transparent)]
    MissingAsset(#[from] crate::assets::MissingAsset),
    #[error("worker thread {index} of the vectorised environment stopped: {reason}")]
    Worker { index: usize, reason: String },
}
