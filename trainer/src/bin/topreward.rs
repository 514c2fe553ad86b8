//! `topreward`: score robot episodes with TOPReward and compute the metrics built on it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// TOPReward tools: token-probability progress rewards from a video VLM (arXiv 2602.19313).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Log at debug level.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Value-order correlation (Spearman against time order) of a sequence of values.
    Voc {
        /// Values in time order, e.g. `topreward voc -- -2.1 -1.7 -0.4`.
        #[arg(required = true, allow_negative_numbers = true)]
        values: Vec<f64>,
    },
    /// Score an episode (frames folder or video) with TOPReward on a Qwen3-VL checkpoint.
    Score(toprl_trainer::commands::score::ScoreArgs),
    /// Label every frame of a LeRobotDataset with TOPReward progress and Eq. 3 weights.
    Label(toprl_trainer::commands::label::LabelArgs),
    /// Serve TOPReward over HTTP (native endpoint and the OpenAI log-prob subset) for other machines.
    Serve(toprl_trainer::commands::serve::ServeArgs),
    /// The GVL baseline on one episode: completion percentages decoded from shuffled frames.
    Gvl(toprl_trainer::commands::gvl::GvlArgs),
    /// The paper's evaluation on a dataset: VOC per episode, task and overall, static-video VOC, success
    /// ROC-AUC, for TOPReward, GVL or both (eval.md, eval.json, eval.png; resumable).
    Eval(toprl_trainer::commands::eval::EvalArgs),
    /// Choose the success threshold on episodes with known success (ROC-AUC, Youden or best F1).
    Calibrate(toprl_trainer::commands::calibrate::CalibrateArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    toprl_trainer::cli::init_logging(args.verbose);
    match args.command {
        Command::Voc { values } if values.iter().any(|v| !v.is_finite()) => {
            eprintln!("error: every value must be a finite number, got {values:?}");
            ExitCode::FAILURE
        }
        Command::Voc { values } => match toprl_rewards::metrics::voc(&values) {
            Some(v) => {
                toprl_trainer::outln!("{v:.6}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: VOC is undefined for constant values or fewer than two points");
                ExitCode::FAILURE
            }
        },
        Command::Score(args) => report(toprl_trainer::commands::score::run(args)),
        Command::Label(args) => report(toprl_trainer::commands::label::run(args)),
        Command::Serve(args) => report(toprl_trainer::commands::serve::run(args)),
        Command::Gvl(args) => report(toprl_trainer::commands::gvl::run(args)),
        Command::Eval(args) => report(toprl_trainer::commands::eval::run(args)),
        Command::Calibrate(args) => report(toprl_trainer::commands::calibrate::run(args)),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
