//! End-to-end checks of the `train` binary's handling of configs.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

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

const TINY: &str = "[task]\nname = \"reach\"\nmax_steps = 20\ncameras = [\"front\"]\nimage_size = 32\n\
                    [data]\nsource = \"sim\"\nepisodes = 2\nnoise_levels = [0.0]\n\
                    [policy]\nkind = \"gaussian\"\nchunk = 2\n[policy.network]\nhidden = [8]\n\
                    [train]\nsteps = 4\nbatch_size = 4\neval_every = 2\n[eval]\nepisodes = 1\n\
                    [[arms]]\nname = \"bc\"\nreward = \"none\"\n";

/// Every input the run refuses, `--check` refuses too, with the same field named, and nothing is written.
#[test]
fn check_refuses_exactly_what_the_run_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let with_topreward =
        |rm: &str| TINY.replace("reward = \"none\"", "reward = \"topreward\"") + "[reward_model]\n" + rm;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "clip",
            TINY.replace("steps = 4", "steps = 4\nmin_weight = 5.0\ndelta_max = 1.0"),
            "min_weight (5) must be at most delta_max (1)",
        ),
        (
            "delta_nan",
            TINY.replace("steps = 4", "steps = 4\ndelta_max = nan"),
            "delta_max",
        ),
        (
            "tau_nan",
            TINY.replace("steps = 4", "steps = 4\ntau = nan"),
            "tau",
        ),
        (
            "lr_nan",
            TINY.replace("steps = 4", "steps = 4\nlr = nan"),
            "train.lr",
        ),
        (
            "lr_inf",
            TINY.replace("steps = 4", "steps = 4\nlr = inf"),
            "train.lr",
        ),
        (
            "image0",
            TINY.replace("image_size = 32", "image_size = 0"),
            "task.image_size",
        ),
        ("seeds", format!("seeds = [0, 0]\n{TINY}"), "seeds"),
        ("steps0", TINY.replace("steps = 4", "steps = 0"), "train.steps"),
        (
            "eval0",
            TINY.replace("episodes = 1", "episodes = 0"),
            "eval.episodes",
        ),
        ("noise_nan", TINY.replace("[0.0]", "[nan]"), "data.noise_levels"),
        (
            "batch",
            TINY.replace("batch_size = 4", "batch_size = 100000000"),
            "train.batch_size",
        ),
        (
            "escape",
            TINY.replace("name = \"bc\"", "name = \"../../escape\""),
            "arms[0].name",
        ),
        (
            "empty_arm",
            TINY.replace("name = \"bc\"", "name = \"\""),
            "arms[0].name",
        ),
        (
            "camera",
            TINY.replace("[\"front\"]", "[\"side\"]"),
            "task.cameras",
        ),
        (
            "model",
            with_topreward("model = \"/no/such/model\"\n"),
            "reward_model.model",
        ),
        (
            "rm_camera",
            with_topreward("model = \"Qwen/Qwen3-VL-8B-Instruct\"\ncamera = \"observation.images.top\"\n"),
            "reward_model.camera",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let out_dir = dir.path().join(format!("out-{name}"));
        for check in [true, false] {
            let mut cmd = train();
            cmd.arg(&path).arg("--out").arg(&out_dir);
            if check {
                cmd.arg("--check");
            }
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name} (check: {check}) was accepted");
            assert!(err.contains(expected), "{name} (check: {check}): {err}");
            assert!(!err.contains("panicked"), "{name}: {err}");
            assert!(
                !out_dir.exists(),
                "{name}: output written before the config was refused"
            );
        }
    }
}

/// `train --check | head -1`: a reader that went away ends the output quietly, without a panic.
#[test]
fn check_output_survives_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, TINY).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = train()
        .arg(&path)
        .arg("--check")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
}

fn run(config: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    train()
        .arg(config)
        .arg("--out")
        .arg(out)
        .arg("--threads")
        .arg("1")
        .args(extra)
        .output()
        .unwrap()
}

/// The run folder records its config and code version: `--resume` with another config is refused and
/// names the difference, `--restart` moves the old run aside, a second process is refused while the
/// folder is locked, and a progress past the config's steps is refused.
#[test]
fn resume_is_guarded_by_config_lock_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let out = dir.path().join("run");
    let first = run(&config, &out, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let results = std::fs::read_to_string(out.join("results.json")).unwrap();
    assert!(out.join("run.json").exists());

    let again = run(&config, &out, &[]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a run"));

    // Raising steps is a different run: refused, naming the key, and nothing is rewritten.
    let longer = dir.path().join("longer.toml");
    std::fs::write(&longer, TINY.replace("steps = 4", "steps = 2000")).unwrap();
    let refused = run(&longer, &out, &["--resume"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("train.steps: 4 -> 2000"),
        "{err}"
    );
    assert!(
        std::fs::read_to_string(out.join("experiment.toml"))
            .unwrap()
            .contains("steps = 4")
    );
    assert_eq!(
        std::fs::read_to_string(out.join("results.json")).unwrap(),
        results
    );

    // Same config: finished runs are kept, the results are the same.
    let resumed = run(&config, &out, &["--resume"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("results.json")).unwrap(),
        results
    );

    // A second process on the same folder is refused while the first holds the lock.
    let lock = std::fs::File::options()
        .write(true)
        .open(out.join(".lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let busy = run(&config, &out, &["--resume"]);
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(
        !busy.status.success() && err.contains("in use by another train process"),
        "{err}"
    );
    drop(lock);

    // A progress.json past the config's steps is not a finished run.
    let seed_dir = out.join("runs/bc/seed-0");
    std::fs::remove_file(seed_dir.join("result.json")).unwrap();
    let progress_path = seed_dir.join("checkpoint/progress.json");
    let mut progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&progress_path).unwrap()).unwrap();
    progress["step"] = serde_json::json!(999);
    std::fs::write(&progress_path, progress.to_string()).unwrap();
    let past = run(&config, &out, &["--resume"]);
    let err = String::from_utf8_lossy(&past.stderr);
    assert!(
        !past.status.success() && err.contains("not from this run"),
        "{err}"
    );

    // --restart starts over and says where the previous run went; nothing is deleted.
    let restarted = run(&config, &out, &["--restart"]);
    let err = String::from_utf8_lossy(&restarted.stderr);
    assert!(restarted.status.success(), "{err}");
    let moved = dir.path().join("run.replaced-1");
    assert!(err.contains(&moved.display().to_string()), "{err}");
    assert!(moved.join("runs/bc/seed-0/checkpoint/progress.json").exists());
    // A fresh run of the same config gives the same results (wall-clock times aside).
    assert_eq!(
        without_times(&std::fs::read_to_string(out.join("results.json")).unwrap()),
        without_times(&results)
    );

    // The checkpoint names its task: `so101 sim` refuses it on another task unless asked.
    let checkpoint = out.join("runs/bc/seed-0/checkpoint");
    let sim = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_so101"))
            .args([
                "sim",
                "--task",
                "pick_place",
                "--episodes",
                "1",
                "--threads",
                "1",
                "--policy",
            ])
            .arg(&checkpoint)
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = sim(&[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("trained on `reach`"),
        "{err}"
    );
    let allowed = sim(&["--allow-task-mismatch"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

/// A results.json without its wall-clock times, which differ between two runs of the same config.
fn without_times(json: &str) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("wall_time_s");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    strip(&mut v);
    v
}

/// `[train] backend` and `device` (issue 13): unknown values name the key and the accepted ones; a GPU
/// on flex is refused; `tch` in a binary built without it says how to build it.
#[test]
fn backend_and_device_errors_name_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let with = |line: &str| TINY.replace("steps = 4", &format!("steps = 4\n{line}"));
    let mut cases = vec![
        (
            "b1",
            with("backend = \"torch\""),
            vec!["backend", "`flex`", "`tch`"],
        ),
        ("d1", with("device = \"gpu\""), vec!["device", "cuda:N"]),
        (
            "d2",
            with("device = \"cuda:0\""),
            vec!["train.device", "backend \"tch\""],
        ),
    ];
    if cfg!(not(feature = "tch")) {
        cases.push((
            "b2",
            with("backend = \"tch\""),
            vec![
                "train.backend",
                "--features toprl-trainer/tch",
                "LibTorch and GPUs",
            ],
        ));
    }
    for (name, text, wants) in cases {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = train().arg(&path).arg("--check").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {err}");
        assert!(err.contains(&format!("{name}.toml")), "{name}: {err}");
        for want in wants {
            assert!(err.contains(want), "{name}: expected `{want}` in: {err}");
        }
    }
    // The command-line flags are checked the same way, before anything runs.
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, TINY).unwrap();
    let out = train()
        .arg(&path)
        .args(["--check", "--device", "mps"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.device"), "{err}");
}
