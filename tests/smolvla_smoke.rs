//! SmolVLA in the trainer: `experiments/smolvla_smoke.toml` fine-tunes the tiny random SO-101 SmolVLA
//! fixture (policies/fixtures/smolvla/so101_tiny, made by LeRobot 0.4.4) with every BC reward arm,
//! `experiments/smolvla_awr_smoke.toml` with online AWR (sparse and TOPReward rollouts scores); both
//! evaluate it in MuJoCo and write LeRobot checkpoints that LeRobot and `so101 sim` run; a missing model
//! or a checkpoint that does not fit the task is refused before any work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use toprl_policies::smolvla::lerobot::write_f32_tensors;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("trainer/ has a parent")
        .to_path_buf()
}

fn train(config: &Path, out: &Path, extra: &[&str], hf_home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(repo_root())
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", hf_home)
        .output()
        .expect("train runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One fixed observation and noise through `so101 policy predict` and through LeRobot 0.4.4
/// (`scripts/lerobot_smolvla_predict.py` in `.venv-lerobot`): both un-normalised chunks.
fn predict_both(ckpt: &Path, tmp: &Path) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let side = 32;
    // Values that are exact multiples of 1/255, so the conversion to RGB8 is lossless.
    let image = |seed: usize| -> Vec<u8> {
        (0..3 * side * side)
            .flat_map(|i| (((i * 37 + seed * 101) % 256) as f32 / 255.0).to_le_bytes())
            .collect()
    };
    let state: Vec<u8> = [10.0f32, -20.0, 30.0, 5.0, -7.5, 40.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let obs = tmp.join("obs.safetensors");
    write_f32_tensors(
        &obs,
        &[
            ("observation.state".into(), vec![6], state),
            ("observation.images.front".into(), vec![3, side, side], image(1)),
            ("observation.images.wrist".into(), vec![3, side, side], image(2)),
        ],
    )
    .expect("observation");
    let noise_values: Vec<u8> = (0..5 * 32)
        .flat_map(|i| ((((i * 7919) % 200) as f32 / 100.0) - 1.0).to_le_bytes())
        .collect();
    let noise = tmp.join("noise.safetensors");
    write_f32_tensors(&noise, &[("noise".into(), vec![5, 32], noise_values)]).expect("noise");
    let task = "move the arm to the cube";
    let actions = |out: Output| -> Vec<Vec<f32>> {
        assert!(out.status.success(), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        serde_json::from_value(json["actions"].clone()).expect("actions")
    };
    let toprl = Command::new(env!("CARGO_BIN_EXE_so101"))
        .args(["policy", "predict", "--json", "--task", task, "--policy"])
        .arg(ckpt)
        .arg("--observation")
        .arg(&obs)
        .arg("--noise")
        .arg(&noise)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("so101 runs");
    let python = repo_root().join(".venv-lerobot/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh (it installs lerobot==0.4.4 into .venv-lerobot)",
        python.display()
    );
    let lerobot = Command::new(python)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .arg(repo_root().join("scripts/lerobot_smolvla_predict.py"))
        .arg("--policy")
        .arg(ckpt)
        .arg("--observation")
        .arg(&obs)
        .arg("--noise")
        .arg(&noise)
        .args(["--task", task])
        .output()
        .expect("python runs");
    (actions(toprl), actions(lerobot))
}

fn smoke_text() -> String {
    std::fs::read_to_string(repo_root().join("experiments/smolvla_smoke.toml")).expect("smolvla_smoke.toml")
}

#[test]
fn smolvla_smoke_fine_tunes_every_arm_and_writes_lerobot_checkpoints_that_the_sim_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("smolvla");
    let run = train(Path::new("experiments/smolvla_smoke.toml"), &out, &[], dir.path());
    assert!(run.status.success(), "train failed:\n{}", stderr(&run));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json"))
            .expect("json");
    let arms: Vec<&str> = json["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(arms, ["bc", "sparse", "oracle"]);
    for arm in json["arms"].as_array().unwrap() {
        let curve = &arm["per_seed"][0]["curve"];
        assert_eq!(curve[0][0], 3, "evaluated after the 3 training steps: {curve}");
        assert!((0.0..=1.0).contains(&arm["success_mean"].as_f64().unwrap()));
    }

    let fixture = repo_root().join("policies/fixtures/smolvla/so101_tiny");
    let mut weights = Vec::new();
    for arm in arms {
        let ckpt = out.join(format!("runs/{arm}/seed-0/checkpoint"));
        for file in [
            "config.json",
            "model.safetensors",
            "policy_preprocessor.json",
            "policy_postprocessor.json",
            "policy_preprocessor_step_5_normalizer_processor.safetensors",
        ] {
            assert!(ckpt.join(file).is_file(), "{arm}: {file} missing");
        }
        // The normalisation statistics are the demonstrations' (the fixture's are placeholders).
        let stats =
            std::fs::read(ckpt.join("policy_preprocessor_step_5_normalizer_processor.safetensors")).unwrap();
        let original =
            std::fs::read(fixture.join("policy_preprocessor_step_5_normalizer_processor.safetensors"))
                .unwrap();
        assert_ne!(stats, original, "{arm}: statistics were not replaced");
        let model = std::fs::read(ckpt.join("model.safetensors")).unwrap();
        weights.push(model);
    }
    let original = std::fs::read(fixture.join("model.safetensors")).unwrap();
    assert!(
        weights.iter().all(|w| *w != original),
        "fine-tuning changed no weight"
    );
    // Different per-frame weights (plain BC vs sparse success) give different fine-tuned weights.
    assert_ne!(weights[0], weights[1], "bc and sparse arms trained identically");

    // LeRobot 0.4.4 loads the fine-tuned folder and predicts what toprl predicts from it.
    let ckpt = out.join("runs/oracle/seed-0/checkpoint");
    let (toprl, lerobot) = predict_both(&ckpt, dir.path());
    let scale = lerobot.iter().flatten().fold(1.0f32, |m, v| m.max(v.abs()));
    let err = toprl
        .iter()
        .zip(&lerobot)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max);
    eprintln!("max |toprl - LeRobot| = {err} (largest action {scale})");
    assert_eq!((toprl.len(), toprl[0].len()), (5, 6), "chunk_size x action_dim");
    // f32 on both sides: 10 Euler steps, then un-normalised by the data's std (joint degrees).
    assert!(
        err <= 1e-5 * scale + 1e-4,
        "max |toprl - LeRobot| = {err}\ntoprl {toprl:?}\nlerobot {lerobot:?}"
    );

    // `so101 sim --policy DIR` runs the fine-tuned LeRobot folder on its cameras.
    let sim = Command::new(env!("CARGO_BIN_EXE_so101"))
        .args([
            "sim",
            "--task",
            "reach",
            "--episodes",
            "1",
            "--image-size",
            "32",
            "--json",
            "--policy",
        ])
        .arg(out.join("runs/oracle/seed-0/checkpoint"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("so101 runs");
    assert!(sim.status.success(), "{}", stderr(&sim));
    let report: serde_json::Value = serde_json::from_slice(&sim.stdout).expect("json");
    assert_eq!(report["episodes"], 1);
    assert!(report["mean_steps"].as_f64().unwrap() > 0.0);
}

#[test]
fn bc_reward_aligned_offline_says_which_model_it_needs_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Path::new("experiments/bc_reward_aligned.toml");
    for extra in [&["--check"][..], &[][..]] {
        let out_dir = dir.path().join("out");
        let out = train(config, &out_dir, extra, dir.path());
        assert!(!out.status.success(), "{extra:?}: accepted without the model");
        let err = stderr(&out);
        for needle in [
            "bc_reward_aligned.toml",
            "policy.pretrained",
            "needs the model lerobot/smolvla_base",
            "huggingface-cli download lerobot/smolvla_base",
            "HF_HUB_OFFLINE",
        ] {
            assert!(err.contains(needle), "{extra:?}: `{needle}` not in:\n{err}");
        }
        assert!(
            !out_dir.exists(),
            "{extra:?}: output written before the model was found"
        );
    }
}

#[test]
fn smolvla_configs_that_do_not_fit_are_refused_by_field_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = smoke_text();
    let cases = [
        (
            "cameras",
            text.replace(
                "cameras = [\"front\", \"wrist\"]",
                "cameras = [\"front\", \"top\"]",
            ),
            "observation.images.top",
        ),
        (
            "folder",
            text.replace("policies/fixtures/smolvla/so101_tiny", "no/such/smolvla_folder"),
            "no/such/smolvla_folder",
        ),
        (
            "dims",
            // The parity fixture has 5 action dims.
            text.replace("fixtures/smolvla/so101_tiny", "fixtures/smolvla/checkpoint"),
            "`action` has shape Some(5)",
        ),
        (
            "camera_features",
            text.replace(
                "train_expert_only = true",
                "train_expert_only = true\ncamera_features = { side = \"observation.images.front\" }",
            ),
            "policy.camera_features",
        ),
        (
            "unfed",
            // The checkpoint's wrist camera would get no image.
            text.replace("cameras = [\"front\", \"wrist\"]", "cameras = [\"front\"]"),
            "`observation.images.wrist` is fed by none",
        ),
        (
            "schedule",
            // SmolVLA's schedule is LeRobot's, configured under [policy].
            text.replace("eval_every = 3", "eval_every = 3\ncosine = true"),
            "policy.scheduler_warmup_steps",
        ),
        (
            "decay_lr",
            text.replace(
                "train_expert_only = true",
                "train_expert_only = true\nscheduler_decay_lr = 0.5",
            ),
            "policy.scheduler_decay_lr",
        ),
        (
            "pretrained",
            text.replace("kind = \"smolvla\"", "kind = \"flow\""),
            "policy.pretrained",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let out_dir = dir.path().join(format!("out-{name}"));
        let out = train(&path, &out_dir, &[], dir.path());
        assert!(!out.status.success(), "{name} was accepted");
        let err = stderr(&out);
        assert!(
            err.contains(expected) && err.contains(&format!("{name}.toml")),
            "{name}: {err}"
        );
        assert!(!out_dir.exists(), "{name}: output written before the refusal");
    }

    // `so101 sim` refuses a SmolVLA folder whose action size is not the SO-101's.
    let sim = Command::new(env!("CARGO_BIN_EXE_so101"))
        .current_dir(repo_root())
        .args(["sim", "--task", "reach", "--episodes", "1", "--policy"])
        .arg("policies/fixtures/smolvla/checkpoint")
        .output()
        .expect("so101 runs");
    assert!(!sim.status.success());
    let err = stderr(&sim);
    assert!(err.contains("the SO-101 has 6 joints"), "{err}");
}

#[test]
fn camera_features_map_simulator_cameras_to_the_checkpoints_like_lerobots_rename_map() {
    // The sim's top and front cameras feed the checkpoint's `front` and `wrist` features.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = smoke_text();
    let start = text.find("[[arms]]").expect("arms");
    let renamed = format!("{}[[arms]]\nname = \"bc\"\nreward = \"none\"\n", &text[..start])
        .replace("cameras = [\"front\", \"wrist\"]", "cameras = [\"top\", \"front\"]")
        .replace(
            "train_expert_only = true",
            // The VLM trains too here: the full model runs every step (no frozen-context cache).
            "train_expert_only = false\ncamera_features = { top = \"observation.images.front\", front = \"observation.images.wrist\" }",
        );
    let config = dir.path().join("renamed.toml");
    std::fs::write(&config, renamed).unwrap();
    let out = dir.path().join("out");
    let run = train(&config, &out, &[], dir.path());
    assert!(run.status.success(), "train failed:\n{}", stderr(&run));
    let ckpt = out.join("runs/bc/seed-0/checkpoint");
    assert!(ckpt.join("model.safetensors").is_file());
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        saved["train_expert_only"], false,
        "the freezing option is saved with the folder"
    );

    // `so101 sim` feeds the same renamed cameras with --camera SIM=FEATURE.
    let sim = |cameras: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_so101"));
        cmd.args([
            "sim",
            "--task",
            "reach",
            "--episodes",
            "1",
            "--image-size",
            "32",
            "--json",
            "--policy",
        ])
        .arg(&ckpt);
        for c in cameras {
            cmd.args(["--camera", c]);
        }
        cmd.output().expect("so101 runs")
    };
    let ok = sim(&["top=observation.images.front", "front=observation.images.wrist"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("json");
    assert_eq!(report["episodes"], 1);
    let unfed = sim(&["top=observation.images.front"]);
    assert!(!unfed.status.success());
    assert!(
        stderr(&unfed).contains("`observation.images.wrist` is fed by none"),
        "{}",
        stderr(&unfed)
    );
    let not_sim = sim(&["side=observation.images.front", "front=observation.images.wrist"]);
    assert!(!not_sim.status.success());
    assert!(
        stderr(&not_sim).contains("`side` is not a simulator camera"),
        "{}",
        stderr(&not_sim)
    );
}

/// The TensorBoard scalar tags written under `dir` (event files hold them as plain strings).
fn tensorboard_has(dir: &Path, tag: &str) -> bool {
    std::fs::read_dir(dir)
        .expect("tensorboard folder")
        .flatten()
        .any(|f| {
            let bytes = std::fs::read(f.path()).unwrap_or_default();
            bytes.windows(tag.len()).any(|w| w == tag.as_bytes())
        })
}

#[test]
fn smolvla_awr_rolls_out_scores_and_fine_tunes_with_sparse_and_topreward_advantages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("awr");
    let run = train(
        Path::new("experiments/smolvla_awr_smoke.toml"),
        &out,
        &[],
        dir.path(),
    );
    assert!(run.status.success(), "train failed:\n{}", stderr(&run));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json"))
            .expect("json");
    let arms = json["arms"].as_array().expect("arms");
    assert_eq!(arms.len(), 2);
    let fixture =
        std::fs::read(repo_root().join("policies/fixtures/smolvla/so101_tiny/model.safetensors")).unwrap();
    let mut weights = Vec::new();
    for arm in arms {
        let name = arm["name"].as_str().unwrap();
        // Evaluated after the 2 BC steps, then after each AWR iteration's 2 policy steps.
        let steps: Vec<u64> = arm["per_seed"][0]["curve"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [2, 4, 6], "{name}");
        let ckpt = out.join(format!("runs/{name}/seed-0/checkpoint"));
        for file in [
            "config.json",
            "model.safetensors",
            "policy_preprocessor.json",
            "policy_postprocessor.json",
            "progress.json",
            "value/value.json",
        ] {
            assert!(ckpt.join(file).is_file(), "{name}: {file} missing");
        }
        let progress: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ckpt.join("progress.json")).unwrap()).unwrap();
        assert_eq!(progress["awr_iterations"], 2, "{name}");
        assert_eq!(progress["step"], 6, "{name}");
        let tb = out.join(format!("tensorboard/{name}/seed-0"));
        for tag in [
            "awr/rollout_success",
            "awr/value_loss",
            "awr/weight_mean",
            "train/lr",
        ] {
            assert!(tensorboard_has(&tb, tag), "{name}: no `{tag}` in TensorBoard");
        }
        let model = std::fs::read(ckpt.join("model.safetensors")).unwrap();
        assert_ne!(model, fixture, "{name}: AWR changed no weight");
        weights.push(model);
    }
    // Different advantages (success bit vs TOPReward log-probabilities) move the policy differently.
    assert_ne!(
        weights[0], weights[1],
        "the sparse and topreward arms trained identically"
    );

    // LeRobot 0.4.4 loads the AWR-tuned folder (value baseline and progress inside) and predicts what
    // toprl predicts from it.
    let (toprl, lerobot) = predict_both(&out.join("runs/awr_topreward/seed-0/checkpoint"), dir.path());
    let scale = lerobot.iter().flatten().fold(1.0f32, |m, v| m.max(v.abs()));
    let err = toprl
        .iter()
        .zip(&lerobot)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max);
    assert!(
        err <= 1e-5 * scale + 1e-4,
        "max |toprl - LeRobot| = {err}\ntoprl {toprl:?}\nlerobot {lerobot:?}"
    );
}

#[test]
fn an_interrupted_smolvla_awr_run_resumes_where_it_stopped() {
    // A SmolVLA AWR run killed after its first checkpoint and continued with --resume must end where
    // an uninterrupted run ends: same weights (so the same AdamW moments, noise stream and learning
    // rate schedule), same value baseline and the same results.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(repo_root().join("experiments/smolvla_awr_smoke.toml")).unwrap();
    let start = text.find("[[arms]]").expect("arms");
    let config = dir.path().join("awr.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[arms]]\nname = \"awr\"\nreward = \"sparse\"\nalgorithm = \"awr\"\n",
            &text[..start]
        ),
    )
    .unwrap();

    let straight = dir.path().join("straight");
    let out = train(&config, &straight, &[], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));

    let interrupted = dir.path().join("interrupted");
    let mut child = Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(repo_root())
        .arg(&config)
        .arg("--out")
        .arg(&interrupted)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("train starts");
    let run = interrupted.join("runs/awr/seed-0");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !run.join("checkpoint/progress.json").is_file() {
        assert!(
            child.try_wait().expect("train status").is_none(),
            "train ended before its first checkpoint"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint after 10 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill train");
    let _ = child.wait();
    assert!(
        !run.join("result.json").exists(),
        "the run finished before it could be interrupted"
    );
    let progress: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("checkpoint/progress.json")).unwrap()).unwrap();
    eprintln!("interrupted at {progress}");
    assert!(progress["step"].as_u64().unwrap() < 6, "{progress}");

    let out = train(&config, &interrupted, &["--resume"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    // Continued from the checkpoint, not restarted from the pretrained weights (which, the run being
    // deterministic, would end in the same place).
    assert!(
        stderr(&out).contains("resuming from checkpoint"),
        "{}",
        stderr(&out)
    );
    let ckpt = |root: &Path| root.join("runs/awr/seed-0/checkpoint");
    let model = |root: &Path| std::fs::read(ckpt(root).join("model.safetensors")).unwrap();
    assert!(
        model(&straight) == model(&interrupted),
        "the resumed SmolVLA differs from the uninterrupted one"
    );
    // Value baselines compared by prediction (burnpack files also hold per-process parameter ids).
    let states: Vec<f32> = (0..4 * 6).map(|i| ((i * 37) % 23) as f32 * 3.0 - 30.0).collect();
    let device = toprl_policies::cpu_device();
    let value = |root: &Path| {
        toprl_policies::ValueTrainer::from_checkpoint(
            ckpt(root).join("value"),
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
    let results = |root: &Path| {
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("results.json")).unwrap()).unwrap();
        for run in json["arms"][0]["per_seed"].as_array_mut().unwrap() {
            run["wall_time_s"] = serde_json::Value::Null;
        }
        json
    };
    assert_eq!(results(&straight), results(&interrupted));
}
