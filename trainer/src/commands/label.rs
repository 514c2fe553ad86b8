//! `topreward label`: TOPReward progress and Eq. 3 weights for every frame of a LeRobotDataset, written as
//! `topreward_progress.parquet` (LeRobot's progress-file layout) plus a PNG grid of the progress curves.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use toprl_rewards::metrics::WeightParams;
use toprl_rewards::remote::client::Api;
use toprl_rewards::topreward::Mode;

use crate::commands::dataset::open_dataset;
use crate::commands::remote::RemoteArgs;
use crate::commands::score::{ScorerOptions, load_scorer};
use crate::label::{LabelOptions, default_progress_path, label_dataset};
use crate::plot::{Chart, Series, save_grid};

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
    /// exact or incremental (KV-cache reuse).
    #[arg(long, default_value_t = Mode::Incremental)]
    pub mode: Mode,
    /// Subsample each episode evenly to at most this many frames before scoring (LeRobot's port: 16).
    #[arg(long, default_value_t = 16)]
    pub max_frames: usize,
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
        max_frames: Some(args.max_frames),
        model_id: String::new(),
    };
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
    let plot = args.plot.clone().unwrap_or_else(|| out.with_extension("png"));
    save_grid(&plot, &charts, 4, (320, 220)).with_context(|| format!("writing {}", plot.display()))?;
    println!(
        "{}: {} episodes scored, {} kept from an earlier run, {} frames; curves in {}",
        summary.path.display(),
        summary.scored,
        summary.kept,
        summary.frames,
        plot.display()
    );
    Ok(())
}
