//! `train CONFIG`: run an experiment (every arm x seed), evaluate, and write the results table.

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

use anyhow::Context;
use clap::Parser;
use toprl_envs::episode::Episode;
use toprl_rewards::metrics::success_score;
use toprl_rewards::remote::SUCCESS_PREFIXES;
use toprl_rewards::score::EpisodeScore;
use toprl_trainer::commands::remote::reward_model_scorer;
use toprl_trainer::config::ExperimentConfig;
use toprl_trainer::experiment::RunOptions;
use toprl_trainer::operated_env::{ArmDetector, SuccessScoreFn, SuccessScorer};
use toprl_trainer::run_folder::StartMode;

/// Train SO-101 policies and compare reward sources (sparse, TOPReward, oracle, plain BC).
///
/// Every arm x seed of the config is trained (reward-aligned BC, then online AWR for `algorithm = "awr"`
/// arms), evaluated in simulation and checkpointed; the run ends with a results table in
/// <out>/results.md and results.json, plots in <out>/plots and TensorBoard logs in <out>/tensorboard.
///
/// Example: `train experiments/bc_reward_aligned.toml`
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Experiment config (TOML); see experiments/ for documented examples.
    config: PathBuf,
    /// Output directory. Default: runs/<config file stem>/
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue an interrupted run in --out: finished arms and seeds are kept, unfinished ones continue
    /// from their last checkpoint. Refused when the config or the code version differ from the run's.
    #[arg(long, conflicts_with = "restart")]
    resume: bool,
    /// Start over in --out: the previous run there is moved to <out>.replaced-N (never deleted).
    #[arg(long)]
    restart: bool,
    /// Validate the config and print the resolved settings, then exit.
    #[arg(long)]
    check: bool,
    /// Threads for simulated rollouts. Default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Burn backend of the policies, in place of the config's `[train] backend`: `flex` (pure Rust,
    /// CPU) or `tch` (LibTorch; binaries built with `--features toprl-trainer/tch`).
    #[arg(long)]
    backend: Option<toprl_policies::Backend>,
    /// Device of that backend, in place of `[train] device`: `cpu`, `cuda:N` or `mps`.
    #[arg(long)]
    device: Option<toprl_policies::DeviceKind>,
    /// Log at debug level.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    toprl_trainer::cli::init_logging(args.verbose);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let config = ExperimentConfig::load_on(&args.config, args.backend, args.device)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(config.name.clone().unwrap_or_else(|| "experiment".into()))
    });
    // The run performs exactly these checks again: --check accepts only what the run accepts. For SmolVLA
    // that includes finding the model, so a missing one is reported before any training.
    config.check_resources(&args.config)?;
    if config.policy.kind == toprl_trainer::smolvla_arm::KIND {
        toprl_trainer::smolvla_arm::prepare(&config)
            .with_context(|| format!("invalid experiment config {}", args.config.display()))?;
    } else {
        toprl_trainer::experiment::policy_config(&config)
            .with_context(|| format!("invalid experiment config {}", args.config.display()))?;
    }
    if args.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1 (omit it to use every core)");
    }
    if args.check {
        let resolved = toml::to_string_pretty(&config).context("serialising the resolved config")?;
        toprl_trainer::outln!(
            "# {} is valid; output would go to {}\n{resolved}",
            args.config.display(),
            out.display()
        );
        return Ok(());
    }
    // A refused --resume (other config or code version), a busy or already used folder: said before the
    // reward model loads.
    let mode = match (args.resume, args.restart) {
        (true, _) => StartMode::Resume,
        (false, true) => StartMode::Restart,
        (false, false) => StartMode::Fresh,
    };
    let resolved = toml::to_string_pretty(&config).context("serialising the resolved config")?;
    toprl_trainer::run_folder::check(&out, &resolved, mode)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One reward model, shared by the arms' labels (`score_episodes`) and the success detector of
    // `[robot] success = "topreward"` (`arm_success`).
    let scorer = match &config.reward_model {
        Some(rm) if config.loads_reward_model() => Some(Rc::new(RefCell::new(
            reward_model_scorer(rm, Some(out.join(toprl_trainer::run_folder::SCORE_CACHE_DIR)))
                .context("loading the reward model in [reward_model]")?,
        ))),
        _ => None,
    };
    // The threshold is read once, here: a calibration file changed mid-run does not change the detector.
    let arm_threshold = config
        .arm_success_threshold()
        .context("reading [robot] success_calibration")?;
    let arm_success = match (scorer.as_ref(), arm_threshold) {
        (Some(scorer), Some(threshold)) => {
            let scorer = Rc::clone(scorer);
            let detect: Box<SuccessScoreFn> = Box::new(move |frames, fps, instruction| {
                let score = (scorer.borrow_mut())(frames, fps, instruction).map_err(|e| format!("{e:#}"))?;
                success_score(&score.log_probs, SUCCESS_PREFIXES)
                    .ok_or_else(|| "the episode has no scored prefix".to_string())
            });
            Some(ArmDetector {
                scorer: SuccessScorer(Rc::new(RefCell::new(detect))),
                threshold,
            })
        }
        _ => None,
    };
    let opts = RunOptions {
        out: out.clone(),
        resume: args.resume,
        restart: args.restart,
        threads,
        progress: true,
        arm_success,
    };
    let camera = config.reward_model.as_ref().map(|rm| (rm.camera.clone(), rm.fps));
    // Each episode's camera frames are sampled at the reward model's fps (every `stride` frames) and scored.
    let mut score_episodes = |episodes: &[Episode]| -> Result<Vec<(EpisodeScore, f64)>, String> {
        let (Some(scorer), Some((camera, fps))) = (scorer.as_ref(), camera.as_ref()) else {
            return Err("no reward model loaded".into());
        };
        let mut scorer = scorer.borrow_mut();
        // A dataset is scored episode by episode as it loads, under the loading bar: no bar of one.
        let bar = if episodes.len() > 1 {
            indicatif::ProgressBar::new(episodes.len() as u64).with_message("TOPReward scoring")
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut scores = Vec::with_capacity(episodes.len());
        for episode in episodes {
            let frames = episode.cameras.get(camera).ok_or_else(|| {
                format!(
                    "episode {} has no camera `{camera}` (reward_model.camera)",
                    episode.index
                )
            })?;
            let stride = (episode.fps / fps).round().max(1.0) as usize;
            let sampled: Vec<_> = frames.iter().step_by(stride).cloned().collect();
            // Timestamps of the frames really sampled (the rounded stride), not the nominal rate.
            let sampled_fps = episode.fps / stride as f64;
            let score = scorer(&sampled, sampled_fps, &episode.instruction)
                .map_err(|e| format!("episode {}: {e:#}", episode.index))?;
            scores.push((score, stride as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(scores)
    };
    let results = toprl_trainer::experiment::run(&config, &opts, Some(&mut score_episodes))?;
    toprl_trainer::outln!("{}", results.to_markdown());
    toprl_trainer::outln!("results: {}", out.join("results.md").display());
    Ok(())
}
