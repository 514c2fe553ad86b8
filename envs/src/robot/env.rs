//! The real SO-101 follower as an [`Environment`]: `reset` moves the arm to its start pose at a limited
//! speed, `step` sends one safety-clamped goal per control period and observes the calibrated joint
//! positions (LeRobot units) and the cameras.
//!
//! Nothing is invented: there is no reward, no success and no scene vector on hardware, so
//! [`Transition::reward`], [`Transition::task`] and [`Observation::environment_state`] are `None`.
//! Episodes end on time (`max_steps`); the operator resets the scene between episodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::arm::So101Arm;
use super::camera::Camera;
use crate::environment::{EnvError, Environment, Observation, TaskStatus, Transition};
use crate::sim::env::{HOME_QPOS, rad_to_lerobot};
use crate::so101::{MOTOR_NAMES, NUM_JOINTS};

/// How the real-arm environment runs its episodes.
#[derive(Debug, Clone)]
pub struct RobotEnvConfig {
    /// The task instruction given to the policy.
    pub instruction: String,
    /// Control rate in steps per second (LeRobot: 30).
    pub fps: f64,
    /// Episode length in control steps.
    pub max_steps: usize,
    /// Joint positions `reset` moves to (LeRobot units, motor order), clamped to the calibrated range.
    pub start_pose: [f64; NUM_JOINTS],
    /// Largest speed of the move to the start pose, units per second (degrees/s; gripper %/s).
    pub reset_speed: f64,
    /// The start pose is reached when every joint is this close to it (LeRobot units).
    pub reset_tolerance: f64,
    /// `reset` fails when the start pose is not reached in this time.
    pub reset_timeout: Duration,
}

impl RobotEnvConfig {
    /// The simulator's home pose in LeRobot units: the pose policies trained in simulation start from.
    pub fn sim_home_pose() -> [f64; NUM_JOINTS] {
        rad_to_lerobot(&HOME_QPOS).map(f64::from)
    }
}

/// A connected follower arm with its cameras, driven at a fixed control rate.
pub struct RobotEnv {
    arm: So101Arm,
    cameras: Vec<Box<dyn Camera>>,
    cfg: RobotEnvConfig,
    steps: usize,
    reset_done: bool,
    next_tick: Instant,
    stop: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for RobotEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobotEnv")
            .field("arm", &self.arm)
            .field("cfg", &self.cfg)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl RobotEnv {
    /// Wraps a connected follower (torque on) and its opened cameras.
    pub fn new(arm: So101Arm, cameras: Vec<Box<dyn Camera>>, cfg: RobotEnvConfig) -> Result<Self, EnvError> {
        let bad = |what: String| Err(EnvError::Reset(what));
        if !(cfg.fps.is_finite() && (1.0..=200.0).contains(&cfg.fps)) {
            return bad(format!("fps {} is outside 1..=200", cfg.fps));
        }
        if cfg.max_steps == 0 {
            return bad("an episode needs at least one step".into());
        }
        if !(cfg.reset_speed.is_finite() && cfg.reset_speed > 0.0) {
            return bad(format!("reset speed {} must be positive", cfg.reset_speed));
        }
        if !(cfg.reset_tolerance.is_finite() && cfg.reset_tolerance > 0.0) {
            return bad(format!(
                "reset tolerance {} must be positive",
                cfg.reset_tolerance
            ));
        }
        if let Some(i) = cfg.start_pose.iter().position(|v| !v.is_finite()) {
            return bad(format!("start pose of {} is not a finite number", MOTOR_NAMES[i]));
        }
        Ok(RobotEnv {
            arm,
            cameras,
            cfg,
            steps: 0,
            reset_done: false,
            next_tick: Instant::now(),
            stop: None,
        })
    }

    /// A flag (the stop key, Ctrl-C) that interrupts the move to the start pose with
    /// [`EnvError::Stopped`]; the arm then holds where it is until the caller disconnects.
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    pub fn arm(&self) -> &So101Arm {
        &self.arm
    }

    pub fn config(&self) -> &RobotEnvConfig {
        &self.cfg
    }

    /// Turns torque off and closes the bus.
    pub fn disconnect(self) -> Result<(), EnvError> {
        Ok(self.arm.disconnect()?)
    }

    fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.cfg.fps)
    }

    /// Sleeps until the next control tick; after a long stall the schedule restarts from now rather
    /// than firing a burst of late commands.
    fn wait_tick(&mut self) {
        let period = self.period();
        let now = Instant::now();
        if self.next_tick > now {
            std::thread::sleep(self.next_tick - now);
        }
        self.next_tick += period;
        if Instant::now() > self.next_tick + period * 5 {
            self.next_tick = Instant::now() + period;
        }
    }

    fn observe(&mut self) -> Result<Observation, EnvError> {
        let state = self.arm.read_positions()?.map(|v| v as f32);
        let mut images = std::collections::BTreeMap::new();
        for camera in &mut self.cameras {
            let frame = camera.capture()?;
            images.insert(format!("observation.images.{}", camera.name()), frame);
        }
        Ok(Observation {
            state,
            images,
            environment_state: None,
        })
    }

    /// Moves to the start pose along a straight joint-space line at `reset_speed`, one goal per tick.
    fn move_to_start(&mut self) -> Result<(), EnvError> {
        let limits = self.arm.joint_limits();
        let target: [f64; NUM_JOINTS] =
            std::array::from_fn(|i| self.cfg.start_pose[i].clamp(limits[i].0, limits[i].1));
        let max_step = self.cfg.reset_speed / self.cfg.fps;
        let mut commanded = self.arm.read_positions()?;
        let deadline = Instant::now() + self.cfg.reset_timeout;
        self.next_tick = Instant::now();
        loop {
            if self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                return Err(EnvError::Stopped);
            }
            for i in 0..NUM_JOINTS {
                commanded[i] += (target[i] - commanded[i]).clamp(-max_step, max_step);
            }
            // The arm's clamps (range, max_relative_target) may shorten the move; continue from there.
            commanded = self.arm.send_action(&commanded)?;
            self.wait_tick();
            let present = self.arm.read_positions()?;
            let far: Vec<usize> = (0..NUM_JOINTS)
                .filter(|&i| (present[i] - target[i]).abs() > self.cfg.reset_tolerance)
                .collect();
            if far.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let joints: Vec<String> = far
                    .iter()
                    .map(|&i| format!("{} at {:.1} (start {:.1})", MOTOR_NAMES[i], present[i], target[i]))
                    .collect();
                return Err(EnvError::Reset(format!(
                    "the arm did not reach its start pose within {:.1} s (tolerance {}): {}",
                    self.cfg.reset_timeout.as_secs_f64(),
                    self.cfg.reset_tolerance,
                    joints.join(", ")
                )));
            }
        }
    }
}

impl Environment for RobotEnv {
    fn reset(&mut self, _seed: u64) -> Result<(Observation, Option<TaskStatus>), EnvError> {
        self.reset_done = false;
        self.move_to_start()?;
        self.steps = 0;
        self.reset_done = true;
        self.next_tick = Instant::now();
        Ok((self.observe()?, None))
    }

    fn step(&mut self, action: &[f32]) -> Result<Transition, EnvError> {
        if !self.reset_done {
            return Err(EnvError::NotReset);
        }
        if action.len() != NUM_JOINTS {
            return Err(EnvError::ActionLength {
                expected: NUM_JOINTS,
                got: action.len(),
            });
        }
        if let Some(joint) = action.iter().position(|v| !v.is_finite()) {
            return Err(EnvError::NonFiniteAction {
                joint,
                value: action[joint],
            });
        }
        let goal: Vec<f64> = action.iter().map(|&v| f64::from(v)).collect();
        self.wait_tick();
        let sent = self.arm.send_action(&goal)?;
        let clipped = sent.iter().zip(&goal).any(|(s, g)| (s - g).abs() > 1e-3);
        self.steps += 1;
        let truncated = self.steps >= self.cfg.max_steps;
        if truncated {
            self.reset_done = false;
        }
        Ok(Transition {
            observation: self.observe()?,
            reward: None,
            terminated: false,
            truncated,
            task: None,
            clipped,
        })
    }

    fn instruction(&self) -> &str {
        &self.cfg.instruction
    }

    fn fps(&self) -> f64 {
        self.cfg.fps
    }
}
