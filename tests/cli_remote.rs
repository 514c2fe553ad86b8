//! TOPReward beyond one process, end to end with real server processes on 127.0.0.1 (ephemeral ports) and
//! the tiny random Qwen3-VL of rewards/fixtures: `topreward serve` scores exactly like local scoring through
//! its native endpoint and its OpenAI-compatible one, enforces its limits, and a dataset labelled across
//! two servers, killed and resumed, equals an uninterrupted local run. GVL runs end to end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use image::RgbImage;
use toprl_envs::dataset::{DatasetSpec, DatasetWriter, read_progress};
use toprl_envs::episode::Episode;

#[path = "episode_frames.rs"]
mod episode_frames;
use episode_frames::frames_dir;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tiny_model() -> PathBuf {
    root().join("rewards/fixtures/qwen3vl-tiny")
}

fn topreward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_topreward"))
        .args(args)
        .output()
        .expect("run topreward")
}

/// A `topreward serve` child on an ephemeral port, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(model: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_topreward"))
            .args(["serve", "--model", model, "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start topreward serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the address line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `topreward score --json` on a folder of frames with the tests' instruction (more arguments follow).
fn score_args(frames: &str) -> [&str; 6] {
    [
        "score",
        "--frames",
        frames,
        "--instruction",
        "push the cube",
        "--json",
    ]
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

#[test]
fn serve_scores_like_local_through_both_apis() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tiny_model();
    let model = model.to_str().expect("utf8");
    let server = Server::start(model, &["--max-body-mib", "1", "--max-new-tokens", "4"]);
    let frames = frames_dir("square100x80", tmp.path());
    let frames = frames.to_str().expect("utf8");
    let base = score_args(frames);
    let run = |extra: &[&str]| json_of(&topreward(&[&base[..], extra].concat()));

    for mode in ["exact", "incremental"] {
        let local = run(&[
            "--model",
            model,
            "--mode",
            mode,
            "--success-threshold",
            "-1",
            "--static-check",
        ]);
        let remote = run(&[
            "--endpoint",
            &server.url,
            "--mode",
            mode,
            "--success-threshold",
            "-1",
            "--static-check",
        ]);
        // Everything but how the run went (wall-clock timing, and the device and precision, which only a
        // local run knows) is the score, and must be identical.
        let score = |mut json: serde_json::Value| {
            if let Some(object) = json.as_object_mut() {
                for key in ["timing", "device", "dtype"] {
                    object.remove(key);
                }
            }
            json
        };
        assert_eq!(
            score(remote),
            score(local),
            "native endpoint, {mode} mode: the same JSON as local scoring"
        );
    }

    // OpenAI API (what vLLM serves) against the same server: the exact-mode scores, from the prompt
    // without the final " True" and the log-prob of the next token.
    let local = run(&["--model", model, "--mode", "exact"]);
    let openai = run(&["--endpoint", &server.url, "--api", "openai", "--concurrency", "3"]);
    let (a, b) = (floats(&local["log_probs"]), floats(&openai["log_probs"]));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4, "openai {y} vs local {x}");
    }
    assert_eq!(openai["num_tokens"], local["num_tokens"]);
    assert_eq!(openai["prefix_lengths"], local["prefix_lengths"]);

    // The prompt check compares the server's prompt with toprl's own: told that the served model has
    // another video pixel budget (--processor), toprl counts other prompts than the server's and refuses
    // the scores, or with --token-check warn keeps them.
    let other = tmp.path().join("other_processor");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(
        other.join("video_preprocessor_config.json"),
        r#"{"size": {"shortest_edge": 4096, "longest_edge": 65536}}"#,
    )
    .expect("write a processor config");
    let other = other.to_str().expect("utf8");
    let checked = ["--endpoint", &server.url, "--api", "openai", "--processor", other];
    let refused = topreward(&[&base[..], &checked[..]].concat());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a different prompt must fail: {stderr}"
    );
    assert!(
        stderr.contains("another prompt than toprl's exact scoring") && stderr.contains("--processor"),
        "{stderr}"
    );
    let kept = run(&[&checked[..], &["--token-check", "warn"][..]].concat());
    // Requests that wait together share a packed pass, so float summation order (not the computation)
    // depends on what else was waiting: equal up to f32 rounding, as with vLLM's batching.
    for (x, y) in floats(&kept["log_probs"]).iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }

    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let health: serde_json::Value = agent
        .get(&format!("{}/health", server.url))
        .call()
        .expect("health")
        .into_json()
        .expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], model);

    // A chat request as vLLM users write it, with top_logprobs: " True" is forced, the top list is the
    // full-vocabulary ranking and holds the most likely token first.
    let png = std::fs::read(Path::new(frames).join("frame_00.png")).expect("frame");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": format!("data:video/jpeg;base64,{b64},{b64}")}},
            {"type": "text", "text": "The above video shows a robot manipulation trajectory that completes the following task: push the cube Decide whether the above statement is True or not. The answer is:"}]}],
        "max_tokens": 1, "logprobs": true, "top_logprobs": 5, "allowed_token_ids": [3007],
        "add_generation_prompt": false, "continue_final_message": true,
        // The first prefix is frame 0 twice (odd prefixes repeat their last frame, index included).
        "media_io_kwargs": {"video": {"fps": 2.0, "frames_indices": [0, 0]}},
    });
    let answer: serde_json::Value = agent
        .post(&format!("{}/v1/chat/completions", server.url))
        .send_json(&body)
        .expect("chat")
        .into_json()
        .expect("json");
    let entry = &answer["choices"][0]["logprobs"]["content"][0];
    assert_eq!(entry["token"], " True");
    let lp = entry["logprob"].as_f64().expect("logprob");
    assert!((lp - a[0]).abs() < 1e-4, "first prefix: {lp} vs {}", a[0]);
    let top = floats(&serde_json::Value::Array(
        entry["top_logprobs"]
            .as_array()
            .expect("top")
            .iter()
            .map(|t| t["logprob"].clone())
            .collect(),
    ));
    assert_eq!(top.len(), 5);
    assert!(top.windows(2).all(|w| w[0] >= w[1]) && top[0] >= lp);
    assert_eq!(answer["usage"]["completion_tokens"], 1);

    // Free generation (greedy) up to max_tokens.
    let mut free = body.clone();
    free["max_tokens"] = serde_json::json!(3);
    free["allowed_token_ids"] = serde_json::Value::Null;
    let answer: serde_json::Value = agent
        .post(&format!("{}/v1/chat/completions", server.url))
        .send_json(&free)
        .expect("chat")
        .into_json()
        .expect("json");
    let generated = answer["usage"]["completion_tokens"].as_u64().expect("count");
    assert!((1..=3).contains(&generated), "{answer}");

    // Limits and bad requests: clear statuses and messages.
    let status = |r: Result<ureq::Response, ureq::Error>| match r {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("transport error {e}"),
    };
    let big = "x".repeat(2 << 20);
    let (code, msg) = status(
        agent
            .post(&format!("{}/v1/topreward/score", server.url))
            .send_string(&big),
    );
    assert_eq!(code, 413, "{msg}");
    let (code, msg) = status(agent.get(&format!("{}/nope", server.url)).call());
    assert_eq!(code, 404, "{msg}");
    let mut too_long = body.clone();
    too_long["max_tokens"] = serde_json::json!(5);
    let (code, msg) = status(
        agent
            .post(&format!("{}/v1/chat/completions", server.url))
            .send_json(&too_long),
    );
    assert!(
        code == 400 && msg.contains("max_tokens must be in 1..=4"),
        "{code} {msg}"
    );
    let (code, msg) = status(
        agent
            .post(&format!("{}/v1/topreward/score", server.url))
            .send_json(serde_json::json!({"instruction": "x", "frames": []})),
    );
    assert!(code == 422 && msg.contains("no frames"), "{code} {msg}");
}

/// Chat requests that wait together are prefilled in one packed pass: with a batching window, the concurrent
/// prefixes of `--api openai` scoring share passes (`/health` counts them) and still give local scores.
#[test]
fn concurrent_chat_requests_share_passes_and_score_like_local() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tiny_model();
    let model = model.to_str().expect("utf8");
    let refused = topreward(&["serve", "--model", model, "--port", "0", "--max-batch", "0"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--max-batch"));
    let server = Server::start(model, &["--max-batch", "8", "--batch-wait-ms", "300"]);
    let frames = frames_dir("square100x80", tmp.path());
    let frames = frames.to_str().expect("utf8");
    let base = score_args(frames);
    let local = json_of(&topreward(
        &[&base[..], &["--model", model, "--mode", "exact"]].concat(),
    ));
    let remote = json_of(&topreward(
        &[
            &base[..],
            &["--endpoint", &server.url, "--api", "openai", "--concurrency", "6"],
        ]
        .concat(),
    ));
    let (a, b) = (floats(&local["log_probs"]), floats(&remote["log_probs"]));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4, "batched {y} vs local {x}");
    }
    let health: serde_json::Value = ureq::get(&format!("{}/health", server.url))
        .call()
        .expect("health")
        .into_json()
        .expect("json");
    assert_eq!(health["max_batch"], 8);
    let batched = health["batched"].as_u64().expect("batched count");
    assert!(
        batched >= 2,
        "{} prefixes in flight 6 at a time within a 300 ms window must share passes: {health}",
        a.len()
    );
}

const CAM: &str = "observation.images.front";

/// Six short episodes whose brightness ramps (a real dataset written by toprl's LeRobot writer).
fn dataset(dir: &Path) -> PathBuf {
    let path = dir.join("ds");
    let mut w = DatasetWriter::create(&path, DatasetSpec::so101(30, &[(CAM, 64, 48)])).expect("create");
    for e in 0..6usize {
        let n = 6 + e % 3;
        let frames: Vec<RgbImage> = (0..n)
            .map(|f| {
                let mut img =
                    RgbImage::from_pixel(64, 48, image::Rgb([(20 + 30 * f) as u8, 90, (40 * e) as u8]));
                img.put_pixel(f as u32 * 5, 10, image::Rgb([255, 255, 255]));
                img
            })
            .collect();
        w.add_episode(&Episode {
            index: e,
            instruction: format!("move the light {e}"),
            fps: 30.0,
            states: vec![vec![0.0; 6]; n],
            actions: vec![vec![0.0; 6]; n],
            cameras: [(CAM.to_string(), frames)].into_iter().collect(),
            success: None,
            true_progress: None,
            environment_states: Vec::new(),
        })
        .expect("episode");
    }
    w.finish().expect("finish");
    path
}

#[test]
fn label_across_two_servers_killed_and_resumed_equals_a_local_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = dataset(tmp.path());
    let model = tiny_model();
    let model = model.to_str().expect("utf8");
    let ds_arg = ds.to_str().expect("utf8");
    let label_args = |out: &Path| -> Vec<String> {
        [
            "label",
            ds_arg,
            "--max-frames",
            "6",
            "--out",
            out.to_str().expect("utf8"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // Uninterrupted, in-process.
    let local_out = tmp.path().join("local.parquet");
    let mut args = label_args(&local_out);
    args.extend(["--model".into(), model.into()]);
    let out = Command::new(env!("CARGO_BIN_EXE_topreward"))
        .args(&args)
        .output()
        .expect("label");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let local = read_progress(&local_out).expect("local table");

    // Two servers; the run is killed as soon as its first episodes are on disk, then resumed.
    let a = Server::start(model, &[]);
    let b = Server::start(model, &[]);
    let remote_out = tmp.path().join("remote.parquet");
    let mut args = label_args(&remote_out);
    args.extend([
        "--endpoint".into(),
        a.url.clone(),
        "--endpoint".into(),
        b.url.clone(),
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_topreward"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("label");
    let start = Instant::now();
    while !remote_out.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no output after 300 s"
        );
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("label exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    let partial = read_progress(&remote_out).expect("partial table");
    let episodes: std::collections::BTreeSet<i64> = partial.episode_index.iter().copied().collect();
    assert!(
        !episodes.is_empty() && episodes.len() < 6,
        "the kill should land mid-run; episodes on disk: {episodes:?}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_topreward"))
        .args(&args)
        .output()
        .expect("resume");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{} episodes scored, {} kept",
            6 - episodes.len(),
            episodes.len()
        )),
        "{stdout}"
    );
    let remote = read_progress(&remote_out).expect("remote table");
    assert_eq!(
        remote, local,
        "resumed two-server labelling equals the uninterrupted local run"
    );
}

#[test]
fn gvl_runs_end_to_end_and_scores_unparsable_answers_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let frames = frames_dir("square256", tmp.path());
    let out = topreward(&[
        "gvl",
        "--model",
        tiny_model().to_str().expect("utf8"),
        "--frames",
        frames.to_str().expect("utf8"),
        "--instruction",
        "push the cube",
        "--max-frames",
        "4",
        "--tokens-per-frame",
        "6",
        "--json",
    ]);
    let v = json_of(&out);
    let mut order: Vec<u64> = v["order"]
        .as_array()
        .expect("order")
        .iter()
        .map(|x| x.as_u64().expect("index"))
        .collect();
    order.sort_unstable();
    assert_eq!(order, vec![0, 1, 2, 3]);
    // A random model writes no "Frame i: ... %" answer: the paper scores that VOC 0.
    assert!(v["predictions"].is_null(), "{v}");
    assert_eq!(v["voc"], 0.0);
    assert!(v["prompt_tokens"].as_u64().expect("tokens") > 4 * 64);
    // Same seed, same shuffle and answer; deterministic end to end.
    let again = json_of(&topreward(&[
        "gvl",
        "--model",
        tiny_model().to_str().expect("utf8"),
        "--frames",
        frames.to_str().expect("utf8"),
        "--instruction",
        "push the cube",
        "--max-frames",
        "4",
        "--tokens-per-frame",
        "6",
        "--json",
    ]));
    assert_eq!(again, v);

    // The same episode on a `topreward serve` through its OpenAI chat endpoint (images as data URLs,
    // greedy decoding there): the same shuffle, the same answer, the same prompt length as local GVL.
    let server = Server::start(tiny_model().to_str().expect("utf8"), &["--max-new-tokens", "64"]);
    let remote = |api: &str| {
        topreward(&[
            "gvl",
            "--endpoint",
            &server.url,
            "--api",
            api,
            "--frames",
            frames.to_str().expect("utf8"),
            "--instruction",
            "push the cube",
            "--max-frames",
            "4",
            "--tokens-per-frame",
            "6",
            "--json",
        ])
    };
    assert_eq!(json_of(&remote("openai")), v, "remote GVL equals local GVL");
    // The native endpoint scores TOPReward only: GVL there is refused with the fix.
    let native = remote("toprl");
    assert!(!native.status.success());
    assert!(String::from_utf8_lossy(&native.stderr).contains("--api openai"));
}

#[test]
fn eval_both_methods_and_calibration_on_a_labelled_dataset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = dataset(tmp.path());
    let labels = serde_json::json!({"0": true, "1": false, "2": true, "3": false, "4": true, "5": false});
    std::fs::write(ds.join("success_labels.json"), labels.to_string()).expect("labels");
    let model = tiny_model();
    let model = model.to_str().expect("utf8");
    let ds_arg = ds.to_str().expect("utf8");
    let out = tmp.path().join("eval");
    let eval = || {
        topreward(&[
            "eval",
            ds_arg,
            "--model",
            model,
            "--method",
            "both",
            "--max-frames",
            "4",
            "--tokens-per-frame",
            "4",
            "--out",
            out.to_str().expect("utf8"),
        ])
    };
    let first = eval();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).expect("eval.json"))
            .expect("json");
    let md = std::fs::read_to_string(out.join("eval.md")).expect("eval.md");
    assert!(
        md.contains("| topreward | all | 6 |") && md.contains("| gvl | all | 6 |"),
        "{md}"
    );
    assert!(image::open(out.join("eval.png")).expect("plot").width() > 300);
    let rows = report["summary"].as_array().expect("summary");
    let overall = |m: &str| {
        rows.iter()
            .find(|r| r["method"] == m && r["task"] == "all")
            .unwrap_or_else(|| panic!("no overall row for {m}"))
    };
    // The random model's GVL answers never parse: VOC 0 on every episode, as the paper scores it.
    assert_eq!(overall("gvl")["mean_voc"], 0.0);
    assert_eq!(overall("topreward")["labelled"], 6);
    // ROC-AUC recomputed from the per-episode rows.
    let eps: Vec<&serde_json::Value> = report["episodes"]
        .as_array()
        .expect("episodes")
        .iter()
        .filter(|e| e["method"] == "topreward")
        .collect();
    assert_eq!(eps.len(), 6);
    let scores: Vec<f64> = eps
        .iter()
        .map(|e| e["success_score"].as_f64().expect("score"))
        .collect();
    let outcome: Vec<bool> = eps
        .iter()
        .map(|e| e["success"].as_bool().expect("label"))
        .collect();
    let auc = toprl_rewards::metrics::roc_auc(&scores, &outcome).expect("auc");
    assert!((overall("topreward")["roc_auc"].as_f64().expect("auc") - auc).abs() < 1e-12);
    assert!(eps.iter().all(|e| e.get("static_voc").is_some()));
    // Six tasks (one per episode) plus the overall row, per method.
    assert_eq!(rows.len(), 14);

    // Interrupted after some episodes: a rerun scores only the missing ones and reproduces the report.
    let state_path = out.join("eval_state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("json");
    let results = state["results"].as_array_mut().expect("results");
    results.truncate(results.len() - 3);
    std::fs::write(&state_path, state.to_string()).expect("write state");
    let again = eval();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("3 (method, episode) pairs evaluated in this run, 9 kept"),
        "{stdout}"
    );
    let rerun: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).expect("eval.json"))
            .expect("json");
    assert_eq!(rerun, report);

    // Calibration: same scores, so the same ROC-AUC; the threshold is one of the success scores.
    let cal = tmp.path().join("cal.json");
    let c = topreward(&[
        "calibrate",
        ds_arg,
        "--model",
        model,
        "--max-frames",
        "4",
        "--criterion",
        "f1",
        "--out",
        cal.to_str().expect("utf8"),
    ]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let calibration: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cal).expect("cal")).expect("json");
    assert!((calibration["roc_auc"].as_f64().expect("auc") - auc).abs() < 1e-12);
    let theta = calibration["threshold"].as_f64().expect("threshold");
    assert!(
        scores.iter().any(|s| (s - theta).abs() < 1e-12),
        "{theta} not in {scores:?}"
    );
    assert_eq!(calibration["criterion"], "f1");

    // `score --success-threshold auto` applies it; another model's calibration is refused.
    let frames = frames_dir("square256", tmp.path());
    let frames = frames.to_str().expect("utf8");
    let scored = json_of(&topreward(&[
        "score",
        "--model",
        model,
        "--frames",
        frames,
        "--instruction",
        "push",
        "--json",
        "--success-threshold",
        "auto",
        "--calibration",
        cal.to_str().expect("utf8"),
    ]));
    let s = scored["success_score"].as_f64().expect("score");
    assert_eq!(scored["success"].as_bool(), Some(s >= theta));
    let other = tmp.path().join("other-model");
    std::fs::create_dir_all(&other).expect("mkdir");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_model().join(f), other.join(f)).expect("copy");
    }
    let refused = topreward(&[
        "score",
        "--model",
        other.to_str().expect("utf8"),
        "--frames",
        frames,
        "--instruction",
        "push",
        "--success-threshold",
        "auto",
        "--calibration",
        cal.to_str().expect("utf8"),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("calibrate this model"));

    // Missing labels: calibration says where to put them.
    std::fs::remove_file(ds.join("success_labels.json")).expect("rm");
    let err = topreward(&["calibrate", ds_arg, "--model", model]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("success_labels.json"));
}
