//! Episodes and frames as plain data: what simulators and datasets produce and reward models and
//! trainers consume.

use std::collections::BTreeMap;

/// One camera image: RGB8, row-major height x width x 3. The `image` crate's type is shared with the
/// reward models, so frames cross crate boundaries without copies or twin types.
pub type Frame = image::RgbImage;

/// A recorded episode at a fixed frame rate. Rows of `states`, `actions` and each camera's frames are
/// aligned by frame index.
#[derive(Debug, Clone, Default)]
pub struct Episode {
    /// Episode index within its dataset or rollout batch.
    pub index: usize,
    /// Natural-language task instruction.
    pub instruction: String,
    /// Frames per second of the rows.
    pub fps: f64,
    /// `observation.state` per frame (6 values for SO-101: degrees, gripper 0-100).
    pub states: Vec<Vec<f32>>,
    /// `observation.environment_state` per frame when the source has one (simulation: cube and target
    /// pose, see [`crate::sim::ENVIRONMENT_STATE_NAMES`]); empty otherwise.
    pub environment_states: Vec<Vec<f32>>,
    /// `action` per frame (same units as the state).
    pub actions: Vec<Vec<f32>>,
    /// Camera frames per camera key (e.g. `observation.images.front`).
    pub cameras: BTreeMap<String, Vec<Frame>>,
    /// Whether the episode ended in success, when known (simulation, labelled data).
    pub success: Option<bool>,
    /// Ground-truth task progress in [0, 1] per frame, when a simulator knows it. Never fed to reward models.
    pub true_progress: Option<Vec<f32>>,
}

impl Episode {
    /// Number of frames (rows).
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether the episode has no frames.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}
