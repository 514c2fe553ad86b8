//! `so101 calibrate`, `so101 teleop`, `so101 record`, `so101 run` and `so101 sim-bus`: the real SO-101
//! (or the simulated bus standing in for it) driven the way LeRobot drives it.
//!
//! Keys are lines on stdin (no raw terminal): ENTER ends the current episode early (LeRobot's right
//! arrow), `r` ENTER records it again (left arrow), `s` or `q` ENTER stops the arm: torque off, the
//! recorded episodes saved (Escape). Ctrl-C does the same as `s`.

use std::io::{BufRead, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use toprl_envs::dataset::{DatasetSpec, DatasetWriter, LeRobotDataset};
use toprl_envs::episode::Episode;
use toprl_envs::robot::bus::{BusOptions, FeetechBus};
use toprl_envs::robot::calibrate::{CalibrationPrompt, run_calibration};
use toprl_envs::robot::calibration::{ArmRole, Calibration, calibration_path};
use toprl_envs::robot::sim_bus::{Faults, Operator, SimBus, SimBusConfig};
use toprl_envs::robot::{ArmConfig, ArmError, Camera, CameraConfig, So101Arm, open_camera};
use toprl_envs::sim::Task;
use toprl_envs::so101::{MOTOR_NAMES, NUM_JOINTS};

/// Lines typed on stdin, read by a background thread.
struct Keys {
    lines: Receiver<String>,
    closed: bool,
}

impl Keys {
    fn spawn() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim().to_string()).is_err() {
                    break;
                }
            }
        });
        Keys {
            lines: rx,
            closed: false,
        }
    }

    /// The next line typed, if any (never blocks).
    fn poll(&mut self) -> Option<String> {
        match self.lines.try_recv() {
            Ok(line) => Some(line),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.closed = true;
                None
            }
        }
    }

    fn wait(&mut self) -> anyhow::Result<String> {
        self.lines.recv().context("stdin closed while waiting for ENTER")
    }
}

/// What a line typed during a control loop asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// ENTER: end the episode (or reset period) now.
    Next,
    /// `r`: record the episode again.
    Rerecord,
    /// `s` / `q` / Ctrl-C: stop the arm.
    Stop,
}

fn interrupted() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Ctrl-C sets a flag the control loops check; they then stop the arm and save, like the `s` key.
fn install_ctrl_c() -> anyhow::Result<()> {
    let flag = interrupted().clone();
    match ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        Ok(()) | Err(ctrlc::Error::MultipleHandlers) => Ok(()),
        Err(e) => Err(e).context("installing the Ctrl-C handler"),
    }
}

fn key(keys: &mut Keys) -> Option<Key> {
    if interrupted().load(Ordering::SeqCst) {
        return Some(Key::Stop);
    }
    keys.poll().map(|line| match line.as_str() {
        "s" | "q" | "stop" => Key::Stop,
        "r" => Key::Rerecord,
        _ => Key::Next,
    })
}

/// Arm connection flags shared by the commands.
#[derive(Debug, Args, Clone)]
pub struct FollowerArgs {
    /// Serial port of the follower arm (e.g. /dev/ttyACM0, or the `port:` line of `so101 sim-bus`).
    #[arg(long)]
    pub port: String,
    /// The follower's id: its calibration file is `<id>.json`.
    #[arg(long)]
    pub id: String,
    /// Folder holding `<id>.json` (LeRobot's `calibration_dir`); default: LeRobot's calibration folder
    /// (`$HF_LEROBOT_CALIBRATION/robots/so_follower`, then the older `so101_follower`).
    #[arg(long)]
    pub calibration_dir: Option<PathBuf>,
    /// Largest change per step from the present position, in action units (degrees; gripper 0-100),
    /// one value for every motor or six comma-separated values.
    #[arg(long, value_delimiter = ',')]
    pub max_relative_target: Vec<f64>,
    /// Body joints in -100..100 instead of degrees (LeRobot's `use_degrees=False`, before 0.4.4).
    #[arg(long)]
    pub range_units: bool,
    /// Torque goes off when no command reached the follower for this many milliseconds.
    #[arg(long, default_value_t = 500)]
    pub watchdog_ms: u64,
}

/// `--camera NAME=PATH[@WIDTHxHEIGHT]`: a V4L2 camera whose frames are `observation.images.NAME`
/// (default 640x480, LeRobot's OpenCV camera default).
pub fn parse_camera(text: &str) -> Result<CameraConfig, String> {
    let (name, rest) = text.split_once('=').ok_or_else(|| {
        format!("expected NAME=PATH[@WIDTHxHEIGHT], e.g. front=/dev/video0@640x480, got {text:?}")
    })?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "camera name {name:?} must be letters, digits or _ (e.g. front, wrist)"
        ));
    }
    let (path, size) = match rest.rsplit_once('@') {
        Some((path, size)) => (path, Some(size)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(format!("camera {name}: the device path is empty"));
    }
    let (width, height) = match size {
        None => (640, 480),
        Some(size) => {
            let parsed = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
            match parsed {
                Some((w, h)) if (16..=8192).contains(&w) && (16..=8192).contains(&h) => (w, h),
                _ => {
                    return Err(format!(
                        "camera {name}: size {size:?} is not WIDTHxHEIGHT (16..=8192 each)"
                    ));
                }
            }
        }
    };
    Ok(CameraConfig {
        name: name.to_string(),
        path: path.to_string(),
        width,
        height,
    })
}

/// An opened camera and the (width, height) of the frames it really delivers.
type OpenedCamera = (Box<dyn Camera>, (u32, u32));

/// Open every camera, refusing a name given twice; each is asked for one frame so that its real size
/// is known (a device may deliver another size than requested).
fn open_cameras(configs: &[CameraConfig]) -> anyhow::Result<Vec<OpenedCamera>> {
    let mut opened = Vec::with_capacity(configs.len());
    for (i, cfg) in configs.iter().enumerate() {
        if configs[..i].iter().any(|c| c.name == cfg.name) {
            bail!("--camera {}: the name is given twice", cfg.name);
        }
        let mut camera = open_camera(cfg).with_context(|| format!("--camera {}", cfg.name))?;
        let frame = camera
            .capture()
            .with_context(|| format!("--camera {}: the first frame", cfg.name))?;
        opened.push((camera, frame.dimensions()));
    }
    Ok(opened)
}

/// Leader connection flags.
#[derive(Debug, Args, Clone)]
pub struct LeaderArgs {
    /// Serial port of the leader arm.
    #[arg(long)]
    pub leader_port: String,
    /// The leader's id (`<id>.json` under LeRobot's `teleoperators/so_leader`).
    #[arg(long)]
    pub leader_id: String,
    /// Folder holding the leader's `<id>.json`.
    #[arg(long)]
    pub leader_calibration_dir: Option<PathBuf>,
}

impl FollowerArgs {
    fn config(&self) -> anyhow::Result<ArmConfig> {
        let mut cfg = ArmConfig::new(&self.port, &self.id, ArmRole::Follower);
        cfg.calibration_dir = self.calibration_dir.clone();
        cfg.use_degrees = !self.range_units;
        cfg.watchdog = (self.watchdog_ms > 0).then(|| Duration::from_millis(self.watchdog_ms));
        cfg.max_relative_target = match self.max_relative_target.as_slice() {
            [] => None,
            [v] => Some([*v; NUM_JOINTS]),
            v if v.len() == NUM_JOINTS => Some(std::array::from_fn(|i| v[i])),
            v => bail!(
                "--max-relative-target: expected 1 or {NUM_JOINTS} values ({}), got {}",
                MOTOR_NAMES.join(", "),
                v.len()
            ),
        };
        Ok(cfg)
    }

    fn connect(&self) -> anyhow::Result<So101Arm> {
        let cfg = self.config()?;
        So101Arm::connect(cfg).with_context(|| format!("connecting the follower on {}", self.port))
    }
}

impl LeaderArgs {
    fn connect(&self, range_units: bool) -> anyhow::Result<So101Arm> {
        let mut cfg = ArmConfig::new(&self.leader_port, &self.leader_id, ArmRole::Leader);
        cfg.calibration_dir = self.leader_calibration_dir.clone();
        cfg.use_degrees = !range_units;
        So101Arm::connect(cfg).with_context(|| format!("connecting the leader on {}", self.leader_port))
    }
}

// ---------------------------------------------------------------------------------------------------
// calibrate

/// Calibrate an arm as LeRobot does and write LeRobot's calibration file.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Serial port of the arm.
    #[arg(long)]
    pub port: String,
    /// The arm's id: the file written is `<id>.json`.
    #[arg(long)]
    pub id: String,
    /// Calibrate a leader arm (written under `teleoperators/so_leader`).
    #[arg(long)]
    pub leader: bool,
    /// Write `<id>.json` into this folder instead of LeRobot's calibration folder.
    #[arg(long)]
    pub calibration_dir: Option<PathBuf>,
}

struct StdinPrompt {
    keys: Keys,
    last_table: Option<Instant>,
}

impl CalibrationPrompt for StdinPrompt {
    fn wait_enter(&mut self, message: &str) -> Result<(), ArmError> {
        eprintln!("{message}");
        self.keys
            .wait()
            .map(|_| ())
            .map_err(|e| ArmError::Procedure(e.to_string()))
    }

    fn enter_pressed(&mut self) -> bool {
        self.keys.poll().is_some()
    }

    fn show_ranges(&mut self, rows: &[(&str, i32, i32, i32)]) {
        if self
            .last_table
            .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        self.last_table = Some(Instant::now());
        let mut text = format!("{:<15} | {:>6} | {:>6} | {:>6}\n", "NAME", "MIN", "POS", "MAX");
        for (name, min, pos, max) in rows {
            text.push_str(&format!("{name:<15} | {min:>6} | {pos:>6} | {max:>6}\n"));
        }
        eprint!("{text}");
    }
}

pub fn calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    let role = if args.leader {
        ArmRole::Leader
    } else {
        ArmRole::Follower
    };
    let path = calibration_path(role, &args.id, args.calibration_dir.as_deref());
    let mut bus = FeetechBus::open(&args.port, BusOptions::default())?;
    let mut prompt = StdinPrompt {
        keys: Keys::spawn(),
        last_table: None,
    };
    eprintln!("Running calibration of the {role} `{}` on {}", args.id, args.port);
    let calibration = run_calibration(&mut bus, &mut prompt)?;
    calibration
        .save(&path)
        .with_context(|| format!("saving the calibration to {}", path.display()))?;
    println!("Calibration saved to {}", path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// sim-bus

/// Serve a simulated SO-101 bus (six STS3215 servos backed by the MuJoCo arm) on a pseudo-terminal.
#[derive(Debug, Args)]
pub struct SimBusArgs {
    /// A LeRobot calibration file: the motors start calibrated with it and the angles LeRobot reads
    /// with it are the simulated joint angles. Without it the motors have factory registers.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Scene task (reach, push_cube, pick_cube, pick_place).
    #[arg(long, default_value = "pick_cube")]
    pub task: Task,
    /// Simulate a leader arm: joints with torque off are moved by the operator (default `sweep`).
    #[arg(long)]
    pub leader: bool,
    /// Who moves joints whose torque is off: hold, sweep (every joint through its range) or expert
    /// (the scripted IK expert solving the task). Default: hold, or sweep with --leader.
    #[arg(long)]
    pub operator: Option<Operator>,
    /// Period of the sweep operator in seconds.
    #[arg(long, default_value_t = 4.0)]
    pub sweep_period: f64,
    /// Scene seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fault: this motor id stops answering.
    #[arg(long)]
    pub silent_motor: Option<u8>,
    /// Fault: this motor id answers with a wrong checksum.
    #[arg(long)]
    pub corrupt_motor: Option<u8>,
    /// Fault: this motor id reports model number 1234 instead of 777 (STS3215).
    #[arg(long)]
    pub wrong_model: Option<u8>,
    /// Faults start after this many instruction packets.
    #[arg(long, default_value_t = 0)]
    pub fault_after: u64,
    /// Print `state: {"joints": [...], "torque": [...]}` on stdout this often (seconds; 0: never).
    #[arg(long, default_value_t = 0.0)]
    pub status_every: f64,
}

#[derive(Serialize)]
struct SimBusStatus {
    joints: [f32; NUM_JOINTS],
    torque: [bool; NUM_JOINTS],
    packets: u64,
}

pub fn sim_bus(args: SimBusArgs) -> anyhow::Result<()> {
    let calibration = match &args.calibration {
        Some(path) => Some(Calibration::load(path)?),
        None => None,
    };
    if !(args.sweep_period.is_finite() && args.sweep_period > 0.0) {
        bail!(
            "--sweep-period must be a positive number of seconds, got {}",
            args.sweep_period
        );
    }
    let operator = args.operator.unwrap_or(if args.leader {
        Operator::Sweep
    } else {
        Operator::Hold
    });
    let cfg = SimBusConfig {
        calibration,
        task: args.task,
        operator,
        sweep_period: args.sweep_period,
        seed: args.seed,
        faults: Faults {
            silent_motor: args.silent_motor,
            corrupt_motor: args.corrupt_motor,
            wrong_model_motor: args.wrong_model,
            after_packets: args.fault_after,
        },
    };
    let mut bus = SimBus::new(cfg).context("starting the simulated bus")?;
    let mut out = std::io::stdout();
    writeln!(out, "port: {}", bus.port_name())?;
    out.flush()?;
    let every = (args.status_every > 0.0).then(|| Duration::from_secs_f64(args.status_every));
    let mut last = Instant::now();
    let mut failed: Option<std::io::Error> = None;
    bus.serve(|b| {
        if let Some(every) = every
            && last.elapsed() >= every
        {
            last = Instant::now();
            let status = SimBusStatus {
                joints: b.joints(),
                torque: b.torque(),
                packets: b.packets(),
            };
            let line = serde_json::to_string(&status).unwrap_or_default();
            if let Err(e) = writeln!(out, "state: {line}").and_then(|_| out.flush()) {
                failed = Some(e);
                return true;
            }
        }
        false
    })?;
    match failed {
        // The reader of our stdout went away: nobody is watching, stop serving.
        Some(e) => Err(e).context("writing the status line"),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------------
// teleop

/// The leader arm drives the follower at a fixed rate.
#[derive(Debug, Args)]
pub struct TeleopArgs {
    #[command(flatten)]
    pub follower: FollowerArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Control rate in Hz.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Stop after this many seconds (default: until `s` ENTER or Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
}

/// The teleop summary printed as JSON at the end.
#[derive(Debug, Serialize)]
struct TeleopSummary {
    steps: usize,
    seconds: f64,
    /// Mean over steps and joints of |follower present - leader| (action units).
    mean_abs_tracking_error: f64,
    /// Steps where the safety clamps changed the leader's action.
    clamped_steps: usize,
    final_follower: [f64; NUM_JOINTS],
    final_leader: [f64; NUM_JOINTS],
}

/// Sleeps until `next`, then moves it one period on.
fn pace(next: &mut Instant, period: Duration) {
    let now = Instant::now();
    if *next > now {
        std::thread::sleep(*next - now);
    }
    *next += period;
    if Instant::now() > *next + period * 5 {
        *next = Instant::now() + period;
    }
}

fn check_fps(fps: u32) -> anyhow::Result<Duration> {
    if !(1..=200).contains(&fps) {
        bail!("--fps must be within 1..=200, got {fps}");
    }
    Ok(Duration::from_secs_f64(1.0 / f64::from(fps)))
}

fn check_seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("{flag} must be a non-negative number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

pub fn teleop(args: TeleopArgs) -> anyhow::Result<()> {
    let period = check_fps(args.fps)?;
    let duration = args
        .duration
        .map(|d| check_seconds("--duration", d))
        .transpose()?;
    install_ctrl_c()?;
    let mut keys = Keys::spawn();
    let leader = args.leader.connect(args.follower.range_units)?;
    let follower = args.follower.connect()?;
    eprintln!(
        "teleoperating at {} Hz: `s` ENTER or Ctrl-C stops (torque off)",
        args.fps
    );
    let start = Instant::now();
    let mut next = Instant::now();
    let (mut steps, mut clamped, mut err_sum) = (0usize, 0usize, 0.0f64);
    let (mut last_f, mut last_l) = ([0.0; NUM_JOINTS], [0.0; NUM_JOINTS]);
    loop {
        if duration.is_some_and(|d| start.elapsed() >= d) || key(&mut keys) == Some(Key::Stop) {
            break;
        }
        let action = leader.read_positions()?;
        let sent = follower.send_action(&action)?;
        let present = follower.read_positions()?;
        if sent.iter().zip(&action).any(|(s, a)| (s - a).abs() > 1e-4) {
            clamped += 1;
        }
        err_sum += present
            .iter()
            .zip(&action)
            .map(|(p, a)| (p - a).abs())
            .sum::<f64>()
            / NUM_JOINTS as f64;
        steps += 1;
        (last_f, last_l) = (present, action);
        pace(&mut next, period);
    }
    follower
        .disconnect()
        .context("turning the follower's torque off")?;
    leader.disconnect().context("disconnecting the leader")?;
    let summary = TeleopSummary {
        steps,
        seconds: start.elapsed().as_secs_f64(),
        mean_abs_tracking_error: err_sum / steps.max(1) as f64,
        clamped_steps: clamped,
        final_follower: last_f,
        final_leader: last_l,
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// record

/// Record teleoperated episodes into a LeRobotDataset v3.0: the follower's state, the leader's action (as
/// LeRobot records it) and the --camera frames of every step.
#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub follower: FollowerArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Dataset folder (LeRobot's `--dataset.root`); must not exist unless --resume.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Task text stored with every episode (LeRobot's `--dataset.single_task`).
    #[arg(long)]
    pub task: String,
    /// Number of episodes to record.
    #[arg(long, default_value_t = 50)]
    pub episodes: usize,
    /// Seconds per episode.
    #[arg(long, default_value_t = 60.0)]
    pub episode_time: f64,
    /// Seconds of teleoperation, not recorded, between episodes to reset the scene.
    #[arg(long, default_value_t = 60.0)]
    pub reset_time: f64,
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Add the episodes to the existing dataset at --dataset.
    #[arg(long)]
    pub resume: bool,
    /// A camera to record as `observation.images.NAME` (repeatable): NAME=PATH[@WIDTHxHEIGHT], e.g.
    /// front=/dev/video0@640x480. V4L2 capture needs a build with `--features toprl-envs/v4l`.
    #[arg(long = "camera", value_parser = parse_camera)]
    pub cameras: Vec<CameraConfig>,
}

/// Why a recording loop ended.
enum LoopEnd {
    Time,
    Next,
    Rerecord,
    Stop,
}

/// Teleoperates for `length`, recording each step into `episode` when given.
fn teleop_loop(
    leader: &So101Arm,
    follower: &So101Arm,
    cameras: &mut [Box<dyn Camera>],
    keys: &mut Keys,
    period: Duration,
    length: Duration,
    mut episode: Option<&mut Episode>,
) -> anyhow::Result<LoopEnd> {
    let start = Instant::now();
    let mut next = Instant::now();
    while start.elapsed() < length {
        match key(keys) {
            Some(Key::Stop) => return Ok(LoopEnd::Stop),
            Some(Key::Next) => return Ok(LoopEnd::Next),
            Some(Key::Rerecord) => return Ok(LoopEnd::Rerecord),
            None => {}
        }
        // LeRobot's record_loop: observation, then the teleop action, then send; the dataset stores
        // the leader's action, not the clamped one the follower received.
        let state = follower.read_positions()?;
        let action = leader.read_positions()?;
        follower.send_action(&action)?;
        if let Some(ep) = episode.as_deref_mut() {
            ep.states.push(state.iter().map(|v| *v as f32).collect());
            ep.actions.push(action.iter().map(|v| *v as f32).collect());
            for camera in cameras.iter_mut() {
                let frame = camera.capture()?;
                ep.cameras
                    .entry(format!("observation.images.{}", camera.name()))
                    .or_default()
                    .push(frame);
            }
        }
        pace(&mut next, period);
    }
    Ok(LoopEnd::Time)
}

pub fn record(args: RecordArgs) -> anyhow::Result<()> {
    let period = check_fps(args.fps)?;
    let episode_time = check_seconds("--episode-time", args.episode_time)?;
    let reset_time = check_seconds("--reset-time", args.reset_time)?;
    if args.task.trim().is_empty() {
        bail!("--task must not be empty");
    }
    if args.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    let existing = if args.resume {
        if !args.dataset.exists() {
            bail!("--resume: {} does not exist", args.dataset.display());
        }
        let ds = LeRobotDataset::open(&args.dataset)
            .with_context(|| format!("--resume: reading {}", args.dataset.display()))?;
        let fps = ds.info().fps;
        if (fps - f64::from(args.fps)).abs() > 1e-9 {
            bail!(
                "--resume: {} was recorded at {fps} fps, not --fps {}",
                args.dataset.display(),
                args.fps
            );
        }
        (0..ds.num_episodes())
            .map(|i| ds.episode(i))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--resume: reading the episodes of {}", args.dataset.display()))?
    } else {
        if args.dataset.exists() {
            bail!(
                "{} already exists: pass --resume to add episodes to it",
                args.dataset.display()
            );
        }
        Vec::new()
    };
    // A resumed dataset is rewritten beside the old one and swapped in at the end, so a failure never
    // loses what was recorded before.
    let staging = if args.resume {
        let name = args
            .dataset
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        args.dataset.with_file_name(format!(".{name}.resume"))
    } else {
        args.dataset.clone()
    };
    if staging.exists() && args.resume {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the leftover {}", staging.display()))?;
    }
    // Cameras open (and deliver a frame) before anything is written, so a missing device leaves no
    // dataset behind.
    let opened = open_cameras(&args.cameras)?;
    let camera_specs: Vec<(String, u32, u32)> = opened
        .iter()
        .map(|(c, (w, h))| (format!("observation.images.{}", c.name()), *w, *h))
        .collect();
    if let Some(first) = existing.first() {
        let want: Vec<&String> = camera_specs.iter().map(|c| &c.0).collect();
        let have: Vec<&String> = first.cameras.keys().collect();
        if want != have {
            bail!(
                "--resume: {} has cameras {have:?}, this run records {want:?}; give the same --camera names",
                args.dataset.display()
            );
        }
    }
    let mut cameras: Vec<Box<dyn Camera>> = opened.into_iter().map(|(c, _)| c).collect();
    let specs: Vec<(&str, u32, u32)> = camera_specs
        .iter()
        .map(|(k, w, h)| (k.as_str(), *w, *h))
        .collect();
    let mut writer = DatasetWriter::create(&staging, DatasetSpec::so101(args.fps, &specs))
        .with_context(|| format!("creating {}", staging.display()))?;
    for ep in &existing {
        writer.add_episode(ep).context("copying a resumed episode")?;
    }
    install_ctrl_c()?;
    let mut keys = Keys::spawn();
    let leader = args.leader.connect(args.follower.range_units)?;
    let follower = args.follower.connect()?;
    eprintln!(
        "recording {} episodes of {:.0} s: ENTER ends an episode, `r` ENTER records it again, `s` ENTER stops",
        args.episodes, args.episode_time
    );
    let mut recorded = 0usize;
    let mut failure = None;
    while recorded < args.episodes {
        let index = existing.len() + recorded;
        eprintln!("episode {index}: recording");
        let mut ep = Episode {
            index,
            instruction: args.task.clone(),
            fps: f64::from(args.fps),
            ..Episode::default()
        };
        let end = match teleop_loop(
            &leader,
            &follower,
            &mut cameras,
            &mut keys,
            period,
            episode_time,
            Some(&mut ep),
        ) {
            Ok(end) => end,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        if matches!(end, LoopEnd::Rerecord) {
            eprintln!("episode {index}: recording again");
            continue;
        }
        if !ep.is_empty() {
            writer
                .add_episode(&ep)
                .with_context(|| format!("adding episode {index}"))?;
            recorded += 1;
        }
        if matches!(end, LoopEnd::Stop) || recorded == args.episodes {
            break;
        }
        eprintln!("reset the scene ({:.0} s, ENTER to skip)", args.reset_time);
        match teleop_loop(&leader, &follower, &mut [], &mut keys, period, reset_time, None) {
            Ok(LoopEnd::Stop) => break,
            Ok(_) => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // Torque off before the (slow) video/parquet writing.
    let follower_off = follower.disconnect();
    drop(leader);
    if writer.num_episodes() > existing.len() {
        let written = writer.finish().context("writing the dataset")?;
        if args.resume {
            let old = args.dataset.with_extension("old");
            std::fs::rename(&args.dataset, &old)
                .with_context(|| format!("moving {} aside", args.dataset.display()))?;
            std::fs::rename(&staging, &args.dataset)
                .with_context(|| format!("moving the resumed dataset into {}", args.dataset.display()))?;
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        println!(
            "{}",
            serde_json::json!({
                "dataset": args.dataset,
                "episodes": written.episodes,
                "frames": written.frames,
                "recorded": recorded,
            })
        );
    }
    follower_off.context("turning the follower's torque off")?;
    match failure {
        Some(e) => Err(e.context(format!("recording stopped; {recorded} new episodes were saved"))),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------------
// run

/// A toprl policy drives the follower at a fixed rate, seeing the --camera frames when it is an image
/// policy: each episode moves the arm to the start pose at a limited speed, then runs for --episode-time.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub follower: FollowerArgs,
    /// Policy checkpoint folder (written by `train`).
    #[arg(long)]
    pub policy: PathBuf,
    /// Task instruction given to the policy.
    #[arg(long)]
    pub task: String,
    /// Number of episodes; between episodes the arm holds its pose until ENTER (reset the scene).
    #[arg(long, default_value_t = 1)]
    pub episodes: usize,
    /// Seconds per episode.
    #[arg(long, default_value_t = 60.0)]
    pub episode_time: f64,
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Seed of the policy's sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Speed of the move to the start pose (the simulator's) before each episode, degrees (gripper %)
    /// per second.
    #[arg(long, default_value_t = 30.0)]
    pub reset_speed: f64,
    /// A camera the policy sees (repeatable, in the order of the policy's training cameras):
    /// NAME=PATH[@WIDTHxHEIGHT]. Frames are resized to the size the policy was trained at. V4L2 capture
    /// needs a build with `--features toprl-envs/v4l`.
    #[arg(long = "camera", value_parser = parse_camera)]
    pub cameras: Vec<CameraConfig>,
    #[command(flatten)]
    pub compute: crate::cli::PolicyDeviceArgs,
}

#[derive(Debug, Serialize)]
struct RunSummary {
    episodes: usize,
    steps: usize,
    /// Steps where the safety clamps changed the policy's action.
    clamped_steps: usize,
    stopped_by_user: bool,
    final_state: [f64; NUM_JOINTS],
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    use crate::driver::{ChunkDriver, ENVIRONMENT_STATE_FEATURE};
    use toprl_envs::environment::Environment;
    use toprl_envs::robot::{RobotEnv, RobotEnvConfig};

    let period = check_fps(args.fps)?;
    let episode_time = check_seconds("--episode-time", args.episode_time)?;
    if args.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    if !(args.reset_speed.is_finite() && args.reset_speed > 0.0) {
        bail!(
            "--reset-speed must be a positive number, got {}",
            args.reset_speed
        );
    }
    if !args.policy.exists() {
        bail!("--policy {}: no such checkpoint folder", args.policy.display());
    }
    let device = args.compute.device()?;
    let mut policy = toprl_policies::load_policy(&args.policy, &device)
        .with_context(|| format!("--policy {}: loading the checkpoint", args.policy.display()))?
        .with_seed(args.seed);
    let needed = policy.config().cameras();
    if needed != args.cameras.len() {
        bail!(
            "--policy {}: the policy sees {needed} camera(s), {} --camera given{}",
            args.policy.display(),
            args.cameras.len(),
            if needed > 0 {
                " (NAME=PATH[@WIDTHxHEIGHT], in the order it was trained with)"
            } else {
                ""
            }
        );
    }
    let features = policy.state_features().to_vec();
    if features.iter().any(|f| f == ENVIRONMENT_STATE_FEATURE) {
        bail!(
            "--policy {}: the policy reads `{ENVIRONMENT_STATE_FEATURE}`, the simulator's privileged cube pose, which a real arm does not have",
            args.policy.display()
        );
    }
    let cameras: Vec<Box<dyn Camera>> = open_cameras(&args.cameras)?.into_iter().map(|(c, _)| c).collect();
    let camera_keys: Vec<String> = args
        .cameras
        .iter()
        .map(|c| format!("observation.images.{}", c.name))
        .collect();
    install_ctrl_c()?;
    let mut keys = Keys::spawn();
    let follower = args.follower.connect()?;
    let env_cfg = RobotEnvConfig {
        instruction: args.task.clone(),
        fps: f64::from(args.fps),
        max_steps: (episode_time.as_secs_f64() * f64::from(args.fps))
            .round()
            .max(1.0) as usize,
        start_pose: RobotEnvConfig::sim_home_pose(),
        reset_speed: args.reset_speed,
        reset_tolerance: 5.0,
        reset_timeout: Duration::from_secs(20),
    };
    let mut env = RobotEnv::new(follower, cameras, env_cfg)?.with_stop_flag(interrupted().clone());
    eprintln!(
        "running {} at {} Hz: `s` ENTER or Ctrl-C stops (torque off)",
        args.policy.display(),
        args.fps
    );
    let (mut steps, mut clamped, mut stopped) = (0usize, 0usize, false);
    let mut last = env.arm().read_positions()?;
    let mut done = 0;
    'episodes: for episode in 0..args.episodes {
        if episode > 0 {
            eprintln!("episode {episode}: reset the scene, then press ENTER (the arm holds its pose)");
            let mut next = Instant::now();
            loop {
                match key(&mut keys) {
                    Some(Key::Stop) => {
                        stopped = true;
                        break 'episodes;
                    }
                    Some(_) => break,
                    None => {}
                }
                env.arm().send_action(&last)?;
                pace(&mut next, period);
            }
        }
        // The arm moves to its start pose at --reset-speed, then the policy drives it until time is up.
        let mut obs = match env.reset(args.seed) {
            Ok((obs, _)) => obs,
            Err(toprl_envs::environment::EnvError::Stopped) => {
                stopped = true;
                break 'episodes;
            }
            Err(e) => return Err(e.into()),
        };
        let mut driver = ChunkDriver::new(&mut policy, camera_keys.clone(), features.clone());
        loop {
            match key(&mut keys) {
                Some(Key::Stop) => {
                    stopped = true;
                    break 'episodes;
                }
                Some(_) => break,
                None => {}
            }
            let action = driver.act(&obs, &args.task);
            if let Some(e) = driver.error.take() {
                return Err(anyhow::Error::new(e).context("the policy failed; torque turned off"));
            }
            let t = env.step(&action)?;
            clamped += usize::from(t.clipped);
            steps += 1;
            obs = t.observation;
            last = obs.state.map(f64::from);
            if t.truncated {
                break;
            }
        }
        done += 1;
    }
    let final_state = env.arm().read_positions()?;
    env.disconnect().context("turning the follower's torque off")?;
    println!(
        "{}",
        serde_json::to_string(&RunSummary {
            episodes: done,
            steps,
            clamped_steps: clamped,
            stopped_by_user: stopped,
            final_state,
        })?
    );
    Ok(())
}
