//! `so101`: the SO-101 arm in simulation, and LeRobotDataset tools.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use toprl_envs::{assets, so101};
use toprl_trainer::commands::arm;

/// SO-101 tools: simulation in MuJoCo, LeRobotDataset inspection, and the real arm (calibrate, teleop,
/// record, run) with a simulated bus to try it without one.
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
    /// Show where the MuJoCo library and SO-101 assets are and the arm's joints.
    Assets,
    /// LeRobotDataset tools: `info`, `frames`.
    Dataset(toprl_trainer::commands::dataset::DatasetArgs),
    /// Run a policy in the MuJoCo SO-101 tabletop tasks and report its success rate.
    Sim(toprl_trainer::commands::sim::SimArgs),
    /// Calibrate a real arm as LeRobot does and write LeRobot's calibration file.
    Calibrate(arm::CalibrateArgs),
    /// Teleoperate: the leader arm drives the follower.
    Teleop(arm::TeleopArgs),
    /// Record teleoperated episodes into a LeRobotDataset v3.0.
    Record(arm::RecordArgs),
    /// Drive the follower with a toprl policy.
    Run(arm::RunArgs),
    /// Serve a simulated SO-101 bus on a pseudo-terminal (prints `port: PATH`, serves until killed).
    SimBus(arm::SimBusArgs),
    /// Policy tools: `predict` (the action chunk of any toprl policy for one observation).
    Policy(toprl_trainer::commands::policy::PolicyArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    toprl_trainer::cli::init_logging(args.verbose);
    match args.command {
        Command::Assets => {
            let mut ok = true;
            for (name, found) in [
                ("mujoco", assets::mujoco_lib_dir()),
                ("so101 mjcf", assets::so101_assets_dir()),
            ] {
                match found {
                    Ok(path) => toprl_trainer::outln!("{name:<12} {}", path.display()),
                    Err(err) => {
                        ok = false;
                        toprl_trainer::outln!("{name:<12} missing: {err}");
                    }
                }
            }
            for (motor, (lo, hi)) in so101::MOTOR_NAMES.iter().zip(so101::JOINT_RANGES_RAD) {
                toprl_trainer::outln!("joint {motor:<14} [{lo:+.3}, {hi:+.3}] rad");
            }
            if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Dataset(a) => report(toprl_trainer::commands::dataset::run(a)),
        Command::Sim(a) => report(toprl_trainer::commands::sim::run(a)),
        Command::Calibrate(a) => report(arm::calibrate(a)),
        Command::Teleop(a) => report(arm::teleop(a)),
        Command::Record(a) => report(arm::record(a)),
        Command::Run(a) => report(arm::run(a)),
        Command::SimBus(a) => report(arm::sim_bus(a)),
        Command::Policy(a) => report(toprl_trainer::commands::policy::run(a)),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
