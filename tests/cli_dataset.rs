//! End-to-end checks of `so101 dataset info|frames` on the LeRobot-written fixtures.

// Test helpers outside #[test] functions panic on broken fixtures by design.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn so101() -> Command {
    Command::new(env!("CARGO_BIN_EXE_so101"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../envs/fixtures/lerobot")
        .join(name)
}

#[test]
fn info_json_reports_what_lerobot_wrote() {
    let out = so101()
        .args(["dataset", "info", "--json"])
        .arg(fixture("so101_v30"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected_v30.json")).unwrap()).unwrap();
    assert_eq!(r["codebase_version"], "v3.0");
    assert_eq!(r["fps"], 30.0);
    assert_eq!(r["robot_type"], "so101_follower");
    assert_eq!(r["total_episodes"], 3);
    let cams = r["cameras"].as_array().unwrap();
    assert_eq!(cams.len(), 2);
    for c in cams {
        assert_eq!(
            (c["width"].as_u64(), c["height"].as_u64(), c["codec"].as_str()),
            (Some(64), Some(48), Some("av1"))
        );
    }
    let state = r["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "observation.state")
        .unwrap();
    assert_eq!(state["shape"], serde_json::json!([6]));
    assert_eq!(state["names"][0], "shoulder_pan.pos");
    for (e, ep) in r["episodes"].as_array().unwrap().iter().enumerate() {
        let x = &exp["episodes"][e];
        assert_eq!(ep["length"], x["length"]);
        assert_eq!(ep["task"], x["task"]);
        let states = x["observation.state"].as_array().unwrap();
        let f32s = |v: &Value| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        };
        assert_eq!(f32s(&ep["first_state"]), f32s(&states[0]));
        assert_eq!(f32s(&ep["last_state"]), f32s(states.last().unwrap()));
    }
}

#[test]
fn info_text_names_version_cameras_and_tasks() {
    let out = so101()
        .args(["dataset", "info"])
        .arg(fixture("so101_v21"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "v2.1",
        "observation.images.wrist",
        "64x48 h264",
        "Open the drawer.",
        "so101_follower",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn frames_writes_one_png_per_frame_named_by_index() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("frames");
    let out = so101()
        .args([
            "dataset",
            "frames",
            "--episode",
            "1",
            "--camera",
            "observation.images.front",
            "--out",
        ])
        .arg(&out_dir)
        .arg(fixture("so101_v30"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    names.sort();
    let expected: Vec<String> = (0..7).map(|i| format!("{i:06}.png")).collect();
    assert_eq!(names, expected);
    let img = image::open(out_dir.join("000003.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (64, 48));
}

#[test]
fn bad_input_exits_nonzero_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("frames");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--episode".into(),
                "9".into(),
                "--camera".into(),
                "observation.images.front".into(),
            ],
            "episode 9 is out of range",
        ),
        (
            vec![
                "--episode".into(),
                "0".into(),
                "--camera".into(),
                "observation.images.top".into(),
            ],
            "observation.images.top",
        ),
    ];
    for (args, needle) in cases {
        let out = so101()
            .args(["dataset", "frames"])
            .args(&args)
            .arg("--out")
            .arg(&out_dir)
            .arg(fixture("so101_v30"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(!out_dir.exists());
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "partial output left behind"
        );
    }
    let out = so101()
        .args(["dataset", "info"])
        .arg(tmp.path().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}
