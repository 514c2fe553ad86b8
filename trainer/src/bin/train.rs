//! `train CONFIG`: run an experiment (every arm x seed), evaluate, and write the results table.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use toprl_trainer::config::ExperimentConfig;
use toprl_trainer::experiment::RunOptions;

/// Train SO-101 policies and compare reward sources (sparse, TOPReward, oracle, plain BC).
///
/// Example: `train experiments/bc_reward_aligned.toml`
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Experiment config (TOML); see experiments/ for documented examples.
    config: PathBuf,
    /// Output directory. Default: runs/<config file stem>/
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue an interrupted run in --out: finished arms and seeds are kept, unfinished ones continue
    /// from their last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Validate the config and print the resolved settings, then exit.
    #[arg(long)]
    check: bool,
    /// Threads for simulated rollouts. Default: all cores.
    #[arg(long)]
    threads: Option<usize>,
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
    let config = ExperimentConfig::load(&args.config)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(config.name.clone().unwrap_or_else(|| "experiment".into()))
    });
    if args.check {
        let resolved = toml::to_string_pretty(&config).context("serialising the resolved config")?;
        println!(
            "# {} is valid; output would go to {}\n{resolved}",
            args.config.display(),
            out.display()
        );
        return Ok(());
    }
    // Fail before any training when the policy or its overrides are wrong.
    toprl_trainer::experiment::policy_config(&config)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = RunOptions {
        out: out.clone(),
        resume: args.resume,
        threads,
        progress: true,
    };
    let results = toprl_trainer::experiment::run(&config, &opts, None)?;
    println!("{}", results.to_markdown());
    println!("results: {}", out.join("results.md").display());
    Ok(())
}
