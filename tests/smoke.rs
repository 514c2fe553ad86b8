//! The whole pipeline on `experiments/smoke.toml`: demonstrations in MuJoCo, every reward source including
//! TOPReward from the tiny random Qwen3-VL fixture, weighted BC, evaluation, results, plots, TensorBoard,
//! and resuming a finished run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("trainer/ has a parent")
        .to_path_buf()
}

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(repo_root())
        .arg("experiments/smoke.toml")
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("train runs")
}

fn results(out: &Path) -> serde_json::Value {
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json"))
            .expect("json");
    // Wall time is the only field allowed to differ between identical runs.
    for arm in json["arms"].as_array_mut().expect("arms") {
        for run in arm["per_seed"].as_array_mut().expect("per_seed") {
            run["wall_time_s"] = serde_json::Value::Null;
        }
    }
    json
}

#[test]
fn smoke_experiment_runs_every_arm_deterministically_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("smoke");
    let first = train(&out, &[]);
    assert!(
        first.status.success(),
        "train failed:\n{}",
        String::from_utf8_lossy(&first.stderr)
    );

    let json = results(&out);
    let arms: Vec<&str> = json["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(arms, ["bc", "sparse", "oracle", "topreward"]);
    for arm in json["arms"].as_array().unwrap() {
        assert_eq!(arm["per_seed"].as_array().unwrap().len(), 2, "two seeds per arm");
        let success = arm["success_mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&success));
    }
    assert_eq!(json["reward_model"], "rewards/fixtures/qwen3vl-tiny");
    assert!(
        std::fs::read_to_string(out.join("results.md"))
            .unwrap()
            .contains("| topreward | topreward |")
    );
    for plot in ["plots/success.png", "plots/progress_examples.png"] {
        let img = image::open(out.join(plot)).unwrap_or_else(|e| panic!("{plot}: {e}"));
        assert!(img.width() > 100);
    }
    let events = std::fs::read_dir(out.join("tensorboard/topreward/seed-1"))
        .unwrap()
        .count();
    assert_eq!(events, 1, "one event file per run");
    assert!(out.join("runs/oracle/seed-0/checkpoint/policy.json").exists());

    // The same config in the same directory is refused without --resume ...
    let again = train(&out, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    // ... and with --resume, a lost result is recomputed exactly while finished runs are kept.
    std::fs::remove_file(out.join("runs/oracle/seed-1/result.json")).unwrap();
    std::fs::remove_dir_all(out.join("runs/oracle/seed-1/checkpoint")).unwrap();
    let resumed = train(&out, &["--resume"]);
    assert!(
        resumed.status.success(),
        "resume failed:\n{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(
        results(&out),
        json,
        "the re-run arm reproduces its result from the seed"
    );
}
