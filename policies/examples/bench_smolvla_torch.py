"""PyTorch twin of `bench_smolvla.rs`: LeRobot 0.4.4 SmolVLA at its real shape (SmolVLM2-500M
backbone, 16 VLM layers, 720-wide expert, chunk 50) with random weights, on CPU.

    .venv-lerobot/bin/python policies/examples/bench_smolvla_torch.py THREADS BATCH STEPS WARMUP

Prints one JSON line: action-chunk latency (batch 1, two 480x640 cameras, 10 Euler steps) and
training samples/s (LeRobot's default freezing: train_expert_only, frozen vision; forward + backward
+ clip + AdamW). The tokenizer is the tiny fixture one (only its special-token ids are read; prompts
use ids < 400), the backbone config is SmolVLM2-500M-Video-Instruct's shape.
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURE_VLM = HERE.parent / "fixtures" / "smolvla" / "vlm"

# SmolVLM2-500M-Video-Instruct's backbone shape (the one bench_smolvla.rs builds too).
REAL_VLM = {
    "model_type": "smolvlm",
    "scale_factor": 4,
    "image_token_id": 4,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "llama",
        "vocab_size": 49280,
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "smolvlm_vision",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_pytorch_tanh",
    },
}

STATE, ACTION, CHUNK, H, W, PROMPT = 6, 6, 50, 480, 640, 16
CAMERAS = ["observation.images.front", "observation.images.wrist"]


def make_batch(b, gen):
    batch = {
        "observation.state": torch.randn(b, STATE, generator=gen),
        "action": torch.randn(b, CHUNK, ACTION, generator=gen),
        "observation.language.tokens": torch.randint(20, 400, (b, PROMPT), generator=gen),
        "observation.language.attention_mask": torch.ones(b, PROMPT, dtype=torch.bool),
    }
    for k in CAMERAS:
        batch[k] = torch.rand(b, 3, H, W, generator=gen)
    return batch


def main():
    threads, batch_size, steps, warmup = (int(a) for a in sys.argv[1:5])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    tmp = Path(tempfile.mkdtemp(prefix="smolvla-bench-"))
    try:
        for f in FIXTURE_VLM.iterdir():
            if f.name != "config.json":
                shutil.copy(f, tmp / f.name)
        (tmp / "config.json").write_text(json.dumps(REAL_VLM))
        cfg = SmolVLAConfig(
            input_features={
                "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE,)),
                **{k: PolicyFeature(type=FeatureType.VISUAL, shape=(3, H, W)) for k in CAMERAS},
            },
            output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION,))},
            vlm_model_name=str(tmp),
            load_vlm_weights=False,
            device="cpu",
            push_to_hub=False,
        )
        policy = SmolVLAPolicy(cfg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gen = torch.Generator().manual_seed(1)

    # Action-chunk latency, batch 1.
    policy.eval()
    one = make_batch(1, gen)
    noise = torch.randn(1, CHUNK, cfg.max_action_dim, generator=gen)
    times = []
    for i in range(warmup + steps):
        policy.reset()
        t0 = time.perf_counter()
        with torch.no_grad():
            policy.predict_action_chunk(dict(one), noise=noise)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    latency = sum(times) / len(times)

    # Training throughput with LeRobot's optimiser and default freezing.
    policy.train()
    optim = cfg.get_optimizer_preset().build(policy.get_optim_params())
    batch = make_batch(batch_size, gen)
    train_times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss, _ = policy.forward(dict(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optimizer_grad_clip_norm)
        optim.step()
        optim.zero_grad()
        if i >= warmup:
            train_times.append(time.perf_counter() - t0)
    step = sum(train_times) / len(train_times)
    params = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    print(
        json.dumps(
            {
                "impl": "lerobot-torch",
                "threads": threads,
                "batch": batch_size,
                "params": params,
                "trainable": trainable,
                "chunk_latency_s": latency,
                "train_step_s": step,
                "train_samples_per_s": batch_size / step,
            }
        )
    )


if __name__ == "__main__":
    main()
