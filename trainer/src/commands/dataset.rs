//! `so101 dataset info|frames`: inspect a LeRobotDataset (v3.0 or v2.1) and export a camera's frames.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use toprl_envs::dataset::{HubOptions, LeRobotDataset, STATE_KEY, video};

/// LeRobotDataset tools.
#[derive(Debug, Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    pub command: DatasetCommand,
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Show a dataset's version, features, cameras, tasks and episodes.
    Info(InfoArgs),
    /// Write one camera's frames of one episode as PNG files named by frame index (000042.png).
    Frames(FramesArgs),
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Dataset folder (holding meta/, data/, videos/), or `hf://OWNER/NAME[@REVISION]` to fetch from the hub.
    pub dir: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FramesArgs {
    /// Dataset folder, or `hf://OWNER/NAME[@REVISION]`.
    pub dir: String,
    /// Episode index.
    #[arg(long)]
    pub episode: usize,
    /// Camera feature key, e.g. `observation.images.front`.
    #[arg(long)]
    pub camera: String,
    /// Output folder (must not exist; written to a temporary folder and renamed when complete).
    #[arg(long)]
    pub out: PathBuf,
}

/// Run a `dataset` subcommand.
pub fn run(args: DatasetArgs) -> Result<()> {
    match args.command {
        DatasetCommand::Info(a) => info(&a),
        DatasetCommand::Frames(a) => frames(&a),
    }
}

/// Open a local folder, or a hub repo given as `hf://owner/name[@revision]`.
pub fn open_dataset(dir: &str) -> Result<LeRobotDataset> {
    if let Some(repo) = dir.strip_prefix("hf://") {
        let (repo, revision) = match repo.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (repo, None),
        };
        let opts = HubOptions {
            progress: true,
            ..HubOptions::default()
        };
        return LeRobotDataset::from_hub_with(repo, revision, &opts)
            .with_context(|| format!("fetching dataset {repo} from the hub"));
    }
    LeRobotDataset::open(dir).with_context(|| format!("opening dataset {dir}"))
}

#[derive(Debug, Serialize)]
struct FeatureReport {
    key: String,
    dtype: String,
    shape: Vec<usize>,
    names: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct CameraReport {
    key: String,
    width: usize,
    height: usize,
    codec: String,
}

#[derive(Debug, Serialize)]
struct EpisodeReport {
    index: usize,
    length: usize,
    task: String,
    first_state: Vec<f32>,
    last_state: Vec<f32>,
}

#[derive(Debug, Serialize)]
struct InfoReport {
    path: PathBuf,
    codebase_version: String,
    fps: f64,
    robot_type: Option<String>,
    total_episodes: usize,
    total_frames: usize,
    features: Vec<FeatureReport>,
    cameras: Vec<CameraReport>,
    tasks: Vec<(i64, String)>,
    episodes: Vec<EpisodeReport>,
}

fn info_report(ds: &LeRobotDataset) -> Result<InfoReport> {
    let info = ds.info();
    let features = info
        .features
        .iter()
        .map(|(k, f)| FeatureReport {
            key: k.clone(),
            dtype: f.dtype.clone(),
            shape: f.shape.clone(),
            names: f.name_list(),
        })
        .collect();
    let mut cameras = Vec::new();
    for key in ds.camera_keys() {
        let ft = &info.features[&key];
        let (height, width) = ft.resolution().unwrap_or_default();
        // The codec as declared; probed from the first episode's file when info.json does not say.
        let codec = match ft.info.as_ref().and_then(|i| i.codec.clone()) {
            Some(c) => c,
            None => match ds.episodes().first().and_then(|e| e.videos.get(&key)) {
                Some(span) => {
                    video::probe(&ds.root().join(&span.path))
                        .with_context(|| format!("probing the video of camera {key}"))?
                        .codec
                }
                None => "unknown".into(),
            },
        };
        cameras.push(CameraReport {
            key,
            width,
            height,
            codec,
        });
    }
    let mut episodes = Vec::new();
    for e in 0..ds.num_episodes() {
        let rows = ds
            .episode_rows(e)
            .with_context(|| format!("reading episode {e}"))?;
        let task = match rows.task_index.first() {
            Some(&t) => ds.task(t)?.to_string(),
            None => ds.episodes()[e].tasks.first().cloned().unwrap_or_default(),
        };
        episodes.push(EpisodeReport {
            index: e,
            length: rows.timestamp.len(),
            task,
            first_state: rows.state.first().cloned().unwrap_or_default(),
            last_state: rows.state.last().cloned().unwrap_or_default(),
        });
    }
    Ok(InfoReport {
        path: ds.root().to_path_buf(),
        codebase_version: info.codebase_version.clone(),
        fps: info.fps,
        robot_type: info.robot_type.clone(),
        total_episodes: ds.num_episodes(),
        total_frames: ds.num_frames(),
        features,
        cameras,
        tasks: ds.tasks().iter().map(|(i, t)| (*i, t.clone())).collect(),
        episodes,
    })
}

fn fmt_vec(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
    format!("[{}]", parts.join(", "))
}

fn info(args: &InfoArgs) -> Result<()> {
    let ds = open_dataset(&args.dir)?;
    let r = info_report(&ds)?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    crate::outln!("dataset          {}", r.path.display());
    crate::outln!("codebase version {}", r.codebase_version);
    crate::outln!("fps              {}", r.fps);
    crate::outln!("robot type       {}", r.robot_type.as_deref().unwrap_or("-"));
    crate::outln!("episodes         {}", r.total_episodes);
    crate::outln!("frames           {}", r.total_frames);
    crate::outln!("features:");
    for f in &r.features {
        let names = f
            .names
            .as_ref()
            .map(|n| format!(" {}", n.join(",")))
            .unwrap_or_default();
        crate::outln!("  {:<32} {:<8} {:?}{names}", f.key, f.dtype, f.shape);
    }
    crate::outln!("cameras:");
    for c in &r.cameras {
        crate::outln!("  {:<32} {}x{} {}", c.key, c.width, c.height, c.codec);
    }
    crate::outln!("tasks:");
    for (i, t) in &r.tasks {
        crate::outln!("  {i:>4} {t}");
    }
    crate::outln!("episodes ({STATE_KEY} first -> last):");
    for e in &r.episodes {
        crate::outln!("  {:>4} len {:>5} {:?}", e.index, e.length, e.task);
        crate::outln!("       {} -> {}", fmt_vec(&e.first_state), fmt_vec(&e.last_state));
    }
    Ok(())
}

fn frames(args: &FramesArgs) -> Result<()> {
    if args.out.exists() {
        bail!("{} already exists; refusing to overwrite", args.out.display());
    }
    let ds = open_dataset(&args.dir)?;
    let imgs = ds
        .camera_frames(args.episode, &args.camera)
        .with_context(|| format!("decoding episode {} camera {}", args.episode, args.camera))?;
    let parent = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".frames.partial-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    let bar = ProgressBar::new(imgs.len() as u64).with_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("writing PNGs");
    for (i, img) in imgs.iter().enumerate() {
        let path = tmp.path().join(format!("{i:06}.png"));
        img.save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let kept = tmp.keep();
    move_into_place(&kept, &args.out)?;
    eprintln!("wrote {} frames to {}", imgs.len(), args.out.display());
    Ok(())
}

fn move_into_place(from: &Path, to: &Path) -> Result<()> {
    if let Err(e) = std::fs::rename(from, to) {
        let _ = std::fs::remove_dir_all(from);
        return Err(e).with_context(|| format!("moving frames into {}", to.display()));
    }
    Ok(())
}
