//! One SO-101 tabletop environment with Gymnasium semantics.
//!
//! `reset(seed) -> (observation, info)` and `step(action) -> (observation, reward, terminated, truncated,
//! info)` with Box action/observation bounds ([`So101Env::action_low`] / [`So101Env::action_high`]).
//! We implement these semantics directly rather than the `gymnasia` crate's `Env` trait: its `step` cannot
//! return an error (we reject NaN and wrong-length actions with a typed error instead of feeding MuJoCo
//! garbage), its `reset` returns no info, its spaces are not made for dictionaries of images next to a
//! state vector, and it pins `rand` 0.8 next to the workspace's 0.9.

use std::collections::BTreeMap;
use std::path::PathBuf;

use image::RgbImage;
use mujoco_rs::prelude::*;
use mujoco_rs::renderer::MjRenderer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::SimError;
use super::scene::{self, CUBE_HALF, SceneSpec};
use super::task::{Task, TaskStart, TaskState};
use crate::so101::{CONTROL_HZ, JOINT_RANGES_RAD, MOTOR_NAMES, NUM_JOINTS};

/// Cameras the scene has, by short name; observation keys are `observation.images.{name}`.
pub const CAMERAS: [&str; 3] = ["front", "top", "wrist"];

/// Environment settings. Every field has a default (`SimConfig::default()`), so a config file only names
/// what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Task to pose. Default `pick_cube`.
    pub task: Task,
    /// Square image side in pixels for every camera. Default 128.
    pub image_size: u32,
    /// Cameras to render (`front`, `top`, `wrist`); empty renders nothing (fast physics-only runs).
    /// Default `["front", "wrist"]`.
    pub cameras: Vec<String>,
    /// Episode length in control steps; `None` takes the task's default.
    pub max_steps: Option<usize>,
    /// Physics substeps per 30 Hz control step. Default 16 (timestep 2.08 ms).
    pub substeps: usize,
    /// End the episode (terminated) as soon as the task succeeds. Default true.
    pub terminate_on_success: bool,
    /// Reward returned by `step`: dense (shaped) when true, else sparse. Both are in [`StepInfo`].
    /// Default true.
    pub dense_reward: bool,
    /// Randomise the cube's colour from the seed (else always red). Default true.
    pub randomize_colour: bool,
    /// Vertex-clustering cell in metres for the arm meshes (0 keeps the full CAD meshes). Default 0.002.
    pub mesh_cell: f64,
    /// SO-101 assets directory; `None` uses [`crate::assets::so101_assets_dir`].
    pub assets_dir: Option<PathBuf>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            task: Task::PickCube,
            image_size: 128,
            cameras: vec!["front".into(), "wrist".into()],
            max_steps: None,
            substeps: 16,
            terminate_on_success: true,
            dense_reward: true,
            randomize_colour: true,
            mesh_cell: 0.002,
            assets_dir: None,
        }
    }
}

impl SimConfig {
    /// A config for `task` with the other defaults.
    pub fn for_task(task: Task) -> Self {
        SimConfig {
            task,
            ..SimConfig::default()
        }
    }

    fn validate(&self) -> Result<(), SimError> {
        if !(16..=1024).contains(&self.image_size) {
            return Err(SimError::Config {
                field: "image_size",
                reason: format!("{} is outside 16..=1024", self.image_size),
            });
        }
        if !(1..=200).contains(&self.substeps) {
            return Err(SimError::Config {
                field: "substeps",
                reason: format!("{} is outside 1..=200", self.substeps),
            });
        }
        if self.max_steps == Some(0) {
            return Err(SimError::Config {
                field: "max_steps",
                reason: "must be at least 1".into(),
            });
        }
        if !(0.0..=0.01).contains(&self.mesh_cell) {
            return Err(SimError::Config {
                field: "mesh_cell",
                reason: format!("{} is outside 0..=0.01 m", self.mesh_cell),
            });
        }
        for cam in &self.cameras {
            if !CAMERAS.contains(&cam.as_str()) {
                return Err(SimError::UnknownCamera { name: cam.clone() });
            }
        }
        Ok(())
    }
}

/// What the agent sees after reset and each step.
#[derive(Debug, Clone, Default)]
pub struct SimObservation {
    /// Joint positions in LeRobot units (degrees; gripper 0-100), motor order.
    pub state: [f32; NUM_JOINTS],
    /// Rendered cameras by key `observation.images.{camera}`.
    pub images: BTreeMap<String, RgbImage>,
    /// Privileged scene state, LeRobot's `observation.environment_state` for simulated tasks (see
    /// [`ENVIRONMENT_STATE_NAMES`]): what a state-only policy needs to see the cube. Never available on
    /// the real robot; image policies do without it.
    pub environment_state: [f32; ENVIRONMENT_STATE_DIM],
}

/// Entries of [`SimObservation::environment_state`]: cube centre (metres, world frame), cube yaw about
/// the vertical (radians), target-zone centre on the table (metres).
pub const ENVIRONMENT_STATE_NAMES: [&str; ENVIRONMENT_STATE_DIM] =
    ["cube.x", "cube.y", "cube.z", "cube.yaw", "target.x", "target.y"];

/// Length of [`SimObservation::environment_state`].
pub const ENVIRONMENT_STATE_DIM: usize = 6;

/// Per-step facts beside the reward.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepInfo {
    /// The task is solved in the current state.
    pub success: bool,
    /// Ground-truth progress in [0, 1].
    pub progress: f64,
    /// 1 on success, else 0.
    pub sparse_reward: f64,
    /// Shaped reward in [0, 1].
    pub dense_reward: f64,
    /// Some action value was outside its joint range and was clipped.
    pub clipped: bool,
    /// Control steps since reset.
    pub step: usize,
}

/// The result of one control step.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub observation: SimObservation,
    pub reward: f64,
    pub terminated: bool,
    pub truncated: bool,
    pub info: StepInfo,
}

/// Cube colours sampled by domain randomisation (no green: the target zone is green).
const COLOURS: [(&str, [f32; 3]); 6] = [
    ("red", [0.85, 0.12, 0.12]),
    ("blue", [0.12, 0.3, 0.9]),
    ("yellow", [0.95, 0.85, 0.1]),
    ("orange", [0.95, 0.5, 0.08]),
    ("purple", [0.55, 0.2, 0.75]),
    ("white", [0.92, 0.92, 0.92]),
];

/// Joint configuration (radians, motor order) the arm starts from: fingertips ~15 cm above the table in
/// front of the base, jaws 40% open.
pub const HOME_QPOS: [f64; NUM_JOINTS] = [0.0, -1.5, 0.5, 1.6, 0.0, 0.6];

/// Converts an action/state in LeRobot units to joint radians.
pub fn lerobot_to_rad(values: &[f32; NUM_JOINTS]) -> [f64; NUM_JOINTS] {
    let mut out = [0.0; NUM_JOINTS];
    for i in 0..NUM_JOINTS {
        out[i] = if i == NUM_JOINTS - 1 {
            let (lo, hi) = JOINT_RANGES_RAD[i];
            lo + f64::from(values[i]) / 100.0 * (hi - lo)
        } else {
            f64::from(values[i]).to_radians()
        };
    }
    out
}

/// Converts joint radians to LeRobot units (degrees; gripper 0-100).
pub fn rad_to_lerobot(q: &[f64; NUM_JOINTS]) -> [f32; NUM_JOINTS] {
    let mut out = [0.0; NUM_JOINTS];
    for i in 0..NUM_JOINTS {
        out[i] = if i == NUM_JOINTS - 1 {
            let (lo, hi) = JOINT_RANGES_RAD[i];
            ((q[i] - lo) / (hi - lo) * 100.0) as f32
        } else {
            q[i].to_degrees() as f32
        };
    }
    out
}

/// Action bounds in LeRobot units, motor order.
pub fn action_bounds() -> ([f32; NUM_JOINTS], [f32; NUM_JOINTS]) {
    let mut lo = [0.0; NUM_JOINTS];
    let mut hi = [0.0; NUM_JOINTS];
    for i in 0..NUM_JOINTS - 1 {
        lo[i] = JOINT_RANGES_RAD[i].0.to_degrees() as f32;
        hi[i] = JOINT_RANGES_RAD[i].1.to_degrees() as f32;
    }
    hi[NUM_JOINTS - 1] = 100.0;
    (lo, hi)
}

/// Indices into the MuJoCo model.
#[derive(Debug, Clone)]
pub(crate) struct Ids {
    pub arm_qpos: [usize; NUM_JOINTS],
    pub arm_dof: [usize; NUM_JOINTS],
    pub cube_qpos: usize,
    pub cube_geom: usize,
    pub target_mocap: usize,
    pub tcp_site: usize,
    pub gripper_body: usize,
    pub jaw_body: usize,
    pub cameras: Vec<(String, usize)>,
}

fn id_of(model: &MjModel, kind: MjtObjBase, kind_name: &'static str, name: &str) -> Result<usize, SimError> {
    model.name_to_id(kind, name).ok_or_else(|| SimError::MissingName {
        kind: kind_name,
        name: name.to_string(),
    })
}

impl Ids {
    fn new(model: &MjModel, cameras: &[String]) -> Result<Self, SimError> {
        let mut arm_qpos = [0; NUM_JOINTS];
        let mut arm_dof = [0; NUM_JOINTS];
        for (i, motor) in MOTOR_NAMES.iter().enumerate() {
            let j = id_of(model, MjtObjBase::mjOBJ_JOINT, "joint", motor)?;
            arm_qpos[i] = model.jnt_qposadr()[j] as usize;
            arm_dof[i] = model.jnt_dofadr()[j] as usize;
        }
        let cube_joint = id_of(model, MjtObjBase::mjOBJ_JOINT, "joint", "cube")?;
        let target_body = id_of(model, MjtObjBase::mjOBJ_BODY, "body", "target")?;
        let cams = cameras
            .iter()
            .map(|c| Ok((c.clone(), id_of(model, MjtObjBase::mjOBJ_CAMERA, "camera", c)?)))
            .collect::<Result<Vec<_>, SimError>>()?;
        Ok(Ids {
            arm_qpos,
            arm_dof,
            cube_qpos: model.jnt_qposadr()[cube_joint] as usize,
            cube_geom: id_of(model, MjtObjBase::mjOBJ_GEOM, "geom", "cube")?,
            target_mocap: model.body_mocapid()[target_body] as usize,
            tcp_site: id_of(model, MjtObjBase::mjOBJ_SITE, "site", "gripperframe")?,
            gripper_body: id_of(model, MjtObjBase::mjOBJ_BODY, "body", "gripper")?,
            jaw_body: id_of(model, MjtObjBase::mjOBJ_BODY, "body", "moving_jaw_so101_v1")?,
            cameras: cams,
        })
    }
}

/// Loads the generated scene for `cfg` (shared with the experts' kinematic copies).
pub fn load_model(cfg: &SimConfig) -> Result<MjModel, SimError> {
    cfg.validate()?;
    let assets_dir = match &cfg.assets_dir {
        Some(dir) => dir.clone(),
        None => crate::assets::so101_assets_dir()?,
    };
    let spec = SceneSpec {
        assets_dir,
        offscreen: cfg.image_size.max(64),
        mesh_cell: cfg.mesh_cell,
        timestep: 1.0 / (CONTROL_HZ * cfg.substeps as f64),
    };
    let path = scene::prepare(&spec)?;
    MjModel::from_xml(&path).map_err(|e| SimError::Load {
        path,
        reason: e.to_string(),
    })
}

/// The SO-101 tabletop environment. Not `Send` when it renders (the EGL context belongs to its thread);
/// [`super::VecEnv`] builds one per worker thread.
pub struct So101Env {
    cfg: SimConfig,
    data: MjData<Box<MjModel>>,
    renderer: Option<MjRenderer>,
    ids: Ids,
    rng: ChaCha8Rng,
    max_steps: usize,
    steps: usize,
    reset_done: bool,
    start: TaskStart,
    colour: &'static str,
    instruction: String,
}

impl std::fmt::Debug for So101Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("So101Env")
            .field("cfg", &self.cfg)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl So101Env {
    /// Builds the scene, loads it into MuJoCo and (when cameras are configured) opens an offscreen
    /// renderer. Call [`So101Env::reset`] before stepping.
    pub fn new(cfg: SimConfig) -> Result<Self, SimError> {
        let model = load_model(&cfg)?;
        Self::with_model(cfg, model)
    }

    /// As [`So101Env::new`] with an already loaded model (from [`load_model`] with the same config), so
    /// vectorised environments load the XML once.
    pub fn with_model(cfg: SimConfig, model: MjModel) -> Result<Self, SimError> {
        cfg.validate()?;
        let ids = Ids::new(&model, &cfg.cameras)?;
        let renderer = if cfg.cameras.is_empty() {
            None
        } else {
            let r = MjRenderer::builder()
                .width(cfg.image_size)
                .height(cfg.image_size)
                .num_visual_internal_geom(0)
                .build(&model)
                .map_err(|e| SimError::Render(e.to_string()))?;
            Some(r)
        };
        let data = MjData::new(Box::new(model));
        let max_steps = cfg.max_steps.unwrap_or(cfg.task.default_max_steps());
        Ok(So101Env {
            instruction: cfg.task.instruction("red"),
            cfg,
            data,
            renderer,
            ids,
            rng: ChaCha8Rng::seed_from_u64(0),
            max_steps,
            steps: 0,
            reset_done: false,
            start: TaskStart::default(),
            colour: "red",
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    pub fn task(&self) -> Task {
        self.cfg.task
    }

    /// The instruction for the current episode (names the cube's colour).
    pub fn instruction(&self) -> &str {
        &self.instruction
    }

    /// Episode length limit in control steps.
    pub fn max_steps(&self) -> usize {
        self.max_steps
    }

    /// Control steps since reset.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The MuJoCo model (experts clone it for their kinematics).
    pub fn model(&self) -> &MjModel {
        self.data.model()
    }

    pub(crate) fn ids(&self) -> &Ids {
        &self.ids
    }

    /// Action (and state) bounds in LeRobot units: (low, high).
    pub fn action_bounds(&self) -> ([f32; NUM_JOINTS], [f32; NUM_JOINTS]) {
        action_bounds()
    }

    /// Joint positions in radians, motor order.
    pub fn qpos_rad(&self) -> [f64; NUM_JOINTS] {
        let q = self.data.qpos();
        self.ids.arm_qpos.map(|a| q[a])
    }

    /// Commanded joint targets in radians (the actuators' `ctrl`).
    pub fn ctrl_rad(&self) -> [f64; NUM_JOINTS] {
        let c = self.data.ctrl();
        let mut out = [0.0; NUM_JOINTS];
        out.copy_from_slice(&c[..NUM_JOINTS]);
        out
    }

    /// Joint state in LeRobot units.
    pub fn state(&self) -> [f32; NUM_JOINTS] {
        rad_to_lerobot(&self.qpos_rad())
    }

    /// Privileged state for rewards, progress and experts.
    pub fn task_state(&self) -> TaskState {
        let d = &self.data;
        let mut jaw_contact = false;
        let mut fixed_contact = false;
        let bodies = self.data.model().geom_bodyid();
        for con in d.contact() {
            let [g1, g2] = con.geom;
            let other = if g1 as usize == self.ids.cube_geom {
                g2
            } else if g2 as usize == self.ids.cube_geom {
                g1
            } else {
                continue;
            };
            let body = bodies[other as usize] as usize;
            jaw_contact |= body == self.ids.jaw_body;
            fixed_contact |= body == self.ids.gripper_body;
        }
        TaskState {
            tcp: d.site_xpos()[self.ids.tcp_site],
            cube: self.cube_position(),
            target: self.target_position(),
            gripper: f64::from(self.state()[NUM_JOINTS - 1]),
            grasped: jaw_contact && fixed_contact,
        }
    }

    /// The observation's privileged scene vector (see [`ENVIRONMENT_STATE_NAMES`]). Reads poses only,
    /// not the contact scan of [`So101Env::task_state`], since it is computed at every step.
    pub fn environment_state(&self) -> [f32; ENVIRONMENT_STATE_DIM] {
        let (cube, target) = (self.cube_position(), self.target_position());
        let [w, x, y, z] = self.cube_quat();
        // Yaw of a rotation quaternion (ZYX convention); the cube only tips when knocked over.
        let yaw = (2.0 * (w * z + x * y)).atan2(1.0 - 2.0 * (y * y + z * z));
        [cube[0], cube[1], cube[2], yaw, target[0], target[1]].map(|v| v as f32)
    }

    /// Cube centre (metres, world frame).
    fn cube_position(&self) -> [f64; 3] {
        let q = self.data.qpos();
        let c = self.ids.cube_qpos;
        [q[c], q[c + 1], q[c + 2]]
    }

    /// Target-zone centre on the table (metres, world frame).
    fn target_position(&self) -> [f64; 3] {
        self.data.mocap_pos()[self.ids.target_mocap]
    }

    /// Cube orientation quaternion (w, x, y, z).
    pub fn cube_quat(&self) -> [f64; 4] {
        let q = self.data.qpos();
        let c = self.ids.cube_qpos + 3;
        [q[c], q[c + 1], q[c + 2], q[c + 3]]
    }

    /// The name of the cube's colour this episode.
    pub fn cube_colour(&self) -> &'static str {
        self.colour
    }

    /// Progress normalisers fixed at reset.
    pub fn task_start(&self) -> TaskStart {
        self.start
    }

    /// Starts an episode. `Some(seed)` reseeds the environment's generator (same seed, same episode:
    /// cube pose and colour, target, and therefore every later observation for the same actions);
    /// `None` continues the current generator.
    pub fn reset(&mut self, seed: Option<u64>) -> Result<(SimObservation, StepInfo), SimError> {
        if let Some(seed) = seed {
            self.rng = ChaCha8Rng::seed_from_u64(seed);
        }
        let task = self.cfg.task;
        // Cube within comfortable reach in front of the base, random yaw.
        let cx = self.rng.random_range(0.17..0.25);
        let cy = self.rng.random_range(-0.09..0.09);
        let yaw: f64 = self
            .rng
            .random_range(-std::f64::consts::FRAC_PI_4..std::f64::consts::FRAC_PI_4);
        let colour_index = self.rng.random_range(0..COLOURS.len());
        let target = if task.uses_target() {
            let mut t = [cx, cy + 0.1, 0.0];
            for _ in 0..64 {
                let (tx, ty) = if task == Task::PushCube {
                    // Push sideways or away from the base, 8-10 cm.
                    let ang: f64 = self.rng.random_range(-2.2..2.2);
                    let d = self.rng.random_range(0.08..0.10);
                    (cx + d * ang.cos(), cy + d * ang.sin())
                } else {
                    (
                        self.rng.random_range(0.15..0.26),
                        self.rng.random_range(-0.13..0.13),
                    )
                };
                let far = ((tx - cx).powi(2) + (ty - cy).powi(2)).sqrt() >= 0.08;
                if far && (0.14..0.28).contains(&tx) && ty.abs() < 0.15 {
                    t = [tx, ty, 0.0];
                    break;
                }
            }
            t
        } else {
            // Out of sight under the table.
            [0.2, 0.0, -0.5]
        };

        self.data.reset();
        let (colour, rgb) = if self.cfg.randomize_colour {
            COLOURS[colour_index]
        } else {
            COLOURS[0]
        };
        self.colour = colour;
        self.instruction = task.instruction(colour);
        // SAFETY: only the cube geom's colour changes; no size, count or address of the model does.
        unsafe { self.data.model_mut() }.geom_rgba_mut()[self.ids.cube_geom] = [rgb[0], rgb[1], rgb[2], 1.0];
        {
            let q = self.data.qpos_mut();
            for (i, a) in self.ids.arm_qpos.iter().enumerate() {
                q[*a] = HOME_QPOS[i];
            }
            let c = self.ids.cube_qpos;
            q[c..c + 3].copy_from_slice(&[cx, cy, CUBE_HALF]);
            q[c + 3..c + 7].copy_from_slice(&[(yaw / 2.0).cos(), 0.0, 0.0, (yaw / 2.0).sin()]);
        }
        self.data.ctrl_mut()[..NUM_JOINTS].copy_from_slice(&HOME_QPOS);
        self.data.mocap_pos_mut()[self.ids.target_mocap] = target;
        self.data.forward();
        self.steps = 0;
        self.reset_done = true;
        let s = self.task_state();
        self.start = TaskStart {
            tcp: s.tcp,
            cube: s.cube,
        };
        let obs = self.observe()?;
        let info = self.info(&s, false);
        Ok((obs, info))
    }

    /// Teleports the arm to joint positions `q` (radians, motor order, clipped to the ranges) at rest,
    /// with the actuators holding them, and recomputes positions (e.g. to replay a recorded state).
    /// The cube and target stay where they are. Requires a reset first.
    pub fn set_joint_positions(&mut self, q: &[f64; NUM_JOINTS]) -> Result<(), SimError> {
        if !self.reset_done {
            return Err(SimError::NotReset);
        }
        let mut q = *q;
        for (i, x) in q.iter_mut().enumerate() {
            if !x.is_finite() {
                return Err(SimError::NonFiniteAction {
                    motor: MOTOR_NAMES[i],
                    value: *x as f32,
                });
            }
            *x = x.clamp(JOINT_RANGES_RAD[i].0, JOINT_RANGES_RAD[i].1);
        }
        let qpos = self.data.qpos_mut();
        for (i, a) in self.ids.arm_qpos.iter().enumerate() {
            qpos[*a] = q[i];
        }
        let qvel = self.data.qvel_mut();
        for d in self.ids.arm_dof {
            qvel[d] = 0.0;
        }
        self.data.ctrl_mut()[..NUM_JOINTS].copy_from_slice(&q);
        self.data.forward();
        Ok(())
    }

    fn info(&self, s: &TaskState, clipped: bool) -> StepInfo {
        let task = self.cfg.task;
        StepInfo {
            success: task.success(s),
            progress: task.progress(s, &self.start),
            sparse_reward: task.sparse_reward(s),
            dense_reward: task.dense_reward(s),
            clipped,
            step: self.steps,
        }
    }

    /// Checks an action's length and values and clips it to the joint ranges, like the real follower.
    /// Returns the joint targets in radians and whether anything was clipped.
    pub fn validate_action(action: &[f32]) -> Result<([f64; NUM_JOINTS], bool), SimError> {
        if action.len() != NUM_JOINTS {
            return Err(SimError::ActionLength {
                expected: NUM_JOINTS,
                got: action.len(),
            });
        }
        let (lo, hi) = action_bounds();
        let mut clipped = false;
        let mut a = [0f32; NUM_JOINTS];
        for i in 0..NUM_JOINTS {
            let v = action[i];
            if !v.is_finite() {
                return Err(SimError::NonFiniteAction {
                    motor: MOTOR_NAMES[i],
                    value: v,
                });
            }
            a[i] = v.clamp(lo[i], hi[i]);
            clipped |= a[i] != v;
        }
        let mut q = lerobot_to_rad(&a);
        // Degrees to radians can land a hair outside the range at the bounds.
        for (i, x) in q.iter_mut().enumerate() {
            *x = x.clamp(JOINT_RANGES_RAD[i].0, JOINT_RANGES_RAD[i].1);
        }
        Ok((q, clipped))
    }

    /// Applies one 30 Hz position command (LeRobot units, motor order) and advances the physics.
    pub fn step(&mut self, action: &[f32]) -> Result<StepResult, SimError> {
        if !self.reset_done {
            return Err(SimError::NotReset);
        }
        let (target, clipped) = Self::validate_action(action)?;
        self.data.ctrl_mut()[..NUM_JOINTS].copy_from_slice(&target);
        for _ in 0..self.cfg.substeps {
            self.data.step();
        }
        self.steps += 1;
        if self
            .data
            .qpos()
            .iter()
            .chain(self.data.qvel().iter())
            .any(|x| !x.is_finite())
        {
            self.reset_done = false;
            return Err(SimError::Unstable { step: self.steps });
        }
        let s = self.task_state();
        let info = self.info(&s, clipped);
        let terminated = self.cfg.terminate_on_success && info.success;
        let truncated = !terminated && self.steps >= self.max_steps;
        let reward = if self.cfg.dense_reward {
            info.dense_reward
        } else {
            info.sparse_reward
        };
        let observation = self.observe()?;
        Ok(StepResult {
            observation,
            reward,
            terminated,
            truncated,
            info,
        })
    }

    fn observe(&mut self) -> Result<SimObservation, SimError> {
        Ok(SimObservation {
            state: self.state(),
            images: self.render()?,
            environment_state: self.environment_state(),
        })
    }

    /// Renders every configured camera (`observation.images.{camera}` keys).
    pub fn render(&mut self) -> Result<BTreeMap<String, RgbImage>, SimError> {
        let mut images = BTreeMap::new();
        let Some(renderer) = self.renderer.as_mut() else {
            return Ok(images);
        };
        let size = self.cfg.image_size;
        for (name, id) in &self.ids.cameras {
            renderer.set_camera(MjvCamera::new_fixed(*id));
            renderer
                .sync_data(&mut self.data)
                .map_err(|e| SimError::Render(e.to_string()))?;
            renderer.render().map_err(|e| SimError::Render(e.to_string()))?;
            let rgb = renderer
                .rgb_flat()
                .ok_or_else(|| SimError::Render("RGB rendering is off".into()))?;
            let img = RgbImage::from_raw(size, size, rgb.to_vec())
                .ok_or_else(|| SimError::Render(format!("{} bytes for a {size}x{size} image", rgb.len())))?;
            images.insert(format!("observation.images.{name}"), img);
        }
        Ok(images)
    }
}

/// Box-Muller standard normal from any generator.
pub fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_conversion_round_trips() {
        let q = [0.3, -1.0, 1.2, -0.5, 2.0, 0.4];
        let back = lerobot_to_rad(&rad_to_lerobot(&q));
        for i in 0..NUM_JOINTS {
            assert!((q[i] - back[i]).abs() < 1e-5, "{i}: {} vs {}", q[i], back[i]);
        }
        let (lo, hi) = action_bounds();
        assert!((hi[0] - 110.0).abs() < 0.01 && (lo[0] + 110.0).abs() < 0.01);
        assert_eq!((lo[5], hi[5]), (0.0, 100.0));
    }

    #[test]
    fn actions_are_validated_and_clipped() {
        let (q, clipped) = So101Env::validate_action(&[500.0, 0.0, 0.0, 0.0, 0.0, 150.0]).unwrap();
        assert!(clipped);
        assert!((q[0] - JOINT_RANGES_RAD[0].1).abs() < 1e-9);
        assert!((q[5] - JOINT_RANGES_RAD[5].1).abs() < 1e-9);
        let (_, clipped) = So101Env::validate_action(&[0.0, 10.0, -10.0, 5.0, 0.0, 50.0]).unwrap();
        assert!(!clipped);
        assert!(matches!(
            So101Env::validate_action(&[0.0; 5]),
            Err(SimError::ActionLength { expected: 6, got: 5 })
        ));
        assert!(matches!(
            So101Env::validate_action(&[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0]),
            Err(SimError::NonFiniteAction {
                motor: "shoulder_lift",
                ..
            })
        ));
        assert!(matches!(
            So101Env::validate_action(&[0.0, 0.0, 0.0, 0.0, f32::INFINITY, 0.0]),
            Err(SimError::NonFiniteAction {
                motor: "wrist_roll",
                ..
            })
        ));
    }
}
