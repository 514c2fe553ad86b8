//! Hugging Face processor config files are read as transformers reads them: files written by `save_pretrained`
//! (with fields toprl does not use), the fallback from `video_preprocessor_config.json` to
//! `preprocessor_config.json` and `processor_config.json`, nested `"video_processor"` objects and nulls.
//! Fixtures and the settings transformers resolves for each folder: `rewards/fixtures/make_hf_config_fixtures.py`.

// fixture helpers: a malformed fixture should panic loudly
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use toprl_rewards::qwen3_vl::processor::{ConfigSource, ProcessorError, SizeConfig, VideoProcessor};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf_configs")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f32s(v: &Value) -> [f32; 3] {
    let a: Vec<f32> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    [a[0], a[1], a[2]]
}

#[test]
fn every_saved_config_resolves_to_the_settings_and_grids_transformers_uses() {
    let exp = expected();
    let cases = exp["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 5, "fixture cases");
    for (name, want) in cases {
        let case_dir = dir().join(name);
        let (p, source) = VideoProcessor::from_checkpoint_dir(&case_dir)
            .unwrap_or_else(|e| panic!("case {name}: transformers loads this folder but toprl refused: {e}"));
        assert!(matches!(source, ConfigSource::File(_)), "{name}: {source}");
        let c = p.config();
        let size = &want["size"];
        assert_eq!(
            c.size,
            SizeConfig {
                shortest_edge: size["shortest_edge"].as_u64().unwrap(),
                longest_edge: size["longest_edge"].as_u64().unwrap(),
            },
            "{name}: size"
        );
        assert_eq!(
            c.patch_size as u64,
            want["patch_size"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            c.temporal_patch_size as u64,
            want["temporal_patch_size"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            c.merge_size as u64,
            want["merge_size"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(c.image_mean, f32s(&want["image_mean"]), "{name}: image_mean");
        assert_eq!(c.image_std, f32s(&want["image_std"]), "{name}: image_std");
        assert_eq!(
            c.rescale_factor,
            want["rescale_factor"].as_f64().unwrap(),
            "{name}"
        );
        // Python truthiness: null (None) turns a step off.
        let truthy = |v: &Value| v.as_bool().unwrap_or(false);
        assert_eq!(c.do_resize, truthy(&want["do_resize"]), "{name}: do_resize");
        assert_eq!(c.do_rescale, truthy(&want["do_rescale"]), "{name}: do_rescale");
        assert_eq!(
            c.do_normalize,
            truthy(&want["do_normalize"]),
            "{name}: do_normalize"
        );
        for g in want["grids"].as_array().unwrap() {
            let (t, h, w) = (
                g["frames"].as_u64().unwrap() as usize,
                g["height"].as_u64().unwrap() as usize,
                g["width"].as_u64().unwrap() as usize,
            );
            let (rh, rw) = p.target_size(t, h, w).unwrap();
            let tp = c.temporal_patch_size;
            let got = [t.div_ceil(tp), rh / c.patch_size, rw / c.patch_size];
            let grid: Vec<usize> = g["grid_thw"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(got[..], grid[..], "{name}: grid of {t}x{h}x{w}");
        }
    }
}

#[test]
fn the_video_config_wins_over_the_image_config_and_fallbacks_are_followed() {
    let (_, source) = VideoProcessor::from_checkpoint_dir(&dir().join("video_and_image")).unwrap();
    assert_eq!(
        source,
        ConfigSource::File(dir().join("video_and_image/video_preprocessor_config.json"))
    );
    let (_, source) = VideoProcessor::from_checkpoint_dir(&dir().join("image_only")).unwrap();
    assert_eq!(
        source,
        ConfigSource::File(dir().join("image_only/preprocessor_config.json"))
    );
    let (_, source) = VideoProcessor::from_checkpoint_dir(&dir().join("processor_nested")).unwrap();
    assert_eq!(
        source,
        ConfigSource::File(dir().join("processor_nested/processor_config.json"))
    );
}

#[test]
fn a_config_transformers_cannot_use_is_refused_naming_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("video_preprocessor_config.json");
    std::fs::write(
        &path,
        r#"{"size": {"height": 224, "width": 224}, "crop_size": {"height": 1}}"#,
    )
    .unwrap();
    let err = VideoProcessor::from_checkpoint_dir(tmp.path()).unwrap_err();
    match &err {
        ProcessorError::ConfigField { path: p, field, .. } => {
            assert_eq!(p, &path);
            assert_eq!(*field, "size");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        err.to_string().contains("video_preprocessor_config.json"),
        "{err}"
    );
    std::fs::write(&path, r#"{"resample": 2}"#).unwrap();
    let err = VideoProcessor::from_checkpoint_dir(tmp.path()).unwrap_err();
    assert!(
        err.to_string().contains("resample") && err.to_string().contains("video_preprocessor_config.json"),
        "{err}"
    );
}
