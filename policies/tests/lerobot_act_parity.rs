//! LeRobot ACT parity: `policies/tests/fixtures/make_lerobot_act.py` builds a tiny random ACT with
//! LeRobot 0.4.4 (ResNet18 with random weights and randomised frozen batch norms, two cameras of
//! different sizes, the CVAE) and records LeRobot's outputs; toprl loads the same folder and must give
//! the same action chunk, the same `select_action` sequence (queue and temporal ensembling), the same
//! training loss and gradients for the same VAE noise, and a saved folder LeRobot loads back to the same
//! actions. Needs `.venv-lerobot` (made by `scripts/setup.sh`); without it the tests fail saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use toprl_policies::cpu_device;
use toprl_policies::lerobot_act::{
    ActSample, ActTrainer, LeRobotActPolicy, per_sample_losses, weighted_act_loss,
};
use toprl_policies::smolvla::lerobot::{NamedTensors, read_f32_tensors, write_f32_tensors};
use toprl_policies::smolvla::processor::ChwImage;
use toprl_policies::smolvla::weights::named_grad_of;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("policies/ has a parent")
        .to_path_buf()
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

fn script() -> PathBuf {
    repo_root().join("policies/tests/fixtures/make_lerobot_act.py")
}

/// The fixtures, made once per test run into a temporary folder.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(lerobot_python())
            .env("HF_HUB_OFFLINE", "1")
            .arg(script())
            .arg("make")
            .arg(dir.path())
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "make_lerobot_act.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

fn expected() -> NamedTensors {
    read_f32_tensors(&fixtures().join("expected.safetensors")).expect("expected.safetensors")
}

/// `prefix` + LeRobot feature names from a tensor file as one sample.
fn sample_from(tensors: &NamedTensors, prefix: &str, batch_index: Option<usize>) -> ActSample {
    let mut sample = ActSample::default();
    for (name, (shape, data)) in tensors {
        let Some(key) = name.strip_prefix(prefix) else {
            continue;
        };
        if !key.starts_with("observation.") {
            continue;
        }
        let (shape, data) = match batch_index {
            Some(i) => {
                let per: usize = shape[1..].iter().product();
                (shape[1..].to_vec(), data[i * per..(i + 1) * per].to_vec())
            }
            None => (shape.clone(), data.clone()),
        };
        if shape.len() == 3 {
            sample.images.insert(
                key.to_string(),
                ChwImage {
                    height: shape[1],
                    width: shape[2],
                    data,
                },
            );
        } else {
            sample.vectors.insert(key.to_string(), data);
        }
    }
    sample
}

fn step_sample(i: usize) -> ActSample {
    let obs = read_f32_tensors(&fixtures().join("observations.safetensors")).expect("observations");
    sample_from(&obs, &format!("step{i}."), None)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

fn load(folder: &str) -> LeRobotActPolicy {
    let dir = fixtures().join(folder);
    LeRobotActPolicy::load(dir.to_str().expect("utf-8 path"), &cpu_device())
        .expect("load the LeRobot ACT folder")
}

#[test]
fn action_chunk_matches_lerobot() {
    let policy = load("checkpoint");
    let exp = expected();
    let sample = step_sample(0);
    let normalized: Vec<f32> = policy
        .predict_normalized(std::slice::from_ref(&sample))
        .expect("predict")
        .concat()
        .concat();
    let want = &exp["normalized_chunk"].1;
    let err = max_abs_diff(&normalized, want);
    eprintln!("normalised chunk: max |toprl - LeRobot| = {err:e}");
    assert!(err <= 1e-5, "normalised chunk: max |toprl - LeRobot| = {err}");
    // Not trivially small: the random ACT's outputs are O(1).
    assert!(max_abs(want) > 0.1, "LeRobot's chunk is degenerate: {want:?}");

    let chunk = policy.predict_chunks(&[sample]).expect("predict").remove(0);
    assert_eq!((chunk.len(), chunk[0].len()), (5, 6));
    let err = max_abs_diff(&chunk.concat(), &exp["chunk"].1);
    // Dataset units (std up to 15); measured 7e-6.
    assert!(err <= 1e-4, "un-normalised chunk: max |toprl - LeRobot| = {err}");
}

#[test]
fn select_action_queue_matches_lerobot() {
    let mut policy = load("checkpoint");
    let exp = expected();
    let (shape, want) = &exp["select_action"];
    assert_eq!(shape, &vec![7, 6]);
    let mut got = Vec::new();
    for i in 0..7 {
        got.extend(policy.select_action(&step_sample(i)).expect("select_action"));
    }
    let err = max_abs_diff(&got, want);
    eprintln!("queued actions: max |toprl - LeRobot| = {err:e}");
    assert!(err <= 1e-4, "queued actions: max |toprl - LeRobot| = {err}");
    // The queue matters: steps 0-2 come from one chunk, so they differ from fresh chunks of steps 1, 2.
    let fresh = policy
        .predict_chunks(&[step_sample(1)])
        .expect("predict")
        .remove(0);
    assert!(max_abs_diff(&fresh[0], &got[6..12]) > 1e-3);

    // reset() restarts the queue: the first action is again step 0's chunk head.
    policy.reset_queue();
    let again = policy.select_action(&step_sample(0)).expect("select_action");
    assert!(max_abs_diff(&again, &want[..6]) <= 1e-4);
}

#[test]
fn temporal_ensembling_matches_lerobot() {
    let mut policy = load("checkpoint_te");
    let exp = expected();
    let want = &exp["select_action_te"].1;
    let mut got = Vec::new();
    for i in 0..7 {
        got.extend(policy.select_action(&step_sample(i)).expect("select_action"));
    }
    let err = max_abs_diff(&got, want);
    eprintln!("ensembled actions: max |toprl - LeRobot| = {err:e}");
    assert!(err <= 1e-4, "ensembled actions: max |toprl - LeRobot| = {err}");
    // Ensembling differs from taking each fresh chunk's head after the first step.
    let head = policy
        .predict_chunks(&[step_sample(3)])
        .expect("predict")
        .remove(0);
    assert!(max_abs_diff(&head[0], &got[18..24]) > 1e-3);
}

/// The fixture's training batch: samples, target chunks, padding and the VAE noise.
type TrainingBatch = (Vec<ActSample>, Vec<Vec<f32>>, Vec<Vec<bool>>, Vec<f32>);

fn training_batch(exp: &NamedTensors) -> TrainingBatch {
    let b = 3;
    let samples = (0..b).map(|i| sample_from(exp, "train.raw.", Some(i))).collect();
    let (shape, actions) = &exp["train.raw.action"];
    let per = shape[1] * shape[2];
    let actions = actions.chunks(per).map(<[f32]>::to_vec).collect();
    let (pshape, pad) = &exp["train.action_is_pad"];
    let is_pad = pad
        .chunks(pshape[1])
        .map(|r| r.iter().map(|&v| v > 0.5).collect())
        .collect();
    (samples, actions, is_pad, exp["train.noise"].1.clone())
}

#[test]
fn training_loss_and_gradients_match_lerobot() {
    let exp = expected();
    let dir = fixtures().join("checkpoint");
    let trainer =
        ActTrainer::load(dir.to_str().expect("utf-8"), 0, &cpu_device()).expect("load for training");
    let (samples, actions, is_pad, noise) = training_batch(&exp);
    let (loss, l1, kld, grads) = trainer
        .loss_and_grads(&samples, &actions, &is_pad, None, noise)
        .expect("loss");
    let rel = |a: f32, b: f32| (a - b).abs() / b.abs().max(1e-6);
    eprintln!(
        "loss {loss} (LeRobot {}), l1 {l1}, kld {kld}",
        exp["train.loss"].1[0]
    );
    let (want_loss, want_l1, want_kld) = (
        exp["train.loss"].1[0],
        exp["train.l1_loss"].1[0],
        exp["train.kld_loss"].1[0],
    );
    assert!(rel(loss, want_loss) <= 1e-5, "loss {loss} vs LeRobot {want_loss}");
    assert!(rel(l1, want_l1) <= 1e-5, "l1 {l1} vs LeRobot {want_l1}");
    assert!(rel(kld, want_kld) <= 1e-5, "kld {kld} vs LeRobot {want_kld}");
    assert!(want_kld > 0.01, "the VAE term is exercised");

    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("fixture.json")).expect("fixture.json"),
    )
    .expect("json");
    let names: Vec<String> = serde_json::from_value(meta["grad_names"].clone()).expect("names");
    for name in names {
        let (shape, got) = named_grad_of(&trainer.policy.model, &grads, &name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let (want_shape, want) = &exp[&format!("grad.{name}")];
        assert_eq!(&shape, want_shape, "{name}");
        let scale = max_abs(want);
        let err = max_abs_diff(&got, want);
        eprintln!("grad {name}: max |toprl - LeRobot| = {err:e} (max |grad| {scale:e})");
        assert!(scale > 0.0, "{name}: LeRobot's gradient is zero");
        assert!(
            err <= 1e-4 * scale + 1e-7,
            "{name}: max |toprl - LeRobot| = {err} (max |grad| {scale})"
        );
    }
    // Buffers have no gradient, as in LeRobot.
    assert!(named_grad_of(&trainer.policy.model, &grads, "model.backbone.bn1.running_var").is_none());
    assert!(named_grad_of(&trainer.policy.model, &grads, "model.vae_encoder_pos_enc").is_none());
}

#[test]
fn weighted_loss_is_self_normalised() {
    let exp = expected();
    let dir = fixtures().join("checkpoint");
    let trainer = ActTrainer::load(dir.to_str().expect("utf-8"), 0, &cpu_device()).expect("load");
    let (samples, actions, is_pad, noise) = training_batch(&exp);
    let policy = &trainer.policy;
    let (batch, target) = policy
        .training_batch(&samples, &actions, &is_pad, noise.clone())
        .expect("batch");
    let out = policy.model.forward(&batch, Some(&target)).expect("forward");
    let (l1, kld) = per_sample_losses(&out, target.actions.clone(), target.is_pad.clone());
    let kl = policy.config.cfg.kl_weight;
    let per: Vec<f32> = (l1.clone() + kld.clone() * kl)
        .into_data()
        .try_to_vec()
        .expect("per-sample");
    let value = |w: Option<&[f32]>| {
        weighted_act_loss(l1.clone(), kld.clone(), kl, w)
            .expect("loss")
            .into_scalar::<f32>()
    };
    let mean = per.iter().sum::<f32>() / 3.0;
    assert!((value(None) - mean).abs() <= 1e-5 * mean);
    assert!(
        (value(Some(&[2.0, 2.0, 2.0])) - mean).abs() <= 1e-5 * mean,
        "scale-free"
    );
    assert!((value(Some(&[0.0, 5.0, 0.0])) - per[1]).abs() <= 1e-5 * per[1]);
    let mixed = (1.0 * per[0] + 3.0 * per[2]) / 4.0;
    assert!((value(Some(&[1.0, 0.0, 3.0])) - mixed).abs() <= 1e-5 * mixed);
    assert!(weighted_act_loss(l1.clone(), kld.clone(), kl, Some(&[0.0, 0.0, 0.0])).is_err());
    assert!(weighted_act_loss(l1, kld, kl, Some(&[1.0, f32::NAN, 1.0])).is_err());
}

fn lerobot_predict(policy: &Path, sample: &ActSample, scratch: &Path) -> Vec<f32> {
    let obs_path = scratch.join("obs.safetensors");
    let mut tensors = Vec::new();
    for (k, v) in &sample.vectors {
        tensors.push((
            k.clone(),
            vec![v.len()],
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    for (k, img) in &sample.images {
        tensors.push((
            k.clone(),
            vec![3, img.height, img.width],
            img.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    write_f32_tensors(&obs_path, &tensors).expect("write observation");
    let out_path = scratch.join("lerobot_chunk.safetensors");
    let out = Command::new(lerobot_python())
        .env("HF_HUB_OFFLINE", "1")
        .arg(script())
        .arg("predict")
        .arg(policy)
        .arg(&obs_path)
        .arg(&out_path)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "LeRobot could not load and run {}:\n{}",
        policy.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    read_f32_tensors(&out_path).expect("chunk")["chunk"].1.clone()
}

#[test]
fn lerobot_loads_a_toprl_trained_act_and_predicts_the_same_chunk() {
    let exp = expected();
    let dir = fixtures().join("checkpoint");
    let mut trainer = ActTrainer::load(dir.to_str().expect("utf-8"), 3, &cpu_device()).expect("load");
    let (samples, actions, is_pad, _) = training_batch(&exp);
    for _ in 0..2 {
        let losses = trainer
            .step(&samples, &actions, &is_pad, Some(&[1.0, 0.5, 2.0]))
            .expect("step");
        assert!(losses.loss.is_finite() && losses.grad_norm > 0.0);
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let saved = tmp.path().join("trained");
    trainer.save(&saved).expect("save");
    assert!(!tmp.path().join("trained.tmp").exists());

    // Same names, changed parameters, unchanged buffers.
    let before = read_f32_tensors(&dir.join("model.safetensors")).expect("weights");
    let after = read_f32_tensors(&saved.join("model.safetensors")).expect("weights");
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert_ne!(
        before["model.action_head.weight"].1,
        after["model.action_head.weight"].1
    );
    assert_ne!(
        before["model.backbone.conv1.weight"].1,
        after["model.backbone.conv1.weight"].1
    );
    assert_eq!(
        before["model.backbone.bn1.running_var"].1,
        after["model.backbone.bn1.running_var"].1
    );
    assert_eq!(
        before["model.vae_encoder_pos_enc"].1,
        after["model.vae_encoder_pos_enc"].1
    );

    // Image statistics keep LeRobot's per-channel [3, 1, 1] shape.
    let stats = read_f32_tensors(&saved.join("policy_preprocessor_step_3_normalizer_processor.safetensors"))
        .expect("stats");
    assert_eq!(stats["observation.images.front.mean"].0, vec![3, 1, 1]);
    assert_eq!(stats["observation.state.mean"].0, vec![6]);

    let sample = step_sample(2);
    let ours = LeRobotActPolicy::load(saved.to_str().expect("utf-8"), &cpu_device())
        .expect("toprl reads its own save")
        .predict_chunks(std::slice::from_ref(&sample))
        .expect("predict")
        .remove(0)
        .concat();
    let theirs = lerobot_predict(&saved, &sample, tmp.path());
    let err = max_abs_diff(&ours, &theirs);
    eprintln!("saved and reloaded by LeRobot: max |toprl - LeRobot| = {err:e}");
    assert!(
        err <= 1e-4,
        "max |toprl - LeRobot| = {err}\ntoprl {ours:?}\nlerobot {theirs:?}"
    );
    let original = load("checkpoint")
        .predict_chunks(&[sample])
        .expect("predict")
        .remove(0)
        .concat();
    assert!(
        max_abs_diff(&original, &ours) > 1e-4,
        "training changed the predictions"
    );
}

#[test]
fn bad_folders_are_refused_with_the_field_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let copy = |name: &str| {
        let to = tmp.path().join(name);
        std::fs::create_dir_all(&to).expect("mkdir");
        for entry in std::fs::read_dir(fixtures().join("checkpoint")).expect("ls") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
        to
    };
    let edit = |dir: &Path, key: &str, value: serde_json::Value| {
        let path = dir.join("config.json");
        let mut cfg: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        cfg.insert(key.to_string(), value);
        std::fs::write(&path, serde_json::to_string(&cfg).expect("json")).expect("write");
    };
    let err_of = |dir: &Path| {
        LeRobotActPolicy::load(dir.to_str().expect("utf-8"), &cpu_device())
            .expect_err("must be refused")
            .to_string()
    };

    let wrong_type = copy("wrong_type");
    edit(&wrong_type, "type", "diffusion".into());
    assert!(err_of(&wrong_type).contains("key `type` is \"diffusion\", expected \"act\""));

    let bigger = copy("bigger");
    edit(&bigger, "dim_model", 64.into());
    let e = err_of(&bigger);
    assert!(e.contains("model.safetensors") && e.contains("has shape"), "{e}");

    let backbone = copy("backbone");
    edit(&backbone, "vision_backbone", "resnet50".into());
    assert!(err_of(&backbone).contains("vision_backbone"));

    let ensemble = copy("ensemble");
    edit(&ensemble, "temporal_ensemble_coeff", 0.01.into());
    assert!(err_of(&ensemble).contains("temporal_ensemble_coeff"));

    // Unknown fields are ignored (a newer LeRobot's keys do not break loading).
    let extra = copy("extra");
    edit(&extra, "some_future_field", 1.into());
    LeRobotActPolicy::load(extra.to_str().expect("utf-8"), &cpu_device()).expect("unknown fields ignored");

    let missing = tmp.path().join("no/such/folder");
    let e = err_of(&missing);
    assert!(
        e.contains("no/such/folder") && e.contains("not a Hugging Face Hub id"),
        "{e}"
    );

    let no_weights = copy("no_weights");
    std::fs::remove_file(no_weights.join("model.safetensors")).expect("rm");
    assert!(err_of(&no_weights).contains("model.safetensors"));
}

#[test]
fn policy_trait_returns_lerobots_select_action_rows() {
    use toprl_policies::{CameraImage, Observation, Policy};
    let mut policy = load("checkpoint");
    // The observation as a camera delivers it: RGB8, so the sample is step 0 quantised to 1/255.
    let mut sample = step_sample(0);
    let mut images = Vec::new();
    for (key, img) in &mut sample.images {
        let plane = img.height * img.width;
        let mut rgb = vec![0u8; 3 * plane];
        for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
            for (c, v) in px.iter_mut().enumerate() {
                *v = (img.data[c * plane + i] * 255.0).round() as u8;
            }
        }
        img.data = (0..3 * plane)
            .map(|j| f32::from(rgb[(j % plane) * 3 + j / plane]) / 255.0)
            .collect();
        images.push(CameraImage {
            key: key.clone(),
            height: img.height,
            width: img.width,
            rgb,
        });
    }
    let observation = Observation {
        state: sample.vectors["observation.state"].clone(),
        images,
        instruction: String::new(),
    };
    assert_eq!(policy.action_dim(), 6);
    let rows = policy.act(&observation).expect("act");
    let chunk = policy.predict_chunks(&[sample]).expect("predict").remove(0);
    // n_action_steps = 3 rows of the chunk, as LeRobot's queue would hand them out.
    assert_eq!(rows.len(), 3);
    assert!(max_abs_diff(&rows.concat(), &chunk[..3].concat()) <= 1e-5);

    // With temporal ensembling, one ensembled action per call.
    let mut te = load("checkpoint_te");
    let first = te.act(&observation).expect("act");
    assert_eq!(first.len(), 1);
    let second = te.act(&observation).expect("act");
    assert!(
        max_abs_diff(&first[0], &second[0]) > 1e-6,
        "the ensemble mixes in step 0's chunk"
    );
    te.reset();
    assert!(max_abs_diff(&te.act(&observation).expect("act")[0], &first[0]) <= 1e-6);
}

#[test]
fn one_optimiser_step_matches_lerobots_preset() {
    use toprl_policies::smolvla::weights::named_tensor_of;
    let exp = expected();
    let dir = fixtures().join("checkpoint");
    let before = read_f32_tensors(&dir.join("model.safetensors")).expect("weights");
    let mut trainer = ActTrainer::load(dir.to_str().expect("utf-8"), 0, &cpu_device()).expect("load");
    let cfg = &trainer.policy.config.cfg;
    assert_eq!(
        (cfg.optimizer_lr, cfg.optimizer_lr_backbone),
        (1e-3, 1e-4),
        "two learning rates"
    );
    let (samples, actions, is_pad, noise) = training_batch(&exp);
    let losses = trainer
        .step_with_noise(&samples, &actions, &is_pad, None, noise)
        .expect("step");
    let want_norm = f64::from(exp["train.grad_norm"].1[0]);
    eprintln!("grad norm {} (LeRobot {want_norm})", losses.grad_norm);
    assert!((losses.grad_norm - want_norm).abs() <= 1e-4 * want_norm);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("fixture.json")).expect("fixture.json"),
    )
    .expect("json");
    let names: Vec<String> = serde_json::from_value(meta["grad_names"].clone()).expect("names");
    for name in names {
        let (_, after) = named_tensor_of(&trainer.policy.model, &name).expect("parameter");
        let delta: Vec<f32> = after.iter().zip(&before[&name].1).map(|(a, b)| a - b).collect();
        let want = &exp[&format!("delta.{name}")].1;
        let scale = max_abs(want);
        let err = max_abs_diff(&delta, want);
        eprintln!("step {name}: max |toprl - LeRobot| = {err:e} (max |delta| {scale:e})");
        // Adam's first step is ~lr * sign(grad): 1e-3 for the transformer, 1e-4 for the backbone.
        let lr = if name.starts_with("model.backbone.") {
            1e-4
        } else {
            1e-3
        };
        assert!(
            scale > 0.5 * lr && scale < 1.5 * lr,
            "{name}: max |delta| {scale}"
        );
        // Adam's first step is g / (|g| + 1e-8): for gradients near 1e-8 (the clipped backbone has
        // many) it amplifies the ~1e-9 float noise of g, so the bound is 1% of the step; a wrong
        // learning rate, group or clipping is off by a factor.
        assert!(
            err <= 1e-2 * scale,
            "{name}: max |toprl - LeRobot| = {err} (max |delta| {scale})"
        );
    }
}

#[test]
fn pre_norm_gelu_env_state_without_vae_matches_lerobot() {
    let exp = expected();
    let policy = load("checkpoint_variant");
    let dims = &policy.config.dims;
    assert!(dims.pre_norm && !dims.use_vae && dims.env_state_dim == Some(4));
    assert!(policy.model.encoder.norm.is_some() && policy.model.vae_encoder.is_none());
    let chunk = policy
        .predict_chunks(&[sample_from(&exp, "variant.", None)])
        .expect("predict")
        .remove(0)
        .concat();
    let err = max_abs_diff(&chunk, &exp["variant.chunk"].1);
    eprintln!("variant chunk: max |toprl - LeRobot| = {err:e}");
    assert!(err <= 1e-4, "variant chunk: max |toprl - LeRobot| = {err}");

    // Training without the VAE: the loss is the masked L1 alone.
    let dir = fixtures().join("checkpoint_variant");
    let trainer = ActTrainer::load(dir.to_str().expect("utf-8"), 0, &cpu_device()).expect("load");
    let samples: Vec<ActSample> = (0..3)
        .map(|i| sample_from(&exp, "variant.train.raw.", Some(i)))
        .collect();
    let actions = exp["variant.train.raw.action"]
        .1
        .chunks(5 * 6)
        .map(<[f32]>::to_vec)
        .collect::<Vec<_>>();
    let (_, _, is_pad, _) = training_batch(&exp);
    let (loss, _, kld, _) = trainer
        .loss_and_grads(&samples, &actions, &is_pad, None, vec![0.0; 3 * 8])
        .expect("loss");
    let want = exp["variant.train.loss"].1[0];
    eprintln!("variant loss {loss} (LeRobot {want})");
    assert_eq!(kld, 0.0);
    assert!(
        (loss - want).abs() <= 1e-5 * want,
        "loss {loss} vs LeRobot {want}"
    );
}

#[test]
fn a_new_folder_from_config_and_stats_loads_in_lerobot() {
    use toprl_policies::smolvla::lerobot::read_stats;
    use toprl_policies::smolvla::weights::named_tensor_of;
    let fixture = load("checkpoint");
    let stats = read_stats(
        &fixtures()
            .join("checkpoint")
            .join("policy_preprocessor_step_3_normalizer_processor.safetensors"),
    )
    .expect("stats");
    let tmp = tempfile::tempdir().expect("tmp");
    let resnet = fixtures().join("torchvision_resnet18.safetensors");
    let make = |name: &str, seed: u64| {
        let dir = tmp.path().join(name);
        let policy = LeRobotActPolicy::create(
            &dir,
            &fixture.config.cfg,
            &stats,
            seed,
            Some(&resnet),
            &cpu_device(),
        )
        .expect("create");
        (dir, policy)
    };
    let (dir, policy) = make("new", 5);
    let (_, same) = make("same_seed", 5);
    let (_, other) = make("other_seed", 6);
    let weights = |p: &LeRobotActPolicy| {
        named_tensor_of(&p.model, "model.encoder.layers.0.linear1.weight")
            .expect("w")
            .1
    };
    assert_eq!(
        weights(&policy),
        weights(&same),
        "the seed decides the initialisation"
    );
    assert_ne!(weights(&policy), weights(&other));
    // The backbone is the torchvision checkpoint's.
    let tv = read_f32_tensors(&resnet).expect("resnet");
    for name in [
        "layer3.1.conv2.weight",
        "bn1.running_var",
        "layer2.0.downsample.1.running_mean",
    ] {
        let (_, got) =
            named_tensor_of(&policy.model, &format!("model.backbone.{name}")).expect("backbone tensor");
        assert_eq!(got, tv[name].1, "{name}");
    }

    let sample = step_sample(4);
    let ours = policy
        .predict_chunks(std::slice::from_ref(&sample))
        .expect("predict")
        .remove(0)
        .concat();
    let theirs = lerobot_predict(&dir, &sample, tmp.path());
    let err = max_abs_diff(&ours, &theirs);
    eprintln!("created folder: max |toprl - LeRobot| = {err:e}");
    assert!(err <= 1e-4, "max |toprl - LeRobot| = {err}");

    // With dropout on, a policy loaded for training still predicts in eval mode (no dropout).
    let mut noisy = fixture.config.cfg.clone();
    noisy.dropout = 0.5;
    let dropout_dir = tmp.path().join("dropout");
    let eval =
        LeRobotActPolicy::create(&dropout_dir, &noisy, &stats, 5, None, &cpu_device()).expect("create");
    let training = ActTrainer::load(dropout_dir.to_str().expect("utf-8"), 0, &cpu_device()).expect("load");
    let a = eval
        .predict_chunks(std::slice::from_ref(&sample))
        .expect("predict");
    let b = training
        .policy
        .predict_chunks(std::slice::from_ref(&sample))
        .expect("predict");
    let c = training
        .policy
        .predict_chunks(std::slice::from_ref(&sample))
        .expect("predict");
    assert_eq!(b, c, "no dropout at inference");
    assert!(max_abs_diff(&a.concat().concat(), &b.concat().concat()) <= 1e-5);

    // A backbone checkpoint with a misshaped tensor is refused by name.
    let bad = tmp.path().join("bad_resnet.safetensors");
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = tv
        .iter()
        .map(|(k, (s, v))| {
            (
                k.clone(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    for t in &mut tensors {
        if t.0 == "conv1.weight" {
            t.1 = vec![64, 3, 49];
        }
    }
    write_f32_tensors(&bad, &tensors).expect("write");
    let e = LeRobotActPolicy::create(
        &tmp.path().join("bad"),
        &fixture.config.cfg,
        &stats,
        5,
        Some(&bad),
        &cpu_device(),
    )
    .expect_err("misshaped backbone")
    .to_string();
    assert!(e.contains("conv1.weight") && e.contains("shape"), "{e}");
    assert!(!tmp.path().join("bad").exists(), "nothing is left behind");
}
