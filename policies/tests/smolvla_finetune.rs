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

/// LeRobot 0.4.4's `CosineDecayWithWarmupSchedulerConfig.build(optimizer, run)` stepped as
/// `lerobot-train` steps it (optimizer.step, then scheduler.step): the lr of each listed step.
const LEROBOT_SCHEDULE: &str = r#"
import json, sys, torch
from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig
out = []
for c in json.loads(sys.argv[1]):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=c["peak"])
    sched = CosineDecayWithWarmupSchedulerConfig(
        num_warmup_steps=c["warmup"], num_decay_steps=c["decay"], peak_lr=c["peak"], decay_lr=c["decay_lr"]
    ).build(opt, c["run"])
    lrs = {}
    for k in range(max(c["at"]) + 1):
        lrs[k] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    out.append([lrs[k] for k in c["at"]])
print(json.dumps(out))
"#;

#[test]
fn learning_rate_schedule_is_lerobots_cosine_decay_with_warmup() {
    use toprl_policies::smolvla::SmolVlaConfig;
    use toprl_policies::smolvla::train::CosineDecayWithWarmup;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root");
    let python = root.join(".venv-lerobot/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `scripts/setup.sh` (it installs lerobot==0.4.4 into .venv-lerobot)",
        python.display()
    );
    let cfg = SmolVlaConfig::from_file(root.join("policies/fixtures/smolvla/so101_tiny/config.json"))
        .expect("fixture config");
    // (warmup, decay, peak, decay_lr, run steps, steps to compare): SmolVLA's preset on runs far
    // shorter than its 30000 decay steps (warmup scaled to 0 and to 33), one longer (no scaling, the
    // lr stays at decay_lr past the decay), and a small schedule compared at every step.
    let every: Vec<usize> = (0..=120).collect();
    let preset = (
        cfg.scheduler_warmup_steps,
        cfg.scheduler_decay_steps,
        cfg.optimizer_lr,
        cfg.scheduler_decay_lr,
    );
    let cases = [
        (preset, 3, vec![0, 1, 2, 3]),
        (preset, 20, vec![0, 5, 19, 20, 25]),
        (preset, 1000, vec![0, 1, 16, 32, 33, 34, 500, 999, 1000]),
        (
            preset,
            40_000,
            vec![0, 1, 500, 999, 1000, 1001, 15_000, 29_999, 30_000, 39_999],
        ),
        ((10, 100, 1e-3, 1e-5), 100, every.clone()),
        ((7, 50, 3e-4, 0.0), 120, every),
    ];
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|((warmup, decay, peak, decay_lr), run, at)| {
            serde_json::json!({"warmup": warmup, "decay": decay, "peak": peak, "decay_lr": decay_lr, "run": run, "at": at})
        })
        .collect();
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(LEROBOT_SCHEDULE)
        .arg(serde_json::Value::Array(json).to_string())
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want: Vec<Vec<f64>> = serde_json::from_slice(&out.stdout).expect("json");
    for (((warmup, decay, peak, decay_lr), run, at), want) in cases.iter().zip(&want) {
        let schedule = CosineDecayWithWarmup::for_run(*peak, *decay_lr, *warmup, *decay, *run);
        for (&step, &lr) in at.iter().zip(want) {
            let got = schedule.lr(step);
            assert!(
                (got - lr).abs() <= 1e-15 * peak,
                "warmup {warmup} decay {decay} run {run} step {step}: toprl {got}, LeRobot {lr}"
            );
        }
    }
    // SmolVLA's preset read from the checkpoint config is the same schedule.
    assert_eq!(
        CosineDecayWithWarmup::from_config(&cfg, None, 20),
        CosineDecayWithWarmup::for_run(1e-4, 2.5e-6, 1000, 30_000, 20)
    );
}
