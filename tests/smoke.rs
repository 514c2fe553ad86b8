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
    train_config(Path::new("experiments/smoke.toml"), out, extra)
}

fn train_config(config: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(repo_root())
        .arg(config)
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
    assert_eq!(
        arms,
        ["bc", "sparse", "oracle", "topreward", "awr", "noisy", "awr_zero"]
    );
    for arm in json["arms"].as_array().unwrap() {
        assert_eq!(arm["per_seed"].as_array().unwrap().len(), 2, "two seeds per arm");
        let success = arm["success_mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&success));
        let ci = arm["ci95"].as_array().unwrap();
        let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
        assert!(lo <= success + 1e-12 && success <= hi + 1e-12, "{arm}");
        let ess = arm["weight_ess"].as_f64().unwrap();
        assert!(ess > 0.0 && ess <= 1.0 + 1e-9, "{arm}");
        if arm["name"] != "bc" {
            assert_eq!(arm["paired"][0]["baseline"], "bc", "{arm}");
        }
    }
    // Plain BC weighs every frame alike; success filtering and RA-BC on a noisy signal do not.
    assert!((json["arms"][0]["weight_ess"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert!(json["arms"][1]["weight_ess"].as_f64().unwrap() < 1.0);
    let noisy = &json["arms"][5];
    assert!(noisy["weight_ess"].as_f64().unwrap() < 0.99, "{noisy}");
    assert!(noisy["reward_voc"].as_f64().is_some(), "{noisy}");
    assert_eq!(json["reward_model"], "rewards/fixtures/qwen3vl-tiny");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| topreward | Eq. 3, TOPReward, chunk (5) deltas, 60 steps |"),
        "{md}"
    );
    assert!(
        md.contains("vs bc (final)") && md.contains("vs sparse (final)"),
        "{md}"
    );
    for plot in [
        "plots/success.png",
        "plots/final_success.png",
        "plots/progress_examples.png",
    ] {
        let img = image::open(out.join(plot)).unwrap_or_else(|e| panic!("{plot}: {e}"));
        assert!(img.width() > 100);
    }
    let events = std::fs::read_dir(out.join("tensorboard/topreward/seed-1"))
        .unwrap()
        .count();
    assert_eq!(events, 1, "one event file per run");
    assert!(out.join("runs/oracle/seed-0/checkpoint/policy.json").exists());
    // The AWR arm evaluates after the BC warm start (steps 30, 60) and after each iteration (+10 steps).
    let awr = &json["arms"][4]["per_seed"][0]["curve"];
    let steps: Vec<u64> = awr
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [30, 60, 70, 80]);
    assert!(out.join("runs/awr/seed-0/checkpoint/value/value.json").exists());
    // The zero-advantage control takes the same steps with the same rollouts.
    assert_eq!(
        json["arms"][6]["per_seed"][0]["curve"].as_array().unwrap().len(),
        4
    );

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

#[test]
fn an_interrupted_awr_run_resumes_where_it_stopped() {
    // A run stopped after its first AWR iteration (here: a config with one iteration, then the same
    // config with two and --resume) must end exactly where an uninterrupted two-iteration run ends:
    // policy and value weights, their optimiser moments and the regenerated rollouts all match.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(repo_root().join("experiments/smoke.toml")).expect("smoke.toml");
    let start = text.find("[[arms]]").expect("arms");
    let awr_only = format!(
        "{}[[arms]]\nname = \"awr\"\nreward = \"oracle\"\nalgorithm = \"awr\"\n",
        &text[..start]
    )
    .replace("seeds = [0, 1]", "seeds = [0]");
    // Same file name (the experiment's name) in two folders: the configs differ only in iterations.
    for sub in ["one", "two"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let two = dir.path().join("two/awr.toml");
    std::fs::write(&two, &awr_only).unwrap();
    let one = dir.path().join("one/awr.toml");
    std::fs::write(&one, awr_only.replace("iterations = 2", "iterations = 1")).unwrap();

    let straight = dir.path().join("straight");
    let out = train_config(&two, &straight, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let interrupted = dir.path().join("interrupted");
    let out = train_config(&one, &interrupted, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(interrupted.join("runs/awr/seed-0/result.json")).unwrap();
    // The run folder records the config it was started with, and --resume refuses another one; a run of
    // `two` stopped after its first iteration differs from this finished run of `one` only in that record.
    let resolved_two =
        toml::to_string_pretty(&toprl_trainer::config::ExperimentConfig::load(&two).expect("two.toml"))
            .unwrap();
    let refused = train_config(&two, &interrupted, &["--resume"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("awr.iterations: 1 -> 2"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    std::fs::write(interrupted.join("experiment.toml"), resolved_two).unwrap();
    let out = train_config(&two, &interrupted, &["--resume"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Same predictions from the policy and value checkpoints (compared numerically: burnpack files also
    // hold parameter ids, which differ between processes).
    let states: Vec<f32> = (0..5 * 12).map(|i| ((i * 37) % 23) as f32 * 0.3 - 3.0).collect();
    let obs = toprl_policies::ObsBatch::new(states.clone(), 12).unwrap();
    let device = toprl_policies::cpu_device();
    let act = |root: &Path| {
        toprl_policies::load_policy(root.join("runs/awr/seed-0/checkpoint"), &device)
            .unwrap()
            .act_batch(&obs)
            .unwrap()
    };
    assert_eq!(act(&straight), act(&interrupted), "policy differs after resuming");
    let value = |root: &Path| {
        toprl_policies::ValueTrainer::from_checkpoint(
            root.join("runs/awr/seed-0/checkpoint/value"),
            toprl_policies::TrainConfig::default(),
            &device,
        )
        .unwrap()
        .predict(&states)
        .unwrap()
    };
    assert_eq!(
        value(&straight),
        value(&interrupted),
        "value function differs after resuming"
    );
    let strip_experiment = |mut v: serde_json::Value| {
        v["experiment"] = serde_json::Value::Null;
        v
    };
    assert_eq!(
        strip_experiment(results(&interrupted)),
        strip_experiment(results(&straight))
    );
}

#[test]
fn a_trained_checkpoint_drives_the_sim_and_seeds_fine_tuning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(repo_root().join("experiments/smoke.toml")).expect("smoke.toml");
    let start = text.find("[[arms]]").expect("arms");
    let bc_only = format!("{}[[arms]]\nname = \"bc\"\nreward = \"none\"\n", &text[..start])
        .replace("seeds = [0, 1]", "seeds = [0]");
    let config = dir.path().join("bc.toml");
    std::fs::write(&config, &bc_only).unwrap();
    let first = dir.path().join("first");
    let out = train_config(&config, &first, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checkpoint = first.join("runs/bc/seed-0/checkpoint");

    // `so101 sim` rebuilds the policy's input (joint state + environment state) from the checkpoint.
    let sim = Command::new(env!("CARGO_BIN_EXE_so101"))
        .args(["sim", "--task", "reach", "--episodes", "2", "--json", "--policy"])
        .arg(&checkpoint)
        .output()
        .expect("so101 runs");
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));
    let report: serde_json::Value = serde_json::from_slice(&sim.stdout).expect("json");
    assert_eq!(report["episodes"], 2);

    // Fine-tuning from it: the step count carries on from the checkpoint's.
    let tuned_config = dir.path().join("tuned.toml");
    let init = format!(
        "environment_state = true\ninit = {:?}",
        checkpoint.display().to_string()
    );
    std::fs::write(&tuned_config, bc_only.replace("environment_state = true", &init)).unwrap();
    let tuned = dir.path().join("tuned");
    let out = train_config(&tuned_config, &tuned, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta = |root: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(root.join("runs/bc/seed-0/checkpoint/policy.json")).unwrap())
            .unwrap()
    };
    assert_eq!(meta(&first)["train_steps"], 60);
    assert_eq!(meta(&tuned)["train_steps"], 120);

    // A checkpoint whose inputs differ from the config's is refused before training.
    let mismatched = dir.path().join("mismatched.toml");
    let init = format!(
        "environment_state = false\ninit = {:?}",
        checkpoint.display().to_string()
    );
    std::fs::write(&mismatched, bc_only.replace("environment_state = true", &init)).unwrap();
    let out = train_config(&mismatched, &dir.path().join("mismatched"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("environment_state"), "{err}");
}
