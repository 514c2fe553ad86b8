//! The LeRobot round trip: toprl fine-tunes the fixture SmolVLA for a few weighted steps with new
//! dataset statistics, saves it in LeRobot's layout, and LeRobot 0.4.4 (`SmolVLAPolicy.from_pretrained`
//! plus its saved processors, offline, `scripts/lerobot_smolvla_predict.py`) loads it and predicts the
//! same action chunk as toprl for the same observation and noise. Needs `.venv-lerobot` (made by
//! `scripts/setup.sh`); without it the test fails saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use toprl_policies::cpu_device;
use toprl_policies::smolvla::finetune::{SmolVlaFinetuner, TrainSample};
use toprl_policies::smolvla::lerobot::{Stats, read_f32_tensors, read_stats};
use toprl_policies::smolvla::policy::SmolVlaPolicy;
use toprl_policies::smolvla::processor::{ChwImage, RawSample};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("policies/ has a parent")
        .to_path_buf()
}

fn fixtures() -> PathBuf {
    repo_root().join("policies/fixtures/smolvla")
}

fn lerobot_python() -> PathBuf {
    let python = repo_root().join(".venv-lerobot/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh (it installs lerobot==0.4.4 into .venv-lerobot)",
        python.display()
    );
    python
}

/// The fixture's raw observation as a [`RawSample`].
fn observation(task: &str) -> RawSample {
    let tensors = read_f32_tensors(&fixtures().join("predict_observation.safetensors")).expect("obs");
    let mut sample = RawSample {
        task: task.to_string(),
        ..RawSample::default()
    };
    for (key, (shape, data)) in tensors {
        if shape.len() == 3 {
            sample.images.insert(
                key,
                ChwImage {
                    height: shape[1],
                    width: shape[2],
                    data,
                },
            );
        } else {
            sample.vectors.insert(key, data);
        }
    }
    sample
}

fn training_samples(task: &str) -> Vec<TrainSample> {
    let base = observation(task);
    (0..2)
        .map(|i| {
            let mut obs = base.clone();
            for v in obs.vectors.values_mut() {
                v.iter_mut()
                    .enumerate()
                    .for_each(|(j, x)| *x += 0.3 * (i + j) as f32);
            }
            TrainSample {
                obs,
                actions: (0..6 * 5)
                    .map(|k| ((k * 7 + i * 3) % 11) as f32 * 0.4 - 2.0)
                    .collect(),
                // The second sample's last step lies past its episode end.
                action_is_pad: (0..6).map(|t| i == 1 && t == 5).collect(),
            }
        })
        .collect()
}

#[test]
fn lerobot_loads_a_toprl_finetuned_smolvla_and_predicts_the_same_chunk() {
    let python = lerobot_python();
    let task = "push the green block to the left";
    let ckpt = fixtures().join("checkpoint");
    let mut tuner = SmolVlaFinetuner::load(&ckpt, 1e-3, 7, &cpu_device()).expect("load for training");
    let new_stats: Stats = BTreeMap::from([
        (
            "observation.state".to_string(),
            BTreeMap::from([
                ("mean".to_string(), vec![0.1, -0.2, 0.3, 0.0, 0.5, -0.6]),
                ("std".to_string(), vec![1.5, 0.7, 1.1, 0.9, 2.0, 1.3]),
            ]),
        ),
        (
            "action".to_string(),
            BTreeMap::from([
                ("mean".to_string(), vec![0.2, 0.0, -0.4, 0.6, -0.1]),
                ("std".to_string(), vec![0.8, 1.2, 1.0, 0.5, 1.7]),
            ]),
        ),
    ]);
    tuner.replace_stats(&new_stats);
    let samples = training_samples(task);
    let first = tuner.step(&samples, &[1.0, 0.25]).expect("step");
    let second = tuner.step(&samples, &[1.0, 0.25]).expect("step");
    assert!(first.is_finite() && second.is_finite());
    let tmp = tempfile::tempdir().expect("tmp");
    let saved = tmp.path().join("finetuned");
    tuner.save(&saved).expect("save");

    // The saved folder is LeRobot's layout with the new statistics and changed weights.
    let stats = read_stats(&saved.join("policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
        .expect("stats");
    assert_eq!(stats["action"]["std"], new_stats["action"]["std"]);
    let before = read_f32_tensors(&ckpt.join("model.safetensors")).expect("weights");
    let after = read_f32_tensors(&saved.join("model.safetensors")).expect("weights");
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "same tensor names"
    );
    let name = "model.action_out_proj.weight";
    assert_ne!(before[name].1, after[name].1, "the expert was trained");
    let frozen = "model.vlm_with_expert.vlm.model.vision_model.encoder.layers.0.mlp.fc1.weight";
    assert_eq!(
        before[frozen].1, after[frozen].1,
        "the frozen vision encoder is unchanged"
    );

    // toprl's prediction from the saved folder, and LeRobot's.
    let noise_path = fixtures().join("predict_noise.safetensors");
    let noise = read_f32_tensors(&noise_path).expect("noise")["noise"].1.clone();
    let mut policy = SmolVlaPolicy::load(&saved, &cpu_device()).expect("toprl reads its own save");
    let ours = policy
        .predict(&[observation(task)], Some(&noise), 0)
        .expect("predict")
        .remove(0);
    let out = Command::new(python)
        .current_dir(tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .arg(repo_root().join("scripts/lerobot_smolvla_predict.py"))
        .arg("--policy")
        .arg(&saved)
        .arg("--observation")
        .arg(fixtures().join("predict_observation.safetensors"))
        .arg("--noise")
        .arg(&noise_path)
        .args(["--task", task])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "LeRobot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let theirs: Vec<Vec<f32>> = serde_json::from_value(json["actions"].clone()).expect("actions");
    assert_eq!((theirs.len(), theirs[0].len()), (6, 5));
    let err = ours
        .iter()
        .zip(&theirs)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max);
    // f32 on both sides after 10 Euler steps; un-normalised with std up to 1.7.
    assert!(
        err <= 1e-4,
        "max |toprl - LeRobot| = {err}\ntoprl {ours:?}\nlerobot {theirs:?}"
    );
}
