//! Precision and attention chunking of the Qwen3-VL port on the tiny fixture model:
//! - bf16 against transformers in bf16 (rewards/fixtures/make_mode_precision_fixtures.py), with a stated
//!   tolerance set against the reference's own bf16 noise (its sdpa and eager attention differ by ~0.09 nats);
//! - f16 against the f32 reference;
//! - query-chunked attention against one chunk (the whole score matrix at once) within 1e-5.

mod common;

use candle_core::{DType, Device};
use serde::Deserialize;
use toprl_rewards::qwen3_vl::{CheckpointFiles, Qwen3VL};
use toprl_rewards::topreward::{
    PrefixEncoder, QwenPrefixEncoder, TopRewardModel, prefix_frame_indices, prefix_lengths,
};

/// |log p(" True") toprl bf16 - transformers bf16 (sdpa)|, nats. bf16 keeps ~3 significant digits; on this
/// random model (weights of std 0.5, logits in the tens) the reference's own two attention kernels differ by
/// up to 0.092 nats and bf16 differs from f32 by up to 0.07.
const BF16_TOLERANCE: f64 = 0.25;

#[derive(Debug, Deserialize)]
struct Fixture {
    bf16: Bf16Reference,
}

#[derive(Debug, Deserialize)]
struct Bf16Reference {
    episode: String,
    instruction: String,
    sdpa: Vec<f64>,
    eager: Vec<f64>,
    f32: Vec<f64>,
}

fn fixture() -> Bf16Reference {
    let text =
        std::fs::read_to_string(common::fixtures().join("topreward_modes_precision.json")).expect("fixture");
    serde_json::from_str::<Fixture>(&text)
        .expect("fixture parses")
        .bf16
}

fn model(dtype: DType) -> TopRewardModel {
    let files = CheckpointFiles::from_dir(&common::tiny_model_dir()).expect("tiny model");
    TopRewardModel::new(Qwen3VL::load(&files, &Device::Cpu, dtype).expect("tiny model"))
}

fn encoder() -> QwenPrefixEncoder {
    let files = CheckpointFiles::from_dir(&common::tiny_model_dir()).expect("tiny model");
    QwenPrefixEncoder::from_checkpoint(&files, None, Default::default())
        .expect("Qwen3 tokenizer: scripts/setup.sh")
}

/// Exact log p(" True") of every prefix of the fixture episode.
fn scores(m: &TopRewardModel, r: &Bf16Reference) -> Vec<f64> {
    let n = common::reference().episodes[&r.episode].num_frames;
    let frames = common::episode_frames(&r.episode, n);
    let enc = encoder();
    prefix_lengths(n)
        .into_iter()
        .map(|k| {
            let input = enc
                .encode(&frames, &prefix_frame_indices(k), 2.0, &r.instruction, None)
                .expect("encode");
            m.score_exact(&input).expect("score").log_prob
        })
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn bf16_matches_transformers_bf16_within_the_stated_tolerance() {
    let r = fixture();
    let reference_noise = max_abs_diff(&r.sdpa, &r.eager);
    assert!(
        reference_noise < BF16_TOLERANCE / 2.0,
        "the reference's own bf16 spread {reference_noise} leaves the tolerance meaningless"
    );
    let m = model(DType::BF16);
    assert_eq!(m.model().dtype(), DType::BF16);
    let bf16 = scores(&m, &r);
    let f32 = scores(&model(DType::F32), &r);
    let vs_sdpa = max_abs_diff(&bf16, &r.sdpa);
    let vs_eager = max_abs_diff(&bf16, &r.eager);
    let vs_f32 = max_abs_diff(&bf16, &f32);
    println!(
        "toprl bf16 {bf16:?}\ntransformers bf16 sdpa {:?}\nmax |toprl bf16 - transformers bf16| = {vs_sdpa:.4} \
         (sdpa), {vs_eager:.4} (eager); reference sdpa vs eager {reference_noise:.4}; toprl bf16 vs f32 {vs_f32:.4}",
        r.sdpa
    );
    assert!(
        vs_sdpa < BF16_TOLERANCE,
        "bf16 vs transformers bf16 (sdpa): {vs_sdpa}"
    );
    assert!(
        vs_eager < BF16_TOLERANCE,
        "bf16 vs transformers bf16 (eager): {vs_eager}"
    );
    // The run really was in bf16 (an f32 run would match f32 to ~1e-5).
    assert!(
        vs_f32 > 1e-3,
        "bf16 scores equal f32 ones ({vs_f32}): not computed in bf16?"
    );
    assert!(max_abs_diff(&f32, &r.f32) < 1e-3);
}

#[test]
fn f16_stays_close_to_the_f32_reference() {
    let r = fixture();
    let f16 = scores(&model(DType::F16), &r);
    let d = max_abs_diff(&f16, &r.f32);
    println!("toprl f16 {f16:?}\nmax |toprl f16 - transformers f32| = {d:.4}");
    assert!(f16.iter().all(|x| x.is_finite()));
    assert!(d < BF16_TOLERANCE, "f16 vs f32 reference: {d}");
}

#[test]
fn chunked_attention_equals_the_whole_score_matrix() {
    let r = fixture();
    let mut whole = model(DType::F32);
    whole.model_mut().set_attention_chunk_bytes(usize::MAX / 4);
    let mut chunked = model(DType::F32);
    // A few hundred bytes: one or two query rows per chunk in both the vision tower and the decoder.
    chunked.model_mut().set_attention_chunk_bytes(512);
    let a = scores(&whole, &r);
    let b = scores(&chunked, &r);
    let d = max_abs_diff(&a, &b);
    println!("max |chunked - whole| = {d:e}");
    assert!(d < 1e-5, "chunked attention changed the scores by {d}");
    assert!(max_abs_diff(&a, &r.f32) < 1e-3);
}
