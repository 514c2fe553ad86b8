#!/usr/bin/env bash
# Benchmark `topreward score` (release build) against the transformers reference on CPU.
#
#   scripts/bench_topreward.sh [WORKDIR]
#
# Generates (not committed) a random mid-size Qwen3-VL (117M parameters, real 151936 vocab, f32) and a
# 16-frame 244x244 episode (15 prefixes), then times, each under /usr/bin/time -v (wall time, max RSS):
#   reference  rewards/benches/topreward_reference.py score (transformers 4.57.1, exact)
#   rust exact        release build of the scorer, exact mode
#   rust incremental  the same, incremental mode
# and prints the ratios. The Rust side is `topreward score --json` with BIN=topreward (release build of
# toprl-trainer), or by default the rewards example `topreward_bench` (the same QwenPrefixEncoder + TopReward
# path without the trainer's dependencies, quicker to build). Needs /work/venv-ref (or PYTHON=...) and the
# Qwen3 tokenizer of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/toprl-bench}
py=${PYTHON:-/work/venv-ref/bin/python}
ref=rewards/benches/topreward_reference.py
instr="push the red square to the right"
mkdir -p "$work"
[[ -f $work/model/model.safetensors ]] || "$py" $ref make-model "$work/model"
[[ -d $work/frames ]] || "$py" $ref make-frames "$work/frames" 16
tok=${TOPRL_TOKENIZER_DIR:-$HOME/.cache/toprl/tokenizer-qwen3-3.7.2}/tokenizer.json
cp -f "$tok" "$work/model/tokenizer.json"
target=${CARGO_TARGET_DIR:-target}
if [[ ${BIN:-example} == topreward ]]; then
  cargo build --release -p toprl-trainer --bin topreward >&2
  rust=("$target/release/topreward" score --model "$work/model" --frames "$work/frames" --fps 2
    --instruction "$instr" --json --mode)
else
  cargo build --release -p toprl-rewards --example topreward_bench >&2
  rust=("$target/release/examples/topreward_bench" "$work/model" "$work/frames" 2 "$instr")
fi

run() { # name, command...
  local name=$1; shift
  /usr/bin/time -v -o "$work/$name.time" "$@" > "$work/$name.json"
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/$name.time")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/$name.time")
  echo "$name wall=$wall max_rss_kb=$rss"
}
run reference "$py" $ref score "$work/model" "$work/frames" 2.0 "$instr"
run rust_exact "${rust[@]}" exact
run rust_incremental "${rust[@]}" incremental
"$py" - "$work" <<'PY'
import json, sys
w = sys.argv[1]
def secs(name):
    for line in open(f"{w}/{name}.time"):
        if "Elapsed (wall clock)" in line:
            parts = [float(x) for x in line.rsplit(": ", 1)[1].strip().split(":")]
            return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
def rss(name):
    for line in open(f"{w}/{name}.time"):
        if "Maximum resident set size" in line:
            return int(line.rsplit(": ", 1)[1]) / 1024
ref = json.load(open(f"{w}/reference.json"))
ex = json.load(open(f"{w}/rust_exact.json"))
inc = json.load(open(f"{w}/rust_incremental.json"))
d = max(abs(a - b) for a, b in zip(ref["log_probs"], ex["log_probs"]))
print(f"max |log p exact - reference| = {d:.2e} over {len(ref['log_probs'])} prefixes")
print(f"tokens per prefix: {ex['num_tokens']}")
for n in ["reference", "rust_exact", "rust_incremental"]:
    print(f"{n:17s} wall {secs(n):7.2f} s   max RSS {rss(n):7.0f} MiB   speed-up vs reference x{secs('reference') / secs(n):.2f}")
print(f"reference model load {ref['load_seconds']:.2f} s, scoring {ref['score_seconds']:.2f} s")
for n, d in [("rust_exact", ex), ("rust_incremental", inc)]:
    if "score_seconds" in d:
        print(f"{n}: load {d['load_seconds']:.2f} s, scoring {d['score_seconds']:.2f} s "
              f"(scoring speed-up x{ref['score_seconds'] / d['score_seconds']:.2f})")
d = max(abs(a - b) for a, b in zip(ex["log_probs"], inc["log_probs"]))
print(f"max |log p incremental - exact| = {d:.3f} (incremental fixes one resolution; exact follows the reference)")
print(f"VOC exact {ex['voc']}, incremental {inc['voc']}")
PY
