//! The real SO-101: its Feetech STS3215 bus, LeRobot-compatible calibration, the follower and leader
//! drivers with safety rules, and a simulated bus on a pseudo-terminal backed by the MuJoCo arm.

// Index loops over the six joints read closer to the motor tables than iterator chains.
#![allow(clippy::needless_range_loop)]

pub mod arm;
pub mod bus;
pub mod calibrate;
pub mod calibration;
pub mod camera;
pub mod env;
pub mod protocol;
pub mod sim_bus;

pub use arm::{ArmConfig, ArmError, So101Arm};
pub use bus::{BusError, BusOptions, FeetechBus};
pub use calibration::{ArmRole, Calibration, CalibrationError, MotorCalibration, NormMode};
pub use camera::{Camera, CameraConfig, CameraError, open_camera};
pub use env::{RobotEnv, RobotEnvConfig};
pub use sim_bus::{Faults, Operator, SimBus, SimBusConfig};
