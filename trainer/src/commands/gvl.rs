//! `topreward gvl`: the GVL baseline (completion percentages decoded from shuffled frames) on one episode.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use toprl_rewards::gvl::{Gvl, GvlConfig};
use toprl_rewards::multimodal::MultimodalEncoder;
use toprl_rewards::qwen3_vl::{DType, Device, Qwen3VL};

use crate::commands::remote::RemoteArgs;
use crate::commands::score::ScorerOptions;

/// Score an episode with GVL (arXiv 2411.04549), the baseline of the TOPReward paper: the model predicts
/// each shuffled frame's completion percentage; VOC of the un-shuffled predictions (0 if unparsable).
#[derive(Debug, Args)]
pub struct GvlArgs {
    /// Qwen3-VL checkpoint: a local directory or a hub id. With --endpoint: the model name sent to the
    /// OpenAI servers (optional).
    #[arg(long, required_unless_present = "endpoints")]
    pub model: Option<String>,
    /// Hub revision of a hub model.
    #[arg(long)]
    pub revision: Option<String>,
    /// A folder of frames (png/jpg, sorted by name) or a video file, sampled at --fps.
    #[arg(long)]
    pub frames: PathBuf,
    /// Frame rate of the frames.
    #[arg(long, default_value_t = 2.0)]
    pub fps: f64,
    /// The task instruction.
    #[arg(long)]
    pub instruction: String,
    /// Seed of the frame shuffle (mixed with the episode's content hash).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Generated tokens allowed per frame.
    #[arg(long, default_value_t = 40)]
    pub tokens_per_frame: usize,
    /// Keep at most this many frames, spread evenly (first and last kept).
    #[arg(long)]
    pub max_frames: Option<usize>,
    /// tokenizer.json (default: the checkpoint's, else the Qwen3 tokenizer of scripts/setup.sh).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Print one JSON object (order, text, predictions, voc, prompt_tokens).
    #[arg(long)]
    pub json: bool,
    /// With --endpoint and --api openai: generate on a server (toprl's `topreward serve` with a large
    /// enough --max-new-tokens, or vLLM) instead of loading the model here.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Load a checkpoint as a GVL scorer (CPU, f32).
pub fn load_gvl(model: &str, options: &ScorerOptions, config: GvlConfig) -> Result<Gvl> {
    let files = toprl_rewards::checkpoint::resolve_checkpoint(model, options.revision.as_deref())
        .with_context(|| format!("resolving model {model}"))?;
    let tokenizer = match (&options.tokenizer, &files.tokenizer) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => {
            toprl_rewards::assets::qwen3_tokenizer_json().context("locating the Qwen3 tokenizer")?
        }
    };
    let encoder =
        MultimodalEncoder::from_checkpoint(&files.dir, &tokenizer).context("building the GVL encoder")?;
    let qwen = Qwen3VL::load(&files, &Device::Cpu, DType::F32).with_context(|| format!("loading {model}"))?;
    Ok(Gvl::new(qwen, encoder, config))
}

/// Evenly spread positions (first and last kept), as `label` samples.
pub fn spread(n: usize, max: Option<usize>) -> Vec<usize> {
    match max {
        Some(m) if n > m && m >= 2 => (0..m)
            .map(|i| ((i as f64) * (n - 1) as f64 / (m - 1) as f64).round() as usize)
            .collect(),
        Some(1) if n > 1 => vec![n - 1],
        _ => (0..n).collect(),
    }
}

pub fn run(args: GvlArgs) -> Result<()> {
    if !(args.fps.is_finite() && args.fps > 0.0) {
        bail!("--fps must be positive, got {}", args.fps);
    }
    if args.max_frames == Some(0) {
        bail!("--max-frames must be at least 1");
    }
    let frames = if args.frames.is_dir() {
        toprl_rewards::frames::load_image_folder(&args.frames)
    } else {
        toprl_rewards::frames::load_video(&args.frames, args.fps).map(|v| v.frames)
    }
    .with_context(|| format!("loading frames from {}", args.frames.display()))?;
    let keep = spread(frames.len(), args.max_frames);
    let fps = args.fps * keep.len() as f64 / frames.len().max(1) as f64;
    let frames: Vec<_> = keep.iter().map(|&i| frames[i].clone()).collect();
    let config = GvlConfig {
        seed: args.seed,
        tokens_per_frame: args.tokens_per_frame,
    };
    let score = match args
        .remote
        .scorer(args.model.as_deref(), None, Default::default())?
    {
        Some(mut remote) => remote
            .gvl(&frames, fps, &args.instruction, &config)
            .context("running GVL on the server")?,
        None => {
            let model = args
                .model
                .as_deref()
                .context("--model is required without --endpoint")?;
            let options = ScorerOptions {
                tokenizer: args.tokenizer.clone(),
                revision: args.revision.clone(),
                ..Default::default()
            };
            load_gvl(model, &options, config)?
                .score(&frames, fps, &args.instruction)
                .context("running GVL")?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&score)?);
    } else {
        println!(
            "shown order (episode frame of Frame 1, 2, ...): {:?}",
            score.order
        );
        println!("answer: {}", score.text);
        match &score.predictions {
            Some(p) => println!("predictions in time order: {p:?}"),
            None => println!("the answer did not parse: VOC 0"),
        }
        println!(
            "VOC {}",
            score
                .voc
                .map_or_else(|| "undefined".into(), |v| format!("{v:.4}"))
        );
    }
    Ok(())
}
