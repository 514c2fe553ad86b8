//! Packed prefill (what `topreward serve` runs for the chat requests waiting together): several prompts in one
//! decoder pass, their media in shared vision batches, must give each prompt what prefilling it alone gives,
//! and each session must decode on from its own slice of the packed cache.

mod common;

use candle_core::{DType, Device};
use toprl_rewards::assets::qwen3_tokenizer_json;
use toprl_rewards::multimodal::{
    Message, MultimodalEncoder, MultimodalError, MultimodalInput, Part, Session, StepLogProbs,
    TemplateOptions,
};
use toprl_rewards::qwen3_vl::processor::VideoMetadata;
use toprl_rewards::qwen3_vl::{CheckpointFiles, Qwen3VL};

fn max_diff(a: &StepLogProbs, b: &StepLogProbs) -> f32 {
    assert_eq!(a.0.len(), b.0.len());
    a.0.iter()
        .zip(&b.0)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn user(content: Vec<Part>) -> Vec<Message> {
    vec![Message {
        role: "user".into(),
        content,
    }]
}

/// A text-only prompt, an image, and two videos of different sizes and lengths (three group sizes).
fn inputs() -> Vec<MultimodalInput> {
    let tokenizer = qwen3_tokenizer_json().expect("the Qwen3 tokenizer: run scripts/setup.sh");
    let enc = MultimodalEncoder::from_checkpoint(&common::tiny_model_dir(), &tokenizer).expect("encoder");
    let small = common::episode_frames("square100x80", 4);
    let large = common::episode_frames("square320x240", 3);
    let video = |frames: &[image::RgbImage]| Part::Video {
        frames: frames.to_vec(),
        metadata: VideoMetadata {
            fps: 2.0,
            frame_indices: None,
        },
    };
    let question = || Part::Text("Does the video complete the task? The answer is:".into());
    let options = TemplateOptions {
        add_generation_prompt: true,
        continue_final_message: false,
    };
    [
        user(vec![Part::Text("Say something.".into())]),
        user(vec![Part::Image(large[0].clone()), question()]),
        user(vec![video(&small), question()]),
        user(vec![video(&large), question()]),
    ]
    .iter()
    .map(|m| enc.encode(m, options).expect("encode"))
    .collect()
}

#[test]
fn packed_prefill_equals_prefill_one_by_one_and_decodes_on() {
    let files = CheckpointFiles::from_dir(&common::tiny_model_dir()).expect("fixture");
    let model = Qwen3VL::load(&files, &Device::Cpu, DType::F32).expect("fixture");
    let inputs = inputs();
    let refs: Vec<&MultimodalInput> = inputs.iter().collect();
    let alone: Vec<(Session, StepLogProbs)> = inputs
        .iter()
        .map(|i| Session::prefill(&model, i, 100_000).expect("prefill"))
        .collect();
    // One pass for all, and passes of about one prompt each.
    for pass_tokens in [usize::MAX, 1] {
        let packed = Session::prefill_many(&model, &refs, 100_000, pass_tokens).results;
        assert_eq!(packed.len(), inputs.len());
        for (k, (result, (single, single_lp))) in packed.into_iter().zip(&alone).enumerate() {
            let (mut session, lp) = result.expect("packed prefill");
            let d = max_diff(&lp, single_lp);
            assert!(
                d < 1e-4,
                "prompt {k}, pass of {pass_tokens}: log-probs differ by {d}"
            );
            assert_eq!(session.len, single.len);
            // Two decoding steps from the packed cache's slice equal those of the lone session.
            let mut lone = Session::prefill(&model, &inputs[k], 100_000).expect("prefill").0;
            for token in [lp.argmax(None), 3007] {
                let (a, b) = (
                    session.step(token).expect("step"),
                    lone.step(token).expect("step"),
                );
                let d = max_diff(&a, &b);
                assert!(
                    d < 1e-4,
                    "prompt {k}: step after the packed prefill differs by {d}"
                );
            }
        }
    }
}

#[test]
fn a_prompt_over_the_limit_fails_alone() {
    let files = CheckpointFiles::from_dir(&common::tiny_model_dir()).expect("fixture");
    let model = Qwen3VL::load(&files, &Device::Cpu, DType::F32).expect("fixture");
    let inputs = inputs();
    let refs: Vec<&MultimodalInput> = inputs.iter().collect();
    let limit = inputs[2].input_ids.len();
    let results = Session::prefill_many(&model, &refs, limit, usize::MAX).results;
    for (input, result) in inputs.iter().zip(results) {
        match result {
            Ok((session, _)) => {
                assert!(input.input_ids.len() <= limit && session.len == input.input_ids.len())
            }
            Err(MultimodalError::TooLong { tokens, limit: l }) => {
                assert!(tokens > limit && l == limit, "{tokens} {l}")
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(
        inputs.iter().any(|i| i.input_ids.len() > limit),
        "the test needs a prompt over the limit"
    );
}
