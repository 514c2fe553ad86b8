#!/usr/bin/env bash
# SmolVLA at its real shape with random weights: toprl (Burn flex, release) against LeRobot 0.4.4
# (PyTorch CPU), same threads, same batch, REPS alternating runs of each under /usr/bin/time -v (max RSS).
#
#   scripts/bench_smolvla.sh [THREADS=2] [BATCH=2] [STEPS=2] [WARMUP=1] [REPS=3] [OUT=scripts/bench_smolvla_results]
#
# Each run prints JSON (action-chunk latency at batch 1, training step time and samples/s with LeRobot's
# default freezing, and for toprl also with the frozen VLM's keys/values cached). OUT gets machine.txt,
# raw.jsonl (one line per run, with max RSS) and summary.txt (medians over the runs and the ratios
# toprl / LeRobot); commit them. Run it on a quiet machine. Needs .venv-lerobot (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
batch=${2:-2}
steps=${3:-2}
warmup=${4:-1}
reps=${5:-3}
out=${6:-scripts/bench_smolvla_results}
py=${PYTHON:-.venv-lerobot/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Before anything is written into OUT (its files are tracked: rewriting them is not a code change).
toprl_version="$(git rev-parse --short HEAD)$(git diff --quiet || echo ' (uncommitted changes)')"
mkdir -p "$out"
cargo build --release -p toprl-policies --example bench_smolvla >&2
target=${CARGO_TARGET_DIR:-target}
{
  echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(lscpu | awk -F': +' '/Model name/ {print $2}'), $(nproc) online, $threads used"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "toprl: $toprl_version, $(rustc --version)"
  echo "python: $("$py" -c 'import sys, torch, lerobot; print(sys.version.split()[0], "torch", torch.__version__, "lerobot", lerobot.__version__)' 2>/dev/null)"
  echo "batch $batch, steps $steps, warmup $warmup, reps $reps"
} | tee "$out/machine.txt"
: >"$out/raw.jsonl"

run() { # name rep command...
  local name=$1 rep=$2; shift 2
  /usr/bin/time -v -o "$work/time" "$@" >"$work/json"
  local rss
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time")
  "$py" -c 'import json, sys; d = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1]); d.update(tool=sys.argv[2], rep=int(sys.argv[3]), max_rss_kb=int(sys.argv[4])); print(json.dumps(d))' \
    "$work/json" "$name" "$rep" "$rss" | tee -a "$out/raw.jsonl"
}
for rep in $(seq 1 "$reps"); do
  OMP_NUM_THREADS=$threads HF_HUB_OFFLINE=1 run lerobot "$rep" "$py" policies/examples/bench_smolvla_torch.py \
    "$threads" "$batch" "$steps" "$warmup"
  RAYON_NUM_THREADS=$threads run toprl "$rep" "$target/release/examples/bench_smolvla" "$batch" "$steps" "$warmup"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
"$py" - "$out/raw.jsonl" <<'PY' | tee "$out/summary.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(tool, key):
    return statistics.median(r[key] for r in rows if r["tool"] == tool)
t, b = "lerobot", "toprl"
print(f"runs: {sum(r['tool'] == t for r in rows)} per side; medians")
for tool in (t, b):
    extra = f", cached-context train {med(tool, 'cached_context_train_samples_per_s'):.3f} samples/s" if tool == b else ""
    print(f"{tool}: train {med(tool, 'train_samples_per_s'):.3f} samples/s, chunk latency {med(tool, 'chunk_latency_s'):.3f} s, "
          f"max RSS {med(tool, 'max_rss_kb') / 1048576:.2f} GiB{extra}")
print(f"train samples/s ratio toprl/LeRobot: {med(b, 'train_samples_per_s') / med(t, 'train_samples_per_s'):.3f}")
print(f"train samples/s ratio toprl cached-context/LeRobot: "
      f"{med(b, 'cached_context_train_samples_per_s') / med(t, 'train_samples_per_s'):.3f}")
print(f"chunk latency ratio LeRobot/toprl (>1 = toprl faster): {med(t, 'chunk_latency_s') / med(b, 'chunk_latency_s'):.3f}")
print(f"max RSS ratio toprl/LeRobot: {med(b, 'max_rss_kb') / med(t, 'max_rss_kb'):.3f}")
PY
