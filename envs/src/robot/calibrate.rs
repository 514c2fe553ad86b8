//! LeRobot's interactive calibration of an SO arm (`SOFollower.calibrate` / `SOLeader.calibrate`):
//! torque off and position mode; the user centres the arm and presses Enter; Homing_Offset is reset
//! to 0 and limits to 0..4095, the present positions p are read and Homing_Offset = p - 2047 written
//! (`set_half_turn_homings`); then positions are sampled while the user moves every joint through its
//! range until Enter (`record_ranges_of_motion`), wrist_roll taking the full 0..4095; the offsets and
//! ranges are written to the motors and returned for saving.

use std::time::Duration;

use super::arm::{ArmError, MOTOR_IDS, disable_torque, handshake, write_motor_calibration};
use super::bus::FeetechBus;
use super::calibration::{Calibration, MotorCalibration};
use super::protocol::{MAX_POSITION, reg};
use crate::so101::{MOTOR_NAMES, NUM_JOINTS};

/// Index of the full-turn motor whose range is not recorded.
const WRIST_ROLL: usize = 4;

/// How the procedure talks to the user.
pub trait CalibrationPrompt {
    /// Shows `message` and blocks until the user presses Enter.
    fn wait_enter(&mut self, message: &str) -> Result<(), ArmError>;
    /// Whether Enter was pressed since the last call (does not block).
    fn enter_pressed(&mut self) -> bool;
    /// Shows the live table of recorded ranges (name, min, position, max per motor).
    fn show_ranges(&mut self, rows: &[(&str, i32, i32, i32)]);
}

/// Runs the procedure on an open bus and returns the new calibration (already written to the motors).
pub fn run_calibration(
    bus: &mut FeetechBus,
    prompt: &mut dyn CalibrationPrompt,
) -> Result<Calibration, ArmError> {
    handshake(bus)?;
    disable_torque(bus)?;
    for id in MOTOR_IDS {
        bus.write(id, &reg::OPERATING_MODE, 0)?;
    }
    prompt.wait_enter("Move the arm to the middle of its range of motion and press ENTER...")?;
    // reset_calibration, then the half-turn homings.
    for id in MOTOR_IDS {
        bus.write(id, &reg::HOMING_OFFSET, 0)?;
        bus.write(id, &reg::MIN_POSITION_LIMIT, 0)?;
        bus.write(id, &reg::MAX_POSITION_LIMIT, MAX_POSITION)?;
    }
    let actual = bus.sync_read(&reg::PRESENT_POSITION, &MOTOR_IDS)?;
    // LeRobot: pos - int(max_res / 2) = pos - 2047.
    let offsets: Vec<i32> = actual.iter().map(|p| p - MAX_POSITION / 2).collect();
    for (id, offset) in MOTOR_IDS.into_iter().zip(&offsets) {
        bus.write(id, &reg::HOMING_OFFSET, *offset)?;
    }

    let recorded: Vec<u8> = MOTOR_IDS
        .iter()
        .copied()
        .filter(|id| *id as usize != WRIST_ROLL + 1)
        .collect();
    let names: Vec<&str> = recorded.iter().map(|id| MOTOR_NAMES[*id as usize - 1]).collect();
    eprintln!(
        "Move all joints except '{}' sequentially through their entire ranges of motion.\nRecording positions. Press ENTER to stop...",
        MOTOR_NAMES[WRIST_ROLL]
    );
    let start = bus.sync_read(&reg::PRESENT_POSITION, &recorded)?;
    let (mut mins, mut maxes) = (start.clone(), start);
    loop {
        let positions = bus.sync_read(&reg::PRESENT_POSITION, &recorded)?;
        for k in 0..recorded.len() {
            mins[k] = mins[k].min(positions[k]);
            maxes[k] = maxes[k].max(positions[k]);
        }
        let rows: Vec<(&str, i32, i32, i32)> = (0..recorded.len())
            .map(|k| (names[k], mins[k], positions[k], maxes[k]))
            .collect();
        prompt.show_ranges(&rows);
        if prompt.enter_pressed() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let same: Vec<&str> = (0..recorded.len())
        .filter(|k| mins[*k] == maxes[*k])
        .map(|k| names[k])
        .collect();
    if !same.is_empty() {
        return Err(ArmError::Procedure(format!(
            "some motors have the same min and max values: {}; move every joint through its range before pressing ENTER",
            same.join(", ")
        )));
    }
    let mut motors = [MotorCalibration {
        id: 0,
        drive_mode: 0,
        homing_offset: 0,
        range_min: 0,
        range_max: 0,
    }; NUM_JOINTS];
    for i in 0..NUM_JOINTS {
        let (range_min, range_max) = if i == WRIST_ROLL {
            (0, MAX_POSITION)
        } else {
            let k = recorded.iter().position(|id| *id as usize == i + 1).unwrap_or(0);
            (mins[k], maxes[k])
        };
        motors[i] = MotorCalibration {
            id: MOTOR_IDS[i],
            drive_mode: 0,
            homing_offset: offsets[i],
            range_min,
            range_max,
        };
    }
    let calibration = Calibration { motors };
    write_motor_calibration(bus, &calibration)?;
    Ok(calibration)
}
