//! `topreward score`: TOPReward progress of one episode (a folder of frames or a video file).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

use toprl_rewards::qwen3_vl::{DeviceSpec, Precision, Qwen3VL};
use toprl_rewards::remote::SUCCESS_PREFIXES;
use toprl_rewards::topreward::prompt::PromptConfig;
use toprl_rewards::topreward::{Mode, QwenPrefixEncoder, ScorerConfig, TopReward, TopRewardModel};

use crate::commands::calibrate::{Threshold, read_calibration};
use crate::commands::remote::RemoteArgs;
use crate::plot::{Chart, Series, save_chart};

/// Score an episode with TOPReward: log p(" True") per prefix, min-max progress and VOC.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Qwen3-VL checkpoint: a local directory (config.json, model.safetensors[.index.json]) or a hub id
    /// such as Qwen/Qwen3-VL-8B-Instruct (downloaded through the Hugging Face cache). With --endpoint: the
    /// model name sent to OpenAI servers (optional).
    #[arg(long, required_unless_present = "endpoints")]
    pub model: Option<String>,
    /// A folder of frames (png/jpg, sorted by name) already sampled at --fps, or a video file sampled at --fps.
    #[arg(long)]
    pub frames: PathBuf,
    /// Frame rate of the frames fed to the model (the paper samples at 2 fps).
    #[arg(long, default_value_t = 2.0)]
    pub fps: f64,
    /// The task instruction.
    #[arg(long)]
    pub instruction: String,
    /// exact: every prefix re-encoded as the reference; incremental: one resolution (the whole episode's)
    /// for every prefix and the KV cache reused. Incremental is several times faster but its scores differ
    /// from the reference's whenever smart_resize would give a prefix another resolution (long or large
    /// episodes; on a 5-frame 320x240 test episode with a small pixel budget, by up to 1.7 nats).
    #[arg(long, default_value_t = Mode::Exact)]
    pub mode: Mode,
    /// Device: cpu, cuda, cuda:N, metal or metal:N (GPUs need a build with `--features cuda` / `metal`).
    #[arg(long, default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
    /// Precision: auto (the checkpoint's stored dtype on a GPU, f32 on the CPU), f32, bf16 or f16.
    /// bf16/f16 keep transformers' upcasts (norms, softmax and vision RoPE in f32).
    #[arg(long, default_value_t = Precision::Auto)]
    pub dtype: Precision,
    /// Keep only the last N frames (LeRobot's port uses 16); default all.
    #[arg(long)]
    pub max_frames: Option<usize>,
    /// Refuse inputs longer than this many tokens (default: the model's max_position_embeddings).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// tokenizer.json to use (default: the checkpoint's, else the Qwen3 tokenizer of scripts/setup.sh).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Wrap the prompt in the chat template (the paper reports lower VOC with it).
    #[arg(long)]
    pub chat_template: bool,
    /// Text right after the video (default: the paper's "The above video shows a robot manipulation
    /// trajectory that completes the following task: ").
    #[arg(long)]
    pub prompt_prefix: Option<String>,
    /// Text after the prefix, with `{instruction}` where the task goes and ending in the scored answer word
    /// (default: "{instruction} Decide whether the above statement is True or not. The answer is: True").
    #[arg(long)]
    pub prompt_suffix: Option<String>,
    /// Hub revision (commit, tag or branch) to pin a hub model to; cached scores are keyed by the resolved
    /// commit (local checkpoints by a content hash).
    #[arg(long)]
    pub revision: Option<String>,
    /// Directory of cached episode scores (JSON, keyed by content and settings).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print one JSON object (prefix_lengths, log_probs, progress, num_tokens, voc, success_score, timing
    /// {load_seconds, score_seconds}, device, dtype and, with --success-threshold, success) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Call the episode a success when its success score (mean log p(" True") over the last 3 prefixes,
    /// the paper's detector) is at least this; pick it on labelled episodes (typically -1.5 to -0.5), or
    /// `auto`: the threshold `topreward calibrate` wrote to --calibration.
    #[arg(long, allow_hyphen_values = true)]
    pub success_threshold: Option<Threshold>,
    /// Calibration file read by --success-threshold auto (written by `topreward calibrate`).
    #[arg(long, default_value = "topreward_calibration.json")]
    pub calibration: PathBuf,
    /// Also score a static video (the first frame repeated as often as there are frames) and report its
    /// VOC as `static_voc`: a model that finds progress in a video where nothing happens (the authors
    /// report about 0.99 for Qwen3-VL-8B) has a time bias that the real VOC includes.
    #[arg(long)]
    pub static_check: bool,
    /// Write a PNG plot of the progress curve.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Settings of a TOPReward scorer beyond the model and mode.
#[derive(Debug, Clone, Default)]
pub struct ScorerOptions {
    /// tokenizer.json (default: the checkpoint's, else the cached Qwen3 tokenizer).
    pub tokenizer: Option<PathBuf>,
    /// The prompt (default: the paper's).
    pub prompt: PromptConfig,
    /// Refuse inputs longer than this many tokens.
    pub max_tokens: Option<usize>,
    /// Directory of cached episode scores.
    pub cache_dir: Option<PathBuf>,
    /// Where the model runs.
    pub device: DeviceSpec,
    /// Precision (auto: stored dtype on a GPU, f32 on the CPU).
    pub dtype: Precision,
    /// Hub revision (commit, tag or branch) of a hub model.
    pub revision: Option<String>,
}

/// Load a Qwen3-VL checkpoint (local directory or hub id) as a TOPReward scorer on `options.device` in
/// `options.dtype`.
pub fn load_scorer(model: &str, mode: Mode, options: &ScorerOptions) -> Result<TopReward<QwenPrefixEncoder>> {
    let files = toprl_rewards::checkpoint::resolve_checkpoint(model, options.revision.as_deref())
        .with_context(|| format!("resolving model {model}"))?;
    let encoder =
        QwenPrefixEncoder::from_checkpoint(&files, options.tokenizer.as_deref(), options.prompt.clone())
            .context("building the video processor and prompt")?;
    tracing::info!(
        "loading {} ({} weight file(s)) on {}",
        files.dir.display(),
        files.weights.len(),
        options.device
    );
    let (qwen, dtype) = Qwen3VL::load_on(&files, options.device, options.dtype)
        .with_context(|| format!("loading {model}"))?;
    tracing::info!("model runs in {dtype:?} on {}", options.device);
    let mut reward_model = TopRewardModel::new(qwen);
    if let Some(limit) = options.max_tokens {
        reward_model = reward_model.with_max_tokens(limit);
    }
    let config = ScorerConfig {
        mode,
        cache_dir: options.cache_dir.clone(),
    };
    // Cache keys name the weights: the hub commit, or a content hash of a local checkpoint.
    let identity = toprl_rewards::checkpoint::checkpoint_identity(&files)
        .with_context(|| format!("identifying the weights of {model}"))?;
    Ok(TopReward::new(
        reward_model,
        encoder,
        config,
        format!("{model}@{identity}"),
    )?)
}

impl ScoreArgs {
    /// The prompt the flags describe (the paper's where not overridden).
    fn prompt(&self) -> PromptConfig {
        PromptConfig::paper_with(
            self.chat_template,
            self.prompt_prefix.as_deref(),
            self.prompt_suffix.as_deref(),
        )
    }
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let success_threshold = match args.success_threshold {
        None => None,
        Some(Threshold::Value(theta)) => Some(theta),
        Some(Threshold::Auto) => Some(
            read_calibration(&args.calibration, args.model.as_deref())?
                .choice
                .threshold,
        ),
    };
    if !(args.fps.is_finite() && args.fps > 0.0) {
        bail!("--fps must be positive, got {}", args.fps);
    }
    // Every check that needs no model comes before frames are read and the model is loaded.
    if args.max_frames == Some(0) {
        bail!("--max-frames must be at least 1");
    }
    if args.instruction.trim().is_empty() {
        bail!("--instruction is empty; TOPReward asks whether the video completes it");
    }
    args.prompt()
        .validate()
        .context("--prompt-prefix / --prompt-suffix")?;
    if let Some(dir) = &args.cache_dir {
        toprl_rewards::topreward::ScoreCache::check_dir(dir).context("--cache-dir")?;
    }
    if let Some(plot) = &args.plot {
        let folder = [args.frames.as_path()];
        let protected_dirs: &[&std::path::Path] = if args.frames.is_dir() { &folder } else { &[] };
        crate::plot::check_plot_path(plot, &[args.frames.as_path()], protected_dirs).context("--plot")?;
    }
    // The frame count follows from --fps and the video's duration before anything is decoded, and
    // only the last --max-frames frames are ever held.
    let limits = toprl_rewards::frames::FrameLimits {
        keep_last: args.max_frames,
        ..Default::default()
    };
    let frames = if args.frames.is_dir() {
        toprl_rewards::frames::load_image_folder_last(&args.frames, args.max_frames)
    } else {
        toprl_rewards::frames::load_video_limited(&args.frames, args.fps, limits).map(|v| v.frames)
    }
    .with_context(|| format!("loading frames from {}", args.frames.display()))?;
    let options = ScorerOptions {
        tokenizer: args.tokenizer.clone(),
        prompt: args.prompt(),
        max_tokens: args.max_tokens,
        cache_dir: args.cache_dir.clone(),
        device: args.device,
        dtype: args.dtype,
        revision: args.revision.clone(),
    };
    let load_start = Instant::now();
    let remote = args
        .remote
        .scorer(args.model.as_deref(), Some(args.mode), args.prompt())?;
    let mut scorer = match remote {
        Some(r) => Scorer::Remote(Box::new(r)),
        None => {
            let model = args
                .model
                .as_deref()
                .context("--model is required without --endpoint")?;
            Scorer::Local(Box::new(load_scorer(model, args.mode, &options)?))
        }
    };
    let load_seconds = load_start.elapsed().as_secs_f64();
    // The precision the weights run in (local only: a remote server does not say).
    let dtype = match &scorer {
        Scorer::Local(s) => Some(format!("{:?}", s.model().model().dtype()).to_lowercase()),
        Scorer::Remote(_) => None,
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} prefixes {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("scoring {} frames ({})", frames.len(), args.mode));
    if let Scorer::Local(s) = &mut scorer {
        s.set_progress(Some(bar.clone()));
    }
    let score_start = Instant::now();
    let score = scorer
        .score(&frames, args.fps, &args.instruction)
        .context("scoring the episode")?;
    let score_seconds = score_start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let static_voc = if args.static_check {
        let first = frames.first().context("no frames to build a static video from")?;
        let still = vec![first.clone(); frames.len()];
        let score = scorer
            .score(&still, args.fps, &args.instruction)
            .context("scoring the static video")?;
        Some(score.voc)
    } else {
        None
    };
    if let Some(path) = &args.plot {
        let chart = Chart {
            title: format!("TOPReward: {} (VOC {})", args.instruction, fmt_voc(score.voc)),
            x_label: "frames in prefix".into(),
            y_label: "progress".into(),
            series: vec![Series {
                name: format!("{} mode", args.mode),
                points: score
                    .prefix_lengths
                    .iter()
                    .map(|&k| k as f64)
                    .zip(score.progress.iter().copied())
                    .collect(),
                errors: None,
            }],
            y_range: Some((0.0, 1.0)),
        };
        save_chart(path, &chart).with_context(|| format!("writing plot {}", path.display()))?;
    }
    let success_score = toprl_rewards::metrics::success_score(&score.log_probs, SUCCESS_PREFIXES);
    let success = success_threshold.zip(success_score).map(|(theta, s)| s >= theta);
    if args.json {
        let mut json = toprl_rewards::remote::episode_json(&score, success_threshold, static_voc);
        if let Some(object) = json.as_object_mut() {
            // Wall-clock seconds: loading (config, tokenizer, weights) and scoring the episode (a cache hit
            // scores in ~0 s). The static check, if asked, is not included.
            object.insert(
                "timing".into(),
                serde_json::json!({"load_seconds": load_seconds, "score_seconds": score_seconds}),
            );
            if let Some(dtype) = &dtype {
                object.insert("device".into(), serde_json::json!(args.device.to_string()));
                object.insert("dtype".into(), serde_json::json!(dtype));
            }
        }
        crate::outln!("{json}");
    } else {
        crate::outln!(
            "{:>6} {:>8} {:>12} {:>9}",
            "frames",
            "tokens",
            "log p(True)",
            "progress"
        );
        for i in 0..score.prefix_lengths.len() {
            crate::outln!(
                "{:>6} {:>8} {:>12.5} {:>9.4}",
                score.prefix_lengths[i],
                score.num_tokens[i],
                score.log_probs[i],
                score.progress[i]
            );
        }
        crate::outln!("VOC {}", fmt_voc(score.voc));
        if let Some(voc) = static_voc {
            crate::outln!(
                "static-video VOC {} (progress found where nothing moves)",
                fmt_voc(voc)
            );
        }
        if let Some(value) = success_score {
            crate::out!(
                "success score {value:.4} (mean log p(True) of the last {SUCCESS_PREFIXES} prefixes)"
            );
            match (success, success_threshold) {
                (Some(ok), Some(theta)) => crate::outln!(
                    ": {} at threshold {theta}",
                    if ok { "success" } else { "failure" }
                ),
                _ => crate::outln!(),
            }
        }
    }
    Ok(())
}

fn fmt_voc(v: Option<f64>) -> String {
    v.map_or_else(|| "undefined".to_string(), |v| format!("{v:.4}"))
}

/// The model that scores: loaded here, or remote servers.
enum Scorer {
    Local(Box<TopReward<QwenPrefixEncoder>>),
    Remote(Box<toprl_rewards::remote::client::RemoteScorer>),
}

impl Scorer {
    fn score(
        &mut self,
        frames: &[image::RgbImage],
        fps: f64,
        instruction: &str,
    ) -> Result<toprl_rewards::score::EpisodeScore> {
        use toprl_rewards::score::ProgressModel;
        Ok(match self {
            Self::Local(s) => s.score_frames(frames, fps, instruction)?,
            Self::Remote(r) => r.score_episode(frames, fps, instruction)?,
        })
    }
}
