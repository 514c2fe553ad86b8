//! The SO-101 follower and leader drivers with toprl's safety rules, over [`FeetechBus`].
//!
//! Connecting mirrors LeRobot's `SOFollower.connect` / `SOLeader.connect`: ping every motor and check
//! it is an STS3215, check the firmware versions agree, compare the motors' Homing_Offset and position
//! limits with the calibration file (writing the file's values when they differ, as LeRobot does when the
//! user keeps the file), then configure (Return_Delay_Time 0, accelerations 254, position mode, P/I/D
//! 16/0/32 and the gripper's torque and current limits on the follower; torque off on the leader).
//!
//! Safety: an arm without a calibration file is refused; every goal is clamped to the calibrated joint
//! range and, with `max_relative_target`, to that distance from the present position (LeRobot's
//! `ensure_safe_goal_position`); torque goes off on disconnect, on drop (so on panics and early
//! returns too), after any communication failure, and when the watchdog sees no command for too long.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::bus::{BusError, BusOptions, FeetechBus};
use super::calibration::{
    ArmRole, Calibration, CalibrationError, MotorCalibration, NormMode, find_calibration, norm_mode,
};
use super::protocol::reg;
use crate::so101::{MOTOR_NAMES, NUM_JOINTS};

/// Motor ids of an SO arm in bus order.
pub const MOTOR_IDS: [u8; NUM_JOINTS] = [1, 2, 3, 4, 5, 6];

/// Errors of the arm drivers.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    #[error("motors disagree on firmware version: {0}; update them with Feetech's software first")]
    Firmware(String),
    #[error("the {0} arm is read-only (torque stays off): it cannot be sent goals")]
    LeaderCannotMove(ArmRole),
    #[error("action has {got} values, expected {expected} ({motors})", motors = MOTOR_NAMES.join(", "))]
    ActionLength { expected: usize, got: usize },
    #[error("the watchdog turned torque off: no command for more than {limit_ms} ms; reconnect to continue")]
    Watchdog { limit_ms: u64 },
    #[error("communication with the arm failed, torque turned off: {0}")]
    LostCommunication(BusError),
    #[error("calibration: {0}")]
    Procedure(String),
    #[error("max_relative_target must be positive and finite, got {0}")]
    BadMaxRelative(f64),
}

/// How to connect to one arm.
#[derive(Debug, Clone)]
pub struct ArmConfig {
    pub port: String,
    /// The arm's id: the calibration file name (`<id>.json`).
    pub id: String,
    pub role: ArmRole,
    /// LeRobot's `calibration_dir` (holds `<id>.json`); `None` searches LeRobot's folders.
    pub calibration_dir: Option<PathBuf>,
    /// Body joints in degrees (LeRobot >= 0.4.4 default) or -100..100.
    pub use_degrees: bool,
    /// Largest step from the present position per command, in normalised units, per motor.
    pub max_relative_target: Option<[f64; NUM_JOINTS]>,
    /// Turn torque off when no command arrived for this long (follower only).
    pub watchdog: Option<Duration>,
    pub bus: BusOptions,
}

impl ArmConfig {
    pub fn new(port: &str, id: &str, role: ArmRole) -> Self {
        ArmConfig {
            port: port.to_string(),
            id: id.to_string(),
            role,
            calibration_dir: None,
            use_degrees: true,
            max_relative_target: None,
            watchdog: Some(Duration::from_millis(500)),
            bus: BusOptions::default(),
        }
    }
}

struct Shared {
    bus: FeetechBus,
    torque_on: bool,
    last_command: Instant,
}

/// A connected SO-101 arm (follower or leader).
pub struct So101Arm {
    shared: Arc<Mutex<Shared>>,
    calibration: Calibration,
    calibration_path: PathBuf,
    cfg: ArmConfig,
    tripped: Arc<AtomicBool>,
    stop_watchdog: Arc<AtomicBool>,
    watchdog: Option<std::thread::JoinHandle<()>>,
    closed: bool,
}

impl std::fmt::Debug for So101Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("So101Arm")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Torque off then Lock 0 on every motor (LeRobot's `disable_torque`), each write tried up to 8 times;
/// keeps going past motors that fail and returns the first failure.
pub fn disable_torque(bus: &mut FeetechBus) -> Result<(), BusError> {
    let mut first = None;
    for id in MOTOR_IDS {
        for (r, v) in [(&reg::TORQUE_ENABLE, 0), (&reg::LOCK, 0)] {
            let mut result = Err(None);
            for _ in 0..2 {
                match bus.write(id, r, v) {
                    Ok(()) => {
                        result = Ok(());
                        break;
                    }
                    Err(e) => result = Err(Some(e)),
                }
            }
            if let Err(Some(e)) = result
                && first.is_none()
            {
                first = Some(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Torque on then Lock 1 on every motor (LeRobot's `enable_torque`).
pub fn enable_torque(bus: &mut FeetechBus) -> Result<(), BusError> {
    for id in MOTOR_IDS {
        bus.write(id, &reg::TORQUE_ENABLE, 1)?;
        bus.write(id, &reg::LOCK, 1)?;
    }
    Ok(())
}

/// Pings every motor (model-number check) and checks they share one firmware version (LeRobot's
/// `_handshake`).
pub fn handshake(bus: &mut FeetechBus) -> Result<(), ArmError> {
    for id in MOTOR_IDS {
        bus.ping_sts3215(id)?;
    }
    let mut versions = Vec::new();
    for id in MOTOR_IDS {
        let major = bus.read(id, &reg::FIRMWARE_MAJOR_VERSION)?;
        let minor = bus.read(id, &reg::FIRMWARE_MINOR_VERSION)?;
        versions.push((id, format!("{major}.{minor}")));
    }
    if versions.iter().any(|(_, v)| *v != versions[0].1) {
        let list: Vec<String> = versions.iter().map(|(id, v)| format!("id {id}: {v}")).collect();
        return Err(ArmError::Firmware(list.join(", ")));
    }
    Ok(())
}

/// Reads Homing_Offset and the position limits of every motor (LeRobot's `read_calibration`).
pub fn read_motor_calibration(bus: &mut FeetechBus) -> Result<Calibration, BusError> {
    let mut motors = [MotorCalibration {
        id: 0,
        drive_mode: 0,
        homing_offset: 0,
        range_min: 0,
        range_max: 0,
    }; NUM_JOINTS];
    for (i, id) in MOTOR_IDS.into_iter().enumerate() {
        motors[i] = MotorCalibration {
            id,
            drive_mode: 0,
            range_min: bus.read(id, &reg::MIN_POSITION_LIMIT)?,
            range_max: bus.read(id, &reg::MAX_POSITION_LIMIT)?,
            homing_offset: bus.read(id, &reg::HOMING_OFFSET)?,
        };
    }
    Ok(Calibration { motors })
}

/// Writes Homing_Offset and the position limits (LeRobot's `write_calibration`).
pub fn write_motor_calibration(bus: &mut FeetechBus, cal: &Calibration) -> Result<(), BusError> {
    for (id, m) in MOTOR_IDS.into_iter().zip(&cal.motors) {
        bus.write(id, &reg::HOMING_OFFSET, m.homing_offset)?;
        bus.write(id, &reg::MIN_POSITION_LIMIT, m.range_min)?;
        bus.write(id, &reg::MAX_POSITION_LIMIT, m.range_max)?;
    }
    Ok(())
}

/// LeRobot's `configure_motors` plus the SO follower's / leader's `configure` (torque left off).
fn configure(bus: &mut FeetechBus, role: ArmRole) -> Result<(), BusError> {
    for id in MOTOR_IDS {
        bus.write(id, &reg::RETURN_DELAY_TIME, 0)?;
        bus.write(id, &reg::MAXIMUM_ACCELERATION, 254)?;
        bus.write(id, &reg::ACCELERATION, 254)?;
    }
    for id in MOTOR_IDS {
        bus.write(id, &reg::OPERATING_MODE, 0)?;
        if role == ArmRole::Follower {
            bus.write(id, &reg::P_COEFFICIENT, 16)?;
            bus.write(id, &reg::I_COEFFICIENT, 0)?;
            bus.write(id, &reg::D_COEFFICIENT, 32)?;
            if id == 6 {
                bus.write(id, &reg::MAX_TORQUE_LIMIT, 500)?;
                bus.write(id, &reg::PROTECTION_CURRENT, 250)?;
                bus.write(id, &reg::OVERLOAD_TORQUE, 25)?;
            }
        }
    }
    Ok(())
}

impl So101Arm {
    /// Loads the calibration (refusing an uncalibrated arm), opens the bus, checks the motors, writes
    /// the calibration when the motors differ from it, configures them and (follower) turns torque on.
    pub fn connect(cfg: ArmConfig) -> Result<Self, ArmError> {
        let (calibration, calibration_path) =
            find_calibration(cfg.role, &cfg.id, cfg.calibration_dir.as_deref())?;
        if let Some(max) = cfg.max_relative_target
            && let Some(bad) = max.iter().find(|v| !(v.is_finite() && **v > 0.0))
        {
            return Err(ArmError::BadMaxRelative(*bad));
        }
        let mut bus = FeetechBus::open(&cfg.port, cfg.bus)?;
        handshake(&mut bus)?;
        let on_motors = read_motor_calibration(&mut bus)?;
        let same = on_motors.motors.iter().zip(&calibration.motors).all(|(a, b)| {
            a.homing_offset == b.homing_offset && a.range_min == b.range_min && a.range_max == b.range_max
        });
        disable_torque(&mut bus)?;
        if !same {
            tracing::info!(
                "motors of {} differ from {}: writing the file's calibration to them",
                cfg.port,
                calibration_path.display()
            );
            write_motor_calibration(&mut bus, &calibration)?;
        }
        configure(&mut bus, cfg.role)?;
        let follower = cfg.role == ArmRole::Follower;
        if follower {
            enable_torque(&mut bus)?;
        }
        let shared = Arc::new(Mutex::new(Shared {
            bus,
            torque_on: follower,
            last_command: Instant::now(),
        }));
        let tripped = Arc::new(AtomicBool::new(false));
        let stop_watchdog = Arc::new(AtomicBool::new(false));
        let watchdog = match (follower, cfg.watchdog) {
            (true, Some(limit)) => Some(spawn_watchdog(
                shared.clone(),
                tripped.clone(),
                stop_watchdog.clone(),
                limit,
            )),
            _ => None,
        };
        Ok(So101Arm {
            shared,
            calibration,
            calibration_path,
            cfg,
            tripped,
            stop_watchdog,
            watchdog,
            closed: false,
        })
    }

    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    pub fn calibration_path(&self) -> &Path {
        &self.calibration_path
    }

    pub fn config(&self) -> &ArmConfig {
        &self.cfg
    }

    fn mode(&self, i: usize) -> NormMode {
        norm_mode(i, self.cfg.use_degrees)
    }

    /// The calibrated range of every joint in normalised units.
    pub fn joint_limits(&self) -> [(f64, f64); NUM_JOINTS] {
        std::array::from_fn(|i| self.calibration.motors[i].normalized_range(self.mode(i)))
    }

    fn check_watchdog(&self) -> Result<(), ArmError> {
        if self.tripped.load(Ordering::SeqCst) {
            return Err(ArmError::Watchdog {
                limit_ms: self.cfg.watchdog.unwrap_or_default().as_millis() as u64,
            });
        }
        Ok(())
    }

    /// On a bus failure: torque off (best effort) and report lost communication.
    fn fail(&self, shared: &mut Shared, err: BusError) -> ArmError {
        if shared.torque_on {
            if let Err(e) = disable_torque(&mut shared.bus) {
                tracing::error!("could not turn torque off after a bus failure: {e}");
            }
            shared.torque_on = false;
        }
        ArmError::LostCommunication(err)
    }

    fn read_locked(&self, shared: &mut Shared) -> Result<[f64; NUM_JOINTS], ArmError> {
        let raw = match shared.bus.sync_read(&reg::PRESENT_POSITION, &MOTOR_IDS) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(shared, e)),
        };
        Ok(std::array::from_fn(|i| {
            self.calibration.motors[i].normalize(raw[i], self.mode(i))
        }))
    }

    /// Present positions in normalised units (degrees or -100..100; gripper 0..100), motor order.
    pub fn read_positions(&self) -> Result<[f64; NUM_JOINTS], ArmError> {
        self.check_watchdog()?;
        let mut shared = lock(&self.shared);
        self.read_locked(&mut shared)
    }

    /// Sends a goal (normalised units, motor order) to the follower after the safety clamps; returns
    /// the goal actually sent. Non-finite values are rejected and nothing is sent.
    pub fn send_action(&self, goal: &[f64]) -> Result<[f64; NUM_JOINTS], ArmError> {
        if self.cfg.role == ArmRole::Leader {
            return Err(ArmError::LeaderCannotMove(self.cfg.role));
        }
        if goal.len() != NUM_JOINTS {
            return Err(ArmError::ActionLength {
                expected: NUM_JOINTS,
                got: goal.len(),
            });
        }
        self.check_watchdog()?;
        let limits = self.joint_limits();
        let mut safe = [0f64; NUM_JOINTS];
        for i in 0..NUM_JOINTS {
            if !goal[i].is_finite() {
                return Err(CalibrationError::Value {
                    motor: MOTOR_NAMES[i],
                    reason: format!("target {} is not a finite number", goal[i]),
                }
                .into());
            }
            safe[i] = goal[i].clamp(limits[i].0, limits[i].1);
        }
        let mut shared = lock(&self.shared);
        if let Some(max) = self.cfg.max_relative_target {
            let present = self.read_locked(&mut shared)?;
            safe = clamp_relative(&safe, &present, &max);
        }
        let mut values = Vec::with_capacity(NUM_JOINTS);
        for i in 0..NUM_JOINTS {
            let raw = self.calibration.motors[i].unnormalize(safe[i], self.mode(i), MOTOR_NAMES[i])?;
            values.push((MOTOR_IDS[i], raw));
        }
        if let Err(e) = shared.bus.sync_write(&reg::GOAL_POSITION, &values) {
            return Err(self.fail(&mut shared, e));
        }
        shared.last_command = Instant::now();
        Ok(safe)
    }

    /// Turns torque off on every motor (the stop key, and before leaving).
    pub fn disable_torque(&self) -> Result<(), ArmError> {
        let mut shared = lock(&self.shared);
        let result = disable_torque(&mut shared.bus);
        shared.torque_on = false;
        result.map_err(ArmError::from)
    }

    /// Stops the watchdog and turns torque off (LeRobot's `disconnect(disable_torque=True)`).
    pub fn disconnect(mut self) -> Result<(), ArmError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ArmError> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        self.stop_watchdog.store(true, Ordering::SeqCst);
        if let Some(handle) = self.watchdog.take() {
            let _ = handle.join();
        }
        let mut shared = lock(&self.shared);
        if self.cfg.role == ArmRole::Follower || shared.torque_on {
            let result = disable_torque(&mut shared.bus);
            shared.torque_on = false;
            result?;
        }
        Ok(())
    }
}

impl Drop for So101Arm {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("turning torque off on {}: {e}", self.cfg.port);
        }
    }
}

/// LeRobot's `ensure_safe_goal_position`: goal = present + clamp(goal - present, -max, max).
pub fn clamp_relative(
    goal: &[f64; NUM_JOINTS],
    present: &[f64; NUM_JOINTS],
    max: &[f64; NUM_JOINTS],
) -> [f64; NUM_JOINTS] {
    std::array::from_fn(|i| {
        let diff = (goal[i] - present[i]).min(max[i]).max(-max[i]);
        present[i] + diff
    })
}

fn spawn_watchdog(
    shared: Arc<Mutex<Shared>>,
    tripped: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let poll = (limit / 5).max(Duration::from_millis(5));
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(poll);
            let mut s = lock(&shared);
            if s.torque_on && s.last_command.elapsed() > limit {
                tracing::error!(
                    "watchdog: no command for {} ms, turning torque off",
                    s.last_command.elapsed().as_millis()
                );
                if let Err(e) = disable_torque(&mut s.bus) {
                    tracing::error!("watchdog could not turn torque off: {e}");
                }
                s.torque_on = false;
                tripped.store(true, Ordering::SeqCst);
            }
        }
    })
}
