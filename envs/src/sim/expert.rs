//! Scripted experts: Cartesian waypoints per task, tracked by damped-least-squares inverse kinematics on
//! MuJoCo's site Jacobian (`mj_jacSite`), with a noise knob that turns clean demonstrations into hesitant,
//! jittery or failed ones.
//!
//! The expert reads privileged state from the environment (cube and target poses), so it is not a
//! [`toprl_policies::Policy`]-style observation-to-action map; call [`ScriptedExpert::act`] with the env.

use mujoco_rs::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::env::{So101Env, normal, rad_to_lerobot};
use super::scene::CUBE_HALF;
use super::task::{Task, push_start};
use crate::so101::{CONTROL_HZ, JOINT_RANGES_RAD, NUM_JOINTS};

/// Fingertip speed along the waypoints (m/s).
const SPEED: f64 = 0.18;
/// Gripper opening for approach (0-100).
const OPEN: f64 = 55.0;
/// Gripper command when closed on the cube (below the cube's width so the jaws squeeze).
const CLOSED: f64 = 0.0;
/// Fingertip height when grasping or pushing (the pads span about +-7 mm around the tip point).
const GRASP_Z: f64 = 0.010;
/// From the fingertip point to the fixed pad's inner face (6.4 mm) plus 3 mm clearance.
const JAW_OFFSET: f64 = 0.0094;

/// One leg of the plan: go to `pos` with the gripper at `grip`, then wait `hold` steps.
#[derive(Debug, Clone, Copy)]
struct Waypoint {
    pos: [f64; 3],
    grip: f64,
    hold: usize,
    /// Align the jaws with the cube's faces on this leg.
    align: bool,
}

/// A scripted expert for one environment's task.
pub struct ScriptedExpert {
    task: Task,
    noise: f64,
    rng: ChaCha8Rng,
    kin: MjData<Box<MjModel>>,
    site: usize,
    gripper_body: usize,
    arm_qpos: [usize; NUM_JOINTS],
    arm_dof: [usize; NUM_JOINTS],
    // Episode state.
    phase: usize,
    held: usize,
    in_phase: usize,
    cmd: [f64; 3],
    grip: f64,
    q_cmd: [f64; NUM_JOINTS],
    pause: usize,
    grasp_offset: [f64; 2],
    waypoint_noise: Vec<[f64; 3]>,
    last_action: [f32; NUM_JOINTS],
    /// World yaw of the jaw axis (fixed towards moving jaw) the expert aligns to.
    jaw_yaw: f64,
    /// Cube position when the current leg began.
    anchor: Option<[f64; 3]>,
}

impl std::fmt::Debug for ScriptedExpert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedExpert")
            .field("task", &self.task)
            .field("noise", &self.noise)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl ScriptedExpert {
    /// An expert for `env`'s task. `noise` is the skill knob: 0 gives clean demonstrations; around 0.5
    /// adds jitter, hesitations and sloppy waypoints; 1 and above often grasp beside the cube or close
    /// early. `seed` drives every noisy choice.
    pub fn new(env: &So101Env, noise: f64, seed: u64) -> Self {
        let ids = env.ids();
        let mut expert = ScriptedExpert {
            task: env.task(),
            noise: noise.max(0.0),
            rng: ChaCha8Rng::seed_from_u64(seed),
            kin: MjData::new(Box::new(env.model().clone())),
            site: ids.tcp_site,
            gripper_body: ids.gripper_body,
            arm_qpos: ids.arm_qpos,
            arm_dof: ids.arm_dof,
            phase: 0,
            held: 0,
            in_phase: 0,
            cmd: [0.0; 3],
            grip: OPEN,
            q_cmd: [0.0; NUM_JOINTS],
            pause: 0,
            grasp_offset: [0.0; 2],
            waypoint_noise: Vec::new(),
            last_action: [0.0; NUM_JOINTS],
            jaw_yaw: 0.0,
            anchor: None,
        };
        expert.reset(env);
        expert
    }

    /// Starts a new episode from `env`'s current (just reset) state; draws this episode's mistakes.
    pub fn reset(&mut self, env: &So101Env) {
        self.phase = 0;
        self.held = 0;
        self.in_phase = 0;
        self.pause = 0;
        self.anchor = None;
        self.cmd = env.task_state().tcp;
        self.q_cmd = env.ctrl_rad();
        self.grip = rad_to_lerobot(&self.q_cmd)[NUM_JOINTS - 1] as f64;
        self.last_action = rad_to_lerobot(&self.q_cmd);
        let q0 = self.q_cmd;
        let _ = self.solve_aligned(q0, Some(cube_yaw(env)));
        let n = self.noise;
        // Occasional wrong grasp: aim 1.5-3 cm beside the cube.
        self.grasp_offset = [0.0; 2];
        if n > 0.0 && self.rng.random::<f64>() < (0.4 * n).min(0.8) {
            let ang = self.rng.random_range(0.0..std::f64::consts::TAU);
            let r = self.rng.random_range(0.015..0.03);
            self.grasp_offset = [r * ang.cos(), r * ang.sin()];
        }
        self.waypoint_noise = (0..8)
            .map(|_| {
                [
                    0.006 * n * normal(&mut self.rng),
                    0.006 * n * normal(&mut self.rng),
                    0.004 * n * normal(&mut self.rng).abs(),
                ]
            })
            .collect();
    }

    fn plan(&self, env: &So101Env) -> Vec<Waypoint> {
        let s = env.task_state();
        // Waypoints follow the cube as it was when the current leg began, so a cube nudged by the jaws
        // does not drag the plan along with it.
        let c = self.anchor.unwrap_or(s.cube);
        // The fingertip point is the fixed jaw's tip; the moving jaw closes towards it along the jaw
        // axis, so the fixed jaw goes beside the cube, a cube-half plus the pad's depth away.
        let jaw = [self.jaw_yaw.cos(), self.jaw_yaw.sin()];
        let off = CUBE_HALF + JAW_OFFSET;
        let g = [
            c[0] + self.grasp_offset[0] - jaw[0] * off,
            c[1] + self.grasp_offset[1] - jaw[1] * off,
        ];
        let wp = |pos: [f64; 3], grip: f64, hold: usize, align: bool| Waypoint {
            pos,
            grip,
            hold,
            align,
        };
        let h = CUBE_HALF;
        let mut plan = match self.task {
            Task::Reach => vec![wp(Task::reach_goal(&s), OPEN, 10, false)],
            Task::PushCube => {
                let t = s.target;
                let behind = push_start(c, t, h + 0.03);
                // Push until the cube's centre is on the target: the fingertips stop a cube-half short.
                let end = push_start(t, [2.0 * t[0] - c[0], 2.0 * t[1] - c[1], 0.0], h + 0.012);
                vec![
                    wp([behind[0], behind[1], 0.06], CLOSED, 0, false),
                    wp([behind[0], behind[1], GRASP_Z], CLOSED, 0, false),
                    wp([end[0], end[1], GRASP_Z], CLOSED, 15, false),
                ]
            }
            Task::PickCube | Task::PickPlace => {
                let mut legs = vec![
                    wp([g[0], g[1], 0.07], OPEN, 0, true),
                    wp([g[0], g[1], GRASP_Z], OPEN, 3, true),
                    wp([g[0], g[1], GRASP_Z], CLOSED, 12, true),
                    wp([g[0], g[1], 0.10], CLOSED, 0, false),
                ];
                if self.task == Task::PickPlace {
                    let t = [s.target[0] - jaw[0] * off, s.target[1] - jaw[1] * off];
                    legs.extend([
                        wp([t[0], t[1], 0.10], CLOSED, 0, false),
                        wp([t[0], t[1], h + 0.006], CLOSED, 3, false),
                        wp([t[0], t[1], h + 0.006], OPEN, 10, false),
                        wp([t[0], t[1], 0.10], OPEN, 30, false),
                    ]);
                } else {
                    legs.push(wp([g[0], g[1], 0.10], CLOSED, 30, false));
                }
                legs
            }
        };
        for (leg, noise) in plan.iter_mut().zip(&self.waypoint_noise) {
            for k in 0..3 {
                leg.pos[k] += noise[k];
            }
        }
        plan
    }

    /// The next action (LeRobot units) for `env`'s current state.
    pub fn act(&mut self, env: &So101Env) -> [f32; NUM_JOINTS] {
        let n = self.noise;
        if self.pause > 0 {
            self.pause -= 1;
            return self.last_action;
        }
        if n > 0.0 && self.rng.random::<f64>() < 0.04 * n {
            // Hesitate: hold the last command for a few steps.
            self.pause = self.rng.random_range(3..12);
            return self.last_action;
        }
        let s = env.task_state();
        if self.anchor.is_none() {
            self.anchor = Some(s.cube);
        }
        let plan = self.plan(env);
        let leg = plan[self.phase.min(plan.len() - 1)];
        // Keep the moving command anchored to the cube while it is carried.
        let dt = 1.0 / CONTROL_HZ;
        let step = SPEED * dt;
        let d = [
            leg.pos[0] - self.cmd[0],
            leg.pos[1] - self.cmd[1],
            leg.pos[2] - self.cmd[2],
        ];
        let len = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        if len > step {
            for k in 0..3 {
                self.cmd[k] += d[k] / len * step;
            }
        } else {
            self.cmd = leg.pos;
        }
        // Gripper moves at ~300 units/s (fully open to closed in a third of a second).
        let gstep = 10.0;
        self.grip += (leg.grip - self.grip).clamp(-gstep, gstep);
        self.in_phase += 1;
        let arrived = len <= step && (leg.grip - self.grip).abs() < 1e-9 && dist(s.tcp, leg.pos) < 0.012;
        if arrived || self.in_phase > 90 {
            self.held += 1;
            if self.held > leg.hold || self.in_phase > 90 {
                if self.phase + 1 < plan.len() {
                    self.phase += 1;
                    self.anchor = Some(s.cube);
                }
                self.held = 0;
                self.in_phase = 0;
            }
        }
        let q = self.solve(self.cmd, leg.align.then_some(cube_yaw(env)));
        if std::env::var_os("TOPRL_EXPERT_DEBUG").is_some() {
            let m = self.kin.xmat()[self.gripper_body];
            eprintln!(
                "phase {} cmd {:.3?} tcp {:.3?} cube {:.3?} grip {:.0} grasped {} approach {:.2?} xaxis {:.2?}",
                self.phase,
                self.cmd,
                s.tcp,
                s.cube,
                self.grip,
                s.grasped,
                [-m[2], -m[5], -m[8]],
                [m[0], m[3], m[6]]
            );
        }
        self.q_cmd = q;
        let mut q_full = q;
        let (lo, hi) = JOINT_RANGES_RAD[NUM_JOINTS - 1];
        q_full[NUM_JOINTS - 1] = lo + self.grip / 100.0 * (hi - lo);
        let mut a = rad_to_lerobot(&q_full);
        if n > 0.0 {
            for (i, x) in a.iter_mut().enumerate() {
                let sigma = if i == NUM_JOINTS - 1 { 2.0 } else { 1.5 };
                *x += (sigma * n * normal(&mut self.rng)) as f32;
            }
        }
        self.last_action = a;
        a
    }

    /// Damped least squares for the fingertip position with the jaws pointing down (a soft second
    /// objective), then the wrist roll that lines the jaws up with the cube's faces when `align_yaw` is
    /// given. Starts from the previous command so consecutive solutions are smooth.
    fn solve(&mut self, target: [f64; 3], align_yaw: Option<f64>) -> [f64; NUM_JOINTS] {
        let mut q = self.q_cmd;
        const ORIENT_WEIGHT: f64 = 0.05; // metres per radian of tilt
        const LAMBDA: f64 = 0.02;
        let nv = self.kin.model().ffi().nv as usize;
        for _ in 0..30 {
            self.set_q(&q);
            let p = self.kin.site_xpos()[self.site];
            let m = self.kin.xmat()[self.gripper_body];
            // The jaws point along the gripper body's -z axis; we want that to be world -z.
            let approach = [-m[2], -m[5], -m[8]];
            let want = [0.0, 0.0, -1.0];
            let rot = cross(approach, want);
            let ep = [target[0] - p[0], target[1] - p[1], target[2] - p[2]];
            let e = [
                ep[0],
                ep[1],
                ep[2],
                ORIENT_WEIGHT * rot[0],
                ORIENT_WEIGHT * rot[1],
                ORIENT_WEIGHT * rot[2],
            ];
            if ep.iter().map(|x| x * x).sum::<f64>().sqrt() < 2e-4
                && rot.iter().map(|x| x.abs()).sum::<f64>() < 1e-3
            {
                break;
            }
            let (jp, jr) = self.kin.jac_site(true, true, self.site);
            // J: 6 x 4 over pan, lift, elbow, wrist_flex.
            let mut j = [[0.0; 4]; 6];
            for (c, dof) in self.arm_dof[..4].iter().enumerate() {
                for r in 0..3 {
                    j[r][c] = jp[r * nv + dof];
                    j[r + 3][c] = ORIENT_WEIGHT * jr[r * nv + dof];
                }
            }
            // (J^T J + lambda^2 I) dq = J^T e
            let mut a = [[0.0; 4]; 4];
            let mut b = [0.0; 4];
            for r in 0..4 {
                for c in 0..4 {
                    a[r][c] = (0..6).map(|k| j[k][r] * j[k][c]).sum::<f64>();
                }
                a[r][r] += LAMBDA * LAMBDA;
                b[r] = (0..6).map(|k| j[k][r] * e[k]).sum::<f64>();
            }
            let dq = solve4(a, b);
            for i in 0..4 {
                q[i] = (q[i] + dq[i].clamp(-0.2, 0.2)).clamp(JOINT_RANGES_RAD[i].0, JOINT_RANGES_RAD[i].1);
            }
        }
        self.solve_aligned(q, align_yaw)
    }

    /// Sets the wrist roll of `q` so the jaw axis lines up with the nearest face normal of a cube at
    /// world yaw `align_yaw` (no change for `None`), remembering the aligned jaw yaw.
    fn solve_aligned(&mut self, mut q: [f64; NUM_JOINTS], align_yaw: Option<f64>) -> [f64; NUM_JOINTS] {
        if let Some(yaw) = align_yaw {
            // Jaw closing direction: the gripper body's x axis, projected on the table.
            let jaw_yaw = |kin: &MjData<Box<MjModel>>, body: usize| {
                let m = kin.xmat()[body];
                m[3].atan2(m[0])
            };
            self.set_q(&q);
            let y0 = jaw_yaw(&self.kin, self.gripper_body);
            let mut probe = q;
            probe[4] += 0.1;
            self.set_q(&probe);
            let sign = if wrap(jaw_yaw(&self.kin, self.gripper_body) - y0) > 0.0 {
                1.0
            } else {
                -1.0
            };
            // Any of the cube's four faces will do: bring the difference into [-pi/4, pi/4].
            let quarter = std::f64::consts::FRAC_PI_2;
            let mut delta = wrap(yaw - y0);
            delta -= (delta / quarter).round() * quarter;
            let (lo, hi) = JOINT_RANGES_RAD[4];
            q[4] = (q[4] + sign * delta).clamp(lo, hi);
            self.jaw_yaw = y0 + delta;
        }
        q
    }

    fn set_q(&mut self, q: &[f64; NUM_JOINTS]) {
        let qpos = self.kin.qpos_mut();
        for (i, a) in self.arm_qpos.iter().enumerate() {
            qpos[*a] = q[i];
        }
        self.kin.kinematics();
        self.kin.com_pos();
    }
}

/// Yaw of the cube's x axis.
fn cube_yaw(env: &So101Env) -> f64 {
    let q = env.cube_quat();
    (2.0 * (q[0] * q[3] + q[1] * q[2])).atan2(1.0 - 2.0 * (q[2] * q[2] + q[3] * q[3]))
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn wrap(x: f64) -> f64 {
    let tau = std::f64::consts::TAU;
    (x + std::f64::consts::PI).rem_euclid(tau) - std::f64::consts::PI
}

/// Gaussian elimination with partial pivoting for the 4x4 normal equations (positive definite here).
fn solve4(mut a: [[f64; 4]; 4], mut b: [f64; 4]) -> [f64; 4] {
    for col in 0..4 {
        let pivot = (col..4)
            .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let d = a[col][col];
        if d.abs() < 1e-12 {
            continue;
        }
        for row in col + 1..4 {
            let f = a[row][col] / d;
            for k in col..4 {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; 4];
    for row in (0..4).rev() {
        let s: f64 = (row + 1..4).map(|k| a[row][k] * x[k]).sum();
        x[row] = if a[row][row].abs() < 1e-12 {
            0.0
        } else {
            (b[row] - s) / a[row][row]
        };
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve4_solves_a_linear_system() {
        let a = [
            [4.0, 1.0, 0.0, 0.0],
            [1.0, 3.0, 1.0, 0.0],
            [0.0, 1.0, 2.0, 0.5],
            [0.0, 0.0, 0.5, 1.0],
        ];
        let x = [1.0, -2.0, 0.5, 3.0];
        let b: Vec<f64> = a.iter().map(|r| (0..4).map(|k| r[k] * x[k]).sum()).collect();
        let got = solve4(a, [b[0], b[1], b[2], b[3]]);
        for k in 0..4 {
            assert!((got[k] - x[k]).abs() < 1e-9);
        }
        assert!((wrap(3.5 * std::f64::consts::PI) + 0.5 * std::f64::consts::PI).abs() < 1e-9);
    }
}
