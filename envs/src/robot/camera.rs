//! Cameras of the real arm: a name (the feature key is `observation.images.{name}`), a device, and a
//! frame on demand. No capture backend exists yet: a configured camera is refused with a clear message,
//! never replaced by a blank image.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Why a camera could not give a frame.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error(
        "camera `{name}` ({path}): this build has no camera capture yet (V4L2 support is not written); only state-only policies run on the arm"
    )]
    NotBuilt { name: String, path: String },
    #[error("camera `{name}` ({path}): {reason}")]
    Device {
        name: String,
        path: String,
        reason: String,
    },
}

/// One camera as an experiment's `[[robot.cameras]]` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Short name: the frames are `observation.images.{name}` (e.g. `front`, `wrist`).
    pub name: String,
    /// V4L2 device path, e.g. `/dev/video0`.
    pub path: String,
    /// Requested frame width in pixels. Default 640.
    #[serde(default = "default_width")]
    pub width: u32,
    /// Requested frame height in pixels. Default 480.
    #[serde(default = "default_height")]
    pub height: u32,
}

fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}

/// A source of RGB frames.
pub trait Camera: Send {
    /// The camera's short name (the feature key is `observation.images.{name}`).
    fn name(&self) -> &str;
    /// The latest frame.
    fn capture(&mut self) -> Result<RgbImage, CameraError>;
}

/// Opens the camera `cfg` describes. This version has no capture backend (V4L2 is planned behind a cargo
/// feature), so every camera is refused with a clear error rather than faked.
pub fn open_camera(cfg: &CameraConfig) -> Result<Box<dyn Camera>, CameraError> {
    Err(CameraError::NotBuilt {
        name: cfg.name.clone(),
        path: cfg.path.clone(),
    })
}
