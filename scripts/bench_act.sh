#!/usr/bin/env bash
# LeRobot's ACT at LeRobot's default dims (ResNet18 with random weights, dim 512, chunk 100), training
# samples/s: toprl's port (policies/src/lerobot_act, release) on Burn's flex backend and, when built with
# the tch feature, on LibTorch, against LeRobot 0.4.4's own ACTPolicy in PyTorch; same threads, batch and
# image size, REPS alternating runs of each under /usr/bin/time -v (max RSS).
#
#   scripts/bench_act.sh [--threads 2] [--batch 8] [--steps 5] [--warmup 2] [--size 224] [--reps 3]
#                        [--backends flex,tch] [--out scripts/bench_act_results]
#
# OUT gets machine.txt, raw.jsonl (one line per run) and summary.txt (medians, ratios toprl / LeRobot);
# commit them. Run it on a quiet machine. Needs .venv-lerobot (scripts/setup.sh); the tch backend builds
# against its PyTorch as scripts/test.sh does (LIBTORCH_USE_PYTORCH=1).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 batch=8 steps=5 warmup=2 size=224 reps=3 backends=flex out=scripts/bench_act_results
while (($#)); do
  case "$1" in
    --threads) threads=$2 ;;
    --batch) batch=$2 ;;
    --steps) steps=$2 ;;
    --warmup) warmup=$2 ;;
    --size) size=$2 ;;
    --reps) reps=$2 ;;
    --backends) backends=$2 ;;
    --out) out=$2 ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_act: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift 2
done
py=${PYTHON:-.venv-lerobot/bin/python}
[[ -x $py ]] || { echo "bench_act: no Python at $py: run scripts/setup.sh" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Before anything is written into OUT (its files are tracked: rewriting them is not a code change).
toprl_version="$(git rev-parse --short HEAD)$(git diff --quiet || echo ' (uncommitted changes)')"
mkdir -p "$out"

# One binary per backend: the tch one is built in its own target dir so the flex build stays as it is.
declare -A bin
for backend in ${backends//,/ }; do
  case "$backend" in
    flex)
      cargo build --release -p toprl-policies --example bench_lerobot_act >&2
      bin[flex]=$target/release/examples/bench_lerobot_act
      ;;
    tch)
      torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
      PATH="$(dirname "$py"):$PATH" LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1 \
        CARGO_TARGET_DIR=$target/tch cargo build --release -p toprl-policies --features tch \
        --example bench_lerobot_act >&2
      bin[tch]=$target/tch/release/examples/bench_lerobot_act
      export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      ;;
    *) echo "bench_act: unknown backend '$backend' (flex or tch)" >&2; exit 2 ;;
  esac
done

{
  echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(lscpu | awk -F': +' '/Model name/ {print $2}'), $(nproc) online, $threads used"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "toprl: $toprl_version, $(rustc --version)"
  echo "python: $("$py" -c 'import sys, torch, lerobot; print(sys.version.split()[0], "torch", torch.__version__, "lerobot", lerobot.__version__)' 2>/dev/null)"
  echo "batch $batch, images 1x3x${size}x${size}, steps $steps after $warmup warm-up, reps $reps, backends $backends"
} | tee "$out/machine.txt"
: >"$out/raw.jsonl"

run() { # tool rep command...
  local tool=$1 rep=$2
  shift 2
  /usr/bin/time -v -o "$work/time" "$@" >"$work/out" 2>"$work/err" || {
    cat "$work/err" >&2
    echo "bench_act: $tool failed" >&2
    exit 1
  }
  "$py" - "$work/out" "$work/time" "$tool" "$rep" <<'PY' | tee -a "$out/raw.jsonl"
import json, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"([0-9.]+) samples/s \(([0-9.]+) ms/step", text)
if not m:
    sys.exit(f"no samples/s line in: {text!r}")
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(sys.argv[2]).read()).group(1))
print(json.dumps({"tool": sys.argv[3], "rep": int(sys.argv[4]), "samples_per_s": float(m.group(1)),
                  "ms_per_step": float(m.group(2)), "max_rss_kb": rss, "line": text.strip().splitlines()[-1]}))
PY
}
for rep in $(seq 1 "$reps"); do
  OMP_NUM_THREADS=$threads run lerobot "$rep" "$py" policies/bench/lerobot_act_torch.py \
    --batch "$batch" --steps "$steps" --warmup "$warmup" --height "$size" --width "$size" --threads "$threads"
  for backend in ${backends//,/ }; do
    RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads BENCH_BACKEND=$backend \
      run "toprl_$backend" "$rep" "${bin[$backend]}" "$batch" "$steps" "$warmup" "$size" "$size" 1
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
"$py" - "$out/raw.jsonl" <<'PY' | tee "$out/summary.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
tools = list(dict.fromkeys(r["tool"] for r in rows))
def med(tool, key):
    return statistics.median(r[key] for r in rows if r["tool"] == tool)
print(f"runs: {sum(r['tool'] == 'lerobot' for r in rows)} per tool; medians")
for tool in tools:
    print(f"{tool}: {med(tool, 'samples_per_s'):.3f} samples/s ({med(tool, 'ms_per_step'):.0f} ms/step), "
          f"max RSS {med(tool, 'max_rss_kb') / 1048576:.2f} GiB")
for tool in tools:
    if tool != "lerobot":
        print(f"{tool} / LeRobot: samples/s {med(tool, 'samples_per_s') / med('lerobot', 'samples_per_s'):.3f}x, "
              f"max RSS {med(tool, 'max_rss_kb') / med('lerobot', 'max_rss_kb'):.3f}x")
PY
