//! Property tests of the policy checkpoint reader on hostile input (see scripts/FUZZING.md): whatever a
//! checkpoint's `policy.json`, weights, optimiser state or trainer state hold, loading it (to act, or to
//! resume training) gives a result or a typed error, never a panic.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../tests/fuzz_support.rs"]
mod fuzz_support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use fuzz_support::{Damage, apply, damage_strategy, fuzz, hostile_json, replace_somewhere};
use proptest::prelude::*;
use toprl_policies::{TrainConfig, Trainer, cpu_device, load_policy};

/// One saved checkpoint (with optimiser state) per policy kind, written once per test process.
fn checkpoints() -> &'static [PathBuf] {
    static DIRS: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    &DIRS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let batch = demos(3, 1);
            let mut dirs = Vec::new();
            for (name, cfg) in all() {
                let mut t =
                    Trainer::new(cfg, normalizer(&batch), TrainConfig::default(), &cpu_device()).unwrap();
                t.step(&batch, &[1.0; 3]).unwrap();
                let path = dir.path().join(name);
                t.save(&path).unwrap();
                dirs.push(path);
            }
            (dir, dirs)
        })
        .1
}

fn copy_dir(from: &Path, to: &Path) -> Vec<String> {
    std::fs::create_dir_all(to).unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    names
}

/// Load for acting and for resuming; whatever loads must then act or fail with an error.
fn load_everything(dir: &Path) {
    let batch = demos(2, 9);
    if let Ok(mut policy) = load_policy(dir, &cpu_device()) {
        let _ = policy.act_batch(&batch.obs);
    }
    if let Ok(mut t) = Trainer::resume(dir, None, TrainConfig::default(), &cpu_device()) {
        let _ = t.step(&batch, &[1.0; 2]);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace a value somewhere in policy.json.
    Json {
        path: Vec<usize>,
        value: serde_json::Value,
    },
    /// Damage the bytes of one of the checkpoint's files.
    Bytes { file: usize, damage: Vec<Damage> },
}

#[test]
fn hostile_checkpoints_never_panic() {
    let mutation = prop_oneof![
        (proptest::collection::vec(any::<usize>(), 0..5), hostile_json())
            .prop_map(|(path, value)| Mutation::Json { path, value }),
        (any::<usize>(), damage_strategy()).prop_map(|(file, damage)| Mutation::Bytes { file, damage }),
    ];
    fuzz(
        "policy checkpoints",
        (any::<usize>(), mutation),
        |(kind, mutation)| {
            let source = &checkpoints()[kind % checkpoints().len()];
            let dir = tempfile::tempdir().unwrap();
            let names = copy_dir(source, dir.path());
            match mutation {
                Mutation::Json { path, value } => {
                    let file = dir.path().join(toprl_policies::checkpoint::CONFIG_FILE);
                    let mut doc: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
                    replace_somewhere(&mut doc, &path, value);
                    std::fs::write(&file, doc.to_string()).unwrap();
                }
                Mutation::Bytes { file, damage } => {
                    let file = dir.path().join(&names[file % names.len()]);
                    let bytes = std::fs::read(&file).unwrap();
                    std::fs::write(&file, apply(&bytes, &damage)).unwrap();
                }
            }
            load_everything(dir.path());
            Ok(())
        },
    );
}
