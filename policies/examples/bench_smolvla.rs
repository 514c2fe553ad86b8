//! SmolVLA at its real shape (SmolVLM2-500M backbone, 16 VLM layers, 720-wide expert, chunk 50) with
//! random weights on Burn's flex CPU backend: action-chunk latency (batch 1, two 480x640 cameras,
//! 10 Euler steps with the prefix KV cache) and training samples/s (LeRobot's default freezing,
//! forward + backward + global clip + AdamW; also with the frozen VLM's image/language keys and
//! values cached per frame, `flow_losses_with_context`). The PyTorch twin is `bench_smolvla_torch.py`; run both
//! with `scripts/bench_smolvla.sh`.
//!
//! `cargo run --release -p toprl-policies --example bench_smolvla -- BATCH STEPS WARMUP`
//! Threads: set `RAYON_NUM_THREADS` to torch's thread count.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use toprl_policies::cpu_device;
use toprl_policies::smolvla::{
    Features, LossPadding, PolicyFeature, SmolVla, SmolVlaBatch, SmolVlaConfig, SmolVlaDims,
    SmolVlaOptimizer, VlmConfig, per_sample_flow_loss,
};

/// SmolVLM2-500M-Video-Instruct's backbone shape (as in bench_smolvla_torch.py).
const REAL_VLM: &str = r#"{
  "scale_factor": 4, "tie_word_embeddings": false,
  "text_config": {"vocab_size": 49280, "hidden_size": 960, "intermediate_size": 2560,
    "num_hidden_layers": 32, "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64,
    "rms_norm_eps": 1e-5},
  "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "image_size": 512, "patch_size": 16, "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh"}
}"#;

const STATE: usize = 6;
const ACTION: usize = 6;
const H: usize = 480;
const W: usize = 640;
const PROMPT: usize = 16;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
    fn vec(&mut self, n: usize, normal: bool) -> Vec<f32> {
        (0..n)
            .map(|_| if normal { self.normal() } else { self.uniform() })
            .collect()
    }
}

fn make_batch(b: usize, rng: &mut Rng, device: &Device) -> SmolVlaBatch {
    let image = |rng: &mut Rng| {
        Tensor::from_data(
            TensorData::new(rng.vec(b * 3 * H * W, false), [b, 3, H, W]),
            device,
        )
    };
    let tokens: Vec<i64> = (0..b * PROMPT).map(|i| 20 + (i as i64 * 37) % 380).collect();
    SmolVlaBatch {
        images: vec![image(rng), image(rng)],
        image_masks: vec![],
        state: Tensor::from_data(TensorData::new(rng.vec(b * STATE, true), [b, STATE]), device),
        tokens: Tensor::from_data(TensorData::new(tokens, [b, PROMPT]), device),
        token_mask: Tensor::from_data(TensorData::new(vec![true; b * PROMPT], [b, PROMPT]), device),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (batch, steps, warmup) = (arg(1, 2), arg(2, 2), arg(3, 1));
    let vlm: VlmConfig = serde_json::from_str(REAL_VLM)?;
    let feature = |kind: &str, shape: Vec<usize>| PolicyFeature {
        kind: kind.into(),
        shape,
    };
    let cfg = SmolVlaConfig {
        input_features: Features(vec![
            ("observation.state".into(), feature("STATE", vec![STATE])),
            (
                "observation.images.front".into(),
                feature("VISUAL", vec![3, H, W]),
            ),
            (
                "observation.images.wrist".into(),
                feature("VISUAL", vec![3, H, W]),
            ),
        ]),
        output_features: Features(vec![("action".into(), feature("ACTION", vec![ACTION]))]),
        ..SmolVlaConfig::default()
    };
    let dims = SmolVlaDims::new(&cfg, &vlm)?;
    let chunk = cfg.chunk_size;
    let amax = cfg.max_action_dim;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);

    // Action-chunk latency, batch 1.
    let device = cpu_device();
    device.seed(0);
    let model = SmolVla::new(dims.clone(), &device);
    let params: usize = model
        .named_shapes()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let one = make_batch(1, &mut rng, &device);
    let noise = Tensor::<3>::from_data(
        TensorData::new(rng.vec(chunk * amax, true), [1, chunk, amax]),
        &device,
    );
    let mut latency = 0.0;
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let actions = model.sample_actions(&one, noise.clone())?;
        let _ = actions.into_data();
        if i >= warmup {
            latency += t0.elapsed().as_secs_f64();
        }
    }
    latency /= steps as f64;
    drop(model);

    // Training throughput with LeRobot's default freezing and optimiser.
    let device = cpu_device().autodiff();
    let mut model = SmolVla::new(dims, &device).with_lerobot_trainability(&cfg);
    let data = make_batch(batch, &mut rng, &device);
    let actions = Tensor::<3>::from_data(
        TensorData::new(rng.vec(batch * chunk * ACTION, true), [batch, chunk, ACTION]),
        &device,
    );
    let noise = Tensor::<3>::from_data(
        TensorData::new(rng.vec(batch * chunk * amax, true), [batch, chunk, amax]),
        &device,
    );
    let time: Vec<f32> = (0..batch).map(|i| 0.1 + 0.8 * i as f32 / batch as f32).collect();
    let mut optim = SmolVlaOptimizer::new(&cfg);
    let mut step_time = 0.0;
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let losses = model.flow_losses(&data, actions.clone(), noise.clone(), &time, None)?;
        let loss = per_sample_flow_loss(losses, &LossPadding::AllElements).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (next, _) = optim.step(cfg.optimizer_lr, model, grads)?;
        model = next;
        if i >= warmup {
            step_time += t0.elapsed().as_secs_f64();
        }
    }
    step_time /= steps as f64;

    // The same step with the frozen VLM's image/language keys and values cached per frame
    // (encoded once, outside the timed loop): only the state token and the expert run.
    let context = model.encode_context(&data)?;
    let mut cached_time = 0.0;
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let losses = model.flow_losses_with_context(
            &context,
            data.state.clone(),
            actions.clone(),
            noise.clone(),
            &time,
        )?;
        let loss = per_sample_flow_loss(losses, &LossPadding::AllElements).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (next, _) = optim.step(cfg.optimizer_lr, model, grads)?;
        model = next;
        if i >= warmup {
            cached_time += t0.elapsed().as_secs_f64();
        }
    }
    cached_time /= steps as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "toprl-burn-flex",
            "threads": std::env::var("RAYON_NUM_THREADS").ok(),
            "batch": batch,
            "params": params,
            "chunk_latency_s": latency,
            "train_step_s": step_time,
            "train_samples_per_s": batch as f64 / step_time,
            "cached_context_train_step_s": cached_time,
            "cached_context_train_samples_per_s": batch as f64 / cached_time,
        })
    );
    Ok(())
}
