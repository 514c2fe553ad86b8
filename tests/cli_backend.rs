//! `train` and `so101 policy predict` on the LibTorch backend (issue 13 item 1), end to end: the same tiny
//! experiment trained with `backend = "tch"` and with `flex` gives the same policy within tolerance.
//! Built only with `--features tch` (scripts/test.sh runs it against .venv-lerobot's PyTorch).
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::Path;
use std::process::Command;

use toprl_policies::smolvla::lerobot::write_f32_tensors;
use toprl_policies::{ObsBatch, cpu_device, load_policy};

/// A reach task learned by a Gaussian MLP (state only) for 6 steps; evaluation in MuJoCo included.
const TINY: &str = "[task]\nname = \"reach\"\nmax_steps = 20\n\
                    [data]\nsource = \"sim\"\nepisodes = 2\nnoise_levels = [0.0]\n\
                    [policy]\nkind = \"gaussian\"\nchunk = 2\n[policy.network]\nhidden = [16]\n\
                    [train]\nsteps = 6\nbatch_size = 8\neval_every = 3\nBACKEND\n[eval]\nepisodes = 1\n\
                    [[arms]]\nname = \"bc\"\nreward = \"none\"\n";

/// Relative tolerance between the two backends' trained actions (f32 kernels that round differently).
const REL_TOL: f32 = 1e-4;

fn train(dir: &Path, name: &str, backend_line: &str, extra: &[&str]) -> std::path::PathBuf {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, TINY.replace("BACKEND", backend_line)).unwrap();
    let out = dir.join(name);
    let result = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args(["--threads", "1", "--verbose"])
        .args(extra)
        .output()
        .unwrap();
    let log = without_ansi(&String::from_utf8_lossy(&result.stderr));
    assert!(result.status.success(), "{name}: {log}");
    // The run says where the policy trained (`--verbose`).
    let backend = if backend_line.contains("tch") || extra.contains(&"tch") {
        "tch"
    } else {
        "flex"
    };
    assert!(
        log.contains(&format!("backend={backend}")),
        "{name}: expected backend={backend} in the log:\n{log}"
    );
    out
}

fn predictions(run: &Path) -> Vec<f32> {
    let checkpoint = run.join("runs/bc/seed-0/checkpoint");
    let mut policy = load_policy(&checkpoint, &cpu_device()).unwrap();
    let dim = policy.config().state_dim();
    let states: Vec<f32> = (0..3 * dim).map(|i| (i as f32 * 7.3) % 40.0 - 20.0).collect();
    policy.act_batch(&ObsBatch::new(states, dim).unwrap()).unwrap()
}

#[test]
fn train_on_tch_matches_train_on_flex() {
    let dir = tempfile::tempdir().unwrap();
    let on_tch = train(dir.path(), "tch", "backend = \"tch\"\ndevice = \"cpu\"", &[]);
    let on_flex = train(dir.path(), "flex", "", &[]);
    // The run folder records the backend it trained on.
    let resolved = std::fs::read_to_string(on_tch.join("experiment.toml")).unwrap();
    assert!(resolved.contains("backend = \"tch\""), "{resolved}");
    let (a, b) = (predictions(&on_flex), predictions(&on_tch));
    let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    eprintln!("train flex vs tch: max |diff| = {diff:.3e} (scale {scale:.3e})");
    assert!(diff <= REL_TOL * scale, "flex {a:?}\ntch  {b:?}");
    // `--backend tch` on the command line does the same as the config key.
    let by_flag = train(dir.path(), "flag", "", &["--backend", "tch"]);
    assert_eq!(
        predictions(&by_flag),
        b,
        "--backend tch trains as backend = \"tch\""
    );

    // `so101 policy predict --backend tch` runs the checkpoint on LibTorch, as flex does.
    let checkpoint = on_tch.join("runs/bc/seed-0/checkpoint");
    let dim = load_policy(&checkpoint, &cpu_device())
        .unwrap()
        .config()
        .state_dim();
    let state: Vec<u8> = (0..dim)
        .flat_map(|i| (i as f32 * 3.5 - 8.0).to_le_bytes())
        .collect();
    let obs = dir.path().join("obs.safetensors");
    write_f32_tensors(&obs, &[("observation.state".into(), vec![dim], state)]).unwrap();
    let predict = |backend: &str| -> Vec<f32> {
        let out = Command::new(env!("CARGO_BIN_EXE_so101"))
            .args(["policy", "predict", "--json", "--backend", backend, "--policy"])
            .arg(&checkpoint)
            .arg("--observation")
            .arg(&obs)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let chunk: Vec<Vec<f32>> = serde_json::from_value(json["actions"].clone()).unwrap();
        chunk.concat()
    };
    let (flex, tch) = (predict("flex"), predict("tch"));
    let scale = flex.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let diff = flex
        .iter()
        .zip(&tch)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(
        !flex.is_empty() && diff <= REL_TOL * scale,
        "flex {flex:?}\ntch  {tch:?}"
    );
}

#[test]
fn a_gpu_this_machine_lacks_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gpu.toml");
    std::fs::write(
        &config,
        TINY.replace("BACKEND", "backend = \"tch\"\ndevice = \"cuda:1000\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(&config)
        .arg("--check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("gpu.toml") && err.contains("train.device") && err.contains("cuda:1000"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// The log without its terminal colour codes (`ESC [ ... m`).
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
