# Shared set-up of scripts/bench_topreward.sh and scripts/bench_serve.sh (sourced, not run): with `size`,
# `frames` and `out` set, picks the Python (PYTHON, default .venv-ref, else .venv-lerobot), notes the git
# state before anything is written into OUT, and makes (once, under WORK, default /tmp/toprl-bench, not
# committed) the random Qwen3-VL `model` and the `episode` of `frames` frames with
# rewards/benches/topreward_reference.py, with the Qwen3 tokenizer of scripts/setup.sh copied in.
work=${WORK:-/tmp/toprl-bench}
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv-ref/bin/python ]]; then PYTHON=.venv-ref/bin/python; else PYTHON=.venv-lerobot/bin/python; fi
fi
[[ -x $PYTHON ]] || { echo "no Python at $PYTHON: run scripts/setup.sh --python-ref or set PYTHON" >&2; exit 1; }
ref=rewards/benches/topreward_reference.py
model=$work/model-$size
episode=$work/frames-$frames
# Before anything is written into OUT (its files are tracked: rewriting them is not a code change).
toprl_version="$(git rev-parse --short HEAD)$(git diff --quiet || echo ' (uncommitted changes)')"
mkdir -p "$work" "$out"
[[ -f $model/config.json ]] || "$PYTHON" $ref make-model "$model" "$size"
[[ -d $episode ]] || "$PYTHON" $ref make-frames "$episode" "$frames"
tok=${TOPRL_TOKENIZER_DIR:-$HOME/.cache/toprl/tokenizer-qwen3-3.7.2}/tokenizer.json
[[ -f $tok ]] || { echo "no Qwen3 tokenizer at $tok: run scripts/setup.sh" >&2; exit 1; }
cp -f "$tok" "$model/tokenizer.json"
