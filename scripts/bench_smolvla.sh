#!/usr/bin/env bash
# SmolVLA at its real shape with random weights: toprl (Burn flex, release) against LeRobot 0.4.4
# (PyTorch CPU), same threads, same batch, one run each under /usr/bin/time -v (max RSS).
#
#   scripts/bench_smolvla.sh [THREADS=2] [BATCH=2] [STEPS=2] [WARMUP=1]
#
# Prints each side's JSON (action-chunk latency at batch 1, training step time and samples/s with
# LeRobot's default freezing) and the ratios toprl / LeRobot. Needs .venv-lerobot (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
batch=${2:-2}
steps=${3:-2}
warmup=${4:-1}
py=${PYTHON:-.venv-lerobot/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release -p toprl-policies --example bench_smolvla >&2
target=${CARGO_TARGET_DIR:-target}

run() { # name, command...
  local name=$1; shift
  /usr/bin/time -v -o "$work/$name.time" "$@" > "$work/$name.json"
  local rss
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/$name.time")
  echo "$rss" > "$work/$name.rss"
  echo "$name: $(cat "$work/$name.json") max_rss_kb=$rss"
}
OMP_NUM_THREADS=$threads HF_HUB_OFFLINE=1 run torch "$py" policies/examples/bench_smolvla_torch.py \
  "$threads" "$batch" "$steps" "$warmup"
RAYON_NUM_THREADS=$threads run burn "$target/release/examples/bench_smolvla" "$batch" "$steps" "$warmup"
"$py" - "$work" <<'PY'
import json, sys
w = sys.argv[1]
t = json.load(open(f"{w}/torch.json"))
b = json.load(open(f"{w}/burn.json"))
rss = {n: int(open(f"{w}/{n}.rss").read()) for n in ("torch", "burn")}
print(f"train samples/s ratio toprl/LeRobot: {b['train_samples_per_s'] / t['train_samples_per_s']:.3f}")
print(f"train samples/s ratio toprl cached-context/LeRobot: {b['cached_context_train_samples_per_s'] / t['train_samples_per_s']:.3f}")
print(f"chunk latency ratio LeRobot/toprl (>1 = toprl faster): {t['chunk_latency_s'] / b['chunk_latency_s']:.3f}")
print(f"max RSS ratio toprl/LeRobot: {rss['burn'] / rss['torch']:.3f}")
PY
