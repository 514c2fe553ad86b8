//! Training throughput (samples/s) of LeRobot's ACT in toprl at LeRobot's default dims (ResNet18, dim
//! 512, 8 heads, feed-forward 3200, 4 encoder / 1 decoder / 4 VAE layers, latent 32, chunk 100, dropout
//! 0.1), random weights, one optimiser step per batch (forward, backward, clip, AdamW). The PyTorch twin
//! is `policies/bench/lerobot_act_torch.py` (LeRobot's own `ACTPolicy` on the same shapes).
//!
//! `cargo run --release -p toprl-policies --example bench_lerobot_act -- [batch 8] [steps 5] [warmup 2] [height 224] [width 224] [cameras 1]`
//! `BENCH_BACKEND=flex` (default) or `tch` (build with `--features tch`). Threads: flex uses rayon's
//! global pool (`RAYON_NUM_THREADS`); match the torch script's `--threads`.

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Bool, Tensor, TensorData};
use serde_json::json;
use toprl_policies::lerobot_act::config::{LeRobotActConfig, derive_dims};
use toprl_policies::lerobot_act::{Act, ActBatch, ActOptimizer, VaeTarget, act_loss};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (batch, steps, warmup) = (arg(1, 8), arg(2, 5), arg(3, 2));
    let (height, width, cameras) = (arg(4, 224), arg(5, 224), arg(6, 1));
    let (state, action) = (6, 6);
    let mut inputs = serde_json::Map::new();
    inputs.insert(
        "observation.state".into(),
        json!({"type": "STATE", "shape": [state]}),
    );
    for c in 0..cameras {
        inputs.insert(
            format!("observation.images.cam{c}"),
            json!({"type": "VISUAL", "shape": [3, height, width]}),
        );
    }
    let cfg: LeRobotActConfig = serde_json::from_value(json!({
        "input_features": inputs,
        "output_features": {"action": {"type": "ACTION", "shape": [action]}},
        "pretrained_backbone_weights": null,
    }))?;
    let dims = derive_dims(&cfg)?;
    let (backend, device) = match std::env::var("BENCH_BACKEND").as_deref() {
        #[cfg(feature = "tch")]
        Ok("tch") => ("burn-tch", toprl_policies::libtorch_device()),
        Ok("flex") | Err(_) => ("burn-flex", toprl_policies::cpu_device()),
        Ok(other) => {
            return Err(format!("BENCH_BACKEND={other}: expected flex or tch (with --features tch)").into());
        }
    };
    let device = device.autodiff();
    let chunk = dims.chunk_size;
    let latent = dims.latent_dim;
    let mut model = Act::new(dims, &device).with_lerobot_trainability();
    let mut optim = ActOptimizer::new(&cfg);

    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut values = |n: usize| -> Vec<f32> { (0..n).map(|_| next() * 2.0 - 1.0).collect() };
    let data = ActBatch {
        state: Some(Tensor::from_data(
            TensorData::new(values(batch * state), [batch, state]),
            &device,
        )),
        env_state: None,
        images: (0..cameras)
            .map(|_| {
                Tensor::from_data(
                    TensorData::new(values(batch * 3 * height * width), [batch, 3, height, width]),
                    &device,
                )
            })
            .collect(),
    };
    let target = VaeTarget {
        actions: Tensor::from_data(
            TensorData::new(values(batch * chunk * action), [batch, chunk, action]),
            &device,
        ),
        is_pad: Tensor::<2, Bool>::from_data(
            TensorData::new(vec![false; batch * chunk], [batch, chunk]),
            &device,
        ),
        noise: Tensor::from_data(TensorData::new(values(batch * latent), [batch, latent]), &device),
    };
    let mut step = |model: Act| -> Result<(Act, f32), Box<dyn std::error::Error>> {
        let (loss, _, _) = act_loss(&model, &data, &target, cfg.kl_weight, None)?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let value = loss.into_scalar::<f32>();
        let (model, _) = optim.step(model, grads)?;
        Ok((model, value))
    };
    for _ in 0..warmup {
        model = step(model)?.0;
    }
    let start = Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps {
        (model, loss) = step(model)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let params: usize = model.valid().num_params();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    println!(
        "{backend} lerobot-act ({params} parameter and buffer values): batch {batch} images {cameras}x3x{height}x{width} chunk {chunk} \
         steps {steps} threads {threads}: {:.2} samples/s ({:.1} ms/step, last loss {loss:.4})",
        (batch * steps) as f64 / secs,
        1e3 * secs / steps as f64
    );
    Ok(())
}
