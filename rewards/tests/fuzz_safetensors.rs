//! Property tests of the Qwen3-VL checkpoint reader on hostile input (see scripts/FUZZING.md): whatever
//! a checkpoint's `config.json` or `model.safetensors` (header or data) hold, resolving and loading it
//! gives a model or a typed error, never a panic.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;
#[path = "../../tests/fuzz_support.rs"]
mod fuzz_support;

use std::path::Path;

use candle_core::{DType, Device};
use fuzz_support::{Damage, apply, damage_strategy, fuzz, hostile_json, replace_somewhere};
use proptest::prelude::*;
use toprl_rewards::qwen3_vl::{CheckpointFiles, Qwen3VL};

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace a value somewhere in config.json.
    Config {
        path: Vec<usize>,
        value: serde_json::Value,
    },
    /// Replace a value somewhere in the safetensors JSON header (shapes, dtypes, offsets, names).
    Header {
        path: Vec<usize>,
        value: serde_json::Value,
    },
    /// Damage the bytes of model.safetensors (header length, header text or tensor data).
    Bytes { damage: Vec<Damage> },
}

/// The safetensors file as (header JSON, tensor data).
fn split(bytes: &[u8]) -> (serde_json::Value, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), &bytes[8 + n..])
}

fn join(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    out
}

fn load(dir: &Path) {
    if let Ok(files) = CheckpointFiles::from_dir(dir) {
        let _ = Qwen3VL::load(&files, &Device::Cpu, DType::F32);
    }
}

#[test]
fn hostile_qwen_checkpoints_never_panic() {
    let tiny = common::tiny_model_dir();
    let config_text = std::fs::read_to_string(tiny.join("config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config_text).unwrap();
    let weights = std::fs::read(tiny.join("model.safetensors")).unwrap();
    let (header, data) = split(&weights);
    let mutation = prop_oneof![
        (proptest::collection::vec(any::<usize>(), 0..4), hostile_json())
            .prop_map(|(path, value)| Mutation::Config { path, value }),
        (proptest::collection::vec(any::<usize>(), 0..4), hostile_json())
            .prop_map(|(path, value)| Mutation::Header { path, value }),
        damage_strategy().prop_map(|damage| Mutation::Bytes { damage }),
    ];
    fuzz(
        "qwen3-vl checkpoint (config.json, safetensors)",
        mutation,
        |mutation| {
            let dir = tempfile::tempdir().unwrap();
            let mut config = config.clone();
            let mut bytes = None;
            match mutation {
                Mutation::Config { path, value } => replace_somewhere(&mut config, &path, value),
                Mutation::Header { path, value } => {
                    let mut h = header.clone();
                    replace_somewhere(&mut h, &path, value);
                    bytes = Some(join(&h, data));
                }
                Mutation::Bytes { damage } => bytes = Some(apply(&weights, &damage)),
            }
            std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
            let weights_path = dir.path().join("model.safetensors");
            match bytes {
                Some(b) => std::fs::write(&weights_path, b).unwrap(),
                None => std::fs::copy(tiny.join("model.safetensors"), &weights_path)
                    .map(drop)
                    .unwrap(),
            }
            load(dir.path());
            Ok(())
        },
    );
}
