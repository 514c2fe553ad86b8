//! The OpenAI request toprl sends (`--api openai`) gives the prompt of toprl's exact scoring when a real
//! Qwen3-VL processor reads it as an OpenAI server does: transformers' `apply_chat_template` renders the
//! request's `chat_template` (jinja2, `continue_final_message`), then `Qwen3VLProcessor` expands the video
//! (`scripts/openai_prompt_ids.py` in `.venv-lerobot`, transformers 4.57). The token ids must equal
//! `MultimodalEncoder::prompt_ids`, the count toprl's prompt check compares a server's answer with.
//! transformers >= 5 (vLLM's) is measured by `scripts/vllm_agreement.sh` and recorded in
//! `scripts/vllm_agreement_results/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use toprl_rewards::assets::qwen3_tokenizer_json;
use toprl_rewards::multimodal::{DEFAULT_IMAGE_SIZE, Message, MultimodalEncoder, Part, TemplateOptions};
use toprl_rewards::qwen3_vl::processor::{VideoMetadata, VideoProcessor};
use toprl_rewards::remote::client::{CHAT_TEMPLATE, openai_request, openai_text};
use toprl_rewards::remote::encode_png;
use toprl_rewards::topreward::prompt::PromptConfig;
use toprl_rewards::topreward::{prefix_frame_indices, prefix_lengths};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run `scripts/openai_prompt_ids.py` on the request bodies; one answer per body.
fn transformers_prompts(bodies: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let python = repo_root().join(".venv-lerobot/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh (it installs .venv-lerobot with transformers)",
        python.display()
    );
    let tokenizer = qwen3_tokenizer_json().expect("the Qwen3 tokenizer: run scripts/setup.sh");
    let mut requests = tempfile::NamedTempFile::new().expect("temp file");
    for b in bodies {
        writeln!(requests, "{b}").expect("write a request");
    }
    let input = std::fs::File::open(requests.path()).expect("reopen the requests");
    let out = Command::new(python)
        .arg(repo_root().join("scripts/openai_prompt_ids.py"))
        .env(
            "TOPRL_TOKENIZER_DIR",
            tokenizer.parent().expect("tokenizer folder"),
        )
        .stdin(Stdio::from(input))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "openai_prompt_ids.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(answers.len(), bodies.len());
    answers
}

#[test]
fn the_request_template_gives_toprls_exact_prompt_in_transformers() {
    let dir = repo_root().join("rewards/fixtures/episodes/square100x80");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture episode")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("frame_") && name.ends_with(".png")
        })
        .collect();
    paths.sort();
    let frames: Vec<image::RgbImage> = paths
        .iter()
        .map(|p| image::open(p).expect("frame").to_rgb8())
        .collect();
    let pngs: Vec<String> = frames.iter().map(|f| BASE64.encode(encode_png(f))).collect();
    let text = openai_text(&PromptConfig::default(), "push the cube to the right").unwrap();
    let fps = 2.0;
    let lengths = prefix_lengths(frames.len());
    // toprl's template, and Qwen3-VL Instruct's (the markers around the pad), which 4.57 also consumes.
    let instruct = CHAT_TEMPLATE.replace(
        "{{- '<|video_pad|>' -}}",
        "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}",
    );
    assert_ne!(instruct, CHAT_TEMPLATE);
    let mut bodies = Vec::new();
    for &k in &lengths {
        bodies.push(openai_request(&pngs, k, fps, &text, true));
        let mut b = openai_request(&pngs, k, fps, &text, true);
        b["chat_template"] = serde_json::json!(instruct);
        bodies.push(b);
    }
    let answers = transformers_prompts(&bodies);

    let tokenizer = tokenizers::Tokenizer::from_file(qwen3_tokenizer_json().unwrap()).expect("tokenizer");
    let toprl = MultimodalEncoder::new(VideoProcessor::default(), DEFAULT_IMAGE_SIZE, tokenizer);
    for (i, &k) in lengths.iter().enumerate() {
        let idx = prefix_frame_indices(k);
        let message = Message {
            role: "user".into(),
            content: vec![
                Part::Video {
                    frames: idx.iter().map(|&j| frames[j].clone()).collect(),
                    metadata: VideoMetadata {
                        fps,
                        frame_indices: Some(idx.clone()),
                    },
                },
                Part::Text(text.clone()),
            ],
        };
        let options = TemplateOptions {
            add_generation_prompt: false,
            continue_final_message: true,
        };
        let ours = toprl.prompt_ids(&[message], options).unwrap();
        let ours = serde_json::json!(ours);
        let (bare, markers) = (&answers[2 * i], &answers[2 * i + 1]);
        assert_eq!(
            bare["rendered"],
            format!("<|im_start|>user\n<|video_pad|>{text}"),
            "the template leaves the user turn open after the text"
        );
        assert_eq!(bare["input_ids"], ours, "prefix {k}: toprl's template");
        assert_eq!(bare["vision_starts"], bare["video_groups"]);
        assert_eq!(
            markers["input_ids"], ours,
            "prefix {k}: Qwen3-VL Instruct's template in transformers {}",
            markers["transformers"]
        );
    }
}
