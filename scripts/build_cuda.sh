#!/usr/bin/env bash
# Build toprl's TOPReward scorer for NVIDIA GPUs on a machine that has neither the CUDA toolkit nor the NVIDIA
# driver (a CPU build box, this project's CI machines), from NVIDIA's own PyPI wheels of CUDA 13.0.
#
#   scripts/build_cuda.sh [--compute-cap 90] [--target-dir DIR] [-- CARGO_ARGS...]
#
# Default build: `topreward_bench` (rewards/examples), with the reward crate's `cuda` feature and without
# `video`, so the binary links no FFmpeg and runs on a GPU machine that only has a driver and CUDA 13's
# cuBLAS, cuRAND and NVRTC (e.g. PyTorch's cu130 wheels; scripts/gpu_topreward_check.sh finds them there).
# CARGO_ARGS replace the default target, e.g. `-- -p toprl-trainer --bin topreward --features cuda` for the
# full CLI (that one also needs FFmpeg and MuJoCo on the GPU machine).
#
# What it does:
#   1. downloads nvcc, nvvm, the CUDA headers (runtime, crt, cccl) and cuBLAS/cuRAND/NVRTC of CUDA 13.0 as
#      wheels pinned by version and sha256 into $TOPRL_CACHE (default ~/.cache/toprl/cuda-13.0), and unpacks them
#      into a CUDA_ROOT-shaped folder there;
#   2. writes a link-time stub of libcuda.so.1 (the driver library, which no wheel ships) exporting the driver
#      API functions cudarc declares; at run time the real driver's libcuda.so.1 is loaded instead;
#   3. builds in release mode for compute capability --compute-cap (default 90: H100/H200; 80 for A100, 89 for
#      L4/RTX 40xx), into --target-dir (default target-cuda, ignored by git).
# On a machine with the CUDA toolkit installed, build directly instead (README, "TOPReward on GPUs").
set -euo pipefail
cd "$(dirname "$0")/.."
cap=90 target_dir=target-cuda cargo_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --compute-cap) cap=$2; shift 2 ;;
    --target-dir) target_dir=$2; shift 2 ;;
    --) shift; cargo_args=("$@"); break ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#cargo_args[@]} -gt 0 ]] ||
  cargo_args=(-p toprl-rewards --example topreward_bench --no-default-features --features cuda)

cache=${TOPRL_CACHE:-$HOME/.cache/toprl}/cuda-13.0
root=$cache/root
mkdir -p "$cache/wheels"
if [[ ! -f $root/.complete ]]; then
  # Versions of the cuda-toolkit==13.0.2 metapackage that PyTorch 2.11's cu130 wheels require, so the binary
  # links the same library versions a PyTorch GPU machine has.
  cat >"$cache/requirements.txt" <<'REQ'
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-cublas==13.1.0.3 --hash=sha256:ee8722c1f0145ab246bccb9e452153b5e0515fd094c3678df50b2a0888b8b171
nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
REQ
  python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
    -r "$cache/requirements.txt" -d "$cache/wheels"
  rm -rf "$cache/site" "$root"
  for w in "$cache"/wheels/*.whl; do python3 -m zipfile -e "$w" "$cache/site"; done
  cu=$cache/site/nvidia/cu13
  chmod +x "$cu"/bin/* "$cu"/nvvm/bin/* 2>/dev/null || true
  mkdir -p "$root/lib/stubs"
  ln -s "$cu/bin" "$root/bin"
  ln -s "$cu/include" "$root/include"
  ln -s "$cu/nvvm" "$root/nvvm"
  for f in "$cu"/lib/*.so.*; do
    b=$(basename "$f")
    ln -sf "$f" "$root/lib/$b"
    ln -sf "$f" "$root/lib/${b%%.so.*}.so"
  done
  # The driver API as cudarc (candle's CUDA binding) declares it; each stub returns an error code and is
  # never called: the loader resolves these names in the driver's own libcuda.so.1 on the GPU machine.
  cargo fetch --locked >/dev/null
  cudarc=$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src -maxdepth 2 -type d -name 'cudarc-0.19.*' | sort | tail -1)
  [[ -n $cudarc ]] || { echo "cudarc sources not found after cargo fetch" >&2; exit 1; }
  {
    echo "/* link-time stub of libcuda.so.1, written by scripts/build_cuda.sh */"
    grep -oP 'pub unsafe fn \Kcu[A-Za-z0-9_]+' "$cudarc/src/driver/sys/mod.rs" | sort -u |
      sed 's/.*/int &(void) { return 999; }/'
  } >"$cache/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$cache/cuda_stub.c"
  touch "$root/.complete"
fi

export PATH=$root/bin:$PATH CUDA_ROOT=$root CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=$cap
cargo build --release --locked --target-dir "$target_dir" "${cargo_args[@]}"
echo "built into $target_dir/release (compute capability $cap)" >&2
