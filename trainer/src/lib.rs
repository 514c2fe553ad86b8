//! The toprl application layer: experiment configs, rollouts, reward labelling, reward-aligned BC and
//! advantage-weighted updates, evaluation, logging and checkpoints, and the three binaries that wire the
//! library crates together (`train`, `topreward`, `so101`).

pub mod arm_weights;
pub mod atomic;
pub mod awr;
pub mod cli;
pub mod commands;
pub mod config;
pub mod driver;
pub mod experiment;
pub mod label;
pub mod operated_env;
pub mod operator;
pub mod plot;
pub mod results;
pub mod reward_quality;
pub mod run_folder;
pub mod smolvla_arm;
pub mod stats;
pub mod tensorboard;
pub mod weighting;
