#!/usr/bin/env bash
# Fault scenarios that the test suite cannot run in-process, repeated so they stay checked:
#   1. kill -9 during `topreward label`, then a rerun: the progress file equals an uninterrupted run's, byte
#      for byte;
#   2. kill -9 during `train` (twice), then `train --resume`: every checkpoint acts exactly as the
#      uninterrupted run's (same returns to the last bit in `so101 sim`), and the results are equal
#      (wall-clock times aside); the dead run's lock file does not block the resume;
#   3. disk full (a small tmpfs, mounted as root): `label` and `train` stop with "No space left on device"
#      and a non-zero exit, leave no partial file at an output path, and after space is freed a rerun /
#      --resume reproduces the uninterrupted results exactly.
#
# Usage: scripts/fault_tests.sh [--no-disk-full]
#   Uses the debug binaries in target/debug (built when missing). Scenario 3 needs root (mount -t tmpfs);
#   without root it FAILS unless --no-disk-full is given (it never passes silently).
# Prints PASS/FAIL per check and exits non-zero if any check failed. Takes a few minutes on 2 cores.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
disk_full=1
for arg in "$@"; do
  case "$arg" in
    --no-disk-full) disk_full=0 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fault_tests: unknown option '$arg'" >&2; exit 2 ;;
  esac
done

bin=${TOPRL_BIN_DIR:-$repo/target/debug}
if [[ ! -x $bin/train || ! -x $bin/topreward ]]; then
  cargo build -q -p toprl-trainer --bins
fi
work=$(mktemp -d)
mounted=""
cleanup() {
  [[ -n $mounted ]] && umount "$mounted" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
check() { # description command...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

# Run a command in the background and kill -9 it once FILE exists; prints "killed" or "finished".
kill_when() { # file log command...
  local file=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 6000); do
    [[ -e $file ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    echo killed
  else
    wait "$pid" 2>/dev/null || true
    echo finished
  fi
}

model=$repo/rewards/fixtures/qwen3vl-tiny
dataset=$work/dataset
cp -r "$repo/envs/fixtures/lerobot/so101_v30" "$dataset"
# Commands as arrays, so that kill_when runs (and kill -9 hits) the binary itself, not a shell around it.
label_cmd=("$bin/topreward" label "$dataset" --model "$model" --mode exact --max-frames 16)
label() { # out: label the dataset into OUT (plot beside it)
  "${label_cmd[@]}" --out "$1" --plot "${1%.parquet}.png"
}

# Results without wall-clock times, for comparing two runs.
results_without_times() { jq -S 'del(.. | .wall_time_s?)' "$1/results.json"; }
# Two checkpoints act the same when the deterministic policy gives the same returns, to the last bit, on
# the same scenes. (model.bpk itself is not byte-reproducible: Burn writes a random id per parameter.)
policy_fingerprint() { # checkpoint
  "$bin/so101" sim --task reach --episodes 3 --seed 7 --threads 1 --json --policy "$1" 2>/dev/null |
    jq -c 'del(.steps_per_second, .policy)'
}
same_weights() { # run_a run_b
  local a=$1 b=$2 n=0 f
  while IFS= read -r f; do
    [[ $(policy_fingerprint "$a/$f") == "$(policy_fingerprint "$b/$f")" ]] || { echo "  differs: $f"; return 1; }
    n=$((n + 1))
  done < <(cd "$a" && find runs -name checkpoint -type d | sort)
  [[ $n -gt 0 ]]
}
same_results() { diff <(results_without_times "$1") <(results_without_times "$2") >/dev/null; }

cat >"$work/train.toml" <<'EOF'
seeds = [0, 1]
[task]
name = "reach"
max_steps = 40
cameras = ["front"]
image_size = 32
[data]
source = "sim"
episodes = 4
noise_levels = [0.0, 1.0]
[policy]
kind = "gaussian"
chunk = 4
[policy.network]
hidden = [32, 32]
[train]
steps = 400
batch_size = 16
eval_every = 100
[eval]
episodes = 2
[[arms]]
name = "bc"
reward = "none"
[[arms]]
name = "oracle"
reward = "oracle"
EOF
train_cmd=("$bin/train" "$work/train.toml" --threads 1)
train() { "${train_cmd[@]}" "$@"; }

echo "== references (uninterrupted runs)"
label "$work/label_ref.parquet" >/dev/null 2>&1
train --out "$work/train_ref" >/dev/null 2>&1

echo "== 1. kill -9 during topreward label"
state=$(kill_when "$work/label_cut.parquet" "$work/label_cut.log" "${label_cmd[@]}" --out "$work/label_cut.parquet" \
  --plot "$work/label_cut.png")
check "label was killed mid-run (state: $state)" test "$state" = killed
label "$work/label_cut.parquet" >"$work/label_rerun.log" 2>&1 || true
check "rerun kept the finished episodes ($(grep -o '[0-9]* kept' "$work/label_rerun.log" || true))" \
  grep -q "[1-9][0-9]* kept" "$work/label_rerun.log"
check "rerun progress file equals the uninterrupted one byte for byte" \
  cmp -s "$work/label_ref.parquet" "$work/label_cut.parquet"

echo "== 2. kill -9 during train, then --resume"
cut=$work/train_cut
state=$(kill_when "$cut/runs/bc/seed-0/checkpoint/progress.json" "$work/train_cut1.log" "${train_cmd[@]}" \
  --out "$cut")
check "train was killed after the first checkpoint (state: $state)" test "$state" = killed
state=$(kill_when "$cut/runs/oracle/seed-0/checkpoint/progress.json" "$work/train_cut2.log" \
  "${train_cmd[@]}" --out "$cut" --resume)
check "the resumed train was killed again in the next arm (state: $state)" test "$state" = killed
check "the dead run's lock file is left behind" test -e "$cut/.lock"
train --out "$cut" --resume >"$work/train_resume.log" 2>&1 || true
check "--resume finished despite the stale lock file" grep -q "results:" "$work/train_resume.log"
check "every checkpoint acts exactly as the uninterrupted run's" same_weights "$work/train_ref" "$cut"
check "results equal the uninterrupted run's (wall-clock times aside)" same_results "$work/train_ref" "$cut"

if [[ $disk_full == 1 ]]; then
  echo "== 3. disk full (tmpfs)"
  full=$work/full
  mkdir -p "$full"
  if [[ $(id -u) != 0 ]] || ! mount -t tmpfs -o size=3m tmpfs "$full" 2>/dev/null; then
    fail "disk-full scenario needs root to mount a tmpfs (rerun as root, or pass --no-disk-full)"
  else
    mounted=$full
    # Fill all but ~24 KiB: enough to start, not enough to finish.
    fill() { rm -f "$full/filler"; dd if=/dev/zero of="$full/filler" bs=4k count=100000 2>/dev/null || true
             truncate -s -24k "$full/filler"; }
    fill
    if label "$full/p.parquet" >"$work/label_full.log" 2>&1; then
      fail "label on a full disk exited 0"
    else
      pass "label on a full disk exits non-zero"
    fi
    check "label says the disk is full" grep -q "No space left on device" "$work/label_full.log"
    check "no panic from label" bash -c "! grep -q panicked '$work/label_full.log'"
    check "no partial temporary file is left by label" bash -c "! ls '$full'/.progress.partial-* >/dev/null 2>&1"
    rm -f "$full/filler"
    label "$full/p.parquet" >/dev/null 2>&1 || true
    check "after freeing space label completes with the uninterrupted result" \
      cmp -s "$work/label_ref.parquet" "$full/p.parquet"
    rm -rf "${full:?}"/*

    fill
    truncate -s -200k "$full/filler"
    if train --out "$full/run" >"$work/train_full.log" 2>&1; then
      fail "train on a full disk exited 0"
    else
      pass "train on a full disk exits non-zero"
    fi
    check "train says the disk is full" grep -q "No space left on device" "$work/train_full.log"
    check "no panic from train" bash -c "! grep -q panicked '$work/train_full.log'"
    rm -f "$full/filler"
    train --out "$full/run" --resume >"$work/train_full_resume.log" 2>&1 || true
    check "after freeing space --resume completes" grep -q "results:" "$work/train_full_resume.log"
    check "its checkpoints act exactly as the uninterrupted run's" same_weights "$work/train_ref" "$full/run"
    check "its results equal the uninterrupted run's (wall-clock times aside)" \
      same_results "$work/train_ref" "$full/run"
  fi
fi

if [[ $failed != 0 ]]; then
  for f in "$work"/*.log; do echo "--- $(basename "$f")"; tail -n 5 "$f"; done
fi
echo "fault tests: $passed passed, $failed failed"
[[ $failed == 0 ]]
