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
echo "== LibTorch (tch) lane"
# The policies on burn-tch, built against .venv-lerobot's PyTorch (torch 2.10.0, pinned by setup.sh). tch
# 0.22 expects PyTorch 2.9.0; the version check is bypassed, and these tests are what shows the pair works:
# policies/tests/backends.rs (flex and tch train alike), tests/cli_backend.rs (`train`, `so101 policy predict`).
venv_python=.venv-lerobot/bin/python
[[ -x $venv_python ]] || {
  echo "test: the tch lane needs PyTorch from .venv-lerobot: run scripts/setup.sh (without --no-lerobot)" >&2
  exit 1
}
(
  torch_lib=$("$venv_python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1 PATH="$PWD/.venv-lerobot/bin:$PATH"
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # --workspace, as above: the same feature resolution, so only the crates that burn's `tch` feature reaches
  # (burn, toprl-policies, toprl-trainer) are built again.
  cargo clippy --workspace --all-targets --features toprl-trainer/tch --locked -- -D warnings
  cargo test --workspace --features toprl-trainer/tch --locked --test backends --test policies --test cli_backend
)
