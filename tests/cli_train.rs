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
            // Offline with an empty Hugging Face cache: a config whose model is a hub id must say what to
            // download (tests/smolvla_smoke.rs checks the message); every other config is valid.
            let hf_home = tempfile::tempdir().unwrap();
            // Paths inside the configs (fixtures) are relative to the repository root, as documented.
            let out = train()
                .current_dir(dir.join(".."))
                .arg(&path)
                .arg("--check")
                .env("HF_HUB_OFFLINE", "1")
                .env("HF_HOME", hf_home.path())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("needs the model lerobot/smolvla_base") {
                checked += 1;
                continue;
            }
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

#[test]
fn bad_configs_are_refused_by_field_before_any_training() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[task]\nname = \"reach\"\n[data]\nsource = \"sim\"\nepisodes = 2\n[policy]\nkind = \"gaussian\"\n\
                [[arms]]\nname = \"bc\"\nreward = \"none\"\n";
    let cases = [
        ("task", base.replace("\"reach\"", "\"juggle\""), "task.name"),
        (
            "policy",
            base.replace("\"gaussian\"", "\"diffusion\""),
            "policy.kind",
        ),
        (
            "reward",
            base.replace("\"none\"", "\"dense\""),
            "unknown variant `dense`",
        ),
        (
            "init",
            base.replace(
                "kind = \"gaussian\"",
                "kind = \"gaussian\"\ninit = \"no/such/checkpoint\"",
            ),
            "policy.init",
        ),
        (
            "network",
            base.replace(
                "kind = \"gaussian\"",
                "kind = \"gaussian\"\n[policy.network]\nhiden = [8]",
            ),
            "unknown field `hiden`",
        ),
        (
            "awr",
            base.replace("reward = \"none\"", "reward = \"sparse\"\nalgorithm = \"awr\"")
                + "[awr]\ngamma = 1.5\n",
            "awr.gamma",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let out_dir = dir.path().join(format!("out-{name}"));
        let out = train().arg(&path).arg("--out").arg(&out_dir).output().unwrap();
        assert!(!out.status.success(), "{name} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expected) && err.contains(&format!("{name}.toml")),
            "{name}: {err}"
        );
        assert!(
            !out_dir.exists(),
            "{name}: output written before the config was refused"
        );
    }
}
