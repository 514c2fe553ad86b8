//! Fine-tuning the fixture SmolVLA with per-sample weights: the weights multiply each sample's
//! flow-matching loss (reward-aligned BC, TOPReward Eq. 3, and AWR use this), padded steps and padded
//! action dimensions do not count, and a zero total weight leaves the loss at zero.

use std::path::{Path, PathBuf};

use toprl_policies::cpu_device;
use toprl_policies::smolvla::finetune::{SmolVlaFinetuner, TrainSample};
use toprl_policies::smolvla::lerobot::read_f32_tensors;
use toprl_policies::smolvla::processor::{ChwImage, RawSample};

fn checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smolvla/checkpoint")
}

fn samples() -> Vec<TrainSample> {
    let obs = read_f32_tensors(&checkpoint().join("../predict_observation.safetensors")).expect("obs");
    (0..2)
        .map(|i| {
            let mut raw = RawSample {
                task: if i == 0 {
                    "grasp the cup".into()
                } else {
                    "push the green block to the left".into()
                },
                ..RawSample::default()
            };
            for (key, (shape, data)) in &obs {
                if shape.len() == 3 {
                    let image = ChwImage {
                        height: shape[1],
                        width: shape[2],
                        data: data.clone(),
                    };
                    raw.images.insert(key.clone(), image);
                } else {
                    raw.vectors
                        .insert(key.clone(), data.iter().map(|v| v + i as f32).collect());
                }
            }
            TrainSample {
                obs: raw,
                actions: (0..30).map(|k| ((k + 5 * i) % 7) as f32 * 0.3 - 1.0).collect(),
                action_is_pad: vec![false; 6],
            }
        })
        .collect()
}

fn first_loss(weights: &[f32]) -> f32 {
    let mut tuner = SmolVlaFinetuner::load(&checkpoint(), 1e-4, 11, &cpu_device()).expect("load");
    tuner.step(&samples(), weights).expect("step")
}

#[test]
fn weights_multiply_each_samples_flow_loss() {
    // Same seed: the same noise and times for every call, so the losses are linear in the weights.
    let only_first = first_loss(&[1.0, 0.0]);
    let only_second = first_loss(&[0.0, 1.0]);
    let mixed = first_loss(&[2.0, 0.5]);
    assert!(only_first > 0.0 && only_second > 0.0);
    assert!(
        (mixed - (2.0 * only_first + 0.5 * only_second)).abs() <= 1e-5 * mixed.abs().max(1.0),
        "E[w loss]: {mixed} vs {}",
        2.0 * only_first + 0.5 * only_second
    );
    assert_eq!(first_loss(&[0.0, 0.0]), 0.0);
    let err = SmolVlaFinetuner::load(&checkpoint(), 1e-4, 11, &cpu_device())
        .expect("load")
        .step(&samples(), &[1.0])
        .expect_err("one weight for two samples");
    assert!(err.to_string().contains("weights"), "{err}");
}

#[test]
fn cached_frozen_vlm_context_gives_the_same_steps_as_the_full_model() {
    // Same seed: both tuners draw the same noise and times. The cached tuner encodes each frame's
    // context once (first step) and reuses it (second step, after an update of the expert).
    let device = cpu_device();
    let mut full = SmolVlaFinetuner::load(&checkpoint(), 1e-3, 5, &device).expect("load");
    let mut cached = SmolVlaFinetuner::load(&checkpoint(), 1e-3, 5, &device).expect("load");
    let mut cache = std::collections::HashMap::new();
    let (batch, weights, frames) = (samples(), [1.0, 0.5], [7u64, 9]);
    for step in 0..2 {
        let a = full.step(&batch, &weights).expect("full step");
        let b = cached
            .step_cached(&batch, &weights, &frames, &mut cache)
            .expect("cached step");
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "step {step}: full {a} vs cached {b}"
        );
        assert_eq!(cache.len(), 2, "one context per frame");
    }
}
