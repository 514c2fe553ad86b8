//! Subcommands of the binaries, as clap argument structs and `run` functions.

pub mod sim;
