#!/usr/bin/env bash
# TOPReward on a CUDA GPU: parity with transformers on the GPU, then speed and GPU memory against it.
#
#   scripts/gpu_topreward_check.sh BIN TOKENIZER_JSON OUT_DIR
#
# BIN is `topreward_bench` built for CUDA (README, "TOPReward on GPUs"):
#   cargo build --release -p toprl-rewards --example topreward_bench --no-default-features --features cuda
# run on a machine with an NVIDIA GPU and a Python whose torch sees it and has transformers (PYTHON, default
# python3). The CUDA libraries BIN links (cuBLAS, cuRAND, NVRTC of CUDA 13) are taken from that Python's
# nvidia wheels when they are not on the library path already. Nothing is downloaded.
#
# Steps, each a fresh process, all on cuda:0, results appended to OUT_DIR/raw.jsonl:
#   1. parity on the tiny fixture model (rewards/fixtures/qwen3vl-tiny, episode square256): toprl exact in f32
#      and bf16 against transformers on the same GPU in f32 and bf16, and against the committed CPU reference;
#   2. a random model of Qwen3-VL-2B's real shapes (rewards/benches/topreward_reference.py make-model 2b, f32
#      safetensors, made on the spot), two episodes: 16 frames of 244x244 (scripts/bench_topreward.sh's) and
#      32 frames of 448x448; transformers (sdpa, its default), toprl exact and toprl incremental in bf16, REPS
#      repetitions in one process each (the first warms up: kernels load; the summary uses the others);
#   3. a long episode (64 frames of 640x640, about 12.8k tokens at full length), exact bf16, for peak memory;
#   4. f32 exact on the 16-frame episode, for parity at the 2B shapes.
# GPU memory is read with nvidia-smi every 100 ms during each process (peak used minus the idle baseline, CUDA
# context included) and, for transformers, also torch.cuda.max_memory_allocated. Environment: PYTHON, REPS
# (default 3), DEVICE (default cuda:0; cpu tries the script without a GPU), STEPS (default "tiny 2b long"),
# WORK (scratch, default /tmp/toprl-gpu), STEP_TIMEOUT (seconds per step, default 180).
# OUT_DIR/summary.md has the medians, the ratios against transformers and the largest |log p difference|.
set -uo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 3 ]] || { sed -n '2,27p' "$0"; exit 2; }
bin=$(realpath "$1") tok=$(realpath "$2") out=$3
py=${PYTHON:-python3}
reps=${REPS:-3}
device=${DEVICE:-cuda:0}
steps=${STEPS:-tiny 2b long}
mkdir -p "$out"
raw=$out/raw.jsonl
: >"$raw"
work=${WORK:-/tmp/toprl-gpu}
mkdir -p "$work"
ref=rewards/benches/topreward_reference.py
instr="push the red square to the right"
export PYTHONUNBUFFERED=1

if ! ldd "$bin" | grep -q 'libcublas.so.13 => /'; then
  site=$("$py" -c 'import site; print(site.getsitepackages()[0])')
  libdir=$(dirname "$(find "$site" -name 'libcublas.so.13' | head -1)")
  export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
{
  echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  echo "cpu: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  "$py" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)'
  echo "toprl binary: $(basename "$bin"), $(stat -c %s "$bin") bytes"
  ldd "$bin" | grep -E 'cublas|curand|nvrtc|libcuda'
} | tee "$out/machine.txt"
ldd "$bin" | grep -q 'not found' && { echo "BIN misses libraries: $(ldd "$bin" | grep 'not found')"; exit 1; }

idle_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
# run TAG CMD...: runs CMD with GPU memory sampling; each JSON line it prints is tagged and appended to raw.
run() {
  local tag=$1; shift
  local base; base=$(idle_mib)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$work/mem.txt" &
  local smi=$!
  local t0; t0=$(date +%s.%N)
  timeout "${STEP_TIMEOUT:-180}" "$@" >"$work/stdout.txt" 2>"$work/stderr.txt"
  local rc=$?
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  local wall; wall=$(awk "BEGIN { print $(date +%s.%N) - $t0 }")
  local peak; peak=$(sort -n "$work/mem.txt" | tail -1)
  if [[ $rc -ne 0 ]]; then
    echo "FAILED ($rc): $tag"; tail -20 "$work/stderr.txt"
    echo "{\"tag\": \"$tag\", \"failed\": $rc}" >>"$raw"
    return 1
  fi
  grep '^{' "$work/stdout.txt" | "$py" -c '
import json, sys
tag, wall, peak, base = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
for line in sys.stdin:
    d = json.loads(line)
    d.update(tag=tag, process_wall_seconds=wall, gpu_peak_mib=peak - base)
    print(json.dumps(d))' "$tag" "$wall" "${peak:-0}" "${base:-0}" >>"$raw"
  printf '%-34s %6.1f s  peak %6s MiB over %s idle\n' "$tag" "$wall" "$((${peak:-0} - ${base:-0}))" "$base"
}
toprl() { run "$1" "$bin" "$2" "$3" 2.0 "$instr" "$4" "$device" "$5" "$6"; }
reference() { run "$1" env BENCH_DEVICE="$device" BENCH_DTYPE="$5" BENCH_REPS="$6" "$py" $ref score "$2" "$3" 2.0 "$instr"; }
has_step() { [[ " $steps " == *" $1 "* ]]; }

# 1. Parity on the tiny fixture.
if has_step tiny; then
tiny=$work/tiny
mkdir -p "$tiny" "$work/square256"
cp rewards/fixtures/qwen3vl-tiny/* "$tiny/" && cp "$tok" "$tiny/tokenizer.json"
cp rewards/fixtures/episodes/square256/frame_*.png "$work/square256/"
toprl tiny/toprl-exact-f32 "$tiny" "$work/square256" exact f32 1 || exit 1
toprl tiny/toprl-exact-bf16 "$tiny" "$work/square256" exact bf16 1
toprl tiny/toprl-incremental-bf16 "$tiny" "$work/square256" incremental bf16 1
reference tiny/transformers-f32 "$tiny" "$work/square256" exact float32 1
reference tiny/transformers-bf16 "$tiny" "$work/square256" exact bfloat16 1
fi

# 2. Qwen3-VL-2B shapes.
m2b=$work/model-2b
if has_step 2b || has_step long; then
  [[ -f $m2b/config.json ]] || "$py" $ref make-model "$m2b" 2b || exit 1
  cp "$tok" "$m2b/tokenizer.json"
fi
if has_step 2b; then
  for ep in 16:244 32:448; do
    n=${ep%:*} size=${ep#*:}
    frames=$work/frames-$n-$size
    [[ -d $frames ]] || "$py" $ref make-frames "$frames" "$n" "$size"
    reference "2b/${n}x$size/transformers-bf16" "$m2b" "$frames" exact bfloat16 "$reps"
    toprl "2b/${n}x$size/toprl-exact-bf16" "$m2b" "$frames" exact bf16 "$reps"
    toprl "2b/${n}x$size/toprl-incremental-bf16" "$m2b" "$frames" incremental bf16 "$reps"
  done
fi

# 3. A long episode, for memory.
if has_step long; then
  long=$work/frames-64-640
  [[ -d $long ]] || "$py" $ref make-frames "$long" 64 640
  reference 2b/64x640/transformers-bf16 "$m2b" "$long" exact bfloat16 2
  toprl 2b/64x640/toprl-exact-bf16 "$m2b" "$long" exact bf16 2
fi

# 4. f32 parity at the 2B shapes (last: the slowest and least needed for the speed table).
if has_step 2b; then
  reference 2b/16x244/transformers-f32 "$m2b" "$work/frames-16-244" exact float32 1
  toprl 2b/16x244/toprl-exact-f32 "$m2b" "$work/frames-16-244" exact f32 1
fi

"$py" - "$raw" rewards/fixtures/topreward_modes_precision.json <<'PY' | tee "$out/summary.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cpu_f32 = json.load(open(sys.argv[2]))["bf16"]["f32"]  # transformers 4.57 on CPU, f32, tiny fixture
by = {}
for r in rows:
    by.setdefault(r["tag"], []).append(r)
def warm(tag):
    rs = [r for r in by.get(tag, []) if "failed" not in r]
    return [r for r in rs if r.get("rep", 0) >= 1] or rs
def med(tag, key="score_seconds"):
    rs = warm(tag)
    return statistics.median(r[key] for r in rs) if rs else None
def maxdiff(a, b):
    ra, rb = warm(a), warm(b)
    if not ra or not rb:
        return "not run" if a not in by or b not in by else "failed"
    if ra[0]["num_tokens"] != rb[0]["num_tokens"]:
        return f"token counts differ: {ra[0]['num_tokens']} vs {rb[0]['num_tokens']}"
    return f'{max(abs(x - y) for x, y in zip(ra[0]["log_probs"], rb[0]["log_probs"])):.2e}'
print("# TOPReward on the GPU: toprl (candle CUDA) against transformers\n")
print("## Parity (max |log p(True) difference| over the prefixes, nats)\n")
print("| episode | toprl | against | max diff |\n|---|---|---|---|")
for ep, pairs in [("tiny/", [("toprl-exact-f32", "transformers-f32"), ("toprl-exact-bf16", "transformers-bf16"),
                             ("toprl-incremental-bf16", "transformers-bf16"), ("transformers-bf16", "transformers-f32")]),
        ("2b/16x244/", [("toprl-exact-f32", "transformers-f32"), ("toprl-exact-bf16", "transformers-bf16"),
                        ("toprl-incremental-bf16", "transformers-bf16"), ("transformers-bf16", "transformers-f32")]),
        ("2b/32x448/", [("toprl-exact-bf16", "transformers-bf16"), ("toprl-incremental-bf16", "transformers-bf16")]),
        ("2b/64x640/", [("toprl-exact-bf16", "transformers-bf16")])]:
    for a, b in pairs:
        d = maxdiff(ep + a, ep + b)
        print(f"| {ep.rstrip('/')} | {a} | {b} | {d} |")
tiny = warm("tiny/toprl-exact-f32")
if tiny:
    d = max(abs(x - y) for x, y in zip(tiny[0]["log_probs"], cpu_f32))
    print(f"| tiny | toprl-exact-f32 (GPU) | transformers 4.57 f32 (CPU, committed) | {d:.2e} |")
print("\n## Speed and memory (bf16; median of the warm repetitions)\n")
print("| episode | tool | score s | vs transformers | GPU peak MiB | tokens (longest prefix) |\n|---|---|---|---|---|---|")
for e in ("16x244", "32x448", "64x640"):
    ref = med(f"2b/{e}/transformers-bf16")
    for tool in ("transformers-bf16", "toprl-exact-bf16", "toprl-incremental-bf16"):
        tag = f"2b/{e}/{tool}"
        s = med(tag)
        if s is None:
            print(f"| {e} | {tool} | {'failed' if tag in by else 'not run'} | | | |")
            continue
        ratio = f"{ref / s:.2f}x" if ref else "n/a"
        peak = max(r["gpu_peak_mib"] for r in warm(tag))
        print(f"| {e} | {tool} | {s:.3f} | {ratio} | {peak:.0f} | {warm(tag)[0]['num_tokens'][-1]} |")
print("\n'vs transformers' is transformers' scoring time over the tool's (above 1: faster than transformers).")
PY
