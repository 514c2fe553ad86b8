//! toprl's SO-101 calibration against LeRobot 0.4.4's own code: normalisation of raw ticks and of
//! targets on many values (edges, clamping, truncation, drive mode), the calibration file read and
//! written both ways, and the calibration folder under HF_* variables. LeRobot runs in
//! `.venv-lerobot` (scripts/setup.sh installs it); a missing venv fails the test.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use toprl_envs::robot::calibration::{Calibration, MotorCalibration, NormMode, calibration_root_with};

fn lerobot_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-lerobot/bin/python");
    assert!(
        python.exists(),
        "LeRobot's Python is missing at {}: run scripts/setup.sh (it installs .venv-lerobot with lerobot[feetech]==0.4.4)",
        python.display()
    );
    python
}

fn ask_lerobot(request: &Value, env: &[(&str, Option<&str>)]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lerobot/calibration_parity.py");
    let mut cmd = Command::new(lerobot_python());
    cmd.arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().expect("running LeRobot's Python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "LeRobot script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mode_name(mode: NormMode) -> &'static str {
    match mode {
        NormMode::Degrees => "DEGREES",
        NormMode::RangeM100To100 => "RANGE_M100_100",
        NormMode::Range0To100 => "RANGE_0_100",
    }
}

#[test]
fn normalisation_equals_lerobot() {
    let cals = [
        MotorCalibration {
            id: 1,
            drive_mode: 0,
            homing_offset: -1396,
            range_min: 620,
            range_max: 3440,
        },
        MotorCalibration {
            id: 2,
            drive_mode: 0,
            homing_offset: 0,
            range_min: 0,
            range_max: 4095,
        },
        MotorCalibration {
            id: 3,
            drive_mode: 0,
            homing_offset: 17,
            range_min: 2047,
            range_max: 2048,
        },
        MotorCalibration {
            id: 4,
            drive_mode: 1,
            homing_offset: 5,
            range_min: 1001,
            range_max: 2990,
        },
        MotorCalibration {
            id: 6,
            drive_mode: 0,
            homing_offset: 1200,
            range_min: 1987,
            range_max: 3351,
        },
    ];
    let modes = [NormMode::Degrees, NormMode::RangeM100To100, NormMode::Range0To100];
    let mut cases = Vec::new();
    for cal in &cals {
        let mut raw: Vec<i32> = vec![0, 1, 4094, 4095, cal.range_min, cal.range_max];
        raw.extend([
            cal.range_min - 1,
            cal.range_max + 1,
            (cal.range_min + cal.range_max) / 2,
        ]);
        raw.extend((-60..4200).step_by(37));
        let mut norm: Vec<f64> = vec![
            0.0,
            -0.0,
            100.0,
            -100.0,
            100.000001,
            -100.000001,
            99.99999999,
            0.5,
            -0.5,
            1e-9,
            -1e-9,
            250.0,
            -250.0,
            180.0,
            -180.0,
            1e6,
            -1e6,
            33.333333333333336,
            0.087890625,
            -0.08791208791208792,
        ];
        let mut x = -200.0;
        while x <= 200.0 {
            norm.push(x);
            x += 0.731;
        }
        // Values that land just either side of an integer tick.
        for tick in [cal.range_min, cal.range_max, 2047] {
            for m in modes {
                let v = cal.normalize(tick, m);
                norm.extend([v, v + 1e-12, v - 1e-12]);
            }
        }
        for mode in modes {
            cases.push((*cal, mode, raw.clone(), norm.clone()));
        }
    }
    let request = json!({
        "cases": cases.iter().map(|(cal, mode, raw, norm)| json!({
            "cal": {"id": cal.id, "drive_mode": cal.drive_mode, "homing_offset": cal.homing_offset,
                    "range_min": cal.range_min, "range_max": cal.range_max},
            "mode": mode_name(*mode),
            "raw": raw,
            "norm_bits": norm.iter().map(|v| v.to_bits() as i64).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()
    });
    let answer = ask_lerobot(&request, &[]);
    let mut checked = 0;
    for ((cal, mode, raw, norm), got) in cases.iter().zip(answer["cases"].as_array().unwrap()) {
        for (r, bits) in raw.iter().zip(got["normalized_bits"].as_array().unwrap()) {
            let lerobot = f64::from_bits(bits.as_i64().unwrap() as u64);
            let ours = cal.normalize(*r, *mode);
            assert_eq!(
                ours.to_bits(),
                lerobot.to_bits(),
                "normalize({r}) {mode:?} {cal:?}: {ours} vs LeRobot {lerobot}"
            );
            checked += 1;
        }
        for (v, lr) in norm.iter().zip(got["unnormalized"].as_array().unwrap()) {
            let ours = cal.unnormalize(*v, *mode, "m").unwrap();
            assert_eq!(
                Some(i64::from(ours)),
                lr.as_i64(),
                "unnormalize({v}) {mode:?} {cal:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 10_000, "only {checked} values compared");
}

#[test]
fn calibration_files_round_trip_with_lerobot() {
    let tmp = tempfile::tempdir().unwrap();
    let cal = Calibration {
        motors: std::array::from_fn(|i| MotorCalibration {
            id: i as u8 + 1,
            drive_mode: 0,
            homing_offset: [-1396, 1012, -35, 211, 703, -1187][i],
            range_min: [620, 800, 850, 900, 0, 2000][i],
            range_max: [3440, 3300, 3100, 3200, 4095, 3400][i],
        }),
    };
    let ours = tmp.path().join("toprl.json");
    cal.save(&ours).unwrap();
    let theirs = tmp.path().join("lerobot.json");
    ask_lerobot(
        &json!({"load": ours.to_str().unwrap(), "dump": theirs.to_str().unwrap()}),
        &[],
    );
    // LeRobot reads our file and writes it back byte for byte; we read its file.
    assert_eq!(
        std::fs::read_to_string(&theirs).unwrap(),
        std::fs::read_to_string(&ours).unwrap()
    );
    assert_eq!(Calibration::load(&theirs).unwrap(), cal);
}

#[test]
fn calibration_folder_follows_lerobot_environment() {
    let combos: [&[(&str, &str)]; 5] = [
        &[("HOME", "/home/u")],
        &[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")],
        &[("HOME", "/home/u"), ("HF_HOME", "~/hf")],
        &[
            ("HOME", "/home/u"),
            ("HF_HOME", "/hf"),
            ("HF_LEROBOT_HOME", "/lr"),
        ],
        &[
            ("HOME", "/home/u"),
            ("HF_LEROBOT_HOME", "/lr"),
            ("HF_LEROBOT_CALIBRATION", "~/cal"),
        ],
    ];
    let names = [
        "HOME",
        "XDG_CACHE_HOME",
        "HF_HOME",
        "HF_LEROBOT_HOME",
        "HF_LEROBOT_CALIBRATION",
    ];
    for combo in combos {
        let vars: BTreeMap<&str, &str> = combo.iter().copied().collect();
        let env: Vec<(&str, Option<&str>)> = names.iter().map(|n| (*n, vars.get(n).copied())).collect();
        let answer = ask_lerobot(&json!({}), &env);
        let ours = calibration_root_with(|name| vars.get(name).map(OsString::from));
        assert_eq!(
            ours,
            PathBuf::from(answer["calibration_root"].as_str().unwrap()),
            "{combo:?}"
        );
    }
}
