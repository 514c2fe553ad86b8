//! The four tabletop tasks: instruction, success test, sparse and shaped dense rewards, and ground-truth
//! progress in [0, 1] (a function of the state built so that it rises along a scripted expert's episode;
//! it is meant for checking reward models, never as their input).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SimError;
use super::scene::{CUBE_HALF, TARGET_RADIUS};

/// Which task an environment poses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Move the fingertips to 4 cm above the cube.
    Reach,
    /// Push the cube into the green target zone.
    PushCube,
    /// Grasp the cube and lift it 5 cm.
    PickCube,
    /// Grasp the cube and put it down inside the green target zone.
    PickPlace,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Reach, Task::PushCube, Task::PickCube, Task::PickPlace];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            Task::Reach => "reach",
            Task::PushCube => "push_cube",
            Task::PickCube => "pick_cube",
            Task::PickPlace => "pick_place",
        }
    }

    /// Natural-language instruction for a cube of colour `colour`.
    pub fn instruction(self, colour: &str) -> String {
        match self {
            Task::Reach => format!("Move the gripper just above the {colour} cube."),
            Task::PushCube => format!("Push the {colour} cube onto the green circle."),
            Task::PickCube => format!("Pick up the {colour} cube and lift it."),
            Task::PickPlace => format!("Pick up the {colour} cube and place it on the green circle."),
        }
    }

    /// Default episode length in control steps (30 Hz); experts need about two thirds of it.
    pub fn default_max_steps(self) -> usize {
        match self {
            Task::Reach => 90,
            Task::PushCube => 210,
            Task::PickCube => 180,
            Task::PickPlace => 300,
        }
    }

    /// Whether the task uses the target zone.
    pub fn uses_target(self) -> bool {
        matches!(self, Task::PushCube | Task::PickPlace)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, SimError> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| SimError::UnknownTask { name: s.to_string() })
    }
}

/// The privileged state the task functions read (metres, world frame).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskState {
    /// Fingertip point (`gripperframe` site).
    pub tcp: [f64; 3],
    /// Cube centre.
    pub cube: [f64; 3],
    /// Target zone centre (on the table).
    pub target: [f64; 3],
    /// Measured gripper opening, 0 (closed) to 100 (open).
    pub gripper: f64,
    /// Both jaws touch the cube.
    pub grasped: bool,
}

/// Quantities fixed at reset that normalise progress.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskStart {
    pub tcp: [f64; 3],
    pub cube: [f64; 3],
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn dist_xy(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

fn ratio(now: f64, start: f64) -> f64 {
    (1.0 - now / start.max(1e-3)).clamp(0.0, 1.0)
}

/// Reach goal: 4 cm above the cube centre.
pub const REACH_HEIGHT: f64 = 0.04;
/// Success distance for reach.
pub const REACH_TOLERANCE: f64 = 0.02;
/// Lift height for pick (cube bottom above the table).
pub const LIFT_HEIGHT: f64 = 0.05;
/// The cube counts as in the zone when its centre is this close to the target centre.
pub const ZONE_TOLERANCE: f64 = TARGET_RADIUS - 0.005;

/// Where a pusher starts: behind the cube, on the line from the target through the cube.
pub fn push_start(cube: [f64; 3], target: [f64; 3], behind: f64) -> [f64; 3] {
    let d = dist_xy(cube, target).max(1e-6);
    let dir = [(target[0] - cube[0]) / d, (target[1] - cube[1]) / d];
    [cube[0] - dir[0] * behind, cube[1] - dir[1] * behind, cube[2]]
}

impl Task {
    pub fn reach_goal(s: &TaskState) -> [f64; 3] {
        [s.cube[0], s.cube[1], s.cube[2] + REACH_HEIGHT]
    }

    /// Whether the state solves the task.
    pub fn success(self, s: &TaskState) -> bool {
        let lift = s.cube[2] - CUBE_HALF;
        match self {
            Task::Reach => dist(s.tcp, Task::reach_goal(s)) < REACH_TOLERANCE,
            Task::PushCube => dist_xy(s.cube, s.target) < ZONE_TOLERANCE && lift < 0.01,
            Task::PickCube => s.grasped && lift > LIFT_HEIGHT,
            Task::PickPlace => {
                dist_xy(s.cube, s.target) < ZONE_TOLERANCE && lift < 0.005 && !s.grasped && s.gripper > 30.0
            }
        }
    }

    /// Sparse reward: 1 on success, else 0.
    pub fn sparse_reward(self, s: &TaskState) -> f64 {
        if self.success(s) { 1.0 } else { 0.0 }
    }

    /// Shaped dense reward in [0, 1] (ManiSkill-style staged tanh terms).
    pub fn dense_reward(self, s: &TaskState) -> f64 {
        let near = |d: f64| 1.0 - (10.0 * d).tanh();
        let lift = (s.cube[2] - CUBE_HALF).max(0.0);
        let r = match self {
            Task::Reach => near(dist(s.tcp, Task::reach_goal(s))),
            Task::PushCube => {
                let behind = push_start(s.cube, s.target, CUBE_HALF + 0.015);
                (near(dist(s.tcp, behind)) + 2.0 * near(dist_xy(s.cube, s.target))) / 3.0
            }
            Task::PickCube => {
                let grasp = if s.grasped { 1.0 } else { 0.0 };
                (near(dist(s.tcp, s.cube)) + grasp + grasp * 2.0 * (lift / LIFT_HEIGHT).min(1.0)) / 4.0
            }
            Task::PickPlace => {
                let grasp = if s.grasped { 1.0 } else { 0.0 };
                let placed = near(dist_xy(s.cube, s.target));
                let released = if !s.grasped && dist_xy(s.cube, s.target) < ZONE_TOLERANCE {
                    1.0
                } else {
                    0.0
                };
                (near(dist(s.tcp, s.cube)) + grasp + 2.0 * placed * (grasp + released).min(1.0) + released)
                    / 5.0
            }
        };
        if self.success(s) { 1.0 } else { r.clamp(0.0, 1.0) }
    }

    /// Ground-truth progress in [0, 1]: staged (approach, grasp, lift or carry, place), 1 on success.
    pub fn progress(self, s: &TaskState, start: &TaskStart) -> f64 {
        if self.success(s) {
            return 1.0;
        }
        let lift = (s.cube[2] - CUBE_HALF).max(0.0);
        let approach = |goal: [f64; 3]| ratio(dist(s.tcp, goal), dist(start.tcp, goal));
        let p = match self {
            Task::Reach => approach(Task::reach_goal(s)),
            Task::PushCube => {
                let pushed = ratio(dist_xy(s.cube, s.target), dist_xy(start.cube, s.target));
                let behind = push_start(s.cube, s.target, CUBE_HALF + 0.015);
                let reach = approach(behind);
                if pushed > 0.03 || reach > 0.9 {
                    0.3 + 0.7 * pushed
                } else {
                    0.3 * reach
                }
            }
            Task::PickCube => {
                if s.grasped {
                    0.5 + 0.5 * (lift / LIFT_HEIGHT).min(1.0)
                } else {
                    0.45 * approach(s.cube)
                }
            }
            Task::PickPlace => {
                let dxy = dist_xy(s.cube, s.target);
                let carried = ratio(dxy, dist_xy(start.cube, s.target));
                if s.grasped {
                    // Height counts until the cube is over the zone, where lowering it is progress too.
                    let height = if dxy < ZONE_TOLERANCE {
                        1.0
                    } else {
                        (lift / 0.04).min(1.0)
                    };
                    0.25 + 0.15 * height + 0.5 * carried
                } else if dxy < ZONE_TOLERANCE && lift < 0.005 {
                    0.9
                } else {
                    0.2 * approach(s.cube)
                }
            }
        };
        p.clamp(0.0, 1.0)
    }
}
