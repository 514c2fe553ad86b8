#!/usr/bin/env bash
# TOPReward scoring speed and memory: toprl exact, toprl incremental and transformers, back to back.
#
#   scripts/bench_topreward.sh [--size 117m|2b] [--reps N] [--threads T] [--frames F] [--out DIR]
#
# What it does, every step from this script (nothing is measured by hand):
#   1. makes (once, under $WORK, default /tmp/toprl-bench, not committed) a random Qwen3-VL with
#      rewards/benches/topreward_reference.py make-model: `117m` (8+8 layers, real 151936 vocab) or `2b`
#      (Qwen3-VL-2B's real shapes: head_dim 128, hidden 2048, 28 layers, vision 1024 x 24), f32 safetensors,
#      and an episode of F frames of 244x244 (default 16 frames: 15 prefixes);
#   2. builds `topreward` (release, toprl-trainer) and runs, REPS times (default 3) in the order
#      transformers, toprl exact, toprl incremental, each a fresh process under /usr/bin/time -v:
#        transformers  rewards/benches/topreward_reference.py score  (exact, as LeRobot's port computes it)
#        toprl exact   topreward score --json --mode exact
#        toprl inc.    topreward score --json --mode incremental
#      all on T threads (default: nproc): RAYON_NUM_THREADS for toprl, torch.set_num_threads for transformers;
#   3. writes into OUT (default scripts/bench_topreward_results/<size>; commit it):
#        machine.txt  CPU (lscpu), memory, kernel, load average before/after, toolchain and library versions
#        raw.jsonl    one line per run: tool, rep, wall seconds, peak RSS, load/score seconds, log probs
#        summary.md   medians per tool, ratios against transformers, score agreement
#
# Needs a Python with torch + transformers (PYTHON=...; default .venv-ref, else .venv-lerobot) and the Qwen3
# tokenizer of scripts/setup.sh. Run it on a quiet machine: other load skews every number. Environment:
# WORK (scratch dir), PYTHON, TOPREWARD_BIN (use this binary instead of building the release one).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

size=117m reps=3 threads=$(nproc) frames=16 out=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --size) size=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --frames) frames=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $size == 117m || $size == 2b ]] || { echo "--size must be 117m or 2b" >&2; exit 2; }
(( reps >= 1 )) || { echo "--reps must be at least 1" >&2; exit 2; }
out=${out:-scripts/bench_topreward_results/$size}
instr="push the red square to the right"
source scripts/bench_topreward_setup.sh

# TOPREWARD_BIN=path skips the build (e.g. a --features cuda build, or a smoke test of this script).
if [[ -n ${TOPREWARD_BIN:-} ]]; then
  bin=$TOPREWARD_BIN
else
  cargo build --release -p toprl-trainer --bin topreward >&2
  bin=${CARGO_TARGET_DIR:-target}/release/topreward
fi

{
  echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "kernel: $(uname -srm)"
  echo "threads used: $threads of $(nproc) online CPUs"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "toprl: $toprl_version, $(rustc --version)"
  echo "python: $("$PYTHON" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)')"
  echo "model: $size ($("$PYTHON" -c "import json; c = json.load(open('$model/config.json')); t = c['text_config']; v = c['vision_config']; print(f\"text {t['num_hidden_layers']}x{t['hidden_size']} head_dim {t['head_dim']}, vision {v['depth']}x{v['hidden_size']}\")"))"
  echo "episode: $frames frames of 244x244 at 2 fps"
  echo "--- lscpu"
  lscpu 2>/dev/null | grep -E 'Model name|^CPU\(s\)|Thread|Core|Socket|MHz|L2|L3' || true
  echo "SIMD: $(grep -m1 -o -E '\b(avx[0-9a-z_]*|fma|amx[a-z_]*)\b' /proc/cpuinfo | sort -u | tr '\n' ' ')"
} > "$out/machine.txt"

raw=$out/raw.jsonl
: > "$raw"
run() { # tool rep command...
  local tool=$1 rep=$2; shift 2
  local t=$work/$tool.time j=$work/$tool.json
  RAYON_NUM_THREADS=$threads BENCH_THREADS=$threads /usr/bin/time -v -o "$t" "$@" > "$j"
  "$PYTHON" - "$tool" "$rep" "$t" "$j" >> "$raw" <<'PY'
import json, sys
tool, rep, tpath, jpath = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
wall = rss = None
for line in open(tpath):
    if "Elapsed (wall clock)" in line:
        parts = [float(x) for x in line.rsplit(": ", 1)[1].strip().split(":")]
        wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    if "Maximum resident set size" in line:
        rss = int(line.rsplit(": ", 1)[1]) / 1024
d = json.load(open(jpath))
timing = d.get("timing", d)
print(json.dumps({"tool": tool, "rep": rep, "wall_seconds": wall, "max_rss_mib": rss,
                  "load_seconds": timing.get("load_seconds"), "score_seconds": timing.get("score_seconds"),
                  "num_tokens": d.get("num_tokens"), "log_probs": d.get("log_probs")}))
PY
  tail -n1 "$raw" | cut -c1-160 >&2
}
common=(score --model "$model" --frames "$episode" --fps 2 --instruction "$instr" --json)
for rep in $(seq 1 "$reps"); do
  run transformers "$rep" "$PYTHON" $ref score "$model" "$episode" 2.0 "$instr"
  run toprl_exact "$rep" "$bin" "${common[@]}" --mode exact
  run toprl_incremental "$rep" "$bin" "${common[@]}" --mode incremental
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"

"$PYTHON" - "$raw" "$out/summary.md" "$size" "$reps" "$threads" <<'PY'
import json, statistics, sys
raw, summary, size, reps, threads = sys.argv[1:]
runs = [json.loads(l) for l in open(raw)]
tools = ["transformers", "toprl_exact", "toprl_incremental"]
med = {t: {k: statistics.median(r[k] for r in runs if r["tool"] == t)
           for k in ["wall_seconds", "max_rss_mib", "load_seconds", "score_seconds"]} for t in tools}
ref = med["transformers"]
lines = [f"# TOPReward benchmark ({size} random Qwen3-VL, median of {reps} runs, {threads} threads)", "",
         "Made by scripts/bench_topreward.sh; raw runs in raw.jsonl, machine in machine.txt.", "",
         "| tool | scoring s | load s | process wall s | peak RSS MiB | scoring speed vs transformers | process speed vs transformers | peak RSS vs transformers |",
         "|---|---|---|---|---|---|---|---|"]
for t in tools:
    m = med[t]
    lines.append(f"| {t} | {m['score_seconds']:.2f} | {m['load_seconds']:.2f} | {m['wall_seconds']:.2f} | "
                 f"{m['max_rss_mib']:.0f} | {ref['score_seconds'] / m['score_seconds']:.2f}x | "
                 f"{ref['wall_seconds'] / m['wall_seconds']:.2f}x | {m['max_rss_mib'] / ref['max_rss_mib']:.2f}x |")
first = {t: next(r for r in runs if r["tool"] == t) for t in tools}
d_exact = max(abs(a - b) for a, b in zip(first["toprl_exact"]["log_probs"], first["transformers"]["log_probs"]))
d_inc = max(abs(a - b) for a, b in zip(first["toprl_incremental"]["log_probs"], first["toprl_exact"]["log_probs"]))
lines += ["", f"max |log p toprl exact - transformers| = {d_exact:.2e} over {len(first['transformers']['log_probs'])} prefixes",
          f"max |log p incremental - exact| = {d_inc:.3f} (incremental fixes one resolution per episode)",
          f"tokens per prefix: {first['toprl_exact']['num_tokens']}"]
open(summary, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
