"""The prompt token ids transformers makes of an OpenAI chat request that toprl sends (`--api openai`), as an
OpenAI server (vLLM) builds them: the request's `chat_template` rendered by the processor's
`apply_chat_template` with the request's `add_generation_prompt` / `continue_final_message`, then the
Qwen3-VL processor run on that text with the request's video (frames from the `data:video/jpeg;base64,...`
URL, timing from `media_io_kwargs.video`). The processor is the fixture's (rewards/fixtures), whose video
processor has Qwen3-VL's class defaults, as toprl's prompt check assumes by default.

Usage: python scripts/openai_prompt_ids.py < requests.jsonl  ->  per request (one JSON object a line) one line
{"transformers", "rendered", "input_ids", "vision_starts", "video_groups"} on stdout. Needs transformers (4.57 in .venv-lerobot; 5.x in a vLLM venv).
"""

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rewards" / "fixtures"))
from make_qwen3vl_fixtures import make_processor  # noqa: E402


def prompt_ids(processor, body: dict) -> dict:
    messages = body["messages"]
    video = None
    for message in messages:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part["type"] == "video_url":
                payload = part["video_url"]["url"].split(",", 1)[1]
                frames = [np.asarray(Image.open(io.BytesIO(base64.b64decode(f))).convert("RGB"))
                          for f in payload.split(",")]
                video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    kwargs = body.get("media_io_kwargs", {}).get("video", {})
    rendered = processor.apply_chat_template(
        messages,
        chat_template=body.get("chat_template"),
        add_generation_prompt=body.get("add_generation_prompt", True),
        continue_final_message=body.get("continue_final_message", False),
        tokenize=False,
    )
    meta = {"total_num_frames": int(video.shape[0]), "fps": kwargs["fps"], "frames_indices": kwargs["frames_indices"]}
    enc = processor(text=[rendered], videos=[video], video_metadata=[meta], do_sample_frames=False, return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    return {
        "transformers": transformers.__version__,
        "rendered": rendered,
        "input_ids": ids,
        "vision_starts": ids.count(processor.vision_start_token_id),
        "video_groups": int(enc["video_grid_thw"][0][0]),
    }


def main() -> None:
    processor = make_processor()
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(prompt_ids(processor, json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
