//! `so101 policy predict` end to end, through the binary: native toprl checkpoints (gaussian, act, flow)
//! trained here for a few steps, and the LeRobot SmolVLA fixture folder against LeRobot 0.4.4 itself
//! (`scripts/lerobot_smolvla_predict.py` in `.venv-lerobot`: preprocessor, `predict_action_chunk` with
//! the same noise, postprocessor).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use toprl_policies::act::ActConfig;
use toprl_policies::flow::FlowConfig;
use toprl_policies::gaussian::GaussianMlpConfig;
use toprl_policies::smolvla::lerobot::write_f32_tensors;
use toprl_policies::{
    Batch, CameraImage, Normalizer, ObsBatch, Observation, Policy, PolicyConfig, TrainConfig, Trainer,
    cpu_device, load_policy,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("trainer/ has a parent")
        .to_path_buf()
}

fn smolvla_fixtures() -> PathBuf {
    repo_root().join("policies/fixtures/smolvla")
}

fn so101(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_so101"))
        .args(args)
        .output()
        .expect("so101 runs")
}

/// `so101 policy predict --policy CKPT --observation OBS --json EXTRA...`.
fn predict(ckpt: &Path, obs: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "policy",
        "predict",
        "--policy",
        ckpt.to_str().expect("utf8"),
        "--observation",
        obs.to_str().expect("utf8"),
        "--json",
    ];
    args.extend_from_slice(extra);
    so101(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn actions_of(out: &Output) -> Vec<Vec<f32>> {
    assert!(out.status.success(), "so101 failed: {}", stderr(out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    serde_json::from_value(json["actions"].clone()).expect("actions: [[f32]]")
}

/// A tensor to write: name, shape, values.
type Named<'a> = (&'a str, Vec<usize>, Vec<f32>);

fn write_tensors(path: &Path, tensors: &[Named]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                n.to_string(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    write_f32_tensors(path, &bytes).expect("write safetensors");
}

const SIDE: usize = 16;
const CHUNK: usize = 4;

/// A `[3, SIDE, SIDE]` image whose values are exact multiples of 1/255, so the CLI's conversion to RGB8
/// is lossless, and the same image as HWC bytes.
fn image(seed: usize) -> (Vec<f32>, Vec<u8>) {
    let bytes: Vec<u8> = (0..SIDE * SIDE * 3)
        .map(|i| ((i * 37 + seed * 101) % 256) as u8)
        .collect();
    let plane = SIDE * SIDE;
    let mut chw = vec![0.0; 3 * plane];
    for p in 0..plane {
        for c in 0..3 {
            chw[c * plane + p] = f32::from(bytes[p * 3 + c]) / 255.0;
        }
    }
    (chw, bytes)
}

/// Train `cfg` for a few steps on a fixed random batch and save it.
fn trained_checkpoint(cfg: PolicyConfig, dir: &Path) {
    let device = cpu_device();
    let n = 4;
    let states: Vec<f32> = (0..n * 6).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
    let actions: Vec<f32> = (0..n * CHUNK * 6).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let normalizer = Normalizer::fit(&states, 6, &actions, 6).expect("fit");
    let mut obs = ObsBatch::new(states, 6).expect("obs");
    if cfg.cameras() > 0 {
        let rgb: Vec<u8> = (0..n)
            .flat_map(|s| [image(s).1, image(s + 9).1].concat())
            .collect();
        obs = obs.with_images(rgb, 2, SIDE, SIDE).expect("images");
    }
    obs = obs
        .with_instructions(vec!["pick the cube".into(); n])
        .expect("text");
    let batch = Batch::new(obs, actions, CHUNK, 6).expect("batch");
    let mut trainer = Trainer::new(cfg, normalizer, TrainConfig::default(), &device).expect("trainer");
    for _ in 0..3 {
        trainer.step(&batch, &[1.0; 4]).expect("step");
    }
    trainer.save(dir).expect("save");
}

#[test]
fn predicts_native_checkpoints_as_the_library_does() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (front, front_rgb) = image(1);
    let (wrist, wrist_rgb) = image(2);
    let state: Vec<f32> = vec![3.0, -2.0, 10.0, 0.5, -7.0, 40.0];
    let obs_path = tmp.path().join("obs.safetensors");
    write_tensors(
        &obs_path,
        &[
            ("observation.state", vec![6], state.clone()),
            ("observation.images.front", vec![3, SIDE, SIDE], front),
            ("observation.images.wrist", vec![3, SIDE, SIDE], wrist),
        ],
    );
    let state_only = tmp.path().join("state.safetensors");
    write_tensors(&state_only, &[("observation.state", vec![6], state.clone())]);
    let kinds: [(&str, PolicyConfig); 3] = [
        (
            "gaussian",
            PolicyConfig::Gaussian(GaussianMlpConfig::new(6, 6).with_chunk_size(CHUNK)),
        ),
        (
            "act",
            PolicyConfig::Act(ActConfig::new(6, 6).with_cameras(2).with_chunk_size(CHUNK)),
        ),
        (
            "flow",
            PolicyConfig::Flow(FlowConfig::new(6, 6).with_cameras(2).with_chunk_size(CHUNK)),
        ),
    ];
    for (name, cfg) in kinds {
        let images = cfg.cameras() > 0;
        let dir = tmp.path().join(name);
        trained_checkpoint(cfg, &dir);
        let obs_arg = if images { &obs_path } else { &state_only };
        let out = predict(&dir, obs_arg, &["--task", "pick the cube", "--seed", "5"]);
        let got = actions_of(&out);
        let mut policy = load_policy(&dir, &cpu_device()).expect("load").with_seed(5);
        let observation = Observation {
            state: state.clone(),
            images: if images {
                vec![
                    CameraImage {
                        key: "observation.images.front".into(),
                        height: SIDE,
                        width: SIDE,
                        rgb: front_rgb.clone(),
                    },
                    CameraImage {
                        key: "observation.images.wrist".into(),
                        height: SIDE,
                        width: SIDE,
                        rgb: wrist_rgb.clone(),
                    },
                ]
            } else {
                vec![]
            },
            instruction: "pick the cube".into(),
        };
        let want = policy.act(&observation).expect("act");
        assert_eq!((got.len(), got[0].len()), (CHUNK, 6), "{name}: chunk shape");
        assert_eq!(got, want, "{name}: CLI prediction equals the library's");
    }
    // Bad input: a missing state, an image of the wrong shape, a camera the policy does not read,
    // --noise on a native checkpoint. Each exits non-zero naming the tensor.
    let flow = tmp.path().join("flow");
    let bad = tmp.path().join("bad.safetensors");
    let bad_arg = bad.to_str().expect("utf8");
    let cases: Vec<(Vec<Named>, Vec<&str>, &str)> = vec![
        (
            vec![("observation.images.front", vec![3, SIDE, SIDE], image(1).0)],
            vec![],
            "observation.state",
        ),
        (
            vec![
                ("observation.state", vec![6], state.clone()),
                ("observation.images.front", vec![SIDE, SIDE, 3], image(1).0),
                ("observation.images.wrist", vec![3, SIDE, SIDE], image(2).0),
            ],
            vec![],
            "expected [3, H, W]",
        ),
        (
            vec![
                ("observation.state", vec![6], state.clone()),
                ("observation.images.front", vec![3, SIDE, SIDE], image(1).0),
                ("observation.images.side", vec![3, SIDE, SIDE], image(2).0),
            ],
            vec![],
            "observation.images.side",
        ),
        (
            vec![("observation.state", vec![6], state.clone())],
            vec!["--noise", bad_arg],
            "--noise",
        ),
    ];
    for (tensors, extra, expected) in cases {
        write_tensors(&bad, &tensors);
        let out = predict(&flow, &bad, &extra);
        assert!(!out.status.success(), "accepted: {expected}");
        assert!(
            stderr(&out).contains(expected),
            "expected `{expected}` in: {}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "no partial output on stdout");
    }
}

/// The LeRobot venv's python; a missing venv fails the test with the command that installs it.
pub fn lerobot_python() -> PathBuf {
    let python = repo_root().join(".venv-lerobot/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh (it installs lerobot==0.4.4 into .venv-lerobot)",
        python.display()
    );
    python
}

/// LeRobot 0.4.4's postprocessed chunk for `policy` on one observation, from the committed script.
/// Runs in the fixtures folder so the checkpoint's relative `vlm_model_name` ("vlm") resolves as it
/// does for LeRobot.
pub fn lerobot_predict(policy: &Path, observation: &Path, noise: &Path, task: &str) -> Vec<Vec<f32>> {
    let out = Command::new(lerobot_python())
        .current_dir(smolvla_fixtures())
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .arg(repo_root().join("scripts/lerobot_smolvla_predict.py"))
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args(["--observation".as_ref(), observation.as_os_str()])
        .args(["--noise".as_ref(), noise.as_os_str()])
        .args(["--task", task])
        .output()
        .expect("python runs");
    actions_of(&out)
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "chunk lengths differ");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "action sizes differ");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// f32 on both sides; the chunk is in dataset units (std up to ~1.5), after 10 Euler steps.
const SMOLVLA_TOL: f32 = 1e-4;

#[test]
fn predicts_the_smolvla_fixture_as_lerobot_does() {
    let fx = smolvla_fixtures();
    let task: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.join("predict.json")).expect("predict.json")).expect("json");
    let task = task["task"].as_str().expect("task").to_string();
    let (ckpt, obs, noise) = (
        fx.join("checkpoint"),
        fx.join("predict_observation.safetensors"),
        fx.join("predict_noise.safetensors"),
    );
    let out = predict(
        &ckpt,
        &obs,
        &["--noise", noise.to_str().expect("utf8"), "--task", &task],
    );
    let got = actions_of(&out);
    let want = lerobot_predict(&ckpt, &obs, &noise, &task);
    assert_eq!((got.len(), got[0].len()), (6, 5), "chunk_size x action_dim");
    let err = max_abs_diff(&got, &want);
    assert!(
        err <= SMOLVLA_TOL,
        "max |toprl - LeRobot| = {err} > {SMOLVLA_TOL}\ntoprl {got:?}\nlerobot {want:?}"
    );

    // Bad input: no task, a camera the config does not list, a missing camera, noise of the wrong shape.
    let tmp = tempfile::tempdir().expect("tmp");
    let bad = tmp.path().join("bad.safetensors");
    let img = |h: usize, w: usize| vec![0.5; 3 * h * w];
    let state = vec![0.1; 6];
    let run = |obs: &Path, extra: &[&str]| predict(&ckpt, obs, extra);
    let out = run(&obs, &[]);
    assert!(
        !out.status.success() && stderr(&out).contains("--task"),
        "{}",
        stderr(&out)
    );
    write_tensors(
        &bad,
        &[
            ("observation.state", vec![6], state.clone()),
            ("observation.images.front", vec![3, 8, 8], img(8, 8)),
            ("observation.images.top", vec![3, 8, 8], img(8, 8)),
        ],
    );
    let out = run(&bad, &["--task", "x"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("observation.images.top") && err.contains("config.json"),
        "{err}"
    );
    write_tensors(
        &bad,
        &[
            ("observation.state", vec![6], state.clone()),
            ("observation.images.front", vec![3, 8, 8], img(8, 8)),
        ],
    );
    let out = run(&bad, &["--task", "x"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("input_features.observation.images.wrist"),
        "{err}"
    );
    let bad_noise = tmp.path().join("noise.safetensors");
    write_tensors(&bad_noise, &[("noise", vec![6, 5], vec![0.0; 30])]);
    let out = run(
        &obs,
        &["--task", "x", "--noise", bad_noise.to_str().expect("utf8")],
    );
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("`noise`") && err.contains("[6, 32]"),
        "{err}"
    );
    // A folder of a LeRobot policy type toprl does not run.
    let act_dir = tmp.path().join("diffusion");
    std::fs::create_dir_all(&act_dir).expect("mkdir");
    std::fs::write(
        act_dir.join("config.json"),
        r#"{"type": "diffusion", "horizon": 16}"#,
    )
    .expect("write");
    let out = so101(&[
        "policy",
        "predict",
        "--policy",
        act_dir.to_str().expect("utf8"),
        "--observation",
        obs.to_str().expect("utf8"),
        "--task",
        "x",
    ]);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("\"diffusion\"")
            && err.contains("\"smolvla\"")
            && err.contains("\"act\""),
        "{err}"
    );
}

/// A tiny random LeRobot ACT folder made by LeRobot 0.4.4 itself (the policies crate's fixture script)
/// in a temporary folder, with its observations and LeRobot's own outputs.
fn lerobot_act_fixtures(dir: &Path) {
    let out = Command::new(lerobot_python())
        .env("HF_HUB_OFFLINE", "1")
        .arg(repo_root().join("policies/tests/fixtures/make_lerobot_act.py"))
        .arg("make")
        .arg(dir)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "make_lerobot_act.py failed: {}",
        stderr(&out)
    );
}

#[test]
fn predicts_a_lerobot_act_folder_as_lerobot_does() {
    let tmp = tempfile::tempdir().expect("tmp");
    lerobot_act_fixtures(tmp.path());
    let ckpt = tmp.path().join("checkpoint");
    // Step 0's raw observation, under its LeRobot feature names.
    let all =
        toprl_policies::smolvla::lerobot::read_f32_tensors(&tmp.path().join("observations.safetensors"))
            .expect("observations");
    let step0: Vec<Named> = all
        .iter()
        .filter_map(|(k, (s, v))| k.strip_prefix("step0.").map(|name| (name, s.clone(), v.clone())))
        .collect();
    assert_eq!(step0.len(), 3, "state and two cameras");
    let obs = tmp.path().join("obs.safetensors");
    write_tensors(&obs, &step0);
    let run = |obs: &Path, extra: &[&str]| predict(&ckpt, obs, extra);
    let got = actions_of(&run(&obs, &[]));
    let expected =
        toprl_policies::smolvla::lerobot::read_f32_tensors(&tmp.path().join("expected.safetensors"))
            .expect("expected");
    let (shape, want) = &expected["chunk"];
    assert_eq!(shape, &vec![5, 6], "chunk_size x action_dim");
    let want: Vec<Vec<f32>> = want.chunks(6).map(<[f32]>::to_vec).collect();
    let err = max_abs_diff(&got, &want);
    // Dataset units with std up to 15; the library test measures 7e-6.
    assert!(
        err <= 1e-4,
        "max |toprl - LeRobot| = {err}\ntoprl {got:?}\nlerobot {want:?}"
    );

    // Bad input: --noise, a missing camera, a wrong state size.
    let out = run(&obs, &["--noise", obs.to_str().expect("utf8")]);
    assert!(
        !out.status.success() && stderr(&out).contains("--noise"),
        "{}",
        stderr(&out)
    );
    let bad = tmp.path().join("bad.safetensors");
    let no_wrist: Vec<Named> = step0
        .iter()
        .filter(|t| !t.0.ends_with("wrist"))
        .cloned()
        .collect();
    write_tensors(&bad, &no_wrist);
    let out = run(&bad, &[]);
    assert!(
        !out.status.success() && stderr(&out).contains("observation.images"),
        "{}",
        stderr(&out)
    );
    let mut short_state = step0.clone();
    for t in &mut short_state {
        if t.0 == "observation.state" {
            t.1 = vec![4];
            t.2.truncate(4);
        }
    }
    write_tensors(&bad, &short_state);
    let out = run(&bad, &[]);
    assert!(
        !out.status.success() && stderr(&out).contains("observation.state"),
        "{}",
        stderr(&out)
    );
}
