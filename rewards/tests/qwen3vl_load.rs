//! Loading Qwen3-VL checkpoints: the public dense configs (2B/4B/8B/32B) build by config alone, and bad
//! checkpoints (missing or corrupt weights, another architecture) are typed errors.

mod common;

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use toprl_rewards::qwen3_vl::{CheckpointFiles, Config, ModelError, Qwen3VL, read_config};

/// Hands out zero-cost stride-0 tensors and records every (name, shape) the model asks for.
type ShapeLog = Arc<Mutex<Vec<(String, Vec<usize>)>>>;

struct ShapeRecorder(ShapeLog);

impl SimpleBackend for ShapeRecorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .expect("test fixture")
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros(1, dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unexpected unchecked get of {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Config values of the public Qwen/Qwen3-VL-*-Instruct checkpoints (config.json on the hub).
fn public_config(name: &str) -> serde_json::Value {
    // (hidden, intermediate, layers, heads, kv heads, tie, vision depth, vision hidden, vision inter, deepstack)
    let (d, i, l, h, kv, tie, vd, vh, vi, ds): (
        usize,
        usize,
        usize,
        usize,
        usize,
        bool,
        usize,
        usize,
        usize,
        [usize; 3],
    ) = match name {
        "2B" => (2048, 6144, 28, 16, 8, true, 24, 1024, 4096, [5, 11, 17]),
        "4B" => (2560, 9728, 36, 32, 8, true, 24, 1024, 4096, [5, 11, 17]),
        "8B" => (4096, 12288, 36, 32, 8, false, 27, 1152, 4304, [8, 16, 24]),
        "32B" => (5120, 25600, 64, 64, 8, false, 27, 1152, 4304, [8, 16, 24]),
        _ => unreachable!(),
    };
    serde_json::json!({
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": 151655, "video_token_id": 151656,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653,
        "tie_word_embeddings": tie,
        "text_config": {
            "attention_bias": false, "head_dim": 128, "hidden_act": "silu", "hidden_size": d,
            "intermediate_size": i, "max_position_embeddings": 262144, "model_type": "qwen3_vl_text",
            "num_attention_heads": h, "num_hidden_layers": l, "num_key_value_heads": kv, "rms_norm_eps": 1e-6,
            "rope_scaling": {"mrope_interleaved": true, "mrope_section": [24, 20, 20], "rope_type": "default"},
            "rope_theta": 5000000, "tie_word_embeddings": tie, "vocab_size": 151936, "dtype": "bfloat16"
        },
        "vision_config": {
            "deepstack_visual_indexes": ds, "depth": vd, "hidden_act": "gelu_pytorch_tanh", "hidden_size": vh,
            "in_channels": 3, "intermediate_size": vi, "model_type": "qwen3_vl", "num_heads": 16,
            "num_position_embeddings": 2304, "out_hidden_size": d, "patch_size": 16, "spatial_merge_size": 2,
            "temporal_patch_size": 2
        }
    })
}

#[test]
fn dense_configs_build_by_config_alone() {
    // Parameter counts in billions the model cards give (rounded): 2B ~2.1, 4B ~4.4, 8B ~8.8, 32B ~33.4.
    for (name, lo, hi) in [
        ("2B", 2.0, 2.3),
        ("4B", 4.3, 4.5),
        ("8B", 8.6, 8.9),
        ("32B", 33.0, 33.6),
    ] {
        let cfg: Config = serde_json::from_value(public_config(name)).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let vb = VarBuilder::from_backend(Box::new(ShapeRecorder(log.clone())), DType::F32, Device::Cpu);
        Qwen3VL::new(&cfg, vb).unwrap();
        let mut asked = log.lock().unwrap().clone();
        let mut expected = cfg.parameter_shapes();
        asked.sort();
        expected.sort();
        assert_eq!(
            asked, expected,
            "{name}: the module reads exactly the checkpoint's tensors"
        );
        let billions = cfg.num_parameters() as f64 / 1e9;
        assert!((lo..hi).contains(&billions), "{name}: {billions:.3}B parameters");
    }
}

fn copy_tiny(dir: &std::path::Path) {
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(common::tiny_model_dir().join(f), dir.join(f)).expect("test fixture");
    }
}

#[test]
fn missing_weights_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::tiny_model_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let e = CheckpointFiles::from_dir(dir.path()).unwrap_err();
    assert!(matches!(e, ModelError::MissingWeights(_)), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    let e = CheckpointFiles::resolve("/no/such/dir").unwrap_err();
    assert!(matches!(e, ModelError::MissingDir(_)), "{e}");
}

#[test]
fn corrupt_weights_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path());
    let w = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let files = CheckpointFiles::from_dir(dir.path()).unwrap();
    let e = Qwen3VL::load(&files, &Device::Cpu, DType::F32).unwrap_err();
    assert!(matches!(e, ModelError::Weights { .. }), "{e}");
    std::fs::write(&w, b"garbage").unwrap();
    let e = Qwen3VL::load(&files, &Device::Cpu, DType::F32).unwrap_err();
    assert!(matches!(e, ModelError::Weights { .. }), "{e}");
}

#[test]
fn unsupported_architecture_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path());
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"model_type\": \"qwen3_vl\"", "\"model_type\": \"qwen3_vl_moe\"");
    std::fs::write(&cfg, text).unwrap();
    let e = read_config(&cfg).unwrap_err();
    assert!(
        matches!(e, ModelError::UnsupportedArchitecture { ref found, .. } if found == "qwen3_vl_moe"),
        "{e}"
    );
    std::fs::write(&cfg, "{").unwrap();
    assert!(matches!(
        read_config(&cfg).unwrap_err(),
        ModelError::BadConfig { .. }
    ));
}

#[test]
fn sharded_checkpoints_load_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::tiny_model_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    // Split the tiny checkpoint into two shards plus an index, as save_pretrained does for large models.
    let tensors =
        candle_core::safetensors::load(common::tiny_model_dir().join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (part, file) in [
        (a, "model-00001-of-00002.safetensors"),
        (b, "model-00002-of-00002.safetensors"),
    ] {
        let sub: std::collections::HashMap<_, _> =
            part.iter().map(|n| (n.clone(), tensors[n].clone())).collect();
        candle_core::safetensors::save(&sub, dir.path().join(file)).unwrap();
        for n in part {
            map.insert(n.clone(), serde_json::Value::String(file.into()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let files = CheckpointFiles::from_dir(dir.path()).unwrap();
    assert_eq!(files.weights.len(), 2);
    Qwen3VL::load(&files, &Device::Cpu, DType::F32).unwrap();
}
