//! Property tests of the LeRobotDataset reader on hostile input (see scripts/FUZZING.md): whatever a
//! dataset's `meta/info.json`, parquet files, stats or video hold, opening it and reading every episode
//! gives a result or an error, never a panic, and never a path outside the dataset folder.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[path = "../../tests/fuzz_support.rs"]
mod fuzz_support;

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use fuzz_support::{Damage, apply, damage_strategy, fuzz, hostile_json, replace_somewhere};
use image::RgbImage;
use proptest::prelude::*;
use toprl_envs::dataset::{DatasetSpec, DatasetWriter, LeRobotDataset, read_progress};
use toprl_envs::episode::Episode;

const CAM: &str = "observation.images.front";

/// A small valid dataset (two episodes, one 64x48 camera), written once per test process.
fn base() -> &'static Path {
    static BASE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &BASE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ds");
            let mut w = DatasetWriter::create(&path, DatasetSpec::so101(30, &[(CAM, 64, 48)])).unwrap();
            for (e, n) in [(0usize, 4usize), (1, 3)] {
                let frames = (0..n)
                    .map(|f| RgbImage::from_pixel(64, 48, image::Rgb([(40 * f) as u8; 3])))
                    .collect();
                w.add_episode(&Episode {
                    index: e,
                    instruction: "pick the cube".into(),
                    fps: 30.0,
                    states: vec![vec![0.5; 6]; n],
                    actions: vec![vec![0.25; 6]; n],
                    cameras: [(CAM.to_string(), frames)].into_iter().collect(),
                    success: None,
                    true_progress: None,
                    environment_states: Vec::new(),
                })
                .unwrap();
            }
            w.finish().unwrap();
            (dir, path)
        })
        .1
}

/// Every file of the base dataset, relative to its root, sorted.
fn files() -> &'static [PathBuf] {
    static FILES: OnceLock<Vec<PathBuf>> = OnceLock::new();
    FILES.get_or_init(|| {
        let mut out = Vec::new();
        let mut stack = vec![base().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(base()).unwrap().to_path_buf());
                }
            }
        }
        out.sort();
        out
    })
}

fn copy_base(to: &Path) {
    for rel in files() {
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(base().join(rel), dst).unwrap();
    }
}

/// Open `root` and read every episode with its frames; on success the paths the metadata names are
/// relative paths of plain components (inside the root).
fn read_everything(root: &Path) -> Result<(), TestCaseError> {
    let Ok(ds) = LeRobotDataset::open(root) else {
        return Ok(());
    };
    for i in 0..ds.num_episodes().min(8) {
        if let Ok(meta) = ds.episode_meta(i) {
            let inside = |p: &Path| p.components().all(|c| matches!(c, Component::Normal(_)));
            prop_assert!(inside(&meta.data_path), "{:?}", meta.data_path);
            for span in meta.videos.values() {
                prop_assert!(inside(&span.path), "{:?}", span.path);
            }
        }
        let _ = ds.episode(i);
    }
    Ok(())
}

#[test]
fn hostile_info_json_values_never_panic_or_escape_the_root() {
    let info = std::fs::read_to_string(base().join("meta/info.json")).unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let strategy = (proptest::collection::vec(any::<usize>(), 0..4), hostile_json());
    fuzz("dataset meta/info.json values", strategy, |(path, value)| {
        let dir = tempfile::tempdir().unwrap();
        copy_base(dir.path());
        let mut doc = info.clone();
        replace_somewhere(&mut doc, &path, value);
        std::fs::write(dir.path().join("meta/info.json"), doc.to_string()).unwrap();
        read_everything(dir.path())
    });
}

#[test]
fn damaged_dataset_files_never_panic() {
    let strategy = (any::<usize>(), damage_strategy());
    fuzz(
        "dataset file bytes",
        strategy,
        |(which, damage): (usize, Vec<Damage>)| {
            let dir = tempfile::tempdir().unwrap();
            copy_base(dir.path());
            let rel = &files()[which % files().len()];
            let bytes = std::fs::read(base().join(rel)).unwrap();
            std::fs::write(dir.path().join(rel), apply(&bytes, &damage)).unwrap();
            read_everything(dir.path())
        },
    );
}

#[test]
fn damaged_progress_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("progress.parquet");
    let table = toprl_envs::dataset::ProgressTable {
        index: vec![0, 1, 2],
        episode_index: vec![0, 0, 0],
        frame_index: vec![0, 1, 2],
        progress: vec![0.0, 0.5, 1.0],
        weight: vec![1.0, 2.0, 2.0],
        ..Default::default()
    };
    toprl_envs::dataset::write_progress(&path, &table).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    fuzz("progress parquet bytes", damage_strategy(), |damage| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.parquet");
        std::fs::write(&p, apply(&bytes, &damage)).unwrap();
        if let Ok(t) = read_progress(&p) {
            prop_assert_eq!(t.index.len(), t.progress.len());
            prop_assert_eq!(t.index.len(), t.weight.len());
        }
        Ok(())
    });
}
