//! Release-build timing of TOPReward scoring (the Rust side of scripts/bench_topreward.sh and
//! scripts/gpu_topreward_check.sh):
//!
//!     cargo run --release -p toprl-rewards --example topreward_bench -- \
//!         MODEL FRAMES_DIR FPS INSTRUCTION MODE [DEVICE] [DTYPE] [REPS]
//!
//! Loads the checkpoint on DEVICE (`cpu`, `cuda:N`, `metal`; default cpu) in DTYPE (`auto`, `f32`, `bf16`,
//! `f16`; default auto) and the frames, then scores the episode in MODE (exact | incremental) REPS times
//! (default 1) in the same process, printing one JSON line per repetition: the episode score with
//! `timing: {load_seconds, score_seconds}`, `device`, `dtype` and `rep` added, as `topreward score --json`
//! does. Repetitions after the first show the warm speed (a GPU's first pass also loads its kernels).
//! The same code path as `topreward score` (QwenPrefixEncoder + TopReward) without the trainer's
//! dependencies, so that a GPU build needs no FFmpeg: build it with
//! `--no-default-features --features cuda` (README, "TOPReward on GPUs").

use std::time::Instant;

use toprl_rewards::qwen3_vl::{CheckpointFiles, DeviceSpec, Precision, Qwen3VL};
use toprl_rewards::topreward::{Mode, QwenPrefixEncoder, ScorerConfig, TopReward, TopRewardModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: topreward_bench MODEL FRAMES_DIR FPS INSTRUCTION exact|incremental [DEVICE] [DTYPE] [REPS]";
    if !(5..=8).contains(&args.len()) {
        return Err(usage.into());
    }
    let (model, frames, instruction) = (&args[0], &args[1], &args[3]);
    let fps: f64 = args[2].parse().map_err(|e| format!("FPS {:?}: {e}", args[2]))?;
    let mode: Mode = args[4].parse()?;
    let device: DeviceSpec = args.get(5).map_or(Ok(DeviceSpec::Cpu), |s| s.parse())?;
    let precision: Precision = args.get(6).map_or(Ok(Precision::Auto), |s| s.parse())?;
    let reps: usize = args
        .get(7)
        .map_or(Ok(1), |s| s.parse())
        .map_err(|e| format!("REPS: {e}"))?;

    let t0 = Instant::now();
    let files = CheckpointFiles::resolve(model)?;
    let encoder = QwenPrefixEncoder::from_checkpoint(&files, None, Default::default())?;
    let (qwen, dtype) = Qwen3VL::load_on(&files, device, precision)?;
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
    for rep in 0..reps {
        let t1 = Instant::now();
        // The log-probs come back to the host as f64, so the clock stops after the device has finished.
        let score = scorer.score_uncached(&frames, fps, instruction)?;
        let scoring = t1.elapsed().as_secs_f64();
        let mut json = serde_json::to_value(&score)?;
        json["timing"] = serde_json::json!({"load_seconds": load, "score_seconds": scoring});
        json["device"] = serde_json::json!(device.to_string());
        json["dtype"] = serde_json::json!(format!("{dtype:?}").to_lowercase());
        json["rep"] = serde_json::json!(rep);
        println!("{json}");
    }
    Ok(())
}
