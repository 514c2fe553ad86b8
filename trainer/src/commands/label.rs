//! `topreward label`: TOPReward progress and reward-aligned BC weights for every frame of a LeRobotDataset, written as
//! `topreward_progress.parquet` (LeRobot's progress-file layout) plus a PNG grid of the progress curves.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use toprl_rewards::metrics::WeightParams;
use toprl_rewards::qwen3_vl::{DeviceSpec, Precision};
use toprl_rewards::remote::client::Api;
use toprl_rewards::topreward::Mode;

use crate::commands::dataset::open_dataset;
use crate::commands::remote::RemoteArgs;
use crate::commands::score::{ScorerOptions, load_scorer};
use crate::label::{LabelOptions, Sampling, check_inputs, default_progress_path, label_dataset};
use crate::plot::{Chart, Series, check_plot_path, save_grid};
use crate::weighting::{DeltaKind, Weighting};

/// Label a LeRobotDataset with TOPReward progress (resumable: finished episodes are kept).
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Dataset folder, or hf://OWNER/NAME[@REVISION].
    pub dataset: String,
    /// Qwen3-VL checkpoint: a local directory or a hub id such as Qwen/Qwen3-VL-8B-Instruct. With
    /// --endpoint: the model name sent to OpenAI servers (optional).
    #[arg(long, required_unless_present = "endpoints")]
    pub model: Option<String>,
    /// Hub revision (commit, tag or branch) of a hub model.
    #[arg(long)]
    pub revision: Option<String>,
    /// Camera the model sees.
    #[arg(long, default_value = "observation.images.front")]
    pub camera: String,
    /// Output parquet. Default: topreward_progress.parquet in the dataset folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// exact or incremental (the default: KV-cache reuse, several times faster). Incremental scores every
    /// prefix at the resolution of the whole (subsampled) episode; exact re-encodes each prefix at the
    /// resolution the reference's smart_resize gives it, so the two differ whenever that resolution changes
    /// with the prefix length (large frames or many frames; up to 1.7 nats on a 5-frame 320x240 test
    /// episode with a small pixel budget). Use exact to reproduce the paper's numbers.
    #[arg(long, default_value_t = Mode::Incremental)]
    pub mode: Mode,
    /// Device: cpu, cuda, cuda:N, metal or metal:N (GPUs need a build with `--features cuda` / `metal`).
    #[arg(long, default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
    /// Precision: auto (the checkpoint's stored dtype on a GPU, f32 on the CPU), f32, bf16 or f16.
    #[arg(long, default_value_t = Precision::Auto)]
    pub dtype: Precision,
    /// Frame rate the episode is sampled at before scoring (the paper's: 2).
    #[arg(long, default_value_t = 2.0)]
    pub fps: f64,
    /// At most this many frames are scored per episode.
    #[arg(long, default_value_t = 16)]
    pub max_frames: usize,
    /// `paper`: --fps over the whole episode, capped at --max-frames spread uniformly over it;
    /// `last`: LeRobot's port, --fps and only the last --max-frames frames (the start is never seen).
    #[arg(long, value_enum, default_value_t = SamplingArg::Paper)]
    pub sampling: SamplingArg,
    /// Progress credited to frame t in the weight column: `chunk` s(t + H) - s(t) with H = --chunk (LeRobot's
    /// RA-BC; the trainer's default), `prefix` (between the scored frames around t) or `frame` (s(t) - s(t - 1)).
    #[arg(long, value_enum, default_value_t = DeltaKind::Chunk)]
    pub delta: DeltaKind,
    /// The policy's action chunk H for `--delta chunk` (SmolVLA's and pi0's: 50).
    #[arg(long, default_value_t = 50)]
    pub chunk: usize,
    /// Weight formula: `eq3` (paper Eq. 3 with --tau, --delta-max, --min-weight) or `rabc` (LeRobot's RA-BC
    /// with --kappa).
    #[arg(long, value_enum, default_value_t = Weighting::Eq3)]
    pub weighting: Weighting,
    /// RA-BC threshold: a delta above it weighs 1 (LeRobot's: 0.01).
    #[arg(long, default_value_t = 0.01)]
    pub kappa: f64,
    /// Paper Eq. 3 scale tau.
    #[arg(long, default_value_t = 2.0)]
    pub tau: f64,
    /// Paper Eq. 3 upper clip delta_max.
    #[arg(long, default_value_t = 2.0)]
    pub delta_max: f64,
    /// Lower clip of the weight (the paper uses 0).
    #[arg(long, default_value_t = 0.0)]
    pub min_weight: f64,
    /// PNG grid of the per-episode progress curves. Default: the output path with a .png extension.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Frame sampling choices of `topreward label`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplingArg {
    Paper,
    Last,
}

pub fn run(args: LabelArgs) -> Result<()> {
    let dataset = open_dataset(&args.dataset)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_progress_path(&dataset));
    let remote = args
        .remote
        .scorer(args.model.as_deref(), Some(args.mode), Default::default())?;
    let mut opts = LabelOptions {
        camera: args.camera.clone(),
        out: out.clone(),
        weights: WeightParams {
            tau: args.tau,
            delta_max: args.delta_max,
            min_weight: args.min_weight,
        },
        delta: args.delta,
        chunk: args.chunk,
        weighting: args.weighting,
        kappa: args.kappa,
        sampling: match args.sampling {
            SamplingArg::Paper => Sampling::Paper {
                fps: args.fps,
                max_frames: args.max_frames,
            },
            SamplingArg::Last => Sampling::Last {
                fps: args.fps,
                max_frames: args.max_frames,
            },
        },
        model_id: String::new(),
    };
    // Everything that needs no model is checked before the model loads (minutes for an 8B checkpoint).
    check_inputs(&dataset, &opts).with_context(|| format!("labelling {}", args.dataset))?;
    let plot = args.plot.clone().unwrap_or_else(|| out.with_extension("png"));
    let root = dataset.root();
    let dataset_dirs = ["meta", "data", "videos", "images"].map(|d| root.join(d));
    let dataset_dirs: Vec<&std::path::Path> = dataset_dirs.iter().map(|d| d.as_path()).collect();
    check_plot_path(&plot, &[out.as_path()], &dataset_dirs).context("--plot")?;
    // The model id goes into the file: a resumed run never mixes models. Servers report what they serve;
    // a toprl server started on the same checkpoint path labels exactly as a local run.
    let summary = match remote {
        Some(mut remote) => {
            let served = remote
                .served_model()
                .context("asking the endpoints which model they serve")?;
            opts.model_id = match args.remote.api {
                Api::Toprl => format!("{served} ({})", args.mode),
                Api::OpenAi => format!("{served} (openai, exact)"),
            };
            label_dataset(&dataset, &mut remote, &opts)
        }
        None => {
            let model = args
                .model
                .as_deref()
                .context("--model is required without --endpoint")?;
            opts.model_id = match &args.revision {
                Some(rev) => format!("{model}@{rev} ({})", args.mode),
                None => format!("{model} ({})", args.mode),
            };
            let options = ScorerOptions {
                revision: args.revision.clone(),
                device: args.device,
                dtype: args.dtype,
                ..Default::default()
            };
            let mut scorer = load_scorer(model, args.mode, &options)?;
            label_dataset(&dataset, &mut scorer, &opts)
        }
    }
    .with_context(|| format!("labelling {}", args.dataset))?;
    let table = toprl_envs::dataset::read_progress(&summary.path)
        .with_context(|| format!("reading back {}", summary.path.display()))?;
    let mut curves: BTreeMap<i64, Vec<(f64, f64)>> = BTreeMap::new();
    for ((&episode, &frame), &progress) in table
        .episode_index
        .iter()
        .zip(&table.frame_index)
        .zip(&table.progress)
    {
        curves.entry(episode).or_default().push((frame as f64, progress));
    }
    let charts: Vec<Chart> = curves
        .into_iter()
        .take(16)
        .map(|(episode, points)| Chart {
            title: format!("episode {episode}"),
            x_label: "frame".into(),
            y_label: "progress".into(),
            series: vec![Series {
                name: String::new(),
                points,
                errors: None,
            }],
            y_range: Some((0.0, 1.0)),
        })
        .collect();
    save_grid(&plot, &charts, 4, (320, 220)).with_context(|| format!("writing {}", plot.display()))?;
    crate::outln!(
        "{}: {} episodes scored, {} kept from an earlier run, {} frames; curves in {}",
        summary.path.display(),
        summary.scored,
        summary.kept,
        summary.frames,
        plot.display()
    );
    Ok(())
}
