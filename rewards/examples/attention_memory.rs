//! Peak memory of one long TOPReward forward pass, with the attention scores chunked or whole:
//!
//!     cargo build --release -p toprl-rewards --example attention_memory
//!     /usr/bin/time -v target/release/examples/attention_memory MODEL FRAMES HEIGHT WIDTH CHUNK_MIB
//!
//! Scores one prefix of FRAMES synthetic frames of HEIGHT x WIDTH (a moving square over a gradient) with the
//! released Qwen3-VL pixel budget (`size = {shortest_edge: 4096, longest_edge: 25165824}`, so 64 frames of
//! 480x640 keep their resolution: 9600 video tokens). CHUNK_MIB is the attention score budget per chunk;
//! `whole` puts every score matrix in one chunk (the unchunked computation). Prints tokens, log p and seconds
//! as JSON; read the peak RSS from `/usr/bin/time -v` ("Maximum resident set size").

use std::time::Instant;

use image::RgbImage;
use toprl_rewards::qwen3_vl::processor::{SizeConfig, VideoProcessor, VideoProcessorConfig};
use toprl_rewards::qwen3_vl::{CheckpointFiles, DType, Device, Qwen3VL};
use toprl_rewards::topreward::prompt::{PromptBuilder, PromptConfig};
use toprl_rewards::topreward::{PrefixEncoder, QwenPrefixEncoder, TopRewardModel, prefix_frame_indices};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, frames, height, width, chunk] = args.as_slice() else {
        return Err("usage: attention_memory MODEL FRAMES HEIGHT WIDTH CHUNK_MIB|whole".into());
    };
    let (n, h, w): (usize, u32, u32) = (frames.parse()?, height.parse()?, width.parse()?);
    let chunk_bytes = match chunk.as_str() {
        "whole" => usize::MAX / 4,
        mib => mib.parse::<usize>()? << 20,
    };
    let files = CheckpointFiles::resolve(model)?;
    // The tiny test checkpoints declare max_position_embeddings = 4096; MRoPE positions of a long video stay far
    // below it (a temporal group advances them by its grid side, not its token count), so lift the token limit.
    let mut cfg = toprl_rewards::qwen3_vl::read_config(&files.config)?;
    cfg.text_config.max_position_embeddings = cfg.text_config.max_position_embeddings.max(1 << 20);
    // SAFETY: the weight files are memory-mapped read-only and not modified while loaded.
    let vb =
        unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files.weights, DType::F32, &Device::Cpu)? };
    let mut qwen = Qwen3VL::new(&cfg, vb)?;
    qwen.set_attention_chunk_bytes(chunk_bytes);
    let scorer = TopRewardModel::new(qwen).with_max_tokens(usize::MAX);
    let processor = VideoProcessor::new(VideoProcessorConfig {
        size: SizeConfig {
            shortest_edge: 4096,
            longest_edge: 25_165_824,
        },
        ..Default::default()
    })?;
    let tokenizer = match &files.tokenizer {
        Some(t) => t.clone(),
        None => toprl_rewards::assets::qwen3_tokenizer_json()?,
    };
    let encoder = QwenPrefixEncoder::new(
        processor,
        PromptBuilder::from_tokenizer_file(&tokenizer, PromptConfig::default())?,
    );
    let side = (h.min(w) / 4).max(1);
    let clip: Vec<RgbImage> = (0..n)
        .map(|i| {
            let x0 = (i as u32 * (w - side)) / (n as u32 - 1).max(1);
            RgbImage::from_fn(w, h, |x, y| {
                if (x0..x0 + side).contains(&x) && ((h - side) / 2..(h + side) / 2).contains(&y) {
                    image::Rgb([220, 40, 40])
                } else {
                    image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 96])
                }
            })
        })
        .collect();
    let input = encoder.encode(
        &clip,
        &prefix_frame_indices(n),
        2.0,
        "push the red square to the right",
        None,
    )?;
    let t0 = Instant::now();
    let score = scorer.score_exact(&input)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "frames": n, "height": h, "width": w, "grid_thw": [input.grid.t, input.grid.h, input.grid.w],
            "tokens": score.num_tokens, "log_prob": score.log_prob, "chunk": chunk, "seconds": secs
        })
    );
    Ok(())
}
