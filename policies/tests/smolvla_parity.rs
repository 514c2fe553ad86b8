//! SmolVLA parity with LeRobot 0.4.4 on the committed tiny random model
//! (`policies/fixtures/smolvla/`, made by `make_smolvla_fixtures.py`): two cameras of different
//! sizes, two prompt lengths, f32 throughout.
//!
//! Tolerances (element-wise `|ours - ref| <= atol + rtol * |ref|`):
//! - forward tensors (images, vision features, embeddings, per-layer hidden states, losses,
//!   sampled actions): atol 1e-4, rtol 1e-4;
//! - gradients: atol 1e-5 * max|ref grad| + rtol 1e-3;
//! - one AdamW step: the parameter change (lr 1e-4) within 1e-6 absolute, i.e. 1% of a step.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};
use toprl_policies::cpu_device;
use toprl_policies::smolvla::{
    ContextCache, LossPadding, SmolVla, SmolVlaBatch, SmolVlaConfig, SmolVlaOptimizer, SmolVlaTrace,
    VlmConfig, make_att_2d_masks, per_sample_flow_loss, position_ids, weighted_flow_loss,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smolvla")
}

/// A fixture tensor: shape and values (ints widened to f64 exactly for small values).
struct Fx {
    shape: Vec<usize>,
    f: Vec<f32>,
    i: Vec<i64>,
}

fn read_safetensors(path: &Path) -> HashMap<String, Fx> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let data = v.data();
            let (f, i) = match v.dtype() {
                Dtype::F32 => (
                    data.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    vec![],
                ),
                Dtype::I64 => (
                    vec![],
                    data.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            (
                name,
                Fx {
                    shape: v.shape().to_vec(),
                    f,
                    i,
                },
            )
        })
        .collect()
}

struct Setup {
    cfg: SmolVlaConfig,
    vlm: VlmConfig,
    fx: HashMap<String, Fx>,
    meta: serde_json::Value,
}

fn setup() -> Setup {
    let dir = fixtures();
    let cfg = SmolVlaConfig::from_file(dir.join("checkpoint/config.json")).unwrap();
    let vlm = VlmConfig::from_file(dir.join(&cfg.vlm_model_name).join("config.json")).unwrap();
    let fx = read_safetensors(&dir.join("parity.safetensors"));
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("parity.json")).unwrap()).unwrap();
    Setup { cfg, vlm, fx, meta }
}

fn load_model(s: &Setup, device: &Device) -> SmolVla {
    SmolVla::load(
        &s.cfg,
        &s.vlm,
        fixtures().join("checkpoint/model.safetensors"),
        device,
    )
    .unwrap()
}

fn float<const D: usize>(fx: &Fx, device: &Device) -> Tensor<D> {
    let shape: [usize; D] = fx.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(fx.f.clone(), shape), device)
}

fn batch(s: &Setup, device: &Device) -> SmolVlaBatch {
    let images = s
        .cfg
        .image_features()
        .iter()
        .map(|k| float::<4>(&s.fx[&format!("batch.{k}")], device))
        .collect();
    let tok = &s.fx["batch.tokens"];
    let [b, l]: [usize; 2] = tok.shape.clone().try_into().unwrap();
    let mask: Vec<bool> = s.fx["batch.attention_mask"].i.iter().map(|&m| m != 0).collect();
    SmolVlaBatch {
        images,
        image_masks: vec![],
        state: float(&s.fx["batch.observation.state"], device),
        tokens: Tensor::from_data(TensorData::new(tok.i.clone(), [b, l]), device),
        token_mask: Tensor::from_data(TensorData::new(mask, [b, l]), device),
    }
}

fn time(s: &Setup) -> Vec<f32> {
    s.fx["time"].f.clone()
}

fn values<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let shape = t.dims().to_vec();
    (shape, t.into_data().try_into_vec_as::<f32>().unwrap())
}

/// Assert `|ours - ref| <= atol + rtol |ref|` element-wise; reports the worst element.
fn assert_close(what: &str, ours: (&[usize], &[f32]), reference: &Fx, atol: f32, rtol: f32) {
    assert_eq!(ours.0, reference.shape.as_slice(), "{what}: shape");
    let mut worst = (0.0f32, 0usize);
    for (i, (a, b)) in ours.1.iter().zip(&reference.f).enumerate() {
        assert!(a.is_finite(), "{what}[{i}] = {a}");
        let excess = (a - b).abs() - (atol + rtol * b.abs());
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{what}: element {i} is {} vs LeRobot {} (atol {atol}, rtol {rtol})",
        ours.1[i],
        reference.f[i]
    );
}

fn close3(what: &str, t: Tensor<3>, reference: &Fx) {
    let (shape, v) = values(t);
    assert_close(what, (&shape, &v), reference, 1e-4, 1e-4);
}

#[test]
fn masks_and_positions_match_lerobot() {
    let s = setup();
    let device = cpu_device();
    let model = load_model(&s, &device);
    let b = batch(&s, &device);
    let (_, layout) = model.embed_prefix(&b, None).unwrap();
    let pad: Vec<i64> = layout.pad.iter().map(|&p| p as i64).collect();
    let att: Vec<i64> = layout.att.iter().map(|&p| p as i64).collect();
    assert_eq!(pad, s.fx["inter.prefix_pad_masks"].i);
    assert_eq!(att, s.fx["inter.prefix_att_masks"].i);
    // Full (prefix + actions) masks and positions, as VLAFlowMatching.forward builds them.
    let chunk = s.cfg.chunk_size;
    let (bs, lp) = (layout.batch, layout.len);
    let l = lp + chunk;
    let mut fpad = vec![];
    let mut fatt = vec![];
    for r in 0..bs {
        fpad.extend_from_slice(&layout.pad[r * lp..(r + 1) * lp]);
        fpad.extend(std::iter::repeat_n(true, chunk));
        fatt.extend_from_slice(&layout.att[r * lp..(r + 1) * lp]);
        fatt.extend(std::iter::repeat_n(true, chunk));
    }
    let m: Vec<i64> = make_att_2d_masks(&fpad, &fatt, bs, l)
        .iter()
        .map(|&x| x as i64)
        .collect();
    assert_eq!(m, s.fx["inter.att_2d_masks"].i);
    assert_eq!(position_ids(&fpad, bs, l, &[]), s.fx["inter.position_ids"].i);
}

#[test]
fn forward_intermediates_and_loss_match_lerobot() {
    let s = setup();
    let device = cpu_device();
    let model = load_model(&s, &device);
    let b = batch(&s, &device);
    let mut trace = SmolVlaTrace::default();
    let losses = model
        .flow_losses(
            &b,
            float(&s.fx["batch.action"], &device),
            float(&s.fx["noise"], &device),
            &time(&s),
            Some(&mut trace),
        )
        .unwrap();
    for (i, img) in trace.prepared_images.into_iter().enumerate() {
        let (shape, v) = values(img);
        assert_close(
            &format!("prepared_image.{i}"),
            (&shape, &v),
            &s.fx[&format!("inter.prepared_image.{i}")],
            1e-5,
            1e-5,
        );
    }
    for (i, t) in trace.vision_features.into_iter().enumerate() {
        close3(
            &format!("vision_features.{i}"),
            t,
            &s.fx[&format!("inter.vision_features.{i}")],
        );
    }
    for (i, t) in trace.image_embeddings.into_iter().enumerate() {
        close3(
            &format!("image_embeddings.{i}"),
            t,
            &s.fx[&format!("inter.image_embeddings.{i}")],
        );
    }
    close3(
        "prefix_embs",
        trace.prefix_embs.unwrap(),
        &s.fx["inter.prefix_embs"],
    );
    close3(
        "suffix_embs",
        trace.suffix_embs.unwrap(),
        &s.fx["inter.suffix_embs"],
    );
    assert_eq!(trace.vlm_layer_in.len(), 4);
    for (i, t) in trace.vlm_layer_in.into_iter().enumerate() {
        close3(
            &format!("vlm_layer_in.{i}"),
            t,
            &s.fx[&format!("inter.vlm_layer_in.{i}")],
        );
    }
    assert_eq!(trace.expert_layer_in.len(), 4);
    for (i, t) in trace.expert_layer_in.into_iter().enumerate() {
        close3(
            &format!("expert_layer_in.{i}"),
            t,
            &s.fx[&format!("inter.expert_layer_in.{i}")],
        );
    }
    close3(
        "expert_final_in",
        trace.expert_final_in.unwrap(),
        &s.fx["inter.expert_final_in"],
    );
    close3("losses", losses.clone(), &s.fx["losses"]);
    let per_sample = per_sample_flow_loss(losses, &LossPadding::AllElements);
    let (shape, v) = values(per_sample.clone());
    assert_close(
        "loss_per_sample",
        (&shape, &v),
        &s.fx["loss_per_sample"],
        1e-5,
        1e-5,
    );
    let (shape, v) = values(per_sample.mean());
    assert_close("loss", (&shape, &v), &s.fx["loss"], 1e-5, 1e-5);
}

#[test]
fn sampled_actions_match_lerobot() {
    let s = setup();
    let device = cpu_device();
    let model = load_model(&s, &device);
    let b = batch(&s, &device);
    let actions = model.sample_actions(&b, float(&s.fx["noise"], &device)).unwrap();
    close3("sample_actions", actions.clone(), &s.fx["sample_actions"]);
    let action_dim = s.cfg.action_dim().unwrap();
    close3(
        "predict_action_chunk",
        actions.narrow(2, 0, action_dim),
        &s.fx["predict_action_chunk"],
    );
}

fn loss_and_grads(s: &Setup, model: &SmolVla, device: &Device) -> (f32, GradientsParams) {
    let b = batch(s, device);
    let losses = model
        .flow_losses(
            &b,
            float(&s.fx["batch.action"], device),
            float(&s.fx["noise"], device),
            &time(s),
            None,
        )
        .unwrap();
    let loss = per_sample_flow_loss(losses, &LossPadding::AllElements).mean();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    (loss.into_scalar::<f32>(), grads)
}

#[test]
fn gradients_match_lerobot() {
    let s = setup();
    let device = cpu_device().autodiff();
    // Every parameter differentiable, as the fixture script does for these gradients.
    let model = load_model(&s, &device).with_trainable(|_| true);
    let (loss, grads) = loss_and_grads(&s, &model, &device);
    assert!((loss - s.fx["loss"].f[0]).abs() < 1e-5, "loss {loss}");
    let names = s.meta["grad_names"].as_array().unwrap();
    assert!(names.len() >= 10);
    for name in names {
        let name = name.as_str().unwrap();
        let reference = &s.fx[&format!("grad.{name}")];
        let (shape, g) = model
            .named_grad(&grads, name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let scale = reference.f.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "{name}: zero reference gradient");
        assert_close(
            &format!("grad {name}"),
            (&shape, &g),
            reference,
            1e-5 * scale,
            1e-3,
        );
    }
}

#[test]
fn trainable_parameters_are_lerobots() {
    let s = setup();
    let device = cpu_device().autodiff();
    let model = load_model(&s, &device);
    let (_, grads) = loss_and_grads(&s, &model, &device);
    let expected: Vec<String> = s.meta["trainable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut with_grad: Vec<String> = model
        .named_shapes()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| model.named_grad(&grads, n).is_some())
        .collect();
    with_grad.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(with_grad, expected_sorted);
}

#[test]
fn one_adamw_step_matches_lerobot() {
    let s = setup();
    let device = cpu_device().autodiff();
    let model = load_model(&s, &device);
    let before = model.clone();
    let (_, grads) = loss_and_grads(&s, &model, &device);
    let mut optim = SmolVlaOptimizer::new(&s.cfg);
    let (model, norm) = optim.step(s.cfg.optimizer_lr, model, grads).unwrap();
    let ref_norm = s.fx["adamw.grad_norm"].f[0] as f64;
    assert!(
        ref_norm > s.cfg.optimizer_grad_clip_norm,
        "fixture must exercise clipping"
    );
    assert!(
        (norm - ref_norm).abs() <= 1e-4 * ref_norm,
        "grad norm {norm} vs {ref_norm}"
    );
    let mut checked = 0;
    for (name, _) in model.named_shapes() {
        let (_, after) = model.named_tensor(&name).unwrap();
        let (_, old) = before.named_tensor(&name).unwrap();
        match s.fx.get(&format!("after_step.{name}")) {
            Some(reference) => {
                // Compare the update itself: 1e-6 is 1% of an lr-1e-4 step.
                for (i, ((a, o), r)) in after.iter().zip(&old).zip(&reference.f).enumerate() {
                    let (ours, theirs) = (a - o, r - o);
                    assert!(
                        (ours - theirs).abs() <= 1e-6,
                        "{name}[{i}]: step {ours} vs LeRobot {theirs}"
                    );
                }
                assert!(after != old, "{name}: not updated");
                checked += 1;
            }
            None => assert_eq!(after, old, "{name}: frozen in LeRobot but changed"),
        }
    }
    assert_eq!(checked, s.meta["trainable"].as_array().unwrap().len());
}

/// Sample `s` of the fixture batch alone, its prompt cut to `tokens` tokens.
fn one_sample(b: &SmolVlaBatch, s: usize, tokens: usize) -> SmolVlaBatch {
    SmolVlaBatch {
        images: b.images.iter().map(|i| i.clone().narrow(0, s, 1)).collect(),
        image_masks: vec![],
        state: b.state.clone().narrow(0, s, 1),
        tokens: b.tokens.clone().narrow(0, s, 1).narrow(1, 0, tokens),
        token_mask: b.token_mask.clone().narrow(0, s, 1).narrow(1, 0, tokens),
    }
}

#[test]
fn cached_context_gives_lerobots_loss_and_gradients() {
    let s = setup();
    let device = cpu_device().autodiff();
    let model = load_model(&s, &device);
    let b = batch(&s, &device);
    // Per-frame caches of different prompt lengths, stacked (exercises the padding of `concat`).
    let valid0 = s.fx["batch.attention_mask"].i[..s.fx["batch.tokens"].shape[1]]
        .iter()
        .filter(|&&m| m != 0)
        .count();
    let full = s.fx["batch.tokens"].shape[1];
    assert!(valid0 < full, "the fixture's first prompt is the short one");
    let ctx = ContextCache::concat(&[
        model.encode_context(&one_sample(&b, 0, valid0)).unwrap(),
        model.encode_context(&one_sample(&b, 1, full)).unwrap(),
    ])
    .unwrap();
    let losses = model
        .flow_losses_with_context(
            &ctx,
            b.state.clone(),
            float(&s.fx["batch.action"], &device),
            float(&s.fx["noise"], &device),
            &time(&s),
        )
        .unwrap();
    close3("losses (cached context)", losses.clone(), &s.fx["losses"]);
    let loss = per_sample_flow_loss(losses, &LossPadding::AllElements).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut checked = 0;
    for name in s.meta["grad_names"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        if name.starts_with("model.vlm_with_expert.vlm") {
            continue; // the VLM is frozen (and cached) here
        }
        let reference = &s.fx[&format!("grad.{name}")];
        let (shape, g) = model.named_grad(&grads, name).unwrap();
        let scale = reference.f.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_close(
            &format!("grad {name} (cached)"),
            (&shape, &g),
            reference,
            1e-5 * scale,
            1e-3,
        );
        checked += 1;
    }
    assert!(checked >= 8, "{checked}");
}

#[test]
fn padding_masked_and_weighted_losses() {
    let s = setup();
    let device = cpu_device();
    let losses: Tensor<3> = float(&s.fx["losses"], &device);
    let [b, c, a] = losses.dims();
    let action_dim = s.cfg.action_dim().unwrap();
    let l = &s.fx["losses"].f;
    // Valid dims only: the mean over the first action_dim columns.
    let valid = per_sample_flow_loss(
        losses.clone(),
        &LossPadding::Valid {
            action_dim,
            is_pad: None,
        },
    );
    let (_, v) = values(valid);
    for (r, got) in v.iter().enumerate() {
        let mut sum = 0.0;
        for t in 0..c {
            for d in 0..action_dim {
                sum += l[(r * c + t) * a + d];
            }
        }
        let want = sum / (c * action_dim) as f32;
        assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs {want}");
    }
    // Steps past the episode end do not count.
    let mut pad = vec![false; b * c];
    pad[c - 1] = true; // sample 0, last step
    let is_pad = Tensor::<2, Bool>::from_data(TensorData::new(pad, [b, c]), &device);
    let masked = per_sample_flow_loss(
        losses.clone(),
        &LossPadding::Valid {
            action_dim,
            is_pad: Some(is_pad),
        },
    );
    let (_, m) = values(masked);
    let mut sum = 0.0;
    for t in 0..c - 1 {
        for d in 0..action_dim {
            sum += l[t * a + d];
        }
    }
    let want = sum / ((c - 1) * action_dim) as f32;
    assert!((m[0] - want).abs() <= 1e-5 * want.abs(), "{} vs {want}", m[0]);
    assert!((m[1] - v[1]).abs() <= 1e-6);
    // Weights: E[w * l]; unit weights give the plain mean; zero weight drops a sample.
    let per = per_sample_flow_loss(losses, &LossPadding::AllElements);
    let plain = weighted_flow_loss(per.clone(), None)
        .unwrap()
        .into_scalar::<f32>();
    let ones = weighted_flow_loss(per.clone(), Some(&[1.0, 1.0]))
        .unwrap()
        .into_scalar::<f32>();
    assert!((plain - ones).abs() <= 1e-7 && (plain - s.fx["loss"].f[0]).abs() < 1e-5);
    let only_second = weighted_flow_loss(per, Some(&[0.0, 2.0]))
        .unwrap()
        .into_scalar::<f32>();
    let want = s.fx["loss_per_sample"].f[1];
    assert!(
        (only_second - want).abs() <= 1e-5 * want,
        "{only_second} vs {want}"
    );
    assert!(weighted_flow_loss(float(&s.fx["loss_per_sample"], &device), Some(&[1.0, -1.0])).is_err());
}
