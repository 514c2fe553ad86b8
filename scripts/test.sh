#!/usr/bin/env bash
# The whole test suite: formatting, lints (warnings are errors), then every crate's tests and the
# end-to-end tests in tests/. Run scripts/setup.sh once before.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -e .assets ]] || { echo "test: .assets is missing: run scripts/setup.sh first" >&2; exit 1; }
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The reward crate without FFmpeg, as GPU scoring binaries are built (README, "TOPReward on GPUs").
cargo clippy -p toprl-rewards --no-default-features --lib --examples --locked -- -D warnings
# The V4L2 camera backend is off by default; lint it so it keeps compiling (bindgen needs libclang).
cargo clippy -p toprl-envs --features v4l --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
