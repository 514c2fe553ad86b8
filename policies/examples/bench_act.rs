//! Training throughput of the ACT-style policy (samples/s) on Burn's flex CPU backend; the PyTorch
//! twin is `policies/bench/act_torch.py` (same layer sizes, batch and image size).
//!
//! `cargo run --release -p toprl-policies --example bench_act -- [batch] [steps] [warmup]`
//! Threads: flex uses rayon's global pool; set `RAYON_NUM_THREADS` to match torch's `--threads`.

use std::time::Instant;

use toprl_policies::act::ActConfig;
use toprl_policies::nets::CnnConfig;
use toprl_policies::{Batch, Normalizer, ObsBatch, PolicyConfig, TrainConfig, Trainer};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (batch, steps, warmup) = (arg(1, 16), arg(2, 20), arg(3, 3));
    let (state, action, chunk, cams, side) = (6, 6, 20, 1, 128);
    let cfg = ActConfig::new(state, action)
        .with_cameras(cams)
        .with_chunk_size(chunk)
        .with_d_model(128)
        .with_n_heads(4)
        .with_d_ff(512)
        .with_encoder_layers(2)
        .with_decoder_layers(1)
        .with_dropout(0.0)
        .with_cnn(
            CnnConfig::new()
                .with_channels(vec![16, 32, 64])
                .with_token_grid(4),
        );
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    let states: Vec<f32> = (0..batch * state).map(|_| next()).collect();
    let rgb: Vec<u8> = (0..batch * cams * side * side * 3)
        .map(|_| (next() * 255.0) as u8)
        .collect();
    let actions: Vec<f32> = (0..batch * chunk * action).map(|_| next()).collect();
    let obs = ObsBatch::new(states, state)?.with_images(rgb, cams, side, side)?;
    let data = Batch::new(obs, actions, chunk, action)?;
    let norm = Normalizer::identity(state, action);
    let mut trainer = Trainer::new(
        PolicyConfig::Act(cfg),
        norm,
        TrainConfig::default(),
        &toprl_policies::cpu_device(),
    )?;
    let w = vec![1.0; batch];
    for _ in 0..warmup {
        trainer.step(&data, &w)?;
    }
    let start = Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps {
        loss = trainer.step(&data, &w)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    println!(
        "burn-flex act: batch {batch} image {side}x{side}x{cams} chunk {chunk} steps {steps} threads {threads}: \
         {:.1} samples/s ({:.1} ms/step, last loss {loss:.4})",
        (batch * steps) as f64 / secs,
        1e3 * secs / steps as f64
    );
    Ok(())
}
