//! Subcommands of the binaries, as clap argument structs and `run` functions.

pub mod arm;
pub mod dataset;
pub mod label;
pub mod score;
pub mod sim;
