#!/usr/bin/env bash
# Throughput of `topreward serve` answering OpenAI chat requests one at a time and batched.
#
#   scripts/bench_serve.sh [--size 117m|2b] [--reps N] [--concurrency C] [--frames F] [--out DIR]
#
# What it does, every step from this script:
#   1. makes (once, under $WORK, default /tmp/toprl-bench) the random Qwen3-VL and the F-frame episode that
#      scripts/bench_topreward.sh uses (rewards/benches/topreward_reference.py);
#   2. builds `topreward` (release) and, for each server setting in turn, starts `topreward serve` on a free
#      port and scores the episode REPS times (default 3) through it as a vLLM user would:
#        topreward score --endpoint URL --api openai --concurrency C   (C prefixes in flight, default 8)
#      settings: `--max-batch 1` (one request at a time) and `--max-batch 8` (the requests waiting together
#      prefilled in one packed pass; no added wait);
#   3. writes into OUT (default scripts/bench_serve_results/<size>; commit it): machine.txt, raw.jsonl (one
#      line per run: setting, rep, wall seconds, log probs) and summary.md (medians, speed-up, and the largest
#      log-prob difference between the settings).
#
# Server and client share the machine (2 threads for the server's model). Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

size=117m reps=3 concurrency=8 frames=16 out=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --size) size=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --frames) frames=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $size == 117m || $size == 2b ]] || { echo "--size must be 117m or 2b" >&2; exit 2; }
(( reps >= 1 && concurrency >= 1 )) || { echo "--reps and --concurrency must be at least 1" >&2; exit 2; }
out=${out:-scripts/bench_serve_results/$size}
source scripts/bench_topreward_setup.sh

cargo build --release -p toprl-trainer --bin topreward >&2
bin=${CARGO_TARGET_DIR:-target}/release/topreward

{
  echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kernel: $(uname -srm)"
  echo "CPUs: $(nproc); server model threads: 2"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "toprl: $toprl_version, $(rustc --version)"
  echo "model: $size; episode: $frames frames of 244x244 at 2 fps; client concurrency $concurrency"
  echo "--- lscpu"
  lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | cut -c1-200
} > "$out/machine.txt"

raw=$out/raw.jsonl
: > "$raw"
for batch in 1 8; do
  log=$(mktemp)
  RAYON_NUM_THREADS=2 "$bin" serve --model "$model" --port 0 --max-batch "$batch" > "$log" 2>/dev/null &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 600); do grep -q '^listening on ' "$log" && break; sleep 0.1; done
  url=$(sed -n 's/^listening on //p' "$log")
  [[ -n $url ]] || { echo "the server did not start" >&2; exit 1; }
  for rep in $(seq 1 "$reps"); do
    start=$(date +%s.%N)
    answer=$("$bin" score --endpoint "$url" --api openai --concurrency "$concurrency" \
      --frames "$episode" --fps 2 --instruction "push the red square to the right" --json 2>/dev/null)
    end=$(date +%s.%N)
    "$PYTHON" -c 'import json, sys
d = json.loads(sys.argv[4])
print(json.dumps({"max_batch": int(sys.argv[1]), "rep": int(sys.argv[2]), "wall_seconds": float(sys.argv[3]),
                  "log_probs": d["log_probs"]}))' "$batch" "$rep" "$(echo "$end - $start" | bc)" "$answer" >> "$raw"
    tail -n1 "$raw" | cut -c1-120 >&2
  done
  kill "$server"; wait "$server" 2>/dev/null || true
  rm -f "$log"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"

"$PYTHON" - "$raw" "$out/summary.md" "$size" "$concurrency" <<'PY'
import json, statistics, sys
raw, path, size, conc = sys.argv[1:5]
runs = [json.loads(l) for l in open(raw)]
med = {b: statistics.median(r["wall_seconds"] for r in runs if r["max_batch"] == b) for b in (1, 8)}
one = next(r for r in runs if r["max_batch"] == 1)["log_probs"]
eight = next(r for r in runs if r["max_batch"] == 8)["log_probs"]
diff = max(abs(a - b) for a, b in zip(one, eight))
lines = [f"# topreward serve: OpenAI chat scoring of one episode ({size} random Qwen3-VL, {len(one)} prefixes, "
         f"concurrency {conc}, median of {len(runs) // 2} runs)", "",
         "Made by scripts/bench_serve.sh; raw runs in raw.jsonl, machine in machine.txt.", "",
         "| server | episode wall s | speed vs one at a time |", "|---|---|---|"]
for b in (1, 8):
    lines.append(f"| --max-batch {b} | {med[b]:.2f} | {med[1] / med[b]:.2f}x |")
lines += ["", f"max |log p batched - one at a time| = {diff:.2e}"]
open(path, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
