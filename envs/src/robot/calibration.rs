//! LeRobot's SO-101 calibration: the JSON file, where LeRobot keeps it, and the normalisation between
//! raw encoder ticks and the units of `observation.state` / `action` (LeRobot 0.4.4
//! `MotorsBus._normalize` / `_unnormalize`, `Robot._load_calibration` / `_save_calibration`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::protocol::MAX_POSITION;
use crate::so101::{MOTOR_NAMES, NUM_JOINTS};

/// Problems with a calibration file or value.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a LeRobot calibration file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: motor `{motor}` field `{field}`: {reason}")]
    Field {
        path: PathBuf,
        motor: String,
        field: &'static str,
        reason: String,
    },
    #[error(
        "no calibration for {role} `{id}`: looked for {tried}; run `so101 calibrate --port PORT --id {id}{leader}` (or LeRobot's `lerobot-calibrate`) first",
        tried = tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "),
        leader = if *role == ArmRole::Leader { " --leader" } else { "" }
    )]
    Missing {
        role: ArmRole,
        id: String,
        tried: Vec<PathBuf>,
    },
    #[error("motor `{motor}`: {reason}")]
    Value { motor: &'static str, reason: String },
}

/// Which arm of a pair: the follower (a LeRobot "robot") or the leader (a "teleoperator").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmRole {
    Follower,
    Leader,
}

impl std::fmt::Display for ArmRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArmRole::Follower => "follower",
            ArmRole::Leader => "leader",
        })
    }
}

impl ArmRole {
    /// Calibration sub-folders LeRobot uses, the current name first: `robots/so_follower` (LeRobot >=
    /// 0.4.3) then `robots/so101_follower` (older); `teleoperators/so_leader` then `so101_leader`.
    pub fn calibration_subdirs(self) -> [&'static str; 2] {
        match self {
            ArmRole::Follower => ["robots/so_follower", "robots/so101_follower"],
            ArmRole::Leader => ["teleoperators/so_leader", "teleoperators/so101_leader"],
        }
    }
}

/// LeRobot's `MotorNormMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormMode {
    Degrees,
    RangeM100To100,
    Range0To100,
}

/// The norm mode of motor `index` (bus order) for an SO arm: body joints in degrees when `use_degrees`
/// (LeRobot's default since 0.4.4) else -100..100; the gripper always 0..100.
pub fn norm_mode(index: usize, use_degrees: bool) -> NormMode {
    if index == NUM_JOINTS - 1 {
        NormMode::Range0To100
    } else if use_degrees {
        NormMode::Degrees
    } else {
        NormMode::RangeM100To100
    }
}

/// One motor's entry (LeRobot's `MotorCalibration`); fields in LeRobot's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MotorCalibration {
    pub id: u8,
    pub drive_mode: u8,
    pub homing_offset: i32,
    pub range_min: i32,
    pub range_max: i32,
}

impl MotorCalibration {
    fn check(&self, motor: &'static str) -> Result<(), CalibrationError> {
        let bad = |reason: String| CalibrationError::Value { motor, reason };
        if self.range_min >= self.range_max {
            return Err(bad(format!(
                "range_min {} must be below range_max {}",
                self.range_min, self.range_max
            )));
        }
        for (name, v) in [("range_min", self.range_min), ("range_max", self.range_max)] {
            if !(0..=MAX_POSITION).contains(&v) {
                return Err(bad(format!("{name} {v} is outside 0..=4095")));
            }
        }
        if self.homing_offset.abs() > 2047 {
            return Err(bad(format!(
                "homing_offset {} is outside -2047..=2047",
                self.homing_offset
            )));
        }
        if self.drive_mode > 1 {
            return Err(bad(format!("drive_mode {} must be 0 or 1", self.drive_mode)));
        }
        Ok(())
    }

    /// Raw ticks (Present_Position) to normalised units, as LeRobot's `_normalize`: range modes clamp the
    /// raw value to [range_min, range_max] first; degrees do not clamp.
    pub fn normalize(&self, raw: i32, mode: NormMode) -> f64 {
        let (min, max) = (self.range_min, self.range_max);
        let inverted = self.drive_mode != 0;
        let bounded = raw.clamp(min, max);
        match mode {
            NormMode::RangeM100To100 => {
                let norm = (f64::from(bounded - min) / f64::from(max - min)) * 200.0 - 100.0;
                if inverted { -norm } else { norm }
            }
            NormMode::Range0To100 => {
                let norm = (f64::from(bounded - min) / f64::from(max - min)) * 100.0;
                if inverted { 100.0 - norm } else { norm }
            }
            NormMode::Degrees => {
                let mid = f64::from(min + max) / 2.0;
                (f64::from(raw) - mid) * 360.0 / f64::from(MAX_POSITION)
            }
        }
    }

    /// Normalised units to raw ticks (Goal_Position), as LeRobot's `_unnormalize`: range modes clamp to
    /// their range, then `int()` truncates toward zero. Errors on a non-finite value.
    pub fn unnormalize(
        &self,
        value: f64,
        mode: NormMode,
        motor: &'static str,
    ) -> Result<i32, CalibrationError> {
        if !value.is_finite() {
            return Err(CalibrationError::Value {
                motor,
                reason: format!("target {value} is not a finite number"),
            });
        }
        let (min, max) = (f64::from(self.range_min), f64::from(self.range_max));
        let inverted = self.drive_mode != 0;
        let raw = match mode {
            NormMode::RangeM100To100 => {
                let v = if inverted { -value } else { value };
                let bounded = v.clamp(-100.0, 100.0);
                ((bounded + 100.0) / 200.0) * (max - min) + min
            }
            NormMode::Range0To100 => {
                let v = if inverted { 100.0 - value } else { value };
                let bounded = v.clamp(0.0, 100.0);
                (bounded / 100.0) * (max - min) + min
            }
            NormMode::Degrees => {
                let mid = (min + max) / 2.0;
                (value * f64::from(MAX_POSITION) / 360.0) + mid
            }
        };
        // `as` truncates toward zero like Python's int(); saturation only matters far outside any range.
        Ok(raw.trunc().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32)
    }

    /// The calibrated range in normalised units: (low, high).
    pub fn normalized_range(&self, mode: NormMode) -> (f64, f64) {
        let a = self.normalize(self.range_min, mode);
        let b = self.normalize(self.range_max, mode);
        (a.min(b), a.max(b))
    }
}

/// A whole arm's calibration, motors in bus order (`shoulder_pan` .. `gripper`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calibration {
    pub motors: [MotorCalibration; NUM_JOINTS],
}

impl Calibration {
    /// Reads a LeRobot calibration file. Unknown fields are ignored, as LeRobot's loader ignores
    /// nothing but toprl reads files other tools write leniently; every SO-101 motor must be present.
    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let text = std::fs::read_to_string(path).map_err(|source| CalibrationError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses the JSON text of a calibration file (`path` names it in errors).
    pub fn from_json(text: &str, path: &Path) -> Result<Self, CalibrationError> {
        let format = |reason: String| CalibrationError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| format("expected a JSON object of motors".into()))?;
        for name in object.keys() {
            if !MOTOR_NAMES.contains(&name.as_str()) {
                return Err(format(format!(
                    "unknown motor `{name}`, expected {}",
                    MOTOR_NAMES.join(", ")
                )));
            }
        }
        let mut motors = [MotorCalibration {
            id: 0,
            drive_mode: 0,
            homing_offset: 0,
            range_min: 0,
            range_max: 0,
        }; NUM_JOINTS];
        for (i, motor) in MOTOR_NAMES.iter().enumerate() {
            let entry = object
                .get(*motor)
                .ok_or_else(|| format(format!("motor `{motor}` is missing")))?;
            let field = |field: &'static str, lo: i64, hi: i64| -> Result<i64, CalibrationError> {
                let bad = |reason: String| CalibrationError::Field {
                    path: path.to_path_buf(),
                    motor: motor.to_string(),
                    field,
                    reason,
                };
                let v = entry
                    .get(field)
                    .ok_or_else(|| bad("missing".into()))?
                    .as_i64()
                    .ok_or_else(|| bad(format!("expected an integer, got {}", entry[field])))?;
                if !(lo..=hi).contains(&v) {
                    return Err(bad(format!("{v} is outside {lo}..={hi}")));
                }
                Ok(v)
            };
            motors[i] = MotorCalibration {
                id: field("id", 0, 253)? as u8,
                drive_mode: field("drive_mode", 0, 1)? as u8,
                homing_offset: field("homing_offset", -2047, 2047)? as i32,
                range_min: field("range_min", 0, 4095)? as i32,
                range_max: field("range_max", 0, 4095)? as i32,
            };
            if motors[i].id as usize != i + 1 {
                return Err(CalibrationError::Field {
                    path: path.to_path_buf(),
                    motor: motor.to_string(),
                    field: "id",
                    reason: format!("{} but the SO-101 has `{motor}` on id {}", motors[i].id, i + 1),
                });
            }
            motors[i].check(motor).map_err(|e| format(e.to_string()))?;
        }
        Ok(Calibration { motors })
    }

    /// The file's JSON text as LeRobot writes it (`draccus.dump(..., indent=4)`: motors in bus order,
    /// fields in `MotorCalibration` order).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\n");
        for (i, (name, m)) in MOTOR_NAMES.iter().zip(&self.motors).enumerate() {
            out.push_str(&format!(
                "    \"{name}\": {{\n        \"id\": {},\n        \"drive_mode\": {},\n        \"homing_offset\": {},\n        \"range_min\": {},\n        \"range_max\": {}\n    }}{}\n",
                m.id,
                m.drive_mode,
                m.homing_offset,
                m.range_min,
                m.range_max,
                if i + 1 < NUM_JOINTS { "," } else { "" }
            ));
        }
        out.push('}');
        out
    }

    /// Writes the file atomically (temp file in the same folder, then rename), creating the folder.
    pub fn save(&self, path: &Path) -> Result<(), CalibrationError> {
        let io = |source: std::io::Error| CalibrationError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
        tmp.write_all(self.to_json().as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Checks every motor's values (ranges ordered and inside 0..=4095, offsets inside +-2047).
    pub fn validate(&self) -> Result<(), CalibrationError> {
        for (m, name) in self.motors.iter().zip(MOTOR_NAMES) {
            m.check(name)?;
        }
        Ok(())
    }
}

/// LeRobot's calibration root: `$HF_LEROBOT_CALIBRATION`, else `$HF_LEROBOT_HOME/calibration`, else
/// `$HF_HOME/lerobot/calibration`, else `$XDG_CACHE_HOME/huggingface/lerobot/calibration`, else
/// `~/.cache/huggingface/lerobot/calibration` (`~` expanded as Python's `expanduser`).
pub fn calibration_root() -> PathBuf {
    calibration_root_with(|name| std::env::var_os(name))
}

/// [`calibration_root`] with the environment read through `var` (for tests).
pub fn calibration_root_with(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let home_dir = var("HOME");
    let expand = |p: PathBuf| -> PathBuf {
        match (p.strip_prefix("~"), &home_dir) {
            (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => p,
        }
    };
    // Python's os.getenv returns an empty string as set; only unset variables fall back.
    let env = |name: &str| var(name).map(|v| expand(PathBuf::from(v)));
    if let Some(p) = env("HF_LEROBOT_CALIBRATION") {
        return p;
    }
    let home = env("HF_LEROBOT_HOME").unwrap_or_else(|| {
        let hf_home = env("HF_HOME").unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("~/.cache"));
            expand(cache.join("huggingface"))
        });
        hf_home.join("lerobot")
    });
    home.join("calibration")
}

/// Where calibration files for `role` live: `dir` when given (LeRobot's `calibration_dir`, holding
/// `<id>.json` directly), else the current and the older LeRobot folders under [`calibration_root`].
pub fn candidate_dirs(role: ArmRole, dir: Option<&Path>) -> Vec<PathBuf> {
    match dir {
        Some(d) => vec![d.to_path_buf()],
        None => {
            let root = calibration_root();
            role.calibration_subdirs().iter().map(|s| root.join(s)).collect()
        }
    }
}

/// The file toprl writes for `role` and `id` (LeRobot's current folder, or `dir`).
pub fn calibration_path(role: ArmRole, id: &str, dir: Option<&Path>) -> PathBuf {
    candidate_dirs(role, dir)[0].join(format!("{id}.json"))
}

/// Finds and loads the calibration of arm `id`: the current LeRobot folder first, then the older one.
pub fn find_calibration(
    role: ArmRole,
    id: &str,
    dir: Option<&Path>,
) -> Result<(Calibration, PathBuf), CalibrationError> {
    let tried: Vec<PathBuf> = candidate_dirs(role, dir)
        .into_iter()
        .map(|d| d.join(format!("{id}.json")))
        .collect();
    for path in &tried {
        if path.is_file() {
            return Ok((Calibration::load(path)?, path.clone()));
        }
    }
    Err(CalibrationError::Missing {
        role,
        id: id.to_string(),
        tried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
    "shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1396, "range_min": 620, "range_max": 3440, "extra": true},
    "shoulder_lift": {"id": 2, "drive_mode": 0, "homing_offset": 1000, "range_min": 800, "range_max": 3300},
    "elbow_flex": {"id": 3, "drive_mode": 0, "homing_offset": -20, "range_min": 850, "range_max": 3100},
    "wrist_flex": {"id": 4, "drive_mode": 0, "homing_offset": 50, "range_min": 800, "range_max": 3200},
    "wrist_roll": {"id": 5, "drive_mode": 0, "homing_offset": 700, "range_min": 0, "range_max": 4095},
    "gripper": {"id": 6, "drive_mode": 0, "homing_offset": -1200, "range_min": 2000, "range_max": 3400}
}"#;

    #[test]
    fn reads_writes_and_round_trips() {
        let cal = Calibration::from_json(EXAMPLE, Path::new("x.json")).unwrap();
        assert_eq!(cal.motors[0].homing_offset, -1396);
        assert_eq!(cal.motors[5].range_max, 3400);
        let again = Calibration::from_json(&cal.to_json(), Path::new("y.json")).unwrap();
        assert_eq!(cal, again);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("robots/so_follower/arm.json");
        cal.save(&path).unwrap();
        assert_eq!(Calibration::load(&path).unwrap(), cal);
    }

    #[test]
    fn rejects_bad_files_naming_the_field() {
        let missing = EXAMPLE.replace("\"gripper\"", "\"grip\"");
        let err = Calibration::from_json(&missing, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.json") && err.contains("grip"), "{err}");
        let bad = EXAMPLE.replace("\"range_min\": 620", "\"range_min\": 5000");
        let err = Calibration::from_json(&bad, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("shoulder_pan") && err.contains("range_min"), "{err}");
        let swapped = EXAMPLE.replace(
            "\"range_min\": 620, \"range_max\": 3440",
            "\"range_min\": 3440, \"range_max\": 620",
        );
        assert!(Calibration::from_json(&swapped, Path::new("c.json")).is_err());
        assert!(Calibration::from_json("[1]", Path::new("c.json")).is_err());
    }

    #[test]
    fn normalisation_edges() {
        let m = MotorCalibration {
            id: 1,
            drive_mode: 0,
            homing_offset: 0,
            range_min: 1000,
            range_max: 3000,
        };
        assert_eq!(m.normalize(2000, NormMode::Degrees), 0.0);
        assert_eq!(m.normalize(500, NormMode::RangeM100To100), -100.0);
        assert_eq!(m.normalize(4000, NormMode::Range0To100), 100.0);
        // Degrees are not clamped.
        assert!(m.normalize(4000, NormMode::Degrees) > 170.0);
        assert_eq!(m.unnormalize(150.0, NormMode::RangeM100To100, "x").unwrap(), 3000);
        assert_eq!(m.unnormalize(-0.001, NormMode::Range0To100, "x").unwrap(), 1000);
        // int() truncates toward zero: -0.5 degree below mid 2000 -> 1994.3125 -> 1994.
        assert_eq!(m.unnormalize(-0.5, NormMode::Degrees, "x").unwrap(), 1994);
        assert!(m.unnormalize(f64::NAN, NormMode::Degrees, "x").is_err());
        let inv = MotorCalibration { drive_mode: 1, ..m };
        assert_eq!(inv.normalize(1000, NormMode::RangeM100To100), 100.0);
        assert_eq!(inv.normalize(1000, NormMode::Range0To100), 100.0);
    }

    #[test]
    fn folders_follow_lerobot() {
        let root = calibration_root();
        assert!(root.ends_with("calibration"));
        let dirs = candidate_dirs(ArmRole::Leader, None);
        assert!(
            dirs[0].ends_with("teleoperators/so_leader") && dirs[1].ends_with("teleoperators/so101_leader")
        );
        assert_eq!(
            calibration_path(ArmRole::Follower, "a", Some(Path::new("/c"))),
            Path::new("/c/a.json")
        );
    }
}
