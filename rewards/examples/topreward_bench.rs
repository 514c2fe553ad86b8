//! Release-build timing of TOPReward scoring (the Rust side of scripts/bench_topreward.sh):
//!
//!     cargo run --release -p toprl-rewards --example topreward_bench -- MODEL FRAMES_DIR FPS INSTRUCTION MODE
//!
//! Loads the checkpoint and the frames, scores the episode in MODE (exact | incremental), and prints the
//! episode score as JSON with `timing: {load_seconds, score_seconds}` added, as `topreward score --json` does.
//! The same code path as `topreward score` (QwenPrefixEncoder + TopReward), without the trainer's
//! dependencies; scripts/bench_topreward.sh times the real `topreward` binary.

use std::time::Instant;

use toprl_rewards::qwen3_vl::{CheckpointFiles, DType, Device, Qwen3VL};
use toprl_rewards::topreward::{Mode, QwenPrefixEncoder, ScorerConfig, TopReward, TopRewardModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, frames, fps, instruction, mode] = args.as_slice() else {
        return Err("usage: topreward_bench MODEL FRAMES_DIR FPS INSTRUCTION exact|incremental".into());
    };
    let fps: f64 = fps.parse()?;
    let mode: Mode = mode.parse()?;
    let t0 = Instant::now();
    let files = CheckpointFiles::resolve(model)?;
    let encoder = QwenPrefixEncoder::from_checkpoint(&files, None, Default::default())?;
    let qwen = Qwen3VL::load(&files, &Device::Cpu, DType::F32)?;
    let frames = toprl_rewards::frames::load_image_folder(std::path::Path::new(frames))?;
    let mut scorer = TopReward::new(
        TopRewardModel::new(qwen),
        encoder,
        ScorerConfig {
            mode,
            cache_dir: None,
        },
        model.as_str(),
    )?;
    let load = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let score = scorer.score_uncached(&frames, fps, instruction)?;
    let scoring = t1.elapsed().as_secs_f64();
    let mut json = serde_json::to_value(&score)?;
    json["timing"] = serde_json::json!({"load_seconds": load, "score_seconds": scoring});
    println!("{json}");
    Ok(())
}
