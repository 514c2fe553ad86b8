//! TOPReward per-prefix log p(" True") against the transformers reference (tiny random Qwen3-VL), in exact
//! and incremental modes, plus the bad-input errors.
//!
//! The prefix encoder here replays the reference processor's outputs (token ids and resized frames recorded
//! by rewards/fixtures/make_qwen3vl_fixtures.py), so these tests check the model and the scoring alone.

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use image::RgbImage;
use toprl_rewards::qwen3_vl::{CheckpointFiles, GridThw, Qwen3VL};
use toprl_rewards::score::ProgressModel;
use toprl_rewards::topreward::tree::DEFAULT_PASS_TOKENS;
use toprl_rewards::topreward::{
    EpisodeRequest, Mode, PrefixEncoder, PrefixInput, ScorerConfig, TopReward, TopRewardError, TopRewardModel,
};

/// Replays the reference's encoded prefixes of one fixture episode.
struct ReplayEncoder {
    name: String,
    by_indices: BTreeMap<Vec<usize>, common::RefPrefix>,
}

impl ReplayEncoder {
    fn new(name: &str) -> Self {
        let r = common::reference();
        let by_indices = r.episodes[name]
            .prefixes
            .iter()
            .map(|p| (p.frame_indices.clone(), p.clone()))
            .collect();
        Self {
            name: name.to_string(),
            by_indices,
        }
    }
}

impl PrefixEncoder for ReplayEncoder {
    fn encode(
        &self,
        _frames: &[RgbImage],
        indices: &[usize],
        _fps: f64,
        _instruction: &str,
        resolution: Option<(usize, usize)>,
    ) -> Result<PrefixInput, TopRewardError> {
        let p = self
            .by_indices
            .get(indices)
            .ok_or_else(|| TopRewardError::Encode(format!("{indices:?}")))?;
        if let Some((h, w)) = resolution
            && [h, w] != p.resized_hw
        {
            return Err(TopRewardError::Encode(format!("no recorded prefix at {h}x{w}")));
        }
        let [t, gh, gw] = p.video_grid_thw;
        Ok(PrefixInput {
            input_ids: p.input_ids.clone(),
            score_position: p.input_ids.len() - 2,
            target_token_id: toprl_rewards::topreward::TRUE_TOKEN_ID,
            pixel_values: common::patchify(&common::resized_frames(&self.name, p)),
            grid: GridThw::new(t, gh, gw),
            group_frames: p.frame_indices.chunks(2).map(|c| (c[0], c[1])).collect(),
        })
    }

    fn resolution(&self, _n: usize, _h: usize, _w: usize) -> Result<(usize, usize), TopRewardError> {
        let last = self
            .by_indices
            .values()
            .max_by_key(|p| p.prefix_length)
            .expect("prefixes");
        Ok((last.resized_hw[0], last.resized_hw[1]))
    }

    fn settings_key(&self) -> String {
        format!("replay:{}", self.name)
    }
}

fn model() -> TopRewardModel {
    let files = CheckpointFiles::from_dir(&common::tiny_model_dir()).expect("test fixture");
    TopRewardModel::new(Qwen3VL::load(&files, &Device::Cpu, DType::F32).expect("test fixture"))
}

fn scorer(name: &str, mode: Mode) -> TopReward<ReplayEncoder> {
    TopReward::new(
        model(),
        ReplayEncoder::new(name),
        ScorerConfig {
            mode,
            cache_dir: None,
        },
        "tiny",
    )
    .expect("test fixture")
}

fn check_against_reference(name: &str, mode: Mode) -> Vec<f64> {
    let r = common::reference();
    let ep = &r.episodes[name];
    let frames = common::episode_frames(name, ep.num_frames);
    let mut s = scorer(name, mode);
    let score = s
        .score_episode(&frames, r.fps, &ep.instruction)
        .expect("test fixture");
    let lengths: Vec<usize> = ep.prefixes.iter().map(|p| p.prefix_length).collect();
    assert_eq!(score.prefix_lengths, lengths);
    for (p, (lp, nt)) in ep
        .prefixes
        .iter()
        .zip(score.log_probs.iter().zip(&score.num_tokens))
    {
        // f32 through the model on both sides: measured within 9e-6 of transformers on both fixtures.
        assert!(
            (lp - p.log_prob_true).abs() < 5e-5,
            "{name} {mode} prefix {}: {lp} vs reference {}",
            p.prefix_length,
            p.log_prob_true
        );
        assert_eq!(*nt, p.num_tokens);
    }
    let refs: Vec<f64> = ep.prefixes.iter().map(|p| p.log_prob_true).collect();
    let spread =
        refs.iter().cloned().fold(f64::MIN, f64::max) - refs.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        spread > 0.5,
        "the reference scores barely vary ({spread}); the test would be weak"
    );
    assert_eq!(
        score.progress,
        toprl_rewards::metrics::min_max_progress(&score.log_probs)
    );
    assert_eq!(score.voc, toprl_rewards::metrics::voc(&score.progress));
    score.log_probs
}

#[test]
fn exact_mode_matches_reference_without_resize() {
    check_against_reference("square256", Mode::Exact);
}

#[test]
fn exact_mode_matches_reference_with_per_prefix_resize() {
    check_against_reference("square100x80", Mode::Exact);
}

#[test]
fn incremental_equals_exact_at_fixed_resolution() {
    let exact = check_against_reference("square256", Mode::Exact);
    let inc = check_against_reference("square256", Mode::Incremental);
    for (a, b) in exact.iter().zip(&inc) {
        assert!((a - b).abs() < 1e-4, "incremental {b} vs exact {a}");
    }
}

#[test]
fn incremental_session_reuses_the_cache() {
    let r = common::reference();
    let ep = &r.episodes["square256"];
    let m = model();
    let enc = ReplayEncoder::new("square256");
    let frames = common::episode_frames("square256", ep.num_frames);
    let mut session = m.session();
    let mut total = 0;
    for p in &ep.prefixes {
        let input = enc
            .encode(&frames, &p.frame_indices, r.fps, &ep.instruction, None)
            .unwrap();
        let s = session.score(&input).unwrap();
        assert!((s.log_prob - p.log_prob_true).abs() < 1e-3);
        total += p.num_tokens;
    }
    // Only the new groups and the prompt suffix were recomputed (an odd prefix's padded last group is
    // replaced by the real pair in the next prefix, so about half the groups are encoded twice here).
    assert!(
        session.computed_tokens() * 5 < total * 3,
        "{} of {total}",
        session.computed_tokens()
    );
}

/// The packed prefix tree (what incremental mode runs) gives the session's scores, in one pass or one pass per
/// prefix, and computes no more tokens than the session.
#[test]
fn prefix_tree_equals_scoring_prefix_by_prefix() {
    let r = common::reference();
    let ep = &r.episodes["square256"];
    let m = model();
    let enc = ReplayEncoder::new("square256");
    let frames = common::episode_frames("square256", ep.num_frames);
    let inputs: Vec<PrefixInput> = ep
        .prefixes
        .iter()
        .map(|p| {
            enc.encode(&frames, &p.frame_indices, r.fps, &ep.instruction, None)
                .unwrap()
        })
        .collect();
    let mut session = m.session();
    let one_by_one: Vec<f64> = inputs
        .iter()
        .map(|i| session.score(i).unwrap().log_prob)
        .collect();
    let total: usize = inputs.iter().map(|i| i.score_position + 1).sum();
    for pass_tokens in [1, 40, DEFAULT_PASS_TOKENS] {
        let (last, rest) = inputs.split_last().unwrap();
        let mut tree = m.prefix_tree(last).unwrap().with_pass_tokens(pass_tokens);
        for (i, input) in rest.iter().enumerate() {
            assert_eq!(tree.add(input).unwrap(), i + 1);
        }
        let computed = tree.computed_tokens();
        let scores = tree.finish().unwrap();
        assert_eq!(scores.len(), inputs.len());
        // The trunk (the longest prefix) comes first.
        let tree_order: Vec<f64> = scores[1..]
            .iter()
            .chain(&scores[..1])
            .map(|s| s.log_prob)
            .collect();
        for ((a, b), p) in tree_order.iter().zip(&one_by_one).zip(&ep.prefixes) {
            assert!(
                (a - b).abs() < 2e-5,
                "pass of {pass_tokens} tokens, prefix {}: tree {a} vs one by one {b}",
                p.prefix_length
            );
        }
        for (s, i) in scores[1..].iter().zip(rest) {
            assert_eq!(s.num_tokens, i.input_ids.len());
        }
        // As little as the session recomputes (which shares with the previous prefix, the tree with the
        // longest one): well under the tokens the prefixes hold.
        assert!(
            computed <= session.computed_tokens() && computed * 5 < total * 3,
            "{computed} of {total} tokens computed, the session {}",
            session.computed_tokens()
        );
    }
}

/// A prefix that does not fit the model fails the tree with the same typed error as exact scoring.
#[test]
fn prefix_tree_refuses_what_exact_scoring_refuses() {
    let r = common::reference();
    let ep = &r.episodes["square256"];
    let enc = ReplayEncoder::new("square256");
    let frames = common::episode_frames("square256", ep.num_frames);
    let longest = ep.prefixes.last().unwrap();
    let input = enc
        .encode(&frames, &longest.frame_indices, r.fps, &ep.instruction, None)
        .unwrap();
    let short = model().with_max_tokens(input.input_ids.len() - 1);
    let e = short.prefix_tree(&input).unwrap_err();
    assert!(matches!(e, TopRewardError::TooLong { .. }), "{e}");
    let m = model();
    let mut tree = m.prefix_tree(&input).unwrap();
    let mut bad = input.clone();
    bad.target_token_id = u32::MAX;
    let e = tree.add(&bad).unwrap_err();
    assert!(matches!(e, TopRewardError::ScorePosition { .. }), "{e}");
}

#[test]
fn batch_scores_are_cached_by_content() {
    let r = common::reference();
    let ep = &r.episodes["square256"];
    let frames = common::episode_frames("square256", ep.num_frames);
    let dir = tempfile::tempdir().unwrap();
    let config = ScorerConfig {
        mode: Mode::Incremental,
        cache_dir: Some(dir.path().to_path_buf()),
    };
    let mut s = TopReward::new(model(), ReplayEncoder::new("square256"), config.clone(), "tiny").unwrap();
    let req = EpisodeRequest {
        frames: &frames,
        fps: r.fps,
        instruction: &ep.instruction,
    };
    let empty = EpisodeRequest {
        frames: &[],
        fps: r.fps,
        instruction: &ep.instruction,
    };
    let out = s.score_batch(&[req, empty]);
    let first = out[0].as_ref().unwrap().clone();
    assert!(matches!(out[1], Err(TopRewardError::EmptyEpisode)));
    // A new scorer with the same cache directory reads the entry back without running the model: an encoder
    // that fails on every call proves it.
    struct Failing;
    impl PrefixEncoder for Failing {
        fn encode(
            &self,
            _: &[RgbImage],
            _: &[usize],
            _: f64,
            _: &str,
            _: Option<(usize, usize)>,
        ) -> Result<PrefixInput, TopRewardError> {
            Err(TopRewardError::Encode("must not be called".into()))
        }
        fn resolution(&self, _: usize, _: usize, _: usize) -> Result<(usize, usize), TopRewardError> {
            Err(TopRewardError::Encode("must not be called".into()))
        }
        fn settings_key(&self) -> String {
            "replay:square256".into()
        }
    }
    let mut cached = TopReward::new(model(), Failing, config, "tiny").unwrap();
    assert_eq!(
        cached.score_frames(&frames, r.fps, &ep.instruction).unwrap(),
        first
    );
    // A different instruction is a different key.
    assert!(cached.score_frames(&frames, r.fps, "another task").is_err());
}

#[test]
fn bad_inputs_are_typed_errors() {
    let r = common::reference();
    let ep = &r.episodes["square256"];
    let frames = common::episode_frames("square256", ep.num_frames);
    let mut s = scorer("square256", Mode::Exact);
    let e = s.score_episode(&[], 2.0, "x").unwrap_err();
    assert!(matches!(e, TopRewardError::EmptyEpisode), "{e}");
    let e = s.score_episode(&frames, 0.0, "x").unwrap_err();
    assert!(matches!(e, TopRewardError::BadFps(_)), "{e}");
    let mut mixed = frames.clone();
    mixed[2] = RgbImage::new(10, 10);
    let e = s.score_episode(&mixed, 2.0, "x").unwrap_err();
    assert!(e.to_string().contains("frame 2 is 10x10"), "{e}");
    // Token limit: the shortest prefix has 111 tokens.
    let short = model().with_max_tokens(100);
    let mut s = TopReward::new(
        short,
        ReplayEncoder::new("square256"),
        ScorerConfig::default(),
        "tiny",
    )
    .unwrap();
    let e = s.score_episode(&frames, r.fps, &ep.instruction).unwrap_err();
    assert!(
        matches!(
            e,
            TopRewardError::TooLong {
                tokens: 111,
                limit: 100
            }
        ),
        "{e}"
    );
}

fn real_encoder() -> toprl_rewards::topreward::QwenPrefixEncoder {
    let files = CheckpointFiles::from_dir(&common::tiny_model_dir()).expect("tiny model");
    toprl_rewards::topreward::QwenPrefixEncoder::from_checkpoint(&files, None, Default::default())
        .expect("Qwen3 tokenizer from scripts/setup.sh")
}

#[test]
fn real_encoder_reproduces_the_reference_inputs() {
    let r = common::reference();
    let enc = real_encoder();
    for (name, ep) in &r.episodes {
        let frames = common::episode_frames(name, ep.num_frames);
        for p in &ep.prefixes {
            let input = enc
                .encode(&frames, &p.frame_indices, r.fps, &ep.instruction, None)
                .unwrap();
            assert_eq!(
                input.input_ids, p.input_ids,
                "{name} prefix {}: prompt token ids",
                p.prefix_length
            );
            assert_eq!(input.score_position, p.input_ids.len() - 2);
            assert_eq!([input.grid.t, input.grid.h, input.grid.w], p.video_grid_thw);
            let expected = common::patchify(&common::resized_frames(name, p));
            let diff = (&input.pixel_values - &expected)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(
                diff.to_scalar::<f32>().unwrap(),
                0.0,
                "{name} prefix {}: pixels",
                p.prefix_length
            );
        }
    }
}

#[test]
fn full_pipeline_matches_the_reference() {
    let r = common::reference();
    for (name, ep) in &r.episodes {
        let frames = common::episode_frames(name, ep.num_frames);
        let mut s = TopReward::new(model(), real_encoder(), ScorerConfig::default(), "tiny").unwrap();
        let score = s.score_episode(&frames, r.fps, &ep.instruction).unwrap();
        for (p, lp) in ep.prefixes.iter().zip(&score.log_probs) {
            assert!(
                (lp - p.log_prob_true).abs() < 1e-3,
                "{name} prefix {}: {lp} vs {}",
                p.prefix_length,
                p.log_prob_true
            );
        }
    }
}

/// A checkpoint with NaN (or Inf) weights must not give confident progress: the non-finite log p(True) is
/// an error naming the prefix, not min-max progress of 1.0 on every prefix.
#[test]
fn non_finite_model_outputs_are_errors_not_progress() {
    let r = common::reference();
    let (name, ep) = r.episodes.iter().next().expect("fixture episode");
    let frames = common::episode_frames(name, ep.num_frames);
    for poison in [f32::NAN, f32::INFINITY] {
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "generation_config.json"] {
            std::fs::copy(common::tiny_model_dir().join(f), dir.path().join(f)).unwrap();
        }
        let mut tensors =
            candle_core::safetensors::load(common::tiny_model_dir().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let key = tensors
            .keys()
            .find(|k| k.ends_with("language_model.norm.weight"))
            .cloned()
            .expect("final norm weight in the tiny checkpoint");
        let t = &tensors[&key];
        let bad = (t.ones_like().unwrap() * f64::from(poison)).unwrap();
        tensors.insert(key, bad);
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        let files = CheckpointFiles::from_dir(dir.path()).unwrap();
        let model = TopRewardModel::new(Qwen3VL::load(&files, &Device::Cpu, DType::F32).unwrap());
        let mut s = TopReward::new(model, real_encoder(), ScorerConfig::default(), "poisoned").unwrap();
        let err = s.score_episode(&frames, r.fps, &ep.instruction).unwrap_err();
        assert!(
            matches!(err, TopRewardError::NonFiniteScore { .. }),
            "{poison}: {err}"
        );
    }
}

#[test]
fn an_empty_instruction_is_refused() {
    let r = common::reference();
    let (name, ep) = r.episodes.iter().next().expect("fixture episode");
    let frames = common::episode_frames(name, ep.num_frames);
    let mut s = TopReward::new(model(), real_encoder(), ScorerConfig::default(), "tiny").unwrap();
    for instruction in ["", "  \n"] {
        assert!(matches!(
            s.score_episode(&frames, r.fps, instruction),
            Err(TopRewardError::EmptyInstruction)
        ));
    }
}
