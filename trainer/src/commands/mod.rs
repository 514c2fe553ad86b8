//! Subcommands of the binaries that are more than a few lines.

pub mod score;
