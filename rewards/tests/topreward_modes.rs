//! Incremental mode's fixed resolution against exact mode, on an episode where the reference's `smart_resize`
//! gives every prefix length its own resolution: 5 frames of 320x240 under a small pixel budget
//! (`size = {shortest_edge: 4096, longest_edge: 153600}`), prefixes 1..5 resized to 224x320, 224x320, 160x224,
//! 160x224 and 128x160. Reference values: rewards/fixtures/make_mode_precision_fixtures.py (transformers).
//!
//! What this pins down:
//! - exact mode equals transformers on every prefix (each at its own resolution);
//! - incremental mode equals exact mode *at the whole episode's resolution* (128x160) on every prefix: the KV
//!   cache and vision reuse are exact, the only approximation is the resolution;
//! - the difference incremental - exact is printed and must be non-zero on the prefixes whose resolution
//!   differs (so this test cannot pass by accident), and zero where it is the same (the last prefix).

mod common;

use candle_core::{DType, Device};
use serde::Deserialize;
use toprl_rewards::assets::qwen3_tokenizer_json;
use toprl_rewards::qwen3_vl::processor::{SizeConfig, VideoProcessor, VideoProcessorConfig};
use toprl_rewards::qwen3_vl::{CheckpointFiles, Qwen3VL};
use toprl_rewards::topreward::prompt::{PromptBuilder, PromptConfig};
use toprl_rewards::topreward::{
    Mode, PrefixEncoder, QwenPrefixEncoder, ScorerConfig, TopReward, TopRewardModel, prefix_frame_indices,
};

#[derive(Debug, Deserialize)]
struct Fixture {
    resolution_episode: ResolutionEpisode,
}

#[derive(Debug, Deserialize)]
struct ResolutionEpisode {
    name: String,
    num_frames: usize,
    instruction: String,
    fps: f64,
    size: SizeConfig,
    exact: Vec<RefPrefix>,
}

#[derive(Debug, Deserialize)]
struct RefPrefix {
    prefix_length: usize,
    resized_hw: [usize; 2],
    num_tokens: usize,
    log_prob_true: f64,
}

fn fixture() -> ResolutionEpisode {
    let path = common::fixtures().join("topreward_modes_precision.json");
    let text = std::fs::read_to_string(&path).expect("fixture json");
    serde_json::from_str::<Fixture>(&text)
        .expect("fixture json parses")
        .resolution_episode
}

fn encoder(size: SizeConfig) -> QwenPrefixEncoder {
    let processor = VideoProcessor::new(VideoProcessorConfig {
        size,
        ..Default::default()
    })
    .expect("processor");
    let tok = qwen3_tokenizer_json().expect("Qwen3 tokenizer: run scripts/setup.sh");
    QwenPrefixEncoder::new(
        processor,
        PromptBuilder::from_tokenizer_file(&tok, PromptConfig::default()).expect("tokenizer"),
    )
}

fn model() -> TopRewardModel {
    let files = CheckpointFiles::from_dir(&common::tiny_model_dir()).expect("tiny model");
    TopRewardModel::new(Qwen3VL::load(&files, &Device::Cpu, DType::F32).expect("tiny model"))
}

#[test]
fn incremental_differs_from_exact_only_through_its_fixed_resolution() {
    let ep = fixture();
    let frames = common::episode_frames(&ep.name, ep.num_frames);
    let enc = encoder(ep.size);
    // The episode really changes resolution with the prefix length.
    let resolutions: Vec<[usize; 2]> = ep.exact.iter().map(|p| p.resized_hw).collect();
    assert_eq!(
        resolutions,
        vec![[224, 320], [224, 320], [160, 224], [160, 224], [128, 160]]
    );

    let mut exact = TopReward::new(
        model(),
        encoder(ep.size),
        ScorerConfig {
            mode: Mode::Exact,
            cache_dir: None,
        },
        "tiny",
    )
    .expect("scorer");
    let exact = exact
        .score_uncached(&frames, ep.fps, &ep.instruction)
        .expect("exact");
    let mut inc = TopReward::new(
        model(),
        encoder(ep.size),
        ScorerConfig {
            mode: Mode::Incremental,
            cache_dir: None,
        },
        "tiny",
    )
    .expect("scorer");
    let inc = inc
        .score_uncached(&frames, ep.fps, &ep.instruction)
        .expect("incremental");

    // Exact mode is the reference, prefix by prefix.
    for (p, (lp, n)) in ep.exact.iter().zip(exact.log_probs.iter().zip(&exact.num_tokens)) {
        assert_eq!(*n, p.num_tokens, "prefix {}", p.prefix_length);
        assert!(
            (lp - p.log_prob_true).abs() < 1e-3,
            "exact prefix {}: {lp} vs transformers {}",
            p.prefix_length,
            p.log_prob_true
        );
    }

    // Incremental = exact at the episode's resolution (what smart_resize gives all 5 frames, padded to 6).
    let m = model();
    let fixed = enc.resolution(6, 240, 320).expect("resolution");
    assert_eq!(fixed, (128, 160));
    let mut report = Vec::new();
    for (i, p) in ep.exact.iter().enumerate() {
        let input = enc
            .encode(
                &frames,
                &prefix_frame_indices(p.prefix_length),
                ep.fps,
                &ep.instruction,
                Some(fixed),
            )
            .expect("encode");
        let at_fixed = m.score_exact(&input).expect("score").log_prob;
        assert!(
            (inc.log_probs[i] - at_fixed).abs() < 1e-4,
            "prefix {}: incremental {} vs exact at {fixed:?} {at_fixed}",
            p.prefix_length,
            inc.log_probs[i]
        );
        let diff = inc.log_probs[i] - exact.log_probs[i];
        report.push(format!(
            "prefix {} at {:?} (exact) vs {fixed:?} (incremental): log p {:.4} vs {:.4}, diff {diff:+.4}",
            p.prefix_length, p.resized_hw, exact.log_probs[i], inc.log_probs[i]
        ));
        if p.resized_hw == [fixed.0, fixed.1] {
            assert!(diff.abs() < 1e-4, "same resolution, same score: {diff}");
        } else {
            assert!(
                diff.abs() > 1e-3,
                "prefix {}: resolution differs but diff {diff}",
                p.prefix_length
            );
        }
    }
    let max = exact
        .log_probs
        .iter()
        .zip(&inc.log_probs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("{}\nmax |incremental - exact| = {max:.4} nats", report.join("\n"));
    println!(
        "VOC exact {:?}, incremental {:?}; progress exact {:?}, incremental {:?}",
        exact.voc, inc.voc, exact.progress, inc.progress
    );
}
