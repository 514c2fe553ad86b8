//! `so101 sim`: run a policy in the MuJoCo SO-101 tabletop tasks and report its success rate.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use toprl_envs::dataset::{DatasetSpec, DatasetWriter};
use toprl_envs::episode::Episode;
use toprl_envs::sim::vec_env::{BuiltinPolicy, parallel_rollouts};
use toprl_envs::sim::{Rollout, RolloutOptions, SimConfig, So101Env, Task};

use crate::driver::{camera_key, policy_rollout};

/// Run episodes of one task and print the success rate.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Task: reach, push_cube, pick_cube or pick_place.
    #[arg(long)]
    pub task: Task,
    /// `scripted` (IK expert), `random` (random walk), a toprl policy checkpoint, or a LeRobot SmolVLA
    /// folder (its cameras must be named as the simulator's: observation.images.<front|top|wrist>).
    #[arg(long, default_value = "scripted")]
    pub policy: String,
    /// Number of episodes.
    #[arg(long, default_value_t = 10)]
    pub episodes: usize,
    /// Seed of the first episode; episode i uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skill knob of the scripted expert: 0 = clean, 0.5 = jittery and hesitant, >= 1 often fails.
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    /// Camera image side in pixels.
    #[arg(long, default_value_t = 128)]
    pub image_size: u32,
    /// Render the cameras even when nothing needs the images (to measure rendered throughput).
    #[arg(long)]
    pub render: bool,
    /// Worker threads (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run a checkpoint on a task other than the one it was trained on (recorded in its task.json);
    /// refused without this flag, since its success rate would describe another task.
    #[arg(long)]
    pub allow_task_mismatch: bool,
    /// Write every episode's front and wrist cameras side by side to this mp4 (needs `ffmpeg`).
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Record the episodes (state, action, front and wrist videos, instruction as task) into a new
    /// LeRobotDataset v3.0 folder at this path (must not exist).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Print one JSON object (task, episodes, success_rate, mean_return, steps_per_second) on stdout.
    #[arg(long)]
    pub json: bool,
    /// SmolVLA folders: feed simulator camera SIM to the folder's image feature FEATURE (LeRobot's
    /// rename_map), e.g. `--camera front=observation.images.camera1`; repeat for every camera of the
    /// folder. Default: the folder's own `observation.images.<front|top|wrist>`.
    #[arg(long = "camera", value_name = "SIM=FEATURE")]
    pub camera_features: Vec<String>,
    #[command(flatten)]
    pub compute: crate::cli::PolicyDeviceArgs,
}

/// The `--json` summary.
#[derive(Debug, Serialize)]
pub struct SimSummary {
    pub task: String,
    pub policy: String,
    pub episodes: usize,
    pub successes: usize,
    pub success_rate: f64,
    pub mean_return: f64,
    pub mean_steps: f64,
    pub steps_per_second: f64,
    pub rendered: bool,
    pub noise: f64,
    pub seed: u64,
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    if args.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    if !args.noise.is_finite() || args.noise < 0.0 {
        bail!("--noise must be a finite number >= 0, got {}", args.noise);
    }
    if args.threads == Some(0) {
        bail!("--threads must be at least 1 (omit it to use every core)");
    }
    let device = args.compute.device()?;
    let mut smolvla = None;
    if !matches!(args.policy.as_str(), "scripted" | "random") {
        let path = args.policy.as_str();
        {
            if !Path::new(path).exists() {
                bail!(
                    "--policy {path}: expected `scripted`, `random` or a checkpoint path, and {path} does not exist"
                );
            }
            let trained_on = crate::experiment::checkpoint_task(Path::new(path))
                .with_context(|| format!("--policy {path}"))?;
            if let Some(trained_on) = trained_on
                && trained_on != args.task.to_string()
            {
                if !args.allow_task_mismatch {
                    bail!(
                        "--policy {path} was trained on `{trained_on}`, not `{}`; pass --allow-task-mismatch to \
                         measure it on another task anyway",
                        args.task
                    );
                }
                tracing::warn!(
                    "--policy {path} was trained on `{trained_on}`; running it on `{}`",
                    args.task
                );
            }
            if toprl_policies::smolvla::is_lerobot_folder(Path::new(path)) {
                let mut loaded = toprl_policies::smolvla::SmolVlaPolicy::load(Path::new(path), &device)
                    .with_context(|| format!("--policy {path}: loading the SmolVLA folder"))?;
                loaded.set_seed(args.seed);
                let cameras =
                    crate::smolvla_arm::sim_cameras(&loaded, Path::new(path), &args.camera_features)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| {
                            format!("--policy {path}: the checkpoint does not fit the SO-101 simulator")
                        })?;
                smolvla = Some((loaded, cameras));
            }
        }
    }
    let (policy, mut checkpoint) = match args.policy.as_str() {
        "scripted" => (BuiltinPolicy::Scripted { noise: args.noise }, None),
        "random" => (BuiltinPolicy::Random { step_deg: 3.0 }, None),
        _ if smolvla.is_some() => (BuiltinPolicy::Random { step_deg: 0.0 }, None),
        _ if !args.camera_features.is_empty() => bail!("--camera applies to SmolVLA folders only"),
        path => {
            let loaded = toprl_policies::load_policy(path, &device)
                .with_context(|| format!("--policy {path}: loading the checkpoint"))?
                .with_seed(args.seed);
            (BuiltinPolicy::Random { step_deg: 0.0 }, Some(loaded))
        }
    };
    let policy_cameras = checkpoint.as_ref().map_or(0, |p| p.config().cameras())
        + smolvla.as_ref().map_or(0, |(_, (c, _))| c.len());
    let render = args.render || args.video.is_some() || args.record.is_some() || policy_cameras > 0;
    let keep_frames = args.video.is_some() || args.record.is_some();
    if let Some(path) = &args.record
        && path.exists()
    {
        bail!("--record {}: the dataset folder already exists", path.display());
    }
    let cfg = SimConfig {
        image_size: args.image_size,
        cameras: match &smolvla {
            // The policy's cameras, plus front and wrist when they are recorded.
            Some((_, (cams, _))) => {
                let mut cams = cams.clone();
                for c in ["front", "wrist"] {
                    if keep_frames && !cams.iter().any(|x| x == c) {
                        cams.push(c.into());
                    }
                }
                cams
            }
            None if render => vec!["front".into(), "wrist".into()],
            None => vec![],
        },
        ..SimConfig::for_task(args.task)
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1);
    let seeds: Vec<u64> = (0..args.episodes as u64)
        .map(|i| args.seed.wrapping_add(i))
        .collect();

    let bar = ProgressBar::new(args.episodes as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} episodes ({elapsed})")
            .context("progress bar template")?,
    );
    bar.set_prefix(format!("sim {}", args.task));
    let mut writer = match &args.record {
        Some(path) => {
            let (front, wrist) = (camera_key("front"), camera_key("wrist"));
            let size = args.image_size;
            let spec = DatasetSpec::so101(30, &[(front.as_str(), size, size), (wrist.as_str(), size, size)])
                .with_sim_environment_state();
            Some(
                DatasetWriter::create(path, spec)
                    .with_context(|| format!("creating dataset {}", path.display()))?,
            )
        }
        None => None,
    };
    // Recorded episodes go to the writer as they finish; their frames are dropped unless --video needs them.
    let mut record = |r: &mut Rollout| -> anyhow::Result<()> {
        if let Some(w) = writer.as_mut() {
            w.add_episode(&r.episode).context("recording episode")?;
            if args.video.is_none() {
                r.episode.cameras.clear();
            }
        }
        Ok(())
    };
    let start = Instant::now();
    let mut rollouts = Vec::with_capacity(args.episodes);
    // Batches of `threads` episodes so the bar moves; each batch loads the model once.
    if let Some((loaded, (_, camera_map))) = smolvla.as_mut() {
        let mut env = So101Env::new(cfg.clone()).context("building the simulator")?;
        for (i, &seed) in seeds.iter().enumerate() {
            let opts = RolloutOptions {
                keep_frames,
                index: i,
            };
            let mut r = crate::smolvla_arm::smolvla_rollout(&mut env, loaded, camera_map, seed, opts)
                .with_context(|| format!("episode {i} (seed {seed})"))?;
            record(&mut r)?;
            bar.inc(1);
            rollouts.push(r);
        }
    } else if let Some(loaded) = checkpoint.as_mut() {
        // A learned policy runs on one thread (its network already uses the cores).
        let camera_keys: Vec<String> = ["front", "wrist"]
            .iter()
            .take(policy_cameras.max(1))
            .map(|c| camera_key(c))
            .collect();
        let mut env = So101Env::new(cfg.clone()).context("building the simulator")?;
        for (i, &seed) in seeds.iter().enumerate() {
            let opts = RolloutOptions {
                keep_frames,
                index: i,
            };
            let r = policy_rollout(&mut env, loaded, &camera_keys, seed, opts, None)
                .with_context(|| format!("episode {i} (seed {seed})"))?;
            // The simulator always reports its reward and success.
            let mut r = Rollout {
                total_reward: r.total_reward.unwrap_or_default(),
                success: r.success.unwrap_or(false),
                steps: r.steps,
                episode: r.episode,
            };
            record(&mut r)?;
            bar.inc(1);
            rollouts.push(r);
        }
    } else {
        for batch in seeds.chunks(threads.max(1) * 2) {
            let mut out = parallel_rollouts(&cfg, policy, batch, threads, keep_frames)
                .with_context(|| format!("simulating {} (seeds {:?})", args.task, batch))?;
            for (k, r) in out.iter_mut().enumerate() {
                r.episode.index = rollouts.len() + k;
                record(r)?;
            }
            bar.inc(out.len() as u64);
            rollouts.extend(out);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let successes = rollouts.iter().filter(|r| r.success).count();
    let steps: usize = rollouts.iter().map(|r| r.steps).sum();
    let summary = SimSummary {
        task: args.task.to_string(),
        policy: args.policy.clone(),
        episodes: rollouts.len(),
        successes,
        success_rate: successes as f64 / rollouts.len() as f64,
        mean_return: rollouts.iter().map(|r| r.total_reward).sum::<f64>() / rollouts.len() as f64,
        mean_steps: steps as f64 / rollouts.len() as f64,
        steps_per_second: steps as f64 / elapsed.max(1e-9),
        rendered: render,
        noise: args.noise,
        seed: args.seed,
    };
    if let Some(w) = writer {
        let written = w.finish().context("finishing the dataset")?;
        tracing::info!(
            "recorded {} episodes ({} frames) into {}",
            written.episodes,
            written.frames,
            written.path.display()
        );
    }
    if let Some(path) = &args.video {
        let episodes: Vec<&Episode> = rollouts.iter().map(|r| &r.episode).collect();
        write_video(path, &episodes).with_context(|| format!("writing video {}", path.display()))?;
        tracing::info!("wrote {}", path.display());
    }
    if args.json {
        crate::outln!("{}", serde_json::to_string(&summary)?);
    } else {
        crate::outln!(
            "{} / {}: success {}/{} ({:.1}%), mean return {:.3}, {:.1} steps/episode, {:.0} env steps/s{}",
            summary.task,
            summary.policy,
            successes,
            summary.episodes,
            100.0 * summary.success_rate,
            summary.mean_return,
            summary.mean_steps,
            summary.steps_per_second,
            if render { " (rendered)" } else { "" }
        );
    }
    Ok(())
}

/// Encodes the episodes' `front` and `wrist` frames side by side (H.264, 30 fps) by piping raw RGB into
/// the `ffmpeg` binary; writes a temp file next to `path` and renames it when ffmpeg succeeds.
pub fn write_video(path: &Path, episodes: &[&Episode]) -> anyhow::Result<()> {
    let keys = ["observation.images.front", "observation.images.wrist"];
    let first = episodes.first().context("no episodes to write")?;
    let (w, h) = first
        .cameras
        .get(keys[0])
        .and_then(|f| f.first())
        .map(|f| f.dimensions())
        .context("episodes have no front camera frames")?;
    let fps = first.fps;
    let tmp = crate::atomic::temp_sibling(path, ".mp4")
        .with_context(|| format!("creating a temporary file beside {}", path.display()))?;
    let mut child = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
        ])
        .arg(format!("{}x{}", 2 * w, h))
        .args([
            "-r",
            &fps.to_string(),
            "-i",
            "-",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mp4",
        ])
        .arg(tmp.path())
        .stdin(Stdio::piped())
        .spawn()
        .context("running ffmpeg (is it installed? scripts/setup.sh installs it)")?;
    {
        let stdin = child.stdin.as_mut().context("ffmpeg stdin")?;
        let mut row = vec![0u8; (2 * w * h * 3) as usize];
        for ep in episodes {
            let front = ep.cameras.get(keys[0]).context("episode without front frames")?;
            let wrist = ep.cameras.get(keys[1]).context("episode without wrist frames")?;
            for (f, wr) in front.iter().zip(wrist) {
                for y in 0..h as usize {
                    let line = (w * 3) as usize;
                    row[y * 2 * line..y * 2 * line + line]
                        .copy_from_slice(&f.as_raw()[y * line..(y + 1) * line]);
                    row[y * 2 * line + line..(y + 1) * 2 * line]
                        .copy_from_slice(&wr.as_raw()[y * line..(y + 1) * line]);
                }
                stdin.write_all(&row).context("piping frames to ffmpeg")?;
            }
        }
    }
    drop(child.stdin.take());
    let status = child.wait().context("waiting for ffmpeg")?;
    if !status.success() {
        bail!("ffmpeg exited with {status}");
    }
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}
