//! Parity with transformers 4.57.1 `Qwen3VLProcessor` / `Qwen3VLVideoProcessor` and the real Qwen3 tokenizer,
//! on the fixtures `rewards/fixtures/make_processor_fixtures.py` wrote.

// fixture helpers outside #[test] fns: a malformed fixture should panic loudly
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::RgbImage;
use serde_json::Value;
use tokenizers::Tokenizer;
use toprl_rewards::assets::qwen3_tokenizer_json;
use toprl_rewards::qwen3_vl::processor::{
    SizeConfig, VideoMetadata, VideoProcessor, VideoProcessorConfig, resize_bicubic_aa,
};
use toprl_rewards::topreward::prompt::{
    PromptBuilder, PromptConfig, SegmentKind, TRUE_TOKEN_ID, VIDEO_PAD_TOKEN_ID,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("processor")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json parses")
}

/// The fixture script's `frame_pixel`, integer for integer.
fn frame_pixel(f: usize, y: usize, x: usize, h: usize, w: usize) -> [u8; 3] {
    let mut r = (x * 255) / (w - 1).max(1);
    let g = (y * 255) / (h - 1).max(1);
    let b = ((x + 2 * y + 13 * f) * 5) % 256;
    if ((x / 3) + (y / 5)).is_multiple_of(2) {
        r ^= 0x20;
    }
    let s = (h.min(w) / 4).max(1);
    let y0 = (f * 7) % (h - s).max(1);
    let x0 = (f * 11) % (w - s).max(1);
    if (y0..y0 + s).contains(&y) && (x0..x0 + s).contains(&x) {
        return [255, 0, 40];
    }
    [r as u8, g as u8, b as u8]
}

fn make_frames(n: usize, h: usize, w: usize, checksum: &Value) -> Vec<RgbImage> {
    let frames: Vec<RgbImage> = (0..n)
        .map(|f| {
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                image::Rgb(frame_pixel(f, y as usize, x as usize, h, w))
            })
        })
        .collect();
    let (mut sum, mut wsum) = (0u64, 0u64);
    for (i, &v) in frames.iter().flat_map(|f| f.as_raw().iter()).enumerate() {
        sum += v as u64;
        wsum = wsum.wrapping_add((v as u64).wrapping_mul(i as u64 + 1));
    }
    assert_eq!(
        sum,
        checksum["sum"].as_u64().unwrap(),
        "frame generator drifted from the fixture script"
    );
    assert_eq!(
        wsum,
        checksum["weighted_sum"].as_u64().unwrap(),
        "frame generator drifted from the fixture script"
    );
    frames
}

fn processor_for(case: &Value) -> VideoProcessor {
    match &case["size"] {
        Value::Null => VideoProcessor::default(),
        Value::String(s) if s == "checkpoint" => {
            VideoProcessor::from_config_file(&fixtures().join("video_preprocessor_config.json")).unwrap()
        }
        size => {
            let size: SizeConfig = serde_json::from_value(size.clone()).unwrap();
            VideoProcessor::new(VideoProcessorConfig {
                size,
                ..Default::default()
            })
            .unwrap()
        }
    }
}

fn metadata(case: &Value) -> VideoMetadata {
    let idx = case["frame_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    VideoMetadata {
        fps: case["fps"].as_f64().unwrap(),
        frame_indices: Some(idx),
    }
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn pixel_values_grid_and_timestamps_match_transformers() {
    let all = cases();
    let mut report = Vec::new();
    for case in all["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (n, h, w) = (
            case["num_frames"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
            case["width"].as_u64().unwrap() as usize,
        );
        let frames = make_frames(n, h, w, &case["frames_checksum"]);
        let out = processor_for(case).preprocess(&frames, &metadata(case)).unwrap();

        assert_eq!(
            out.grid_thw.to_vec(),
            usizes(&case["grid_thw"]),
            "{name}: grid_thw"
        );
        let resized = usizes(&case["resized"]);
        assert_eq!(
            (out.resized.0, out.resized.1),
            (resized[0], resized[1]),
            "{name}: resized size"
        );
        let want_ts: Vec<f64> = case["timestamps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(out.timestamps.len(), want_ts.len(), "{name}: groups");
        for (g, (a, b)) in out.timestamps.iter().zip(&want_ts).enumerate() {
            assert!((a - b).abs() < 1e-12, "{name}: timestamp {g}: {a} vs {b}");
            assert_eq!(
                out.timestamp_text(g),
                case["timestamp_strings"][g].as_str().unwrap(),
                "{name}"
            );
        }

        let codes = image::open(fixtures().join(format!("{name}_codes.png")))
            .unwrap()
            .to_luma8();
        assert_eq!(codes.width() as usize, out.patch_dim, "{name}: patch dim");
        assert_eq!(codes.height() as usize, out.num_patches(), "{name}: patches");
        assert_eq!(out.pixel_values.len(), out.num_patches() * out.patch_dim);
        let (mut max_diff, mut differing) = (0f32, 0usize);
        for (&got, &code) in out.pixel_values.iter().zip(codes.as_raw()) {
            let want = (code as f32 - 127.5) / 127.5;
            let d = (got - want).abs();
            if d > 0.0 {
                differing += 1;
            }
            max_diff = max_diff.max(d);
        }
        report.push(format!(
            "{name}: max |diff| {max_diff:e}, {differing} of {} values differ",
            out.pixel_values.len()
        ));
        assert_eq!(max_diff, 0.0, "{name}: {differing} values differ, max {max_diff}");
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn uint8_bicubic_resize_matches_torchvision() {
    for r in cases()["resizes"].as_array().unwrap() {
        let (i, o) = (usizes(&r["in"]), usizes(&r["out"]));
        let frame = make_frames(1, i[0], i[1], &r["frames_checksum"]).remove(0);
        let got = resize_bicubic_aa(frame.as_raw(), i[0], i[1], o[0], o[1]);
        let want = image::open(fixtures().join(r["file"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let differing = got.iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "resize {i:?} -> {o:?}: {differing} bytes differ");
    }
}

/// The real Qwen3 tokenizer, parsed once per test binary (about 2 s in a debug build).
fn builder(config: PromptConfig) -> PromptBuilder {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    let tokenizer = TOKENIZER.get_or_init(|| {
        let path = qwen3_tokenizer_json().expect("the Qwen3 tokenizer from scripts/setup.sh");
        Tokenizer::from_file(&path).expect("tokenizer.json loads")
    });
    PromptBuilder::new(tokenizer.clone(), config).unwrap()
}

#[test]
fn prompt_token_ids_match_the_reference_processor() {
    let all = cases();
    let custom_prefix = all["cases"][0]["custom_prefix"].as_str().unwrap().to_string();
    let variants = [
        ("default", builder(PromptConfig::default())),
        (
            "open",
            builder(PromptConfig {
                answer_in_input: false,
                ..Default::default()
            }),
        ),
        (
            "custom",
            builder(PromptConfig {
                prefix: custom_prefix,
                ..Default::default()
            }),
        ),
        (
            "chat",
            builder(PromptConfig {
                chat_template: true,
                ..Default::default()
            }),
        ),
    ];
    for case in all["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (n, h, w) = (
            case["num_frames"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
            case["width"].as_u64().unwrap() as usize,
        );
        let frames = make_frames(n, h, w, &case["frames_checksum"]);
        let video = processor_for(case).preprocess(&frames, &metadata(case)).unwrap();
        let instruction = case["instruction"].as_str().unwrap();
        assert_eq!(
            case["custom_prefix"].as_str().unwrap(),
            variants[2].1.config().prefix
        );
        for (variant, b) in &variants {
            let variant = *variant;
            let want = &case["prompts"][variant];
            assert_eq!(
                b.prompt_text(instruction).unwrap(),
                want["text"].as_str().unwrap(),
                "{name}/{variant}"
            );
            let p = b.build(instruction, &video).unwrap();
            let want_ids: Vec<u32> = want["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(p.input_ids, want_ids, "{name}/{variant}: input_ids");
            assert_eq!(
                p.text,
                want["expanded_text"].as_str().unwrap(),
                "{name}/{variant}: expanded text"
            );
            let len = p.input_ids.len();
            match variant {
                "open" => assert_eq!((p.target_token_id, p.score_position), (TRUE_TOKEN_ID, len - 1)),
                // the chat variant scores "True" without the leading space
                "chat" => {
                    assert_eq!(p.score_position, len - 2);
                    assert_eq!(
                        b.tokenizer().id_to_token(p.target_token_id).as_deref(),
                        Some("True")
                    );
                }
                _ => assert_eq!((p.target_token_id, p.score_position), (TRUE_TOKEN_ID, len - 2)),
            }

            // segments tile the ids; each group is `<t seconds><|vision_start|>pads<|vision_end|>`
            let segs = p.segments();
            assert_eq!(segs.len(), video.num_groups() + 2);
            assert_eq!(segs[0].tokens.start, 0);
            assert_eq!(segs.last().unwrap().tokens.end, len);
            for pair in segs.windows(2) {
                assert_eq!(pair[0].tokens.end, pair[1].tokens.start);
            }
            for (g, group) in p.groups.iter().enumerate() {
                assert_eq!(segs[g + 1].kind, SegmentKind::Group(g));
                assert_eq!(group.video_pads.len(), video.tokens_per_group());
                assert!(
                    p.input_ids[group.video_pads.clone()]
                        .iter()
                        .all(|&t| t == VIDEO_PAD_TOKEN_ID)
                );
                let ts_text = b.tokenizer().decode(
                    &p.input_ids[group.tokens.start..group.video_pads.start - 1],
                    false,
                );
                assert_eq!(
                    ts_text.unwrap(),
                    video.timestamp_text(g),
                    "{name}/{variant}: group {g}"
                );
            }
            let pads = p.input_ids.iter().filter(|&&t| t == VIDEO_PAD_TOKEN_ID).count();
            assert_eq!(pads, video.num_groups() * video.tokens_per_group());
        }
    }
}

#[test]
fn a_shorter_clip_shares_its_prefix_and_group_tokens_with_a_longer_one() {
    let b = builder(PromptConfig::default());
    let ts = [0.25, 1.25, 2.25, 3.25, 4.25];
    let full = b.build_for("stack the cubes", &ts, 36).unwrap();
    for k in 1..ts.len() {
        let part = b.build_for("stack the cubes", &ts[..k], 36).unwrap();
        let shared = part.groups[k - 1].tokens.end;
        assert_eq!(part.input_ids[..shared], full.input_ids[..shared], "{k} groups");
        assert_eq!(
            part.input_ids[shared..],
            full.input_ids[full.groups[ts.len() - 1].tokens.end..]
        );
    }
}

#[test]
fn control_tokens_in_user_text_are_refused() {
    let b = builder(PromptConfig::default());
    let err = b.build_for("pick <|video_pad|> up", &[0.25], 4).unwrap_err();
    assert!(err.to_string().contains("<|video_pad|>"), "{err}");
    let err = builder(PromptConfig {
        suffix_template: "{instruction} Answer: Truly-yes".into(),
        ..Default::default()
    })
    .build_for("pick", &[0.25], 4)
    .unwrap_err();
    assert!(err.to_string().contains("single token"), "{err}");
}
