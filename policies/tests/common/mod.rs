//! Tiny configurations and synthetic demonstrations shared by the policy tests.
#![allow(dead_code, clippy::unwrap_used)] // test helpers

use toprl_policies::act::ActConfig;
use toprl_policies::flow::FlowConfig;
use toprl_policies::gaussian::{GaussianLoss, GaussianMlpConfig};
use toprl_policies::nets::CnnConfig;
use toprl_policies::{Batch, Device, Normalizer, ObsBatch, PolicyConfig};

/// The device the policy tests run on: flex, or LibTorch's CPU when built with `--features tch`
/// (scripts/test.sh runs tests/policies.rs both ways).
pub fn test_device() -> Device {
    #[cfg(feature = "tch")]
    {
        toprl_policies::libtorch_device()
    }
    #[cfg(not(feature = "tch"))]
    {
        toprl_policies::cpu_device()
    }
}

pub const STATE: usize = 4;
pub const ACTION: usize = 3;
pub const CHUNK: usize = 2;
pub const CAMS: usize = 2;
pub const SIDE: usize = 16;

pub fn gaussian(loss: GaussianLoss) -> PolicyConfig {
    PolicyConfig::Gaussian(
        GaussianMlpConfig::new(STATE, ACTION)
            .with_chunk_size(CHUNK)
            .with_hidden(vec![64, 64])
            .with_loss(loss),
    )
}

fn cnn() -> CnnConfig {
    CnnConfig::new().with_channels(vec![8, 16]).with_token_grid(2)
}

pub fn act() -> PolicyConfig {
    PolicyConfig::Act(
        ActConfig::new(STATE, ACTION)
            .with_cameras(CAMS)
            .with_chunk_size(CHUNK)
            .with_d_model(32)
            .with_n_heads(2)
            .with_d_ff(64)
            .with_encoder_layers(1)
            .with_decoder_layers(1)
            .with_dropout(0.0)
            .with_cnn(cnn()),
    )
}

pub fn flow() -> PolicyConfig {
    PolicyConfig::Flow(
        FlowConfig::new(STATE, ACTION)
            .with_cameras(CAMS)
            .with_chunk_size(CHUNK)
            .with_d_model(32)
            .with_n_heads(2)
            .with_d_ff(64)
            .with_layers(2)
            .with_text_buckets(64)
            .with_num_steps(10)
            .with_cnn(cnn()),
    )
}

pub fn all() -> Vec<(&'static str, PolicyConfig)> {
    vec![
        ("gaussian", gaussian(GaussianLoss::Nll)),
        ("act", act()),
        ("flow", flow()),
    ]
}

/// Deterministic pseudo-random numbers in [0, 1).
pub fn hash01(i: u64) -> f32 {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 40) as f32 / (1u64 << 24) as f32
}

/// `n` demonstrations: states in degrees-like units, two camera images whose content depends on the
/// sample, an instruction, and an action chunk that is a fixed function of the sample.
pub fn demos(n: usize, salt: u64) -> Batch {
    let mut states = Vec::new();
    let mut rgb = Vec::new();
    let mut actions = Vec::new();
    let mut instructions = Vec::new();
    for s in 0..n {
        let k = (s as u64) * 1000 + salt * 7_000_000;
        for j in 0..STATE {
            states.push(hash01(k + j as u64) * 90.0 - 45.0);
        }
        for c in 0..CAMS {
            for p in 0..SIDE * SIDE * 3 {
                let v = hash01(k + 100 + (c * 10_000 + p) as u64);
                rgb.push((v * 255.0) as u8);
            }
        }
        for j in 0..CHUNK * ACTION {
            actions.push(hash01(k + 500 + j as u64) * 60.0 - 30.0);
        }
        instructions.push(if s % 2 == 0 {
            "pick up the red cube".to_string()
        } else {
            "put the pen in the cup".into()
        });
    }
    let obs = ObsBatch::new(states, STATE)
        .unwrap()
        .with_images(rgb, CAMS, SIDE, SIDE)
        .unwrap()
        .with_instructions(instructions)
        .unwrap();
    Batch::new(obs, actions, CHUNK, ACTION).unwrap()
}

pub fn normalizer(batch: &Batch) -> Normalizer {
    Normalizer::fit(&batch.obs.states, STATE, &batch.actions, ACTION).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
