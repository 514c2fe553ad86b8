//! A simulated SO-101 Feetech bus: six STS3215 control tables on a pseudo-terminal whose joints are
//! the MuJoCo arm's joints, so toprl's drivers, `so101 calibrate` and LeRobot's own `SOFollower` talk to
//! it exactly as to a real arm.
//!
//! Each motor answers PING, READ, WRITE, SYNC_READ and SYNC_WRITE (no reply to broadcasts), keeps a
//! byte control table, and behaves as the STS3215 firmware does for what LeRobot uses:
//! `Present_Position = actual - Homing_Offset` (12-bit, wrapping), Homing_Offset sign-magnitude with the
//! sign at bit 11, Goal_Position clamped to [Min_Position_Limit, Max_Position_Limit] and driving the
//! joint while Torque_Enable is 1; while torque is off the joint is free (held by friction, or moved by
//! a simulated operator) and Goal_Position follows the present position. Lock is stored; the simulator
//! has no power cycles, so it has nothing more to protect.
//!
//! The physical link between a joint and its encoder comes from a calibration (a LeRobot file, or the
//! built-in [`default_truth`]): with that calibration written to the motors, the angle LeRobot reads in
//! degrees is the simulated joint angle in LeRobot units (and the gripper's 0-100 is the simulator's).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};

use super::calibration::{Calibration, MotorCalibration, NormMode, norm_mode};
use super::protocol::{self, Instruction, Parsed, STS3215_MODEL_NUMBER, reg};
use crate::sim::{ScriptedExpert, SimConfig, SimError, So101Env, Task};
use crate::so101::{CONTROL_HZ, JOINT_RANGES_RAD, NUM_JOINTS};

/// Model number a motor reports under the `wrong_model` fault.
pub const WRONG_MODEL_NUMBER: u16 = 1234;

/// Who moves the joints whose torque is off (the hand of a person holding the arm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// Nobody: free joints stay where they are.
    Hold,
    /// Every joint sweeps smoothly through 80% of its range around the middle, starting at the middle;
    /// joint i's period is `sweep_period * (1 + 0.05 i)`.
    Sweep,
    /// The scripted IK expert solves the task (a leader arm demonstrating it).
    Expert,
}

impl std::str::FromStr for Operator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hold" => Ok(Operator::Hold),
            "sweep" => Ok(Operator::Sweep),
            "expert" => Ok(Operator::Expert),
            _ => Err(format!("unknown operator `{s}`, expected hold, sweep or expert")),
        }
    }
}

/// Faults to inject, for tests of the drivers' error handling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// This motor stops answering.
    pub silent_motor: Option<u8>,
    /// This motor's replies carry a wrong checksum.
    pub corrupt_motor: Option<u8>,
    /// This motor reports model number [`WRONG_MODEL_NUMBER`] instead of 777.
    pub wrong_model_motor: Option<u8>,
    /// Faults start after this many instruction packets were served (0: from the start).
    pub after_packets: u64,
}

/// Settings of a simulated bus.
#[derive(Debug, Clone)]
pub struct SimBusConfig {
    /// The physical encoder/joint relation and the registers the motors start with (as calibrated by
    /// LeRobot with this file). `None`: [`default_truth`] and factory registers (offset 0, limits
    /// 0..4095), i.e. an arm still to be calibrated.
    pub calibration: Option<Calibration>,
    pub task: Task,
    pub operator: Operator,
    /// Period of the sweep operator in seconds.
    pub sweep_period: f64,
    pub seed: u64,
    pub faults: Faults,
}

impl Default for SimBusConfig {
    fn default() -> Self {
        SimBusConfig {
            calibration: None,
            task: Task::PickCube,
            operator: Operator::Hold,
            sweep_period: 4.0,
            seed: 0,
            faults: Faults::default(),
        }
    }
}

/// The encoder/joint relation of the built-in simulated arm: each body joint's zero at mid-range 2047,
/// its range the MuJoCo joint range, the gripper's 0-100 over its joint range, and homing offsets of an
/// arm assembled with the horns at arbitrary angles.
pub fn default_truth() -> Calibration {
    const OFFSETS: [i32; NUM_JOINTS] = [-1396, 1012, -35, 211, 703, -1187];
    let ticks = |rad: f64| rad.to_degrees() * f64::from(protocol::MAX_POSITION) / 360.0;
    let mut motors = [MotorCalibration {
        id: 0,
        drive_mode: 0,
        homing_offset: 0,
        range_min: 0,
        range_max: 0,
    }; NUM_JOINTS];
    for i in 0..NUM_JOINTS {
        let (lo, hi) = JOINT_RANGES_RAD[i];
        let (range_min, range_max) = if i == 4 {
            (0, protocol::MAX_POSITION)
        } else if i == NUM_JOINTS - 1 {
            (2047 + ticks(lo).round() as i32, 2047 + ticks(hi).round() as i32)
        } else {
            let half = ticks(lo.abs().max(hi.abs())).ceil() as i32;
            (2047 - half, 2047 + half)
        };
        motors[i] = MotorCalibration {
            id: i as u8 + 1,
            drive_mode: 0,
            homing_offset: OFFSETS[i],
            range_min,
            range_max,
        };
    }
    Calibration { motors }
}

/// One simulated STS3215.
struct SimMotor {
    table: [u8; 256],
    truth: MotorCalibration,
    mode: NormMode,
}

impl SimMotor {
    fn new(id: u8, truth: MotorCalibration, mode: NormMode, registers: Option<&MotorCalibration>) -> Self {
        let mut m = SimMotor {
            table: [0; 256],
            truth,
            mode,
        };
        m.set(&reg::FIRMWARE_MAJOR_VERSION, 3);
        m.set(&reg::FIRMWARE_MINOR_VERSION, 10);
        m.set(&reg::MODEL_NUMBER, i32::from(STS3215_MODEL_NUMBER));
        m.set(&reg::ID, i32::from(id));
        m.set(&reg::RETURN_DELAY_TIME, 250);
        m.set(&reg::MAX_TORQUE_LIMIT, 1000);
        m.set(&reg::P_COEFFICIENT, 32);
        m.set(&reg::PROTECTION_CURRENT, 500);
        m.set(&reg::OVERLOAD_TORQUE, 80);
        m.set(&reg::MAXIMUM_ACCELERATION, 100);
        m.set(&reg::ACCELERATION, 0);
        let (offset, min, max) = match registers {
            Some(c) => (c.homing_offset, c.range_min, c.range_max),
            None => (0, 0, protocol::MAX_POSITION),
        };
        m.set(&reg::HOMING_OFFSET, offset);
        m.set(&reg::MIN_POSITION_LIMIT, min);
        m.set(&reg::MAX_POSITION_LIMIT, max);
        m
    }

    fn get(&self, r: &protocol::Register) -> i32 {
        let a = r.address as usize;
        protocol::decode_value(r, protocol::from_bytes(&self.table[a..a + r.size as usize]))
    }

    fn set(&mut self, r: &protocol::Register, value: i32) {
        let raw = protocol::encode_value(r, value).unwrap_or(0);
        let a = r.address as usize;
        self.table[a..a + r.size as usize].copy_from_slice(&protocol::to_bytes(raw, r.size));
    }

    fn id(&self) -> u8 {
        self.table[reg::ID.address as usize]
    }

    fn torque_on(&self) -> bool {
        self.table[reg::TORQUE_ENABLE.address as usize] == 1
    }

    /// Encoder ticks (unwrapped) for joint position `u` in LeRobot units.
    fn actual_ticks(&self, u: f64) -> f64 {
        let t = &self.truth;
        let (min, max) = (f64::from(t.range_min), f64::from(t.range_max));
        let base = f64::from(t.homing_offset);
        match self.mode {
            NormMode::Range0To100 => base + min + u / 100.0 * (max - min),
            _ => base + (min + max) / 2.0 + u * f64::from(protocol::MAX_POSITION) / 360.0,
        }
    }

    /// Joint position in LeRobot units for encoder ticks.
    fn joint_units(&self, ticks: f64) -> f64 {
        let t = &self.truth;
        let (min, max) = (f64::from(t.range_min), f64::from(t.range_max));
        let base = f64::from(t.homing_offset);
        match self.mode {
            NormMode::Range0To100 => (ticks - base - min) / (max - min) * 100.0,
            _ => (ticks - base - (min + max) / 2.0) * 360.0 / f64::from(protocol::MAX_POSITION),
        }
    }

    /// Refreshes Present_Position from the joint (and Goal_Position while torque is off).
    fn refresh(&mut self, u: f64) {
        let actual = self.actual_ticks(u).round() as i32;
        let present = (actual - self.get(&reg::HOMING_OFFSET)).rem_euclid(protocol::RESOLUTION);
        self.set(&reg::PRESENT_POSITION, present);
        if !self.torque_on() {
            self.set(&reg::GOAL_POSITION, present);
        }
    }

    /// The joint target (LeRobot units) the firmware drives to: the goal, clamped to the position limits,
    /// turned back into the encoder frame near the current position.
    fn target_units(&self, current_u: f64) -> f64 {
        let (min, max) = (
            self.get(&reg::MIN_POSITION_LIMIT),
            self.get(&reg::MAX_POSITION_LIMIT),
        );
        let mut goal = self.get(&reg::GOAL_POSITION);
        if min < max {
            goal = goal.clamp(min, max);
        }
        let mut actual = f64::from(goal + self.get(&reg::HOMING_OFFSET));
        let now = self.actual_ticks(current_u);
        let res = f64::from(protocol::RESOLUTION);
        while actual - now > res / 2.0 {
            actual -= res;
        }
        while now - actual > res / 2.0 {
            actual += res;
        }
        self.joint_units(actual)
    }

    /// Applies a WRITE's bytes; read-only addresses (firmware, model, present values) are left alone.
    fn write(&mut self, address: u8, data: &[u8]) {
        for (k, b) in data.iter().enumerate() {
            let a = address as usize + k;
            let read_only = a < reg::ID.address as usize || (56..=79).contains(&a);
            if a < self.table.len() && !read_only {
                self.table[a] = *b;
            }
        }
    }
}

/// The simulated bus: motors, the MuJoCo arm and the pseudo-terminal.
pub struct SimBus {
    master: TTYPort,
    // Kept open: with no slave open, reads on the master fail with EIO.
    _slave: TTYPort,
    port_name: String,
    motors: Vec<SimMotor>,
    env: So101Env,
    expert: Option<ScriptedExpert>,
    cfg: SimBusConfig,
    rx: Vec<u8>,
    packets: u64,
    start: Instant,
    next_tick: Instant,
    joints: [f32; NUM_JOINTS],
    /// Where each free joint is held with the `hold` operator: its position when torque was last on.
    held: [f32; NUM_JOINTS],
}

impl std::fmt::Debug for SimBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBus")
            .field("port", &self.port_name)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Errors of the simulated bus.
#[derive(Debug, thiserror::Error)]
pub enum SimBusError {
    #[error("creating the pseudo-terminal: {0}")]
    Pty(#[from] serialport::Error),
    #[error("pseudo-terminal I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Sim(#[from] SimError),
}

impl SimBus {
    /// Builds the MuJoCo arm (no cameras) and opens a pseudo-terminal; clients open [`SimBus::port_name`].
    pub fn new(cfg: SimBusConfig) -> Result<Self, SimBusError> {
        // The slave end is opened raw and without locks (no flock, no TIOCEXCL), so the client can open
        // its path exclusively; do not call `set_exclusive` on it (that takes a shared flock).
        let (mut master, slave) = TTYPort::pair()?;
        master.set_timeout(Duration::from_millis(1))?;
        let port_name = slave
            .name()
            .ok_or_else(|| std::io::Error::other("the pseudo-terminal has no name"))?;
        let sim_cfg = SimConfig {
            cameras: vec![],
            terminate_on_success: false,
            max_steps: Some(usize::MAX / 2),
            ..SimConfig::for_task(cfg.task)
        };
        let mut env = So101Env::new(sim_cfg)?;
        let (obs, _) = env.reset(Some(cfg.seed))?;
        let expert = (cfg.operator == Operator::Expert).then(|| ScriptedExpert::new(&env, 0.0, cfg.seed));
        let truth = cfg.calibration.unwrap_or_else(default_truth);
        let motors = (0..NUM_JOINTS)
            .map(|i| {
                SimMotor::new(
                    i as u8 + 1,
                    truth.motors[i],
                    norm_mode(i, true),
                    cfg.calibration.as_ref().map(|c| &c.motors[i]),
                )
            })
            .collect();
        let now = Instant::now();
        let mut bus = SimBus {
            master,
            _slave: slave,
            port_name,
            motors,
            env,
            expert,
            cfg,
            rx: Vec::new(),
            packets: 0,
            start: now,
            next_tick: now,
            joints: obs.state,
            held: obs.state,
        };
        bus.refresh();
        Ok(bus)
    }

    /// The pseudo-terminal path clients open (e.g. `/dev/pts/3`).
    pub fn port_name(&self) -> &str {
        &self.port_name
    }

    /// Joint positions in LeRobot units (degrees; gripper 0-100), motor order.
    pub fn joints(&self) -> [f32; NUM_JOINTS] {
        self.joints
    }

    /// Torque_Enable of every motor, bus order.
    pub fn torque(&self) -> [bool; NUM_JOINTS] {
        std::array::from_fn(|i| self.motors.get(i).is_some_and(SimMotor::torque_on))
    }

    /// Instruction packets served so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    fn refresh(&mut self) {
        for (m, u) in self.motors.iter_mut().zip(self.joints) {
            m.refresh(f64::from(u));
        }
    }

    /// Serves requests and advances the physics in real time until `stop` returns true.
    pub fn serve(&mut self, mut stop: impl FnMut(&SimBus) -> bool) -> Result<(), SimBusError> {
        let mut buf = [0u8; 512];
        while !stop(self) {
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => {
                    self.rx.extend_from_slice(&buf[..n]);
                    self.handle_packets()?;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            if Instant::now() >= self.next_tick {
                self.tick()?;
            }
        }
        Ok(())
    }

    /// One 30 Hz control step: torque-on joints go to their goals, free joints to the operator's hand.
    fn tick(&mut self) -> Result<(), SimBusError> {
        let period = Duration::from_secs_f64(1.0 / CONTROL_HZ);
        self.next_tick += period;
        if Instant::now() > self.next_tick + period * 10 {
            // Fell far behind (a stalled machine): do not replay the backlog at once.
            self.next_tick = Instant::now() + period;
        }
        let hand = self.operator_targets();
        let mut action = [0f32; NUM_JOINTS];
        for i in 0..NUM_JOINTS {
            let m = &self.motors[i];
            action[i] = if m.torque_on() {
                self.held[i] = self.joints[i];
                m.target_units(f64::from(self.joints[i])) as f32
            } else {
                hand[i]
            };
        }
        let step = self.env.step(&action)?;
        self.joints = step.observation.state;
        self.refresh();
        Ok(())
    }

    fn operator_targets(&mut self) -> [f32; NUM_JOINTS] {
        match self.cfg.operator {
            Operator::Hold => self.held,
            Operator::Sweep => {
                let t = self.start.elapsed().as_secs_f64();
                let mut out = [0f32; NUM_JOINTS];
                let (lo, hi) = crate::sim::env::action_bounds();
                for i in 0..NUM_JOINTS {
                    let (lo, hi) = (f64::from(lo[i]), f64::from(hi[i]));
                    let (mid, half) = if i == NUM_JOINTS - 1 {
                        (50.0, 50.0)
                    } else {
                        (0.0, lo.abs().min(hi.abs()))
                    };
                    // Slightly different periods so the joints do not move in lockstep.
                    let period = self.cfg.sweep_period * (1.0 + 0.05 * i as f64);
                    let s = (2.0 * std::f64::consts::PI * t / period).sin();
                    out[i] = (mid + 0.8 * half * s.clamp(-1.0, 1.0)) as f32;
                }
                out
            }
            Operator::Expert => match self.expert.as_mut() {
                Some(e) => e.act(&self.env),
                None => self.joints,
            },
        }
    }

    fn faults_active(&self) -> bool {
        self.packets > self.cfg.faults.after_packets
    }

    fn handle_packets(&mut self) -> Result<(), SimBusError> {
        loop {
            match protocol::parse_frame(&self.rx) {
                Parsed::Incomplete => return Ok(()),
                Parsed::Skip { consumed, .. } | Parsed::BadChecksum { consumed, .. } => {
                    // A real servo ignores a packet it cannot read.
                    self.rx.drain(..consumed);
                }
                Parsed::Frame { frame, consumed } => {
                    self.rx.drain(..consumed);
                    self.packets += 1;
                    let replies = self.execute(&frame);
                    for reply in replies {
                        self.master.write_all(&reply)?;
                    }
                    self.master.flush()?;
                }
            }
        }
    }

    fn motor_index(&self, id: u8) -> Option<usize> {
        self.motors.iter().position(|m| m.id() == id)
    }

    /// The status packet of motor `index` with `data`, after the faults are applied (`None`: silent).
    fn reply(&self, index: usize, data: &[u8]) -> Option<Vec<u8>> {
        let id = self.motors[index].id();
        let f = self.cfg.faults;
        if self.faults_active() && f.silent_motor == Some(id) {
            return None;
        }
        let mut packet = protocol::packet(id, 0, data);
        if self.faults_active()
            && f.corrupt_motor == Some(id)
            && let Some(last) = packet.last_mut()
        {
            *last ^= 0x5A;
        }
        Some(packet)
    }

    fn read_bytes(&self, index: usize, address: u8, size: u8) -> Vec<u8> {
        let m = &self.motors[index];
        let (a, n) = (address as usize, size as usize);
        let mut data: Vec<u8> = (a..a + n).map(|k| m.table.get(k).copied().unwrap_or(0)).collect();
        let f = self.cfg.faults;
        let model = reg::MODEL_NUMBER.address as usize;
        if self.faults_active() && f.wrong_model_motor == Some(m.id()) && a <= model + 1 && model < a + n {
            let wrong = WRONG_MODEL_NUMBER.to_le_bytes();
            for (k, byte) in wrong.iter().enumerate() {
                if (a..a + n).contains(&(model + k)) {
                    data[model + k - a] = *byte;
                }
            }
        }
        data
    }

    fn execute(&mut self, frame: &protocol::Frame) -> Vec<Vec<u8>> {
        let Some(instr) = Instruction::from_code(frame.code) else {
            tracing::debug!("sim bus: unknown instruction {:#04x}", frame.code);
            return vec![];
        };
        let p = &frame.params;
        match instr {
            Instruction::Ping => {
                let targets: Vec<usize> = if frame.id == protocol::BROADCAST_ID {
                    (0..self.motors.len()).collect()
                } else {
                    self.motor_index(frame.id).into_iter().collect()
                };
                targets.into_iter().filter_map(|i| self.reply(i, &[])).collect()
            }
            Instruction::Read if p.len() == 2 => match self.motor_index(frame.id) {
                Some(i) => self
                    .reply(i, &self.read_bytes(i, p[0], p[1]))
                    .into_iter()
                    .collect(),
                None => vec![],
            },
            Instruction::Write if !p.is_empty() => {
                let targets: Vec<usize> = if frame.id == protocol::BROADCAST_ID {
                    (0..self.motors.len()).collect()
                } else {
                    self.motor_index(frame.id).into_iter().collect()
                };
                for &i in &targets {
                    self.motors[i].write(p[0], &p[1..]);
                }
                self.refresh();
                if frame.id == protocol::BROADCAST_ID {
                    vec![]
                } else {
                    targets.into_iter().filter_map(|i| self.reply(i, &[])).collect()
                }
            }
            Instruction::SyncRead if p.len() >= 2 => {
                let (address, size) = (p[0], p[1]);
                p[2..]
                    .iter()
                    .filter_map(|id| self.motor_index(*id))
                    .filter_map(|i| self.reply(i, &self.read_bytes(i, address, size)))
                    .collect()
            }
            Instruction::SyncWrite if p.len() >= 2 => {
                let (address, size) = (p[0], p[1] as usize);
                for chunk in p[2..].chunks(size + 1) {
                    if chunk.len() == size + 1
                        && let Some(i) = self.motor_index(chunk[0])
                    {
                        self.motors[i].write(address, &chunk[1..]);
                    }
                }
                self.refresh();
                vec![]
            }
            _ => vec![],
        }
    }
}
