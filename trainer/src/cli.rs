//! Helpers every binary shares: logging set-up.

use tracing_subscriber::EnvFilter;

/// Log to stderr at `info` (or `RUST_LOG`), `debug` with `--verbose`. Progress bars also use stderr, so
/// stdout stays clean for `--json` output.
pub fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Write to stdout; when the reader has gone away (`train --check | head -1`) stop quietly with status 0,
/// as `head`'s upstream is expected to, instead of panicking on the closed pipe. Other write errors end
/// the process with a message. Every line the binaries print goes through [`outln!`](crate::outln) /
/// [`out!`](crate::out), which call this.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` that survives a closed pipe (see [`write_stdout`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that survives a closed pipe (see [`write_stdout`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `--backend` / `--device`: where a command runs its policy (see [`toprl_policies::device`]).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PolicyDeviceArgs {
    /// Burn backend of the policy: `flex` (pure Rust, CPU) or `tch` (LibTorch; binaries built with
    /// `--features toprl-trainer/tch`, README "LibTorch and GPUs").
    #[arg(long, default_value = "flex")]
    pub backend: toprl_policies::Backend,
    /// Device of that backend: `cpu`, `cuda:N` or `mps` (the last two with `--backend tch`).
    #[arg(long, default_value = "cpu")]
    pub device: toprl_policies::DeviceKind,
}

impl PolicyDeviceArgs {
    /// The Burn device, or an error naming the flag at fault and what to do.
    pub fn device(&self) -> anyhow::Result<toprl_policies::Device> {
        toprl_policies::device(self.backend, self.device)
            .map_err(|e| anyhow::anyhow!("--backend {} --device {}: {e}", self.backend, self.device))
    }
}
