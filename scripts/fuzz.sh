#!/usr/bin/env bash
# Long property-test ("fuzzing") sessions of the readers of untrusted input, one at a time at the lowest
# CPU priority. Each entry runs its proptest property with fresh random seeds for the given seconds and
# prints "fuzz NAME: N cases in S s"; a failure stops the script with the minimal failing input.
# Results are appended to scripts/fuzz-log.txt; scripts/FUZZING.md records the sessions that were run.
#
# Usage: scripts/fuzz.sh [SCALE]   (SCALE multiplies every duration; default 1 = the recorded session)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scale=${1:-1}
log=$repo/scripts/fuzz-log.txt
# crate  test-target  test-name  seconds
sessions=(
  "toprl-trainer  fuzz_config        hostile_config_values_are_refused_or_usable   480"
  "toprl-trainer  fuzz_config        damaged_config_text_is_refused_or_usable      120"
  "toprl-envs     fuzz_dataset       hostile_info_json_values_never_panic_or_escape_the_root 300"
  "toprl-envs     fuzz_dataset       damaged_dataset_files_never_panic             300"
  "toprl-envs     fuzz_dataset       damaged_progress_files_never_panic            120"
  "toprl-policies fuzz_checkpoint    hostile_checkpoints_never_panic               600"
  "toprl-rewards  fuzz_safetensors   hostile_qwen_checkpoints_never_panic          600"
)
for s in "${sessions[@]}"; do
  read -r crate target name seconds <<<"$s"
  seconds=$((seconds * scale))
  nice -n 19 cargo test -q -p "$crate" --test "$target" --no-run
  echo "$(date -u +%FT%TZ) start $crate/$target::$name for ${seconds}s" | tee -a "$log"
  TOPRL_FUZZ_SECONDS=$seconds nice -n 19 cargo test -q -p "$crate" --test "$target" -- --exact "$name" \
    --nocapture 2>&1 | grep -E "^fuzz |panicked|FAILED|failed|test result" | tee -a "$log"
done
