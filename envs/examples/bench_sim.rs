//! Environment steps per second of the SO-101 pick-cube environment, with the front and wrist cameras
//! rendered at 128x128 (and, for reference, front only and physics only), driven by the scripted
//! expert's actions. Compare with `scripts/bench_sim_python.py` (lerobot-env-so101's SO101PickCube-v0).
//!
//! `cargo run --release -p toprl-envs --example bench_sim -- [STEPS] [IMAGE_SIZE]`; prints one JSON line
//! per configuration.

use std::time::Instant;

use toprl_envs::sim::{ScriptedExpert, SimConfig, So101Env, Task};

fn bench(cameras: &[&str], size: u32, steps: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let cfg = SimConfig {
        image_size: size,
        cameras: cameras.iter().map(|c| c.to_string()).collect(),
        ..SimConfig::for_task(Task::PickCube)
    };
    let mut env = So101Env::new(cfg)?;
    let mut seed = 0;
    env.reset(Some(seed))?;
    let mut expert = ScriptedExpert::new(&env, 0.3, seed);
    // Warm-up: first renders upload meshes and compile shaders.
    for _ in 0..5 {
        env.step(&expert.act(&env))?;
    }
    let start = Instant::now();
    for _ in 0..steps {
        let r = env.step(&expert.act(&env))?;
        if r.terminated || r.truncated {
            seed += 1;
            env.reset(Some(seed))?;
            expert.reset(&env);
        }
    }
    Ok(steps as f64 / start.elapsed().as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(300);
    let size: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    for cameras in [&["front", "wrist"][..], &["front"][..], &[][..]] {
        let n = if cameras.is_empty() { steps * 10 } else { steps };
        let sps = bench(cameras, size, n)?;
        println!(
            "{{\"impl\": \"toprl-envs\", \"task\": \"pick_cube\", \"cameras\": {:?}, \"image_size\": {size}, \"steps\": {n}, \"steps_per_second\": {sps:.1}}}",
            cameras
        );
    }
    Ok(())
}
