//! Behaviour of the three policies and the value function on tiny networks (fast in debug builds), on
//! flex, and on LibTorch with `--features tch` (see `common::test_device`).
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use common::*;
use toprl_policies::gaussian::GaussianLoss;
use toprl_policies::value::ValueConfig;
use toprl_policies::{
    Batch, CameraImage, Observation, Policy, PolicyError, PolicyKind, TrainConfig, Trainer, ValueBatch,
    ValueTrainer, awr_weights, load_policy,
};

fn trainer(cfg: toprl_policies::PolicyConfig, batch: &Batch, seed: u64) -> Trainer {
    let train = TrainConfig {
        seed,
        ..TrainConfig::default()
    };
    Trainer::new(cfg, normalizer(batch), train, &test_device()).unwrap()
}

#[test]
fn unit_weights_equal_the_unweighted_loss() {
    let batch = demos(5, 0);
    let ones = vec![1.0; batch.len()];
    for (name, cfg) in all() {
        let t = trainer(cfg, &batch, 3);
        let weighted = t.loss(&batch, Some(&ones), 11).unwrap();
        let plain = t.loss(&batch, None, 11).unwrap();
        let per = t.per_sample_losses(&batch, 11).unwrap();
        let mean = per.iter().sum::<f32>() / per.len() as f32;
        assert!(plain.is_finite() && plain != 0.0, "{name}: {plain}");
        assert!(
            (weighted - plain).abs() <= 1e-6 * plain.abs(),
            "{name}: {weighted} vs {plain}"
        );
        assert!(
            (mean - plain).abs() <= 1e-5 * plain.abs(),
            "{name}: {mean} vs {plain}"
        );
        // A non-uniform weighting is E[w * loss], not a renormalised average.
        let w: Vec<f32> = (0..batch.len()).map(|i| i as f32 * 0.5).collect();
        let expect = per.iter().zip(&w).map(|(l, w)| l * w).sum::<f32>() / per.len() as f32;
        let got = t.loss(&batch, Some(&w), 11).unwrap();
        assert!(
            (got - expect).abs() <= 1e-5 * expect.abs(),
            "{name}: {got} vs {expect}"
        );
    }
}

#[test]
fn zero_weight_removes_a_sample_from_the_gradient() {
    let batch = demos(4, 0);
    let mut changed = batch.clone();
    let last = changed.actions.len() - CHUNK * ACTION;
    for a in &mut changed.actions[last..] {
        *a += 25.0;
    }
    let probe = demos(3, 9);
    for (name, cfg) in all() {
        let run = |b: &Batch, w: &[f32]| {
            let mut t = trainer(cfg.clone(), &batch, 5);
            let losses: Vec<f32> = (0..3).map(|_| t.step(b, w).unwrap()).collect();
            let out = t.policy().with_seed(1).act_batch(&probe.obs).unwrap();
            (losses, out)
        };
        let zero_last = [1.0, 1.0, 1.0, 0.0];
        let (l1, o1) = run(&batch, &zero_last);
        let (l2, o2) = run(&changed, &zero_last);
        assert_eq!(
            l1, l2,
            "{name}: losses differ although the changed sample has weight 0"
        );
        assert_eq!(
            o1, o2,
            "{name}: weights differ although the changed sample has weight 0"
        );
        let (_, o3) = run(&changed, &[1.0; 4]);
        assert!(
            max_abs_diff(&o1, &o3) > 0.0,
            "{name}: control: the changed sample must matter at weight 1"
        );
    }
}

/// Train on a handful of demonstrations and return (first loss, last loss, max action error / std).
fn overfit(cfg: toprl_policies::PolicyConfig, steps: usize, lr: f64) -> (f32, f32, f32) {
    let batch = demos(4, 1);
    let norm = normalizer(&batch);
    let train = TrainConfig {
        lr,
        seed: 1,
        weight_decay: 0.0,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(cfg, norm.clone(), train, &test_device()).unwrap();
    let w = vec![1.0; batch.len()];
    let first = t.step(&batch, &w).unwrap();
    let mut last = first;
    for _ in 1..steps {
        last = t.step(&batch, &w).unwrap();
    }
    let pred = t.policy().with_seed(4).act_batch(&batch.obs).unwrap();
    let err = pred
        .iter()
        .zip(&batch.actions)
        .enumerate()
        .map(|(i, (p, a))| (p - a).abs() / norm.action_std[i % ACTION])
        .fold(0.0, f32::max);
    eprintln!("overfit: loss {first} -> {last}, max action error {err} std");
    (first, last, err)
}

#[test]
fn gaussian_mlp_overfits_demos() {
    let (first, last, err) = overfit(gaussian(GaussianLoss::Mse), 200, 3e-3);
    assert!(last < first / 50.0, "mse {first} -> {last}");
    assert!(err < 0.1, "max error {err} std");
    // NLL: the loss is unbounded below; the mean must still reproduce the demos.
    let (first, last, err) = overfit(gaussian(GaussianLoss::Nll), 600, 1e-2);
    assert!(last < first - 2.0, "nll {first} -> {last}");
    assert!(err < 0.1, "max error {err} std");
}

#[test]
fn act_overfits_demos() {
    let (first, last, err) = overfit(act(), 300, 1e-3);
    assert!(last < first / 20.0, "l1 {first} -> {last}");
    assert!(err < 0.1, "max error {err} std");
}

#[test]
fn flow_overfits_demos() {
    let (first, last, err) = overfit(flow(), 1500, 1e-3);
    assert!(last < first / 10.0, "flow matching {first} -> {last}");
    assert!(err < 0.35, "max error {err} std");
}

#[test]
fn save_load_gives_identical_outputs_and_resumes() {
    let batch = demos(3, 2);
    let dir = tempfile::tempdir().unwrap();
    for (name, cfg) in all() {
        let mut t = trainer(cfg, &batch, 2);
        let w = vec![1.0; batch.len()];
        for _ in 0..3 {
            t.step(&batch, &w).unwrap();
        }
        let path = dir.path().join(name);
        t.save(&path).unwrap();
        // Saving again replaces the checkpoint in place.
        t.save(&path).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary directories left behind");
        let before = t.policy().with_seed(9).act_batch(&batch.obs).unwrap();
        let loaded = load_policy(&path, &test_device()).unwrap();
        assert_eq!(loaded.meta().train_steps, 3);
        let after = loaded.with_seed(9).act_batch(&batch.obs).unwrap();
        assert_eq!(before, after, "{name}");
        // Fine-tuning starts from the saved weights: same loss on the same noise.
        let resumed = Trainer::from_checkpoint(&path, None, TrainConfig::default(), &test_device()).unwrap();
        assert_eq!(resumed.steps(), 3);
        assert_eq!(
            resumed.loss(&batch, None, 1).unwrap(),
            t.loss(&batch, None, 1).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn ema_is_the_policy_and_resumes_exactly() {
    // With ema_decay the saved and evaluated policy is the weight average; training continues on the
    // raw weights, and a resumed trainer continues both exactly.
    let batch = demos(3, 4);
    let w = vec![1.0; batch.len()];
    let dir = tempfile::tempdir().unwrap();
    let (name, cfg) = all().into_iter().next().unwrap();
    let train = TrainConfig {
        seed: 5,
        ema_decay: Some(0.9),
        ..TrainConfig::default()
    };
    let mut original = Trainer::new(cfg.clone(), normalizer(&batch), train.clone(), &test_device()).unwrap();
    let mut plain = trainer(cfg, &batch, 5);
    for _ in 0..3 {
        let a = original.step(&batch, &w).unwrap();
        let b = plain.step(&batch, &w).unwrap();
        assert_eq!(
            a, b,
            "{name}: the average does not change the training trajectory"
        );
    }
    let average = original.policy().with_seed(1).act_batch(&batch.obs).unwrap();
    assert_ne!(
        average,
        plain.policy().with_seed(1).act_batch(&batch.obs).unwrap(),
        "{name}: the policy is the average, not the raw weights"
    );
    let path = dir.path().join(name);
    original.save(&path).unwrap();
    assert!(
        path.join(toprl_policies::checkpoint::TRAINING_WEIGHTS_FILE)
            .exists()
    );
    let loaded = load_policy(&path, &test_device()).unwrap();
    assert_eq!(average, loaded.with_seed(1).act_batch(&batch.obs).unwrap());
    let mut resumed = Trainer::resume(&path, None, train, &test_device()).unwrap();
    for _ in 0..2 {
        assert_eq!(
            original.step(&batch, &w).unwrap(),
            resumed.step(&batch, &w).unwrap(),
            "{name}: resumed raw weights differ"
        );
    }
    assert_eq!(
        original.policy().with_seed(1).act_batch(&batch.obs).unwrap(),
        resumed.policy().with_seed(1).act_batch(&batch.obs).unwrap(),
        "{name}: resumed average differs"
    );
    // A checkpoint without an average cannot resume a run that keeps one, and bad decays are refused.
    plain.save(dir.path().join("plain")).unwrap();
    let with_ema = TrainConfig {
        ema_decay: Some(0.9),
        ..TrainConfig::default()
    };
    let err = Trainer::resume(dir.path().join("plain"), None, with_ema, &test_device()).unwrap_err();
    assert!(err.to_string().contains("ema_decay"), "{err}");
    for decay in [0.0, 1.0, f64::NAN] {
        let bad = TrainConfig {
            ema_decay: Some(decay),
            ..TrainConfig::default()
        };
        let (_, cfg) = all().into_iter().next().unwrap();
        let err = Trainer::new(cfg, normalizer(&batch), bad, &test_device()).unwrap_err();
        assert!(err.to_string().contains("ema_decay"), "{decay}: {err}");
    }
}

#[test]
fn resume_restores_optimizer_moments_and_noise_stream() {
    // Three steps, save, two more steps; a trainer resumed from the save must take the same two steps,
    // bit for bit, with dropout on (issue 13 item 5: the masks follow from (seed, step)). Starting the
    // moments afresh (what `from_checkpoint` does for fine-tuning) takes different ones.
    let batch = demos(3, 4);
    let w = vec![1.0; batch.len()];
    let dir = tempfile::tempdir().unwrap();
    for (name, mut cfg) in all() {
        match &mut cfg {
            toprl_policies::PolicyConfig::Act(c) => c.dropout = 0.1,
            toprl_policies::PolicyConfig::Flow(c) => c.dropout = 0.1,
            toprl_policies::PolicyConfig::Gaussian(_) => {}
        }
        let mut original = trainer(cfg, &batch, 5);
        for _ in 0..3 {
            original.step(&batch, &w).unwrap();
        }
        let path = dir.path().join(name);
        original.save(&path).unwrap();
        let train = TrainConfig {
            seed: 5,
            ..TrainConfig::default()
        };
        let mut resumed = Trainer::resume(&path, None, train.clone(), &test_device()).unwrap();
        let mut fresh = Trainer::from_checkpoint(&path, None, train, &test_device()).unwrap();
        for _ in 0..2 {
            let a = original.step(&batch, &w).unwrap();
            let b = resumed.step(&batch, &w).unwrap();
            assert_eq!(a, b, "{name}: resumed loss differs");
            fresh.step(&batch, &w).unwrap();
        }
        let reference = original.policy().with_seed(1).act_batch(&batch.obs).unwrap();
        assert_eq!(
            reference,
            resumed.policy().with_seed(1).act_batch(&batch.obs).unwrap(),
            "{name}: resumed weights differ"
        );
        assert_ne!(
            reference,
            fresh.policy().with_seed(1).act_batch(&batch.obs).unwrap(),
            "{name}: fresh AdamW moments should change the update"
        );
    }
    // Files added with `save_with` land inside the new checkpoint; if adding them fails, the previous
    // checkpoint stays as it was and no temporary directory is left.
    let path = dir.path().join("gaussian");
    let mut t = Trainer::resume(&path, None, TrainConfig::default(), &test_device()).unwrap();
    t.save_with(&path, |tmp| {
        std::fs::write(tmp.join("progress.json"), b"{}").map_err(|source| PolicyError::Io {
            path: tmp.join("progress.json"),
            source,
        })
    })
    .unwrap();
    assert!(path.join("progress.json").exists());
    t.step(&batch, &w).unwrap();
    let failed = t.save_with(&path, |tmp| {
        Err(PolicyError::Io {
            path: tmp.to_path_buf(),
            source: std::io::Error::other("disk full"),
        })
    });
    assert!(failed.is_err());
    assert_eq!(
        load_policy(&path, &test_device()).unwrap().meta().train_steps,
        3,
        "not the failed step-4 save"
    );
    assert!(path.join("progress.json").exists());
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(leftovers, 0, "temporary directories left behind");
    // A checkpoint written without optimiser state (by `LoadedPolicy::save`) cannot be resumed.
    let only_policy = dir.path().join("only-policy");
    load_policy(dir.path().join("gaussian"), &test_device())
        .unwrap()
        .save(&only_policy)
        .unwrap();
    let err = Trainer::resume(&only_policy, None, TrainConfig::default(), &test_device()).unwrap_err();
    assert!(err.to_string().contains("optimizer.bpk"), "{err}");
}

#[test]
fn same_seed_same_weights_different_seed_different() {
    let batch = demos(3, 3);
    for (name, cfg) in all() {
        let out = |seed: u64| {
            let mut t = trainer(cfg.clone(), &batch, seed);
            t.step(&batch, &[1.0, 0.5, 2.0]).unwrap();
            t.policy().with_seed(0).act_batch(&batch.obs).unwrap()
        };
        let a = out(7);
        assert_eq!(a, out(7), "{name}");
        assert!(max_abs_diff(&a, &out(8)) > 1e-4, "{name}");
    }
    // Flow sampling is seeded: same seed same actions, reset restarts the stream.
    let t = trainer(flow(), &batch, 1);
    let mut p = t.policy().with_seed(5);
    let a = p.act_batch(&batch.obs).unwrap();
    let b = p.act_batch(&batch.obs).unwrap();
    assert_ne!(a, b);
    p.reset();
    assert_eq!(a, p.act_batch(&batch.obs).unwrap());
}

#[test]
fn policy_trait_acts_on_one_observation() {
    let batch = demos(2, 4);
    for (name, cfg) in all() {
        let t = trainer(cfg, &batch, 0);
        let mut p = t.policy();
        let images = (0..CAMS)
            .map(|c| CameraImage {
                key: format!("cam{c}"),
                height: SIDE,
                width: SIDE,
                rgb: batch.obs.images.as_ref().unwrap().rgb[c * SIDE * SIDE * 3..(c + 1) * SIDE * SIDE * 3]
                    .to_vec(),
            })
            .collect();
        let obs = Observation {
            state: batch.obs.states[..STATE].to_vec(),
            images,
            instruction: "pick up the red cube".into(),
        };
        let chunk = p.act(&obs).unwrap();
        assert_eq!(chunk.len(), CHUNK, "{name}");
        assert!(
            chunk
                .iter()
                .all(|row| row.len() == ACTION && row.iter().all(|v| v.is_finite())),
            "{name}"
        );
        // The batch path gives the same first sample.
        let flat = p.act_batch(&batch.obs).unwrap();
        if name != "flow" {
            let (one, first) = (chunk.concat(), flat[..CHUNK * ACTION].to_vec());
            if cfg!(feature = "tch") {
                // LibTorch picks its CPU kernels by batch size, and they round differently (1 ulp seen).
                let scale = one.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                assert!(
                    max_abs_diff(&one, &first) <= 1e-6 * scale,
                    "{name}: {one:?} vs {first:?}"
                );
            } else {
                assert_eq!(one, first, "{name}");
            }
        }
        let bad = Observation {
            state: vec![0.0; STATE + 1],
            ..obs
        };
        assert!(matches!(p.act(&bad), Err(PolicyError::Shape { .. })), "{name}");
    }
}

#[test]
fn bad_inputs_and_checkpoints_give_typed_errors() {
    let batch = demos(3, 5);
    let dev = test_device();
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_policy(dir.path().join("missing"), &dev),
        Err(PolicyError::Io { .. })
    ));

    let mut t = trainer(gaussian(GaussianLoss::Nll), &batch, 0);
    assert!(matches!(
        t.step(&batch, &[1.0]),
        Err(PolicyError::Shape { field: "weights", .. })
    ));
    assert!(matches!(
        t.step(&batch, &[1.0, -1.0, 1.0]),
        Err(PolicyError::Invalid { field: "weights", .. })
    ));
    assert!(matches!(
        t.step(&batch, &[1.0, f32::NAN, 1.0]),
        Err(PolicyError::Invalid { .. })
    ));
    let path = dir.path().join("ckpt");
    t.save(&path).unwrap();

    // ACT needs images.
    let mut act_t = trainer(act(), &batch, 0);
    let mut no_images = batch.clone();
    no_images.obs.images = None;
    assert!(matches!(
        act_t.step(&no_images, &[1.0; 3]),
        Err(PolicyError::MissingInput { .. })
    ));

    // Kind mismatch.
    let r = Trainer::from_checkpoint(&path, Some(PolicyKind::Act), TrainConfig::default(), &dev);
    assert!(matches!(r, Err(PolicyError::KindMismatch { .. })), "{r:?}");

    // Config that does not match the stored weights.
    let cfg_path = path.join("policy.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    v["policy"]["hidden"] = serde_json::json!([32, 64]);
    std::fs::write(&cfg_path, serde_json::to_string(&v).unwrap()).unwrap();
    let r = load_policy(&path, &dev);
    assert!(matches!(r, Err(PolicyError::Record { .. })), "{r:?}");

    // Unknown field, nested inside a Burn config.
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    v["policy"]["hiden"] = serde_json::json!([64, 64]);
    std::fs::write(&cfg_path, serde_json::to_string(&v).unwrap()).unwrap();
    let r = load_policy(&path, &dev);
    assert!(
        matches!(&r, Err(PolicyError::Config { reason, .. }) if reason.contains("hiden")),
        "{r:?}"
    );

    // Corrupt weights.
    std::fs::write(&cfg_path, &original).unwrap();
    std::fs::write(path.join("model.bpk"), b"not a burnpack").unwrap();
    assert!(matches!(
        load_policy(&path, &dev),
        Err(PolicyError::Record { .. })
    ));

    // Invalid architecture.
    let bad = toprl_policies::PolicyConfig::Act(
        toprl_policies::act::ActConfig::new(4, 3)
            .with_d_model(30)
            .with_n_heads(4),
    );
    let r = Trainer::new(bad, normalizer(&batch), TrainConfig::default(), &dev);
    assert!(
        matches!(r, Err(PolicyError::Invalid { field: "n_heads", .. })),
        "{r:?}"
    );
}

#[test]
fn value_function_fits_returns_with_weighted_mse() {
    let batch = demos(8, 6);
    let norm = normalizer(&batch);
    let targets: Vec<f32> = batch
        .obs
        .states
        .chunks(STATE)
        .map(|s| 0.02 * s[0] - 0.01 * s[1] + 0.5)
        .collect();
    let vb = ValueBatch::new(batch.obs.states.clone(), STATE, targets.clone()).unwrap();
    let train = TrainConfig {
        lr: 3e-3,
        weight_decay: 0.0,
        ..TrainConfig::default()
    };
    let mut v = ValueTrainer::new(
        ValueConfig::new(STATE).with_hidden(vec![32, 32]),
        &norm,
        train.clone(),
        &test_device(),
    )
    .unwrap();
    let first = v.step(&vb, &[1.0; 8]).unwrap();
    let mut last = first;
    for _ in 0..300 {
        last = v.step(&vb, &[1.0; 8]).unwrap();
    }
    assert!(last < first / 20.0, "{first} -> {last}");
    let pred = v.predict(&vb.states).unwrap();
    assert!(max_abs_diff(&pred, &targets) < 0.05, "{pred:?} vs {targets:?}");

    let dir = tempfile::tempdir().unwrap();
    v.save(dir.path().join("value")).unwrap();
    let mut loaded = ValueTrainer::from_checkpoint(dir.path().join("value"), train, &test_device()).unwrap();
    assert_eq!(loaded.predict(&vb.states).unwrap(), pred);
    // The optimiser moments travel with the checkpoint: the next step is the one `v` takes.
    v.step(&vb, &[1.0; 8]).unwrap();
    loaded.step(&vb, &[1.0; 8]).unwrap();
    assert_eq!(
        loaded.predict(&vb.states).unwrap(),
        v.predict(&vb.states).unwrap()
    );
    let r = ValueTrainer::from_checkpoint(dir.path().join("nope"), TrainConfig::default(), &test_device());
    assert!(matches!(r, Err(PolicyError::Io { .. })));

    // AWR weights: exp(A / beta), clipped; with zero advantages every weight is 1.
    let w = awr_weights(&[0.0, 1.0, -1.0, 10.0], 0.5, 20.0).unwrap();
    assert_eq!(w[0], 1.0);
    assert!((w[1] - 2f32.exp()).abs() < 1e-5 && (w[2] - (-2f32).exp()).abs() < 1e-6);
    assert_eq!(w[3], 20.0);
    assert!(matches!(
        awr_weights(&[0.0], 0.0, 20.0),
        Err(PolicyError::Invalid { field: "beta", .. })
    ));
    assert!(matches!(
        awr_weights(&[f32::NAN], 1.0, 20.0),
        Err(PolicyError::Invalid { .. })
    ));
}

#[test]
fn action_mask_excludes_padded_steps() {
    let batch = demos(3, 7);
    let mut mask = vec![1.0; batch.len() * CHUNK];
    mask[CHUNK - 1] = 0.0; // last step of sample 0 is padding
    let masked = batch.clone().with_action_mask(mask.clone()).unwrap();
    let mut moved = batch.clone();
    for a in &mut moved.actions[(CHUNK - 1) * ACTION..CHUNK * ACTION] {
        *a -= 40.0;
    }
    let moved = moved.with_action_mask(mask).unwrap();
    for (name, cfg) in all() {
        let t = trainer(cfg, &batch, 0);
        let a = t.per_sample_losses(&masked, 3).unwrap();
        let b = t.per_sample_losses(&moved, 3).unwrap();
        assert_eq!(a, b, "{name}: a padded step changed the loss");
        assert_ne!(t.per_sample_losses(&batch, 3).unwrap()[0], a[0], "{name}");
    }
}

#[test]
fn policy_config_parsing_is_strict_and_defaults_missing_fields() {
    let cfg: toprl_policies::PolicyConfig =
        serde_json::from_str(r#"{"kind": "act", "state_dim": 6, "action_dim": 6, "cnn": {"token_grid": 2}}"#)
            .unwrap();
    assert_eq!(cfg.kind(), PolicyKind::Act);
    assert_eq!(cfg.chunk_size(), 20);
    let toprl_policies::PolicyConfig::Act(act) = &cfg else {
        panic!("kind")
    };
    assert_eq!(
        (act.cnn.token_grid, act.cnn.channels.clone()),
        (2, vec![16, 32, 64])
    );
    let bad = serde_json::from_str::<toprl_policies::PolicyConfig>(
        r#"{"kind": "act", "state_dim": 6, "action_dim": 6, "cnn": {"grid": 2}}"#,
    );
    assert!(bad.unwrap_err().to_string().contains("cnn.grid"));
    assert!(
        serde_json::from_str::<toprl_policies::PolicyConfig>(r#"{"kind": "sac", "state_dim": 6}"#).is_err()
    );
    // Round trip.
    let text = serde_json::to_string(&cfg).unwrap();
    let back: toprl_policies::PolicyConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), text);
}

/// Every float parameter of a checkpoint's network, in visiting order, as raw bits.
fn weight_bits(dir: &std::path::Path) -> Vec<u32> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Collect(Vec<u32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let values = param.val().into_data().try_to_vec::<f32>().unwrap();
            self.0.extend(values.iter().map(|v| v.to_bits()));
        }
    }
    let (_, net) = toprl_policies::checkpoint::load_dir(dir, None, &test_device()).unwrap();
    let mut collect = Collect(Vec::new());
    net.visit(&mut collect);
    assert!(!collect.0.is_empty());
    collect.0
}

#[test]
fn resume_with_dropout_gives_bit_identical_weights() {
    // Issue 13 item 5: N steps straight vs K steps, save, resume, N - K more: the same weights, bit for
    // bit, and the same AdamW moments (one more step from either checkpoint lands on the same weights).
    // ACT and flow with dropout 0.1 draw masks in every step. (model.bpk's bytes also hold parameter
    // ids, which differ between two trainers, so the weights are compared as numbers.)
    let batch = demos(3, 6);
    let w = vec![1.0; batch.len()];
    let dir = tempfile::tempdir().unwrap();
    let train = TrainConfig {
        seed: 9,
        ..TrainConfig::default()
    };
    let with_dropout = |cfg: toprl_policies::PolicyConfig, p: f64| match cfg {
        toprl_policies::PolicyConfig::Act(c) => toprl_policies::PolicyConfig::Act(c.with_dropout(p)),
        toprl_policies::PolicyConfig::Flow(c) => toprl_policies::PolicyConfig::Flow(c.with_dropout(p)),
        other => other,
    };
    for (name, cfg) in [("act", act()), ("flow", flow())] {
        let run_straight = |p: f64, out: &std::path::Path| {
            let mut t = trainer(with_dropout(cfg.clone(), p), &batch, 9);
            for _ in 0..6 {
                t.step(&batch, &w).unwrap();
            }
            t.save(out).unwrap();
        };
        let straight = dir.path().join(format!("{name}-straight"));
        run_straight(0.1, &straight);
        let interrupted = dir.path().join(format!("{name}-interrupted"));
        let mut first = trainer(with_dropout(cfg.clone(), 0.1), &batch, 9);
        for _ in 0..2 {
            first.step(&batch, &w).unwrap();
        }
        first.save(&interrupted).unwrap();
        drop(first);
        let mut resumed = Trainer::resume(&interrupted, None, train.clone(), &test_device()).unwrap();
        for _ in 2..6 {
            resumed.step(&batch, &w).unwrap();
        }
        let finished = dir.path().join(format!("{name}-resumed"));
        resumed.save(&finished).unwrap();
        assert!(
            weight_bits(&straight) == weight_bits(&finished),
            "{name}: weights differ between the straight and the resumed run"
        );
        let state = |d: &std::path::Path| std::fs::read(d.join("trainer_state.json")).unwrap();
        assert_eq!(
            state(&straight),
            state(&finished),
            "{name}: noise stream position"
        );
        let one_more = |d: &std::path::Path| {
            let mut t = Trainer::resume(d, None, train.clone(), &test_device()).unwrap();
            let loss = t.step(&batch, &w).unwrap();
            let out = dir.path().join(format!("{name}-one-more"));
            t.save(&out).unwrap();
            (loss.to_bits(), weight_bits(&out))
        };
        assert!(
            one_more(&straight) == one_more(&finished),
            "{name}: AdamW moments differ between the straight and the resumed run"
        );
        // Control: the masks matter, so matching them is what the equality above shows.
        let no_dropout = dir.path().join(format!("{name}-no-dropout"));
        run_straight(0.0, &no_dropout);
        assert!(
            weight_bits(&straight) != weight_bits(&no_dropout),
            "{name}: dropout 0.1 should change the weights"
        );
    }
}
