//! End-to-end checks of the `train` binary's handling of configs.

use std::process::Command;

fn train() -> Command {
    Command::new(env!("CARGO_BIN_EXE_train"))
}

#[test]
fn malformed_config_exits_nonzero_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[task]\nname = \"pick_cube\"\n[data]\nsource = \"sim\"\nepisodes = 4\n[policy]\nkind = \"gaussian\"\nlearning_rat = 1\n[[arms]]\nname = \"bc\"\nreward = \"none\"\n",
    )
    .unwrap();
    let out = train().arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("line 8"), "{err}");
    assert!(err.contains("unknown field `learning_rat`"), "{err}");
}

#[test]
fn syntax_error_reports_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[task]\nname = \"pick_cube\n").unwrap();
    let out = train().arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml") && err.contains("line 2"), "{err}");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = train().arg("does/not/exist.toml").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does/not/exist.toml"), "{err}");
}

#[test]
fn every_shipped_experiment_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = train().arg(&path).arg("--check").output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "bc_reward_aligned.toml and smoke.toml at least");
}
