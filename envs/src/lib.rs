//! Where episodes come from: the SO-101 arm in MuJoCo behind a Gymnasium-style API, the real arm on its
//! Feetech bus (`robot`: LeRobot-compatible calibration, drivers, and a simulated bus; `so101` holds the
//! joint names, ranges and units both share), and LeRobotDataset
//! folders (v2.1 and v3.0 read, v3.0 written) so users' recorded data works as is.
//!
//! `environment` is the one API both the simulator and the real arm implement (Gymnasium semantics).
//!
//! Episodes are plain data (frames, states, actions, instruction). This crate depends on no other toprl crate.

pub mod assets;
pub mod dataset;
pub mod environment;
pub mod episode;
pub mod robot;
pub mod safe_path;
pub mod sim;
pub mod so101;
