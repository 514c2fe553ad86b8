//! `topreward score` end to end on the tiny random Qwen3-VL (rewards/fixtures): the JSON matches the
//! transformers reference, the plot is written, and bad inputs exit non-zero with a clear message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "episode_frames.rs"]
mod episode_frames;
use episode_frames::frames_dir;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rewards/fixtures")
}

fn topreward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_topreward"))
        .args(args)
        .output()
        .expect("run topreward")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("topreward_reference.json")).expect("read"))
        .expect("parse")
}

#[test]
fn score_json_matches_reference_and_plots() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let r = reference();
    let model = fixtures().join("qwen3vl-tiny");
    for (name, mode) in [("square100x80", "exact"), ("square256", "incremental")] {
        let ep = &r["episodes"][name];
        let frames = frames_dir(name, tmp.path());
        let plot = tmp.path().join(format!("{name}.png"));
        let out = score(
            &model,
            &frames,
            ep["instruction"].as_str().expect("instruction"),
            &[
                "--fps",
                "2",
                "--mode",
                mode,
                "--json",
                "--plot",
                plot.to_str().expect("utf8"),
                "--success-threshold",
                "-1.0",
            ],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
        let prefixes = ep["prefixes"].as_array().expect("prefixes");
        for (i, p) in prefixes.iter().enumerate() {
            let lp = got["log_probs"][i].as_f64().expect("log prob");
            let want = p["log_prob_true"].as_f64().expect("reference");
            assert!(
                (lp - want).abs() < 1e-3,
                "{name} {mode} prefix {i}: {lp} vs {want}"
            );
            assert_eq!(got["num_tokens"][i], p["num_tokens"]);
            assert_eq!(got["prefix_lengths"][i], p["prefix_length"]);
        }
        assert_eq!(got["progress"].as_array().map(Vec::len), Some(prefixes.len()));
        assert!(got.get("voc").is_some());
        let load = got["timing"]["load_seconds"]
            .as_f64()
            .expect("timing.load_seconds");
        let scoring = got["timing"]["score_seconds"]
            .as_f64()
            .expect("timing.score_seconds");
        assert!(load > 0.0 && scoring > 0.0, "timing {}", got["timing"]);
        // The default precision on the CPU is f32, whatever the checkpoint stores (this one: bf16).
        assert_eq!(got["device"], "cpu");
        assert_eq!(got["dtype"], "f32");
        // The paper's success detector: mean log p(True) of the last 3 prefixes against the threshold.
        let lps: Vec<f64> = prefixes
            .iter()
            .map(|p| p["log_prob_true"].as_f64().expect("reference"))
            .collect();
        let tail = &lps[lps.len().saturating_sub(3)..];
        let want = tail.iter().sum::<f64>() / tail.len() as f64;
        let success_score = got["success_score"].as_f64().expect("success_score");
        assert!((success_score - want).abs() < 1e-3, "{success_score} vs {want}");
        assert_eq!(got["success"].as_bool(), Some(success_score >= -1.0));
        let img = image::open(&plot).expect("plot png").to_rgb8();
        assert!(img.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1000);
    }
}

/// `topreward score --model M --frames F --instruction I EXTRA...`.
fn score(model: &Path, frames: &Path, instruction: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "score",
        "--model",
        model.to_str().expect("utf8"),
        "--frames",
        frames.to_str().expect("utf8"),
        "--instruction",
        instruction,
    ];
    args.extend_from_slice(extra);
    topreward(&args)
}

#[test]
fn score_runs_in_bf16_when_asked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let r = reference();
    let ep = &r["episodes"]["square256"];
    let model = fixtures().join("qwen3vl-tiny");
    let frames = frames_dir("square256", tmp.path());
    let instruction = ep["instruction"].as_str().expect("instruction");
    let out = score(&model, &frames, instruction, &["--json", "--dtype", "bf16"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got["dtype"], "bf16");
    // bf16 tolerance of rewards/tests/qwen3vl_precision.rs against the f32 reference.
    for (i, p) in ep["prefixes"].as_array().expect("prefixes").iter().enumerate() {
        let lp = got["log_probs"][i].as_f64().expect("log prob");
        let want = p["log_prob_true"].as_f64().expect("reference");
        assert!(
            (lp - want).abs() < 0.25,
            "prefix {i}: bf16 {lp} vs f32 reference {want}"
        );
    }
}

#[test]
fn bad_inputs_exit_nonzero_with_a_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = fixtures().join("qwen3vl-tiny");
    let frames = frames_dir("square256", tmp.path());
    let run = |model: &Path, frames: &Path, extra: &[&str]| {
        let out = score(model, frames, "push", extra);
        assert!(!out.status.success(), "expected failure with {extra:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // Missing model directory.
    let err = run(&tmp.path().join("nope"), &frames, &[]);
    assert!(err.contains("does not exist"), "{err}");
    // Corrupt weights.
    let bad = tmp.path().join("bad-model");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::copy(model.join("config.json"), bad.join("config.json")).expect("copy");
    std::fs::write(bad.join("model.safetensors"), b"not safetensors").expect("write");
    let err = run(&bad, &frames, &[]);
    assert!(err.contains("cannot load weights"), "{err}");
    // Unsupported architecture.
    let text = std::fs::read_to_string(model.join("config.json")).expect("read");
    std::fs::write(bad.join("config.json"), text.replace("\"qwen3_vl\"", "\"llava\"")).expect("write");
    let err = run(&bad, &frames, &[]);
    assert!(err.contains("unsupported architecture"), "{err}");
    // Empty frames folder.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let err = run(&model, &empty, &[]);
    assert!(err.contains("no .png"), "{err}");
    // Too long for the token limit.
    let err = run(&model, &frames, &["--max-tokens", "50"]);
    assert!(err.contains("longer than the limit of 50"), "{err}");
    // A GPU in a CPU-only build says how to build with it; a bad device or dtype is refused by name.
    if !cfg!(feature = "cuda") {
        let err = run(&model, &frames, &["--device", "cuda:0"]);
        assert!(err.contains("--features cuda"), "{err}");
    }
    let err = run(&model, &frames, &["--device", "tpu"]);
    assert!(err.contains("unknown device"), "{err}");
    let err = run(&model, &frames, &["--dtype", "fp8"]);
    assert!(err.contains("unknown dtype"), "{err}");
    // A custom suffix that drops the instruction.
    let err = run(
        &model,
        &frames,
        &["--prompt-suffix", "Is it done? The answer is: True"],
    );
    assert!(err.contains("{instruction}"), "{err}");
}

#[test]
fn custom_prompt_text_changes_the_input_and_the_score() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = fixtures().join("qwen3vl-tiny");
    let frames = frames_dir("square256", tmp.path());
    let score = |extra: &[&str]| -> serde_json::Value {
        let out = score(&model, &frames, "push the cube", &[&["--json"], extra].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let paper = score(&[]);
    let custom = score(&[
        "--prompt-prefix",
        "The video shows a robot arm. Task: ",
        "--prompt-suffix",
        "{instruction}. Was the task completed? The answer is: True",
    ]);
    assert!(paper.get("static_voc").is_none(), "only with --static-check");
    let checked = score(&["--static-check"]);
    assert_eq!(checked["log_probs"], paper["log_probs"]);
    assert!(checked.get("static_voc").is_some(), "{checked}");
    let tokens = |v: &serde_json::Value| v["num_tokens"][0].as_u64().expect("tokens");
    assert!(
        tokens(&custom) < tokens(&paper),
        "the shorter prompt has fewer tokens"
    );
    assert_ne!(custom["log_probs"], paper["log_probs"]);
}

#[test]
fn label_writes_progress_for_every_frame_and_resumes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dataset = root.join("envs/fixtures/lerobot/so101_v30");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("progress.parquet");
    let label = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_topreward"))
            .arg("label")
            .arg(&dataset)
            .args(["--model"])
            .arg(root.join("rewards/fixtures/qwen3vl-tiny"))
            .args(["--max-frames", "4", "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = label();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let table = toprl_envs::dataset::read_progress(&out).unwrap();
    let ds = toprl_envs::dataset::LeRobotDataset::open(&dataset).unwrap();
    assert_eq!(table.progress.len(), ds.num_frames());
    assert!(table.progress.iter().all(|p| (0.0..=1.0).contains(p)));
    assert!(image::open(out.with_extension("png")).unwrap().width() > 300);
    let again = label();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success() && stdout.contains("0 episodes scored"),
        "{stdout}"
    );
}

/// Inputs checked before any frame is decoded or any model is loaded: each is refused with a message
/// about the input itself even though the model path does not exist (which would be the next error).
#[test]
fn bad_inputs_are_refused_before_the_model_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let no_model = tmp.path().join("no-model");
    let video = fixtures().join("frames/grey_ramp_10fps.mkv");
    let frames = frames_dir("square256", tmp.path());
    let not_a_folder = tmp.path().join("cache-file");
    std::fs::write(&not_a_folder, "x").unwrap();
    let cases: Vec<(&Path, &str, Vec<String>, &str)> = vec![
        // 1e9 fps over the 2 s fixture: refused from the duration, not after materialising frames.
        (
            &video,
            "push",
            vec!["--fps".into(), "1e9".into(), "--max-frames".into(), "16".into()],
            "lower the sampling fps",
        ),
        (
            &video,
            "push",
            vec!["--fps".into(), "1e9".into()],
            "lower the sampling fps",
        ),
        (&frames, "", vec![], "--instruction is empty"),
        (
            &frames,
            "push",
            vec!["--cache-dir".into(), not_a_folder.display().to_string()],
            "is a file, not a folder",
        ),
        (
            &frames,
            "push",
            vec!["--plot".into(), frames.join("frame_00.png").display().to_string()],
            "--plot",
        ),
        (
            &frames,
            "push",
            vec!["--plot".into(), tmp.path().join("x.json").display().to_string()],
            "must end in .png",
        ),
        (
            &frames,
            "push",
            vec!["--max-frames".into(), "0".into()],
            "--max-frames",
        ),
    ];
    for (input, instruction, extra, expected) in cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let out = score(&no_model, input, instruction, &extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} accepted");
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            started.elapsed().as_secs() < 20,
            "{extra:?} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(std::fs::read(&not_a_folder).unwrap(), b"x");
}

#[test]
fn voc_refuses_non_finite_values() {
    for values in [["1", "NaN", "3"], ["1", "inf", "3"]] {
        let mut args = vec!["voc", "--"];
        args.extend(values);
        let out = topreward(&args);
        assert!(!out.status.success(), "{values:?} accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("finite"));
    }
    let out = topreward(&["voc", "--", "1", "2", "3"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.000000");
}

/// `label` checks Eq. 3 parameters, the camera and the plot path before loading the model, and never
/// writes its plot over the dataset's own files.
#[test]
fn label_refuses_bad_inputs_before_the_model_loads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    // A private copy, so a wrong write could not damage the committed fixture.
    let dataset = tmp.path().join("ds");
    copy_tree(&root.join("envs/fixtures/lerobot/so101_v30"), &dataset);
    let info_before = std::fs::read(dataset.join("meta/info.json")).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--min-weight".into(),
                "5".into(),
                "--delta-max".into(),
                "1".into(),
            ],
            "min_weight (5) must be at most delta_max (1)",
        ),
        (
            vec!["--delta-max".into(), "NaN".into()],
            "delta_max must be a finite number",
        ),
        (vec!["--tau".into(), "NaN".into()], "tau must be a finite number"),
        (
            vec!["--camera".into(), "observation.images.nope".into()],
            "observation.images.nope",
        ),
        (
            vec![
                "--plot".into(),
                dataset.join("meta/info.json").display().to_string(),
            ],
            "--plot",
        ),
        (
            vec!["--max-frames".into(), "1".into()],
            "max_frames must be at least 2",
        ),
    ];
    for (extra, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_topreward"))
            .arg("label")
            .arg(&dataset)
            .arg("--model")
            .arg(tmp.path().join("no-model"))
            .args(&extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} accepted");
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(
            !err.contains("no-model") && !err.contains("panicked"),
            "{extra:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(dataset.join("meta/info.json")).unwrap(),
        info_before
    );
    assert!(!dataset.join("topreward_progress.parquet").exists());
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the fixture") {
        let entry = entry.expect("read the fixture");
        let dst = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &dst);
        } else {
            std::fs::copy(entry.path(), &dst).expect("copy the fixture");
        }
    }
}
