//! LeRobot 0.4.4 parity of SmolVLA's input/output processing on the fixtures that
//! `policies/fixtures/smolvla/make_smolvla_fixtures.py` made: the checkpoint folder is read as LeRobot
//! wrote it, and tokenisation, `prepare_images` (resize_with_pad, *2-1) and the state normalisation
//! equal LeRobot's tensors. Also: saving the folder writes files LeRobot's layout names, statistics
//! replaced; bad folders fail naming the file and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toprl_policies::smolvla::lerobot::{
    LeRobotFolder, POSTPROCESSOR_FILE, PREPROCESSOR_FILE, Stats, read_f32_tensors, read_stats,
    write_dir_atomically,
};
use toprl_policies::smolvla::processor::{
    ChwImage, RawSample, SmolVlaProcessor, prepare_image, resolve_vlm_dir,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smolvla")
}

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn parity() -> Tensors {
    read_f32_tensors(&fixtures().join("parity.safetensors")).expect("parity fixture")
}

fn processor() -> (LeRobotFolder, SmolVlaProcessor) {
    let dir = fixtures().join("checkpoint");
    let folder = LeRobotFolder::read(&dir).expect("fixture checkpoint reads");
    let vlm = resolve_vlm_dir(
        &folder.tokenizer_step().tokenizer_name.clone().unwrap_or_default(),
        &fixtures(),
    )
    .expect("vlm folder");
    let proc = SmolVlaProcessor::new(&folder, &vlm).expect("processor");
    (folder, proc)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Sample `b` of a `[batch, ...]` tensor.
fn row(t: &(Vec<usize>, Vec<f32>), b: usize) -> Vec<f32> {
    let per: usize = t.0[1..].iter().product();
    t.1[b * per..(b + 1) * per].to_vec()
}

#[test]
fn fixture_folder_reads_as_lerobot_wrote_it() {
    let (folder, proc) = processor();
    assert_eq!(
        proc.camera_keys(),
        ["observation.images.front", "observation.images.wrist"],
        "camera order is config.json's"
    );
    assert_eq!(
        (proc.state_dim(), proc.action_dim(), proc.max_action_dim()),
        (6, 5, 32)
    );
    assert_eq!(folder.config.io.chunk_size, 6);
    assert_eq!(folder.config.io.resize_imgs_with_padding, Some((32, 32)));
    assert_eq!(folder.tokenizer_step().padding, "longest");
}

#[test]
fn tokens_images_and_masks_equal_lerobot_preprocessing() {
    let (_, proc) = processor();
    let p = parity();
    let prompts = ["grasp the cup", "pick up the red cube and place it in the bowl"];
    let keys = proc.camera_keys().to_vec();
    let samples: Vec<RawSample> = (0..2)
        .map(|b| RawSample {
            // The parity batch keeps only the normalised state; a zero state is enough here (the state
            // path is covered end to end by the predict fixture).
            vectors: BTreeMap::from([("observation.state".to_string(), vec![0.0; 6])]),
            images: keys
                .iter()
                .map(|k| {
                    let t = &p[&format!("batch.{k}")];
                    (
                        k.clone(),
                        ChwImage {
                            height: t.0[2],
                            width: t.0[3],
                            data: row(t, b),
                        },
                    )
                })
                .collect(),
            task: prompts[b].to_string(),
        })
        .collect();
    let prepared = proc.prepare(&samples).expect("prepare");
    // Tokenisation: task + "\n", right-padded to the longest prompt, exactly LeRobot's ids and mask.
    let tokens = &p["batch.tokens"];
    assert_eq!(prepared.token_len, tokens.0[1], "padded prompt length");
    let ids: Vec<f32> = prepared.tokens.iter().map(|&t| t as f32).collect();
    assert_eq!(ids, tokens.1, "token ids");
    let mask: Vec<f32> = prepared
        .token_mask
        .iter()
        .map(|&m| f32::from(u8::from(m)))
        .collect();
    assert_eq!(mask, p["batch.attention_mask"].1, "attention mask");
    // Images: stacked raw per camera in config order; `prepare_image` (resize_with_pad to 32x32, bilinear,
    // align_corners=False, pad left/top, then *2-1) equals LeRobot's prepare_images.
    for (c, key) in keys.iter().enumerate() {
        let raw = &p[&format!("batch.{key}")];
        assert_eq!(prepared.images[c].key, *key);
        assert_eq!(
            prepared.images[c].data, raw.1,
            "camera {c}: raw frames stacked in order"
        );
        let want = &p[&format!("inter.prepared_image.{c}")];
        let mut got = Vec::new();
        for b in 0..2 {
            let img = ChwImage {
                height: raw.0[2],
                width: raw.0[3],
                data: row(raw, b),
            };
            let out = prepare_image(&img, proc.resize());
            assert_eq!([3, out.height, out.width], want.0[1..], "camera {c} shape");
            got.extend(out.data);
        }
        let err = max_abs_diff(&got, &want.1);
        assert!(err <= 1e-6, "camera {c}: max |diff| {err} > 1e-6");
    }
}

#[test]
fn state_and_actions_round_trip_through_the_fixture_statistics() {
    let (folder, proc) = processor();
    let stats = folder
        .preprocessor
        .normalizer()
        .expect("normalizer")
        .stats
        .clone();
    let (mean, std) = (
        &stats["observation.state"]["mean"],
        &stats["observation.state"]["std"],
    );
    let raw: Vec<f32> = (0..6).map(|i| i as f32 * 0.7 - 1.0).collect();
    let keys = proc.camera_keys().to_vec();
    let sample = RawSample {
        vectors: BTreeMap::from([("observation.state".to_string(), raw.clone())]),
        images: keys
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    ChwImage {
                        height: 4,
                        width: 4,
                        data: vec![0.5; 48],
                    },
                )
            })
            .collect(),
        task: "x".into(),
    };
    let prepared = proc.prepare(&[sample]).expect("prepare");
    for i in 0..6 {
        // NormalizerProcessorStep, MEAN_STD: (x - mean) / (std + 1e-8).
        let want = (raw[i] - mean[i]) / (std[i] + 1e-8);
        assert!((prepared.state[i] - want).abs() < 1e-6);
    }
    assert!(
        prepared.state[6..32].iter().all(|&v| v == 0.0),
        "zero-padded to max_state_dim"
    );
    // Postprocessing unpads to action_dim and un-normalises: x * std + mean.
    let astats = &folder.postprocessor.normalizer().expect("unnormalizer").stats["action"];
    let padded: Vec<f32> = (0..6 * 32).map(|i| (i % 32) as f32 * 0.1).collect();
    let actions = proc.postprocess(&padded).expect("postprocess");
    assert_eq!((actions.len(), actions[0].len()), (6, 5));
    for j in 0..5 {
        let want = j as f32 * 0.1 * astats["std"][j] + astats["mean"][j];
        assert!((actions[3][j] - want).abs() < 1e-6);
    }
    let normed = proc
        .prepare_actions(&actions.concat())
        .expect("normalise actions");
    assert!(max_abs_diff(&normed[..5], &padded[..5]) < 1e-5);
    assert!(normed[5..32].iter().all(|&v| v == 0.0));
}

#[test]
fn saving_writes_lerobot_layout_with_replaced_stats() {
    let (mut folder, _) = processor();
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("ckpt");
    let new: Stats = BTreeMap::from([
        (
            "observation.state".to_string(),
            BTreeMap::from([
                ("mean".to_string(), vec![1.0; 6]),
                ("std".to_string(), vec![2.0; 6]),
            ]),
        ),
        (
            "action".to_string(),
            BTreeMap::from([
                ("mean".to_string(), vec![3.0; 5]),
                ("std".to_string(), vec![4.0; 5]),
            ]),
        ),
    ]);
    folder.replace_stats(&new);
    write_dir_atomically(&out, |dir| {
        std::fs::copy(
            folder.dir.join("model.safetensors"),
            dir.join("model.safetensors"),
        )
        .map_err(|e| toprl_policies::PolicyError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        folder.write_into(dir)
    })
    .expect("save");
    let pre =
        read_stats(&out.join("policy_preprocessor_step_5_normalizer_processor.safetensors")).expect("pre");
    assert_eq!(
        pre, new,
        "the preprocessor keeps state and action stats, as LeRobot's does"
    );
    let post = read_stats(&out.join("policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
        .expect("post");
    assert_eq!(post.keys().collect::<Vec<_>>(), ["action"]);
    // The rewritten JSONs are the originals up to the replaced statistics.
    for file in [PREPROCESSOR_FILE, POSTPROCESSOR_FILE, "config.json"] {
        let a: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.dir.join(file)).expect("read"))
                .expect("json");
        let b: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(file)).expect("read")).expect("json");
        assert_eq!(a, b, "{file} written back unchanged");
    }
    let again = LeRobotFolder::read(&out).expect("saved folder reads back");
    assert_eq!(
        again.postprocessor.normalizer().expect("unnorm").stats["action"]["std"],
        vec![4.0; 5]
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).expect("ls").collect();
    assert_eq!(leftovers.len(), 1, "no temporary folder left behind");
}

fn copy_fixture(to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(fixtures().join("checkpoint")).expect("ls") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).expect("ser")).expect("write");
}

#[test]
fn bad_folders_fail_naming_file_and_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("c");
    // Wrong policy type.
    copy_fixture(&dir);
    edit_json(&dir.join("config.json"), |v| v["type"] = "act".into());
    let err = LeRobotFolder::read(&dir)
        .expect_err("act is not smolvla")
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("`type`") && err.contains("\"act\""),
        "{err}"
    );
    // Unknown fields are ignored, as LeRobot's draccus parsing of a saved config tolerates new keys.
    copy_fixture(&dir);
    edit_json(&dir.join("config.json"), |v| v["some_future_field"] = 3.into());
    LeRobotFolder::read(&dir).expect("unknown config fields are ignored");
    // A missing statistics file.
    std::fs::remove_file(dir.join("policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
        .expect("rm");
    let err = LeRobotFolder::read(&dir).expect_err("missing stats").to_string();
    assert!(
        err.contains("policy_postprocessor_step_0_unnormalizer_processor.safetensors"),
        "{err}"
    );
    // Statistics without the action's std.
    copy_fixture(&dir);
    let stats_file = dir.join("policy_postprocessor_step_0_unnormalizer_processor.safetensors");
    let mut stats = read_stats(&stats_file).expect("stats");
    stats.get_mut("action").expect("action").remove("std");
    toprl_policies::smolvla::lerobot::write_stats(&stats_file, &stats).expect("write");
    let err = LeRobotFolder::read(&dir).expect_err("no action.std").to_string();
    assert!(
        err.contains("policy_postprocessor.json") && err.contains("action.std"),
        "{err}"
    );
    // Missing weights.
    std::fs::remove_file(dir.join("model.safetensors")).expect("rm");
    let err = LeRobotFolder::read(&dir).expect_err("no weights").to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    // A camera set the config does not list.
    copy_fixture(&dir);
    let folder = LeRobotFolder::read(&dir).expect("read");
    let vlm = resolve_vlm_dir("vlm", &fixtures()).expect("vlm");
    let proc = SmolVlaProcessor::new(&folder, &vlm).expect("proc");
    let img = ChwImage {
        height: 4,
        width: 4,
        data: vec![0.5; 48],
    };
    let sample = RawSample {
        vectors: BTreeMap::from([("observation.state".to_string(), vec![0.0; 6])]),
        images: BTreeMap::from([
            ("observation.images.front".to_string(), img.clone()),
            ("observation.images.side".to_string(), img),
        ]),
        task: "x".into(),
    };
    let err = proc.prepare(&[sample]).expect_err("unknown camera").to_string();
    assert!(
        err.contains("config.json") && err.contains("observation.images.side"),
        "{err}"
    );
}
