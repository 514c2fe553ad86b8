//! SmolVLA `model.safetensors` IO: strict loading (f32 and bf16), saving in LeRobot's names and
//! layouts, and LeRobot 0.4.4 itself loading what toprl saved (strict `load_model`).
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use toprl_policies::cpu_device;
use toprl_policies::smolvla::{SmolVla, SmolVlaConfig, SmolVlaDims, VlmConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smolvla")
}

fn configs() -> (SmolVlaConfig, VlmConfig) {
    let cfg = SmolVlaConfig::from_file(fixtures().join("checkpoint/config.json")).unwrap();
    let vlm = VlmConfig::from_file(fixtures().join("vlm/config.json")).unwrap();
    (cfg, vlm)
}

fn dims() -> SmolVlaDims {
    let (cfg, vlm) = configs();
    SmolVlaDims::new(&cfg, &vlm).unwrap()
}

/// name -> (dtype, shape, raw bytes)
fn read_raw(path: &Path) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn write_raw(path: &Path, tensors: &HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn original() -> PathBuf {
    fixtures().join("checkpoint/model.safetensors")
}

#[test]
fn save_writes_lerobots_names_shapes_and_values() {
    let device = cpu_device();
    let model = SmolVla::load_safetensors(dims(), original(), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("model.safetensors");
    model.save_safetensors(&saved).unwrap();
    let a = read_raw(&original());
    let b = read_raw(&saved);
    let mut ka: Vec<_> = a.keys().collect();
    let mut kb: Vec<_> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "key sets differ");
    for (name, (dtype, shape, bytes)) in &a {
        let (d2, s2, b2) = &b[name];
        assert_eq!((*dtype, shape), (*d2, s2), "{name}");
        assert!(bytes == b2, "{name}: values changed in the round trip");
    }
    // And the saved file loads strictly again.
    SmolVla::load_safetensors(dims(), &saved, &device).unwrap();
}

#[test]
fn bf16_checkpoints_load() {
    let mut raw = read_raw(&original());
    for (dtype, _, bytes) in raw.values_mut() {
        let converted: Vec<u8> = bytes
            .chunks_exact(4)
            .flat_map(|c| half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
            .collect();
        *dtype = Dtype::BF16;
        *bytes = converted;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_raw(&path, &raw);
    let model = SmolVla::load_safetensors(dims(), &path, &cpu_device()).unwrap();
    let name = "model.vlm_with_expert.lm_expert.layers.1.self_attn.k_proj.weight";
    let (shape, values) = model.named_tensor(name).unwrap();
    let (_, s, b) = &raw[name];
    assert_eq!(&shape, s);
    let expected: Vec<f32> = b
        .chunks_exact(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(values, expected);
}

fn load_err(raw: &HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_raw(&path, raw);
    let err = SmolVla::load_safetensors(dims(), &path, &cpu_device()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("model.safetensors"), "error names the file: {msg}");
    msg
}

#[test]
fn missing_extra_and_misshaped_tensors_are_refused_by_name() {
    let raw = read_raw(&original());
    let missing = "model.vlm_with_expert.lm_expert.layers.2.mlp.up_proj.weight";
    let mut r = raw.clone();
    r.remove(missing);
    let msg = load_err(&r);
    assert!(msg.contains(missing) && msg.contains("missing"), "{msg}");

    let mut r = raw.clone();
    r.insert(
        "model.unexpected.weight".into(),
        (Dtype::F32, vec![1], vec![0; 4]),
    );
    let msg = load_err(&r);
    assert!(msg.contains("model.unexpected.weight"), "{msg}");

    let mut r = raw.clone();
    let name = "model.state_proj.weight";
    let (_, shape, bytes) = r[name].clone();
    r.insert(name.into(), (Dtype::F32, vec![shape[1], shape[0]], bytes));
    let msg = load_err(&r);
    assert!(msg.contains(name) && msg.contains("shape"), "{msg}");
}

fn lerobot_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = root.join(".venv-lerobot/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `scripts/setup.sh` (it installs lerobot==0.4.4 into .venv-lerobot)",
        python.display()
    );
    python
}

#[test]
fn lerobot_loads_what_toprl_saves() {
    let python = lerobot_python();
    let device = cpu_device();
    let (cfg, vlm) = configs();
    let model = SmolVla::load(&cfg, &vlm, original(), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("model.safetensors");
    model.save_safetensors(&saved).unwrap();
    // LeRobot's own loader (`load_model_as_safetensor`, strict) into a SmolVLAPolicy built from the
    // checkpoint's config; then every tensor must equal the original checkpoint's.
    let script = r#"
import sys, torch
from safetensors.torch import load_file
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy
cfg = PreTrainedConfig.from_pretrained("checkpoint")
policy = SmolVLAPolicy(cfg)
PreTrainedPolicy._load_as_safetensor(policy, sys.argv[1], "cpu", True)
ref = load_file("checkpoint/model.safetensors")
sd = policy.state_dict()
assert set(sd) == set(ref), set(sd) ^ set(ref)
for k, v in ref.items():
    assert torch.equal(sd[k], v), k
print("OK", len(ref))
"#;
    let out = Command::new(&python)
        .current_dir(fixtures())
        .env("HF_HUB_OFFLINE", "1")
        .args(["-c", script])
        .arg(&saved)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "LeRobot could not load toprl's model.safetensors:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// At smolvla_base's real shape (SmolVLM2-500M backbone), the Burn model expects exactly LeRobot's
/// `model.safetensors` keys and shapes (`make_real_shape_names.py`, built on torch's meta device):
/// the real checkpoint loads strictly. Nothing is allocated here (Burn parameters are lazy).
#[test]
fn real_shape_names_match_lerobot() {
    let text = std::fs::read_to_string(fixtures().join("real_shape_names.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let vlm: VlmConfig = serde_json::from_value(v["vlm_config"].clone()).unwrap();
    let cfg = SmolVlaConfig::default();
    let dims = SmolVlaDims::new(&cfg, &vlm).unwrap();
    let model = SmolVla::new(dims, &cpu_device());
    let ours: std::collections::BTreeMap<String, Vec<usize>> = model.named_shapes().into_iter().collect();
    let theirs: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_value(v["tensors"].clone()).unwrap();
    let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "{only_ours:?} / {only_theirs:?}"
    );
    assert_eq!(ours, theirs);
    let total: usize = ours.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(total as u64, v["num_parameters"].as_u64().unwrap());
    assert_eq!(total, 450_046_176);
}
