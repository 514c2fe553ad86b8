//! Subcommands of the binaries, as clap argument structs and `run` functions.

pub mod arm;
pub mod calibrate;
pub mod dataset;
pub mod eval;
pub mod gvl;
pub mod label;
pub mod policy;
pub mod remote;
pub mod score;
pub mod serve;
pub mod sim;
