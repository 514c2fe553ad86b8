//! Subcommands of the binaries, as clap argument structs and `run` functions.

pub mod dataset;
pub mod label;
pub mod policy;
pub mod score;
pub mod sim;
