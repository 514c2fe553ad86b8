//! LeRobotDataset parity: datasets written by LeRobot 0.4.4 (envs/fixtures/make_lerobot_fixtures.py) read
//! back with the values LeRobot returns; datasets toprl writes read back by toprl and by LeRobot itself;
//! bad input gives typed errors and writes nothing.

// Test helpers outside #[test] functions panic on broken fixtures by design.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use image::RgbImage;
use serde_json::Value;
use toprl_envs::dataset::{DatasetError, DatasetSpec, DatasetWriter, LeRobotDataset, VideoCodec};
use toprl_envs::episode::Episode;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lerobot")
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// 8x8 block means on the uint8 scale, row-major blocks, RGB interleaved (as the fixture script).
fn block_means(img: &RgbImage, block: u32) -> Vec<f64> {
    let (w, h) = img.dimensions();
    let mut out = Vec::new();
    for by in 0..h / block {
        for bx in 0..w / block {
            let mut sum = [0f64; 3];
            for y in by * block..(by + 1) * block {
                for x in bx * block..(bx + 1) * block {
                    let p = img.get_pixel(x, y).0;
                    for c in 0..3 {
                        sum[c] += f64::from(p[c]);
                    }
                }
            }
            out.extend(sum.iter().map(|s| s / f64::from(block * block)));
        }
    }
    out
}

fn mean_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Tolerance for 8x8 block means (uint8 scale) of frames decoded here vs by LeRobot from the same file:
/// both go through libdav1d / FFmpeg's H.264 decoder, only the YUV -> RGB conversion may round differently.
const MAX_DECODER_DIFF: f64 = 1.0;
/// Codec tolerance for 8x8 block means of tiny frames encoded at CRF 30 vs the source frames.
const MAX_BLOCK_DIFF: f64 = 3.0;

fn check_against_lerobot(dir: &str, expected_json: &str, codec: &str) {
    let ds = LeRobotDataset::open(fixtures().join(dir)).unwrap();
    let exp = expected(expected_json);
    assert_eq!(ds.version().as_str(), exp["codebase_version"].as_str().unwrap());
    assert_eq!(ds.fps(), exp["fps"].as_f64().unwrap());
    assert_eq!(ds.robot_type(), exp["robot_type"].as_str());
    assert_eq!(ds.num_episodes() as u64, exp["total_episodes"].as_u64().unwrap());
    assert_eq!(ds.num_frames() as u64, exp["total_frames"].as_u64().unwrap());
    let cams: Vec<String> = exp["camera_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect();
    let mut ours = ds.camera_keys();
    ours.sort();
    let mut theirs = cams.clone();
    theirs.sort();
    assert_eq!(ours, theirs);
    let tasks: Vec<&str> = exp["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ds.tasks().values().map(String::as_str).collect::<Vec<_>>(), tasks);
    for cam in &cams {
        let ft = &ds.info().features[cam];
        assert_eq!(ft.info.as_ref().unwrap().codec.as_deref(), Some(codec));
        assert_eq!(ft.resolution(), Some((48, 64)));
    }
    let block = exp["block"].as_u64().unwrap() as u32;
    let mut worst: f64 = 0.0;
    for (e, ep_exp) in exp["episodes"].as_array().unwrap().iter().enumerate() {
        let rows = ds.episode_rows(e).unwrap();
        let ts: Vec<f64> = rows.timestamp.iter().map(|&t| f64::from(t)).collect();
        assert_eq!(ts, f64s(&ep_exp["timestamp"]), "episode {e} timestamps");
        let ints = |k: &str| {
            ep_exp[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(rows.frame_index, ints("frame_index"));
        assert_eq!(rows.index, ints("index"));
        assert_eq!(rows.task_index, ints("task_index"));
        for (key, ours) in [("observation.state", &rows.state), ("action", &rows.action)] {
            let theirs: Vec<Vec<f32>> = ep_exp[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| f64s(r).into_iter().map(|v| v as f32).collect())
                .collect();
            assert_eq!(ours, &theirs, "episode {e} {key}");
        }
        let episode = ds.episode(e).unwrap();
        assert_eq!(episode.instruction, ep_exp["task"].as_str().unwrap());
        assert_eq!(episode.len(), ep_exp["length"].as_u64().unwrap() as usize);
        for cam in &cams {
            let frames = &episode.cameras[cam];
            let exp_frames = ep_exp["cameras"][cam].as_array().unwrap();
            assert_eq!(frames.len(), exp_frames.len());
            for (f, (img, fe)) in frames.iter().zip(exp_frames).enumerate() {
                assert_eq!(img.dimensions(), (64, 48));
                let d = mean_abs_diff(&block_means(img, block), &f64s(&fe["block_means"]));
                worst = worst.max(d);
                assert!(
                    d < MAX_DECODER_DIFF,
                    "{dir} episode {e} {cam} frame {f}: block-mean diff {d:.3}"
                );
                // The right frame, not a neighbour: the moving square makes neighbours differ far more.
                for g in [f.wrapping_sub(1), f + 1] {
                    if let Some(other) = exp_frames.get(g) {
                        let d_other = mean_abs_diff(&block_means(img, block), &f64s(&other["block_means"]));
                        assert!(
                            d_other > d,
                            "{dir} episode {e} {cam} frame {f} looks like frame {g}"
                        );
                    }
                }
            }
        }
    }
    eprintln!("{dir}: worst block-mean abs diff vs LeRobot's decoder {worst:.3}");
}

#[test]
fn v30_written_by_lerobot_reads_back_with_lerobots_values() {
    check_against_lerobot("so101_v30", "expected_v30.json", "av1");
}

#[test]
fn v30_split_over_files_and_chunks_reads_back_with_lerobots_values() {
    check_against_lerobot("so101_v30_split", "expected_v30_split.json", "av1");
    let ds = LeRobotDataset::open(fixtures().join("so101_v30_split")).unwrap();
    let last = ds.episode_meta(2).unwrap();
    assert_eq!(last.data_path, Path::new("data/chunk-001/file-000.parquet"));
    let span = &last.videos["observation.images.wrist"];
    assert_eq!(
        span.path,
        Path::new("videos/observation.images.wrist/chunk-001/file-000.mp4")
    );
    assert_eq!(span.from_timestamp, 0.0);
}

#[test]
fn v21_layout_reads_back_with_lerobots_values() {
    check_against_lerobot("so101_v21", "expected_v21.json", "h264");
}

#[test]
fn random_access_matches_the_episode_decode() {
    let ds = LeRobotDataset::open(fixtures().join("so101_v30")).unwrap();
    let ep = ds.episode(2).unwrap();
    for f in [0, 5, 11] {
        let item = ds.frame(2, f).unwrap();
        assert_eq!(item.frame_index, f as i64);
        assert_eq!(item.state, ep.states[f]);
        assert_eq!(item.action, ep.actions[f]);
        assert_eq!(item.task, ep.instruction);
        for (cam, img) in &item.images {
            assert_eq!(img, &ep.cameras[cam][f], "camera {cam} frame {f}");
        }
    }
    assert!(matches!(
        ds.frame(2, 12),
        Err(DatasetError::FrameOutOfRange {
            episode: 2,
            frame: 12,
            len: 12
        })
    ));
}

#[test]
fn mapped_decoding_equals_decoding_then_mapping_for_the_named_cameras_only() {
    let ds = LeRobotDataset::open(fixtures().join("so101_v30")).unwrap();
    let full = ds.episode(1).unwrap();
    let camera = ds.camera_keys()[0].clone();
    let shrink = |img: &RgbImage| image::imageops::resize(img, 8, 6, image::imageops::FilterType::Triangle);
    let mut seen = Vec::new();
    let mapped = ds
        .episode_with_cameras_mapped(1, std::slice::from_ref(&camera), |key, frame| {
            seen.push(key.to_string());
            shrink(&frame)
        })
        .unwrap();
    assert_eq!(
        mapped.cameras.keys().collect::<Vec<_>>(),
        [&camera],
        "only the named camera"
    );
    assert_eq!(seen.len(), full.len(), "map sees each frame once");
    assert_eq!(mapped.states, full.states);
    for (f, (small, native)) in mapped.cameras[&camera]
        .iter()
        .zip(&full.cameras[&camera])
        .enumerate()
    {
        assert_eq!(small, &shrink(native), "frame {f}");
    }
}

// ----------------------------------------------------------------------------------------------------
// Bad input
// ----------------------------------------------------------------------------------------------------

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Paths in `meta/info.json` come from whoever made the dataset (often the hub): a `data_path` or
/// `video_path` that leaves the dataset folder is refused before any file is opened.
#[test]
fn path_templates_that_leave_the_dataset_are_refused() {
    for (version, field, template) in [
        ("so101_v30", "data_path", "/etc/passwd"),
        (
            "so101_v30",
            "data_path",
            "../../outside/{chunk_index}-{file_index}.parquet",
        ),
        ("so101_v30", "video_path", "../{video_key}.mp4"),
        ("so101_v21", "data_path", "/etc/passwd"),
        ("so101_v21", "video_path", "/tmp/{video_key}/{episode_index}.mp4"),
    ] {
        let (_tmp, root) = fixture_copy(version);
        let info_path = root.join("meta/info.json");
        let mut info: Value = serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
        info[field] = Value::String(template.into());
        std::fs::write(&info_path, info.to_string()).unwrap();
        let err = LeRobotDataset::open(&root).unwrap_err();
        assert!(
            matches!(err, DatasetError::UnsafePath { .. }),
            "{version} {field}={template}: {err}"
        );
        assert!(err.to_string().contains(field), "{err}");
    }
}

fn fixture_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(name);
    copy_dir(&fixtures().join(name), &root);
    (tmp, root)
}

#[test]
fn missing_meta_files_name_the_file() {
    for (dir, file) in [
        ("so101_v30", "meta/info.json"),
        ("so101_v30", "meta/tasks.parquet"),
        ("so101_v21", "meta/episodes.jsonl"),
        ("so101_v21", "meta/tasks.jsonl"),
    ] {
        let (_tmp, root) = fixture_copy(dir);
        std::fs::remove_file(root.join(file)).unwrap();
        match LeRobotDataset::open(&root) {
            Err(DatasetError::MissingFile { path, .. }) => assert!(path.ends_with(file), "{path:?}"),
            other => panic!("{dir}/{file}: expected MissingFile, got {other:?}"),
        }
    }
    let (_tmp, root) = fixture_copy("so101_v30");
    std::fs::remove_dir_all(root.join("meta/episodes")).unwrap();
    assert!(matches!(
        LeRobotDataset::open(&root),
        Err(DatasetError::MissingFile { .. })
    ));
}

#[test]
fn info_json_is_strict_on_required_keys_and_tolerant_of_extra_ones() {
    let (_tmp, root) = fixture_copy("so101_v30");
    let path = root.join("meta/info.json");
    let mut info: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    info["some_future_key"] = Value::from("kept");
    std::fs::write(&path, info.to_string()).unwrap();
    let ds = LeRobotDataset::open(&root).unwrap();
    assert_eq!(ds.info().extra["some_future_key"], "kept");
    info.as_object_mut().unwrap().remove("fps");
    std::fs::write(&path, info.to_string()).unwrap();
    match LeRobotDataset::open(&root) {
        Err(DatasetError::Json { path, source }) => {
            assert!(path.ends_with("meta/info.json"));
            assert!(source.to_string().contains("fps"), "{source}");
        }
        other => panic!("expected a JSON error naming fps, got {other:?}"),
    }
    info["fps"] = Value::from(30);
    info["codebase_version"] = Value::from("v1.6");
    std::fs::write(&path, info.to_string()).unwrap();
    assert!(matches!(
        LeRobotDataset::open(&root),
        Err(DatasetError::UnsupportedVersion { .. })
    ));
}

#[test]
fn a_declared_feature_missing_from_the_parquet_is_named() {
    for dir in ["so101_v30", "so101_v21"] {
        let (_tmp, root) = fixture_copy(dir);
        let path = root.join("meta/info.json");
        let mut info: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        info["features"]["observation.effort"] =
            serde_json::json!({"dtype": "float32", "shape": [6], "names": null});
        std::fs::write(&path, info.to_string()).unwrap();
        let ds = LeRobotDataset::open(&root).unwrap();
        match ds.episode_rows(0) {
            Err(DatasetError::MissingColumn { path, column }) => {
                assert_eq!(column, "observation.effort");
                assert!(path.extension().is_some_and(|e| e == "parquet"), "{path:?}");
            }
            other => panic!("{dir}: expected MissingColumn, got {other:?}"),
        }
    }
}

#[test]
fn a_truncated_video_is_an_error_not_a_short_episode() {
    let (_tmp, root) = fixture_copy("so101_v30");
    let video = root.join("videos/observation.images.front/chunk-000/file-000.mp4");
    let bytes = std::fs::read(&video).unwrap();
    std::fs::write(&video, &bytes[..bytes.len() / 2]).unwrap();
    let ds = LeRobotDataset::open(&root).unwrap();
    let err = ds.camera_frames(2, "observation.images.front").unwrap_err();
    assert!(
        matches!(
            err,
            DatasetError::MissingVideoFrame { .. } | DatasetError::Ffmpeg { .. }
        ),
        "unexpected error {err:?}"
    );
    assert!(err.to_string().contains("file-000.mp4"), "{err}");
    // The other camera is intact.
    assert_eq!(ds.camera_frames(2, "observation.images.wrist").unwrap().len(), 12);

    // v2.1, one file per episode, its index at the end (no faststart): cut, the file cannot be opened.
    let (_tmp, root) = fixture_copy("so101_v21");
    let video = root.join("videos/chunk-000/observation.images.wrist/episode_000001.mp4");
    let bytes = std::fs::read(&video).unwrap();
    std::fs::write(&video, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let ds = LeRobotDataset::open(&root).unwrap();
    let err = ds.episode(1).unwrap_err();
    assert!(
        matches!(
            err,
            DatasetError::MissingVideoFrame { .. } | DatasetError::Ffmpeg { .. }
        ),
        "unexpected error {err:?}"
    );
    assert!(err.to_string().contains("episode_000001.mp4"), "{err}");
    assert_eq!(ds.episode(0).unwrap().len(), 10);
}

#[test]
fn out_of_range_episode_and_unknown_camera_are_typed_errors() {
    let ds = LeRobotDataset::open(fixtures().join("so101_v30")).unwrap();
    assert!(matches!(
        ds.episode(3),
        Err(DatasetError::EpisodeOutOfRange { episode: 3, count: 3 })
    ));
    assert!(matches!(
        ds.frame(7, 0),
        Err(DatasetError::EpisodeOutOfRange { episode: 7, count: 3 })
    ));
    assert!(matches!(
        ds.camera_frames(0, "observation.images.top"),
        Err(DatasetError::UnknownCamera { .. })
    ));
}

// ----------------------------------------------------------------------------------------------------
// Writing
// ----------------------------------------------------------------------------------------------------

const CAMS: [&str; 2] = ["observation.images.front", "observation.images.wrist"];

/// The fixture script's image: a gradient and a square moving with the frame index.
fn image(camera: u32, episode: u32, frame: u32, w: u32, h: u32) -> RgbImage {
    let s = 12;
    let x0 = (4 * frame + 10 * episode) % (w - s);
    let y0 = (3 * frame + 7 * camera) % (h - s);
    RgbImage::from_fn(w, h, |x, y| {
        if (x0..x0 + s).contains(&x) && (y0..y0 + s).contains(&y) {
            if camera == 0 {
                image::Rgb([250, 250, 30])
            } else {
                image::Rgb([20, 240, 250])
            }
        } else {
            image::Rgb([
                ((x * 4 + 40 * episode) % 256) as u8,
                ((y * 5 + 90 * camera) % 256) as u8,
                (60 + 120 * camera) as u8,
            ])
        }
    })
}

fn episodes(w: u32, h: u32) -> Vec<Episode> {
    let tasks = [
        "Pick up the red cube.",
        "Open the drawer.",
        "Pick up the red cube.",
    ];
    [9usize, 6, 11]
        .iter()
        .enumerate()
        .map(|(e, &n)| {
            let state: Vec<Vec<f32>> = (0..n)
                .map(|f| {
                    (0..6)
                        .map(|j| (f as f32 * 0.37 + j as f32 * 1.5 + e as f32).sin() * 40.0)
                        .collect()
                })
                .collect();
            let action = state
                .iter()
                .map(|s| s.iter().map(|v| v + 0.125).collect())
                .collect();
            let mut cameras = BTreeMap::new();
            for (c, key) in CAMS.iter().enumerate() {
                cameras.insert(
                    key.to_string(),
                    (0..n)
                        .map(|f| image(c as u32, e as u32, f as u32, w, h))
                        .collect(),
                );
            }
            Episode {
                index: e,
                instruction: tasks[e].into(),
                fps: 30.0,
                states: state,
                actions: action,
                cameras,
                success: None,
                true_progress: None,
                environment_states: Vec::new(),
            }
        })
        .collect()
}

fn spec(w: u32, h: u32) -> DatasetSpec {
    DatasetSpec::so101(30, &[(CAMS[0], w, h), (CAMS[1], w, h)])
}

fn write(path: &Path, eps: &[Episode], spec: DatasetSpec) -> toprl_envs::dataset::WrittenDataset {
    let mut w = DatasetWriter::create(path, spec).unwrap();
    for ep in eps {
        w.add_episode(ep).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn written_dataset_reads_back_in_toprl() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("out");
    let eps = episodes(64, 48);
    let written = write(&path, &eps, spec(64, 48));
    assert_eq!((written.episodes, written.frames), (3, 26));
    let ds = LeRobotDataset::open(&path).unwrap();
    assert_eq!(ds.version().as_str(), "v3.0");
    assert_eq!(ds.robot_type(), Some("so101_follower"));
    assert_eq!(
        ds.tasks().values().cloned().collect::<Vec<_>>(),
        ["Pick up the red cube.", "Open the drawer."]
    );
    assert_eq!(
        ds.info().features["observation.state"].name_list().unwrap(),
        toprl_envs::so101::feature_names()
    );
    let mut worst: f64 = 0.0;
    for (e, ep) in eps.iter().enumerate() {
        let back = ds.episode(e).unwrap();
        assert_eq!(back.instruction, ep.instruction);
        assert_eq!(back.states, ep.states);
        assert_eq!(back.actions, ep.actions);
        for cam in CAMS {
            for (a, b) in back.cameras[cam].iter().zip(&ep.cameras[cam]) {
                worst = worst.max(mean_abs_diff(&block_means(a, 8), &block_means(b, 8)));
            }
        }
    }
    eprintln!(
        "toprl write -> toprl read: worst block-mean abs diff {worst:.3} ({:?})",
        written.encoders
    );
    assert!(worst < MAX_BLOCK_DIFF, "{worst}");
}

#[test]
fn h264_is_written_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("h264");
    let mut s = spec(64, 48);
    s.codec = VideoCodec::H264;
    let written = write(&path, &episodes(64, 48)[..1], s);
    assert_eq!(written.encoders[CAMS[0]], "libx264");
    let ds = LeRobotDataset::open(&path).unwrap();
    assert_eq!(
        ds.info().features[CAMS[0]]
            .info
            .as_ref()
            .unwrap()
            .codec
            .as_deref(),
        Some("h264")
    );
    assert_eq!(ds.camera_frames(0, CAMS[1]).unwrap().len(), 9);
    let video = path.join("videos/observation.images.wrist/chunk-000/file-000.mp4");
    assert_eq!(
        toprl_envs::dataset::video::key_frame_count(&video).unwrap(),
        (9, 5)
    );
}

fn no_partial_dirs(parent: &Path) {
    let left: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_unfinished_or_rejected_write_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("out");
    let eps = episodes(64, 48);
    {
        let mut w = DatasetWriter::create(&path, spec(64, 48)).unwrap();
        w.add_episode(&eps[0]).unwrap();
        // A bad episode is rejected before anything of it is written.
        let mut bad = eps[1].clone();
        bad.actions.pop();
        assert!(matches!(
            w.add_episode(&bad),
            Err(DatasetError::BadEpisode { .. })
        ));
        let mut bad = eps[1].clone();
        bad.cameras.get_mut(CAMS[1]).unwrap()[2] = RgbImage::new(32, 32);
        assert!(matches!(
            w.add_episode(&bad),
            Err(DatasetError::BadEpisode { .. })
        ));
        assert_eq!(w.num_episodes(), 1);
        // Dropped without finish(): like a crash before the rename.
    }
    assert!(!path.exists());
    no_partial_dirs(tmp.path());
    // An existing target is never overwritten.
    std::fs::create_dir(&path).unwrap();
    assert!(matches!(
        DatasetWriter::create(&path, spec(64, 48)),
        Err(DatasetError::AlreadyExists { .. })
    ));
}

/// Give every episode a recognisable `observation.environment_state` per frame.
fn with_environment_states(eps: &mut [Episode]) {
    for ep in eps {
        ep.environment_states = (0..ep.len())
            .map(|f| {
                (0..6)
                    .map(|j| ep.index as f32 + f as f32 * 0.01 + j as f32 * 0.1)
                    .collect()
            })
            .collect();
    }
}

#[test]
fn environment_state_is_written_and_read_back_when_declared() {
    let tmp = tempfile::tempdir().unwrap();
    let mut eps = episodes(64, 48);
    with_environment_states(&mut eps);
    let path = tmp.path().join("with_env");
    write(&path, &eps, spec(64, 48).with_sim_environment_state());
    let ds = LeRobotDataset::open(&path).unwrap();
    assert_eq!(
        ds.info().features["observation.environment_state"]
            .name_list()
            .unwrap(),
        toprl_envs::sim::ENVIRONMENT_STATE_NAMES
    );
    for (e, ep) in eps.iter().enumerate() {
        assert_eq!(ds.episode(e).unwrap().environment_states, ep.environment_states);
    }
    // Without the feature declared, nothing is written and episodes read back without it.
    let plain = tmp.path().join("plain");
    write(&plain, &eps, spec(64, 48));
    let ds = LeRobotDataset::open(&plain).unwrap();
    assert!(!ds.info().features.contains_key("observation.environment_state"));
    assert!(ds.episode(0).unwrap().environment_states.is_empty());
    // Declared but missing from an episode: rejected before anything is written.
    let mut w =
        DatasetWriter::create(tmp.path().join("bad"), spec(64, 48).with_sim_environment_state()).unwrap();
    let err = w.add_episode(&episodes(64, 48)[0]).unwrap_err().to_string();
    assert!(err.contains("observation.environment_state"), "{err}");
}

#[test]
fn lerobot_loads_what_toprl_writes() {
    let python = std::env::var_os("TOPRL_LEROBOT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-lerobot/bin/python"));
    // A missing LeRobot is a failure with the fix, never a silent pass.
    assert!(
        python.exists(),
        "no LeRobot Python at {}: run scripts/setup.sh (it installs .venv-lerobot) or set TOPRL_LEROBOT_PYTHON",
        python.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("roundtrip");
    // 64x64: large enough for Debian's SVT-AV1, LeRobot's default encoder.
    let mut eps = episodes(64, 64);
    with_environment_states(&mut eps);
    let written = write(&path, &eps, spec(64, 64).with_sim_environment_state());
    assert_eq!(written.encoders[CAMS[0]], "libsvtav1");
    let video = path.join("videos/observation.images.front/chunk-000/file-000.mp4");
    assert_eq!(
        toprl_envs::dataset::video::key_frame_count(&video).unwrap(),
        (26, 13)
    );
    let exp = serde_json::json!({
        "fps": 30,
        "robot_type": "so101_follower",
        "cameras": CAMS,
        "block": 8,
        "max_block_mean_abs_diff": MAX_BLOCK_DIFF,
        "episodes": eps.iter().map(|ep| serde_json::json!({
            "instruction": ep.instruction,
            "states": ep.states,
            "actions": ep.actions,
            "environment_states": ep.environment_states,
            "block_means": CAMS.iter().map(|c| (c.to_string(), ep.cameras[*c].iter().map(|f| block_means(f, 8)).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
    });
    let exp_path = tmp.path().join("expected.json");
    std::fs::write(&exp_path, exp.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/check_lerobot_roundtrip.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&path)
        .arg(&exp_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "LeRobot rejected the dataset ({:?}):\n{stdout}\n{stderr}",
        written.encoders
    );
    eprintln!("LeRobot read toprl's dataset ({:?}): {stdout}", written.encoders);
}

// ----------------------------------------------------------------------------------------------------
// Hub download
// ----------------------------------------------------------------------------------------------------

/// A local HTTP endpoint speaking the two Hugging Face hub routes `hf-hub`'s blocking client uses
/// (`GET /api/datasets/{repo}/revision/{rev}` and ranged `GET /datasets/{repo}/resolve/{rev}/{file}`),
/// serving a folder. It stands in for huggingface.co, which tests cannot reach.
fn serve_as_hub(root: PathBuf, repo: &'static str) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut files = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p.strip_prefix(&root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let sha = "0123456789abcdef0123456789abcdef01234567";
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut range = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            if path == "/shutdown" {
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                break;
            }
            let api = format!("/api/datasets/{repo}/revision/main");
            let resolve = format!("/datasets/{repo}/resolve/main/");
            let (status, headers, body) = if path == api {
                let siblings: Vec<Value> = files
                    .iter()
                    .map(|f| serde_json::json!({"rfilename": f}))
                    .collect();
                let body = serde_json::json!({"siblings": siblings, "sha": sha})
                    .to_string()
                    .into_bytes();
                ("200 OK", "Content-Type: application/json\r\n".to_string(), body)
            } else if let Some(file) = path
                .strip_prefix(&resolve)
                .filter(|f| files.iter().any(|x| x == f))
            {
                let data = std::fs::read(root.join(file)).unwrap();
                let (a, b) = range.map_or((0, data.len() - 1), |(a, b)| (a, b.unwrap_or(data.len() - 1)));
                let etag = format!(
                    "{:016x}{:08x}",
                    data.iter().fold(0u64, |h, &x| h.wrapping_mul(31) ^ u64::from(x)),
                    data.len()
                );
                let headers = format!(
                    "ETag: \"{etag}\"\r\nX-Repo-Commit: {sha}\r\nContent-Range: bytes {a}-{b}/{}\r\n",
                    data.len()
                );
                ("206 Partial Content", headers, data[a..=b].to_vec())
            } else {
                ("404 Not Found", String::new(), b"not found".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (format!("http://{addr}"), handle)
}

#[test]
fn hub_repo_downloads_into_the_cache_and_reads_like_the_folder() {
    use toprl_envs::dataset::HubOptions;
    let (endpoint, server) = serve_as_hub(fixtures().join("so101_v30"), "toprl/so101_fixture");
    let cache = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        endpoint: Some(endpoint.clone()),
        cache_dir: Some(cache.path().into()),
        progress: false,
    };
    let hub = LeRobotDataset::from_hub_with("toprl/so101_fixture", None, &opts).unwrap();
    assert!(hub.root().starts_with(cache.path()), "{:?}", hub.root());
    let local = LeRobotDataset::open(fixtures().join("so101_v30")).unwrap();
    assert_eq!(hub.num_episodes(), local.num_episodes());
    let (a, b) = (hub.episode(1).unwrap(), local.episode(1).unwrap());
    assert_eq!(
        (a.states, a.instruction, &a.cameras),
        (b.states, b.instruction, &b.cameras)
    );
    let err = LeRobotDataset::from_hub_with("toprl/missing", None, &opts).unwrap_err();
    assert!(
        matches!(err, DatasetError::Hub { ref repo, .. } if repo == "toprl/missing"),
        "{err:?}"
    );
    let _ = http_get(&endpoint, "/shutdown");
    server.join().unwrap();
}

/// A bare HTTP GET (the test does not depend on an HTTP client of its own).
fn http_get(endpoint: &str, path: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(endpoint.trim_start_matches("http://"))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map(|_| ())
}
