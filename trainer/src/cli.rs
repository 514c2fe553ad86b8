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
