//! The LibTorch backend against the pure-Rust one (issue 13 item 1): the same policy, seed and batches
//! trained a few steps on `flex` and on `tch` (LibTorch's CPU) agree within a stated tolerance, in
//! losses and in predictions. Built only with `--features tch` (scripts/test.sh runs it against
//! .venv-lerobot's PyTorch).
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use common::*;
use toprl_policies::gaussian::GaussianLoss;
use toprl_policies::{Backend, DeviceKind, PolicyConfig, TrainConfig, Trainer, cpu_device, device};

/// Losses and predictions may differ by this much relative to their size: both backends compute in
/// f32, but with different kernels (summation order in matmul and convolution), so rounding differs by
/// a few ulps per operation and can grow over the steps. Measured: at most 2.5e-7 relative after 4
/// steps of each policy (the test prints the differences).
const REL_TOL: f32 = 1e-5;

/// Losses of `steps` optimiser steps, then the trained policy's predictions on `probe`.
fn train(cfg: &PolicyConfig, backend: Backend, steps: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let batches: Vec<_> = (0..steps as u64).map(|i| demos(4, 20 + i)).collect();
    let probe = demos(3, 99);
    let train = TrainConfig {
        seed: 17,
        ..TrainConfig::default()
    };
    let dev = device(backend, DeviceKind::Cpu).unwrap();
    let mut t = Trainer::new(cfg.clone(), normalizer(&batches[0]), train, &dev).unwrap();
    let before = t.policy().with_seed(3).act_batch(&probe.obs).unwrap();
    let w: Vec<f32> = (0..4).map(|i| 0.5 + 0.25 * i as f32).collect();
    let losses = batches.iter().map(|b| t.step(b, &w).unwrap()).collect();
    let after = t.policy().with_seed(3).act_batch(&probe.obs).unwrap();
    (before, losses, after)
}

fn assert_close(name: &str, what: &str, flex: &[f32], tch: &[f32]) {
    assert_eq!(flex.len(), tch.len(), "{name} {what}");
    let scale = flex.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
    let diff = max_abs_diff(flex, tch);
    eprintln!("{name} {what}: max |flex - tch| = {diff:.3e} (scale {scale:.3e})");
    assert!(
        diff <= REL_TOL * scale,
        "{name} {what}: flex and tch differ by {diff} (> {REL_TOL} x {scale})\nflex {flex:?}\ntch  {tch:?}"
    );
}

#[test]
fn flex_and_tch_train_the_same_policy_alike() {
    // Dropout off: its masks come from each backend's own RNG, so they differ between backends by design
    // (resume within one backend is exact, see policies.rs). The flow policy's noise comes from a seeded
    // host RNG, so it is compared too.
    let cases = [
        ("gaussian", gaussian(GaussianLoss::Nll)),
        ("act", act()),
        ("flow", without_dropout(flow())),
    ];
    for (name, cfg) in cases {
        let (flex_before, flex_losses, flex_after) = train(&cfg, Backend::Flex, 4);
        let (tch_before, tch_losses, tch_after) = train(&cfg, Backend::Tch, 4);
        // One seed gives one set of initial weights on every backend (drawn on flex, then moved).
        assert_close(name, "initial predictions", &flex_before, &tch_before);
        assert_close(name, "losses", &flex_losses, &tch_losses);
        assert_close(name, "trained predictions", &flex_after, &tch_after);
        // Control: the steps changed the policy far beyond the tolerance, so agreement is not vacuous.
        assert!(
            max_abs_diff(&flex_before, &flex_after) > 100.0 * REL_TOL,
            "{name}"
        );
    }
}

#[test]
fn a_flex_checkpoint_runs_on_tch_and_back() {
    let batch = demos(3, 5);
    let dir = tempfile::tempdir().unwrap();
    let train = TrainConfig {
        seed: 2,
        ..TrainConfig::default()
    };
    let tch = device(Backend::Tch, DeviceKind::Cpu).unwrap();
    for (name, cfg) in all() {
        let mut t = Trainer::new(cfg, normalizer(&batch), train.clone(), &cpu_device()).unwrap();
        t.step(&batch, &[1.0; 3]).unwrap();
        let path = dir.path().join(name);
        t.save(&path).unwrap();
        let on_flex = toprl_policies::load_policy(&path, &cpu_device())
            .unwrap()
            .with_seed(1)
            .act_batch(&batch.obs)
            .unwrap();
        let on_tch = toprl_policies::load_policy(&path, &tch)
            .unwrap()
            .with_seed(1)
            .act_batch(&batch.obs)
            .unwrap();
        assert_close(name, "loaded predictions", &on_flex, &on_tch);
        // Continue training on tch and save: flex reads what tch wrote.
        let mut resumed = Trainer::resume(&path, None, train.clone(), &tch).unwrap();
        resumed.step(&batch, &[1.0; 3]).unwrap();
        resumed.save(&path).unwrap();
        let back = toprl_policies::load_policy(&path, &cpu_device()).unwrap();
        assert_eq!(back.meta().train_steps, 2, "{name}");
    }
}

fn without_dropout(cfg: PolicyConfig) -> PolicyConfig {
    match cfg {
        PolicyConfig::Flow(c) => PolicyConfig::Flow(c.with_dropout(0.0)),
        PolicyConfig::Act(c) => PolicyConfig::Act(c.with_dropout(0.0)),
        other => other,
    }
}

#[test]
fn tch_cpu_is_available_and_a_missing_gpu_is_an_error() {
    assert!(device(Backend::Tch, DeviceKind::Cpu).is_ok());
    // No machine has 1000 GPUs: asking for one must be an error naming it, not burn-tch's panic.
    let err = device(Backend::Tch, DeviceKind::Cuda(1000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cuda:1000"), "{err}");
    // The lane builds against .venv-lerobot's PyTorch, PyPI's CUDA wheel on Linux (scripts/setup.sh): its
    // CUDA library must load (what a GPU machine needs), leaving only the GPU missing here.
    #[cfg(target_os = "linux")]
    assert!(err.contains("libtorch_cuda.so is loaded"), "{err}");
}
