#!/usr/bin/env python3
"""Reference side of the TOPReward benchmark (scripts/bench_topreward.sh).

  make-model DIR [SIZE]  a random Qwen3-VL (real vocab, f32, seed 0) saved with save_pretrained: SIZE 117m
                      (default, 8+8 layers) or 2b (Qwen3-VL-2B's real shapes and depth)
  make-frames DIR N [SIZE]
                      N frames (SIZExSIZE PNG, default 244, the paper's size) of a moving coloured square
  score DIR FRAMES FPS INSTRUCTION
                      TOPReward exact scoring with transformers, as LeRobot's port computes it (no chat
                      template, explicit video metadata, do_sample_frames=False, odd prefixes padded by
                      repeating the last frame); prints one JSON line per repetition like `topreward score
                      --json`

Run with .venv-ref/bin/python (transformers 4.57.1, torch 2.9.1) or another torch + transformers env (the GPU
check runs it under transformers 5). Scoring uses $BENCH_THREADS threads (default: all CPUs), runs on
$BENCH_DEVICE (default cpu; e.g. cuda) in $BENCH_DTYPE (float32 default, bfloat16, float16), $BENCH_REPS times
(default 1) in one process. Nothing it writes is committed.
"""

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TOKENIZER_DIR = Path(os.environ.get("TOPRL_TOKENIZER_DIR", Path.home() / ".cache/toprl/tokenizer-qwen3-3.7.2"))
PROMPT_PREFIX = "The above video shows a robot manipulation trajectory that completes the following task: "
SUFFIX = "{instruction} Decide whether the above statement is True or not. The answer is: True"
TRUE_TOKEN = 3007


def make_model(out: Path, size: str = "117m") -> None:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    if size == "2b":
        # Qwen3-VL-2B-Instruct's config.json shapes (random weights).
        cfg = Qwen3VLConfig(
            text_config=dict(
                vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                rope_theta=5000000.0, tie_word_embeddings=True,
                rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
            ),
            vision_config=dict(
                depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17],
            ),
            tie_word_embeddings=True,
        )
        model = Qwen3VLForConditionalGeneration(cfg)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        print(f"saved {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters to {out}", file=sys.stderr)
        return
    if size != "117m":
        sys.exit(f"unknown model size {size!r}: expected 117m or 2b")
    cfg = Qwen3VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
            num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=32768,
            rope_theta=5000000.0, tie_word_embeddings=True,
            rope_scaling={"rope_type": "default", "mrope_section": [12, 10, 10], "mrope_interleaved": True},
        ),
        vision_config=dict(
            depth=8, hidden_size=256, intermediate_size=1024, num_heads=4, out_hidden_size=512,
            num_position_embeddings=2304, deepstack_visual_indexes=[1, 3, 5],
        ),
        tie_word_embeddings=True,
    )
    model = Qwen3VLForConditionalGeneration(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"saved {n / 1e6:.1f}M parameters to {out}", file=sys.stderr)


def make_frames(out: Path, n: int, size: int = 244) -> None:
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    bg = np.stack([xx * 255 // (size - 1), yy * 255 // (size - 1), 96 + 0 * xx], -1).astype(np.uint8)
    side = size // 4
    for i in range(n):
        img = bg.copy()
        x0 = int(round(i * (size - side) / max(n - 1, 1)))
        img[(size - side) // 2 : (size - side) // 2 + side, x0 : x0 + side] = (220, 40, 40)
        Image.fromarray(img).save(out / f"frame_{i:04d}.png")


def prefix_lengths(n: int) -> list[int]:
    return sorted(set(int(math.floor(v)) for v in np.linspace(1, n, min(15, n))))


def doubled_markers(enc, processor) -> bool:
    """True when the processor left the prompt's own vision markers around its per-frame ones."""
    starts = int((enc["input_ids"][0] == processor.vision_start_token_id).sum())
    return starts > int(enc["video_grid_thw"][0][0])


def score(model_dir: Path, frames_dir: Path, fps: float, instruction: str) -> None:
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLImageProcessorFast,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
    dtype_name = os.environ.get("BENCH_DTYPE", "float32")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    reps = int(os.environ.get("BENCH_REPS", "1"))
    t0 = time.perf_counter()
    model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    tok = Qwen2TokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"), eos_token="<|im_end|>")
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorFast(), tokenizer=tok, video_processor=Qwen3VLVideoProcessor()
    )
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(frames_dir.glob("*.png"))]
    text = (
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
        + PROMPT_PREFIX
        + SUFFIX.format(instruction=instruction)
    )
    # transformers 5 no longer consumes the prompt's own <|vision_start|>..<|vision_end|> around <|video_pad|>
    # (4.57 replaced all three): then give it the bare pad, so the model sees the same tokens as under 4.57 and
    # in toprl. Decided once, on a one-frame probe, outside the timed scoring.
    probe = torch.from_numpy(np.stack([frames[0], frames[0]])).permute(0, 3, 1, 2).contiguous()
    probe_meta = {"total_num_frames": 2, "fps": fps, "frames_indices": [0, 0]}
    if doubled_markers(processor(text=[text], videos=[probe], video_metadata=[probe_meta], do_sample_frames=False,
                                 return_tensors="pt"), processor):
        text = text.replace("<|vision_start|><|video_pad|><|vision_end|>", "<|video_pad|>")
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_load = time.perf_counter() - t0
    lengths = prefix_lengths(len(frames))
    for rep in range(reps):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        log_probs, num_tokens = [], []
        t1 = time.perf_counter()
        for k in lengths:
            idx = list(range(k)) + ([k - 1] if k % 2 else [])
            video = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2).contiguous()
            meta = {"total_num_frames": len(idx), "fps": fps, "frames_indices": idx}
            enc = processor(text=[text], videos=[video], video_metadata=[meta], do_sample_frames=False,
                            return_tensors="pt").to(device)
            with torch.no_grad():
                logits = model(**enc, logits_to_keep=2).logits
            # .item() waits for the device, so the clock below includes all of its work.
            log_probs.append(torch.log_softmax(logits[0, -2].float(), -1)[TRUE_TOKEN].item())
            num_tokens.append(enc["input_ids"].shape[1])
        t_score = time.perf_counter() - t1
        out = {"prefix_lengths": lengths, "log_probs": log_probs, "num_tokens": num_tokens, "load_seconds": t_load,
               "score_seconds": t_score, "device": str(device), "dtype": dtype_name, "rep": rep}
        if device.type == "cuda":
            out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        print(json.dumps(out), flush=True)

if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "make-model":
        make_model(Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "117m")
    elif cmd == "make-frames":
        make_frames(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 244)
    elif cmd == "score":
        score(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(__doc__)
