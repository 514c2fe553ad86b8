"""LeRobot 0.4.4's own ACTPolicy, timed on the shapes of `policies/examples/bench_lerobot_act.rs`:
LeRobot's default ACT dims (ResNet18 with random weights, dim 512, chunk 100, dropout 0.1), one state
of 6 and 6 action dims, `--cameras` images of `--height`x`--width`, one training step per batch
(`policy.forward` in train mode, backward, `clip_grad_norm_` at the preset's 10, AdamW from
`config.get_optimizer_preset()` over `policy.get_optim_params()`), as `lerobot-train` does.

usage: .venv-lerobot/bin/python policies/bench/lerobot_act_torch.py [--batch 8] [--steps 5] [--warmup 2]
       [--height 224] [--width 224] [--cameras 1] [--threads 2]
"""

import argparse
import os
import time

# Idle OpenMP workers sleep instead of spinning (see policies/bench/act_torch.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from lerobot.configs.types import FeatureType, PolicyFeature  # noqa: E402
from lerobot.policies.act.configuration_act import ACTConfig  # noqa: E402
from lerobot.policies.act.modeling_act import ACTPolicy  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--height", type=int, default=224)
    p.add_argument("--width", type=int, default=224)
    p.add_argument("--cameras", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cams = {f"observation.images.cam{c}": (3, a.height, a.width) for c in range(a.cameras)}
    config = ACTConfig(
        input_features={
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(6,)),
            **{k: PolicyFeature(type=FeatureType.VISUAL, shape=s) for k, s in cams.items()},
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(6,))},
        pretrained_backbone_weights=None,
        device="cpu",
        push_to_hub=False,
    )
    policy = ACTPolicy(config)
    policy.train()
    preset = config.get_optimizer_preset()
    optim = preset.build(policy.get_optim_params())
    b, chunk = a.batch, config.chunk_size
    batch = {
        "observation.state": torch.rand(b, 6) * 2 - 1,
        **{k: torch.rand(b, *s) * 2 - 1 for k, s in cams.items()},
        "action": torch.rand(b, chunk, 6) * 2 - 1,
        "action_is_pad": torch.zeros(b, chunk, dtype=torch.bool),
    }

    def step() -> float:
        loss, _ = policy.forward(batch)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), preset.grad_clip_norm)
        optim.step()
        return float(loss.detach())

    for _ in range(a.warmup):
        step()
    start = time.perf_counter()
    loss = 0.0
    for _ in range(a.steps):
        loss = step()
    secs = time.perf_counter() - start
    params = sum(p.numel() for p in policy.parameters())
    print(
        f"torch {torch.__version__} lerobot-act ({params} params): batch {b} images {a.cameras}x3x{a.height}x{a.width} "
        f"chunk {chunk} steps {a.steps} threads {a.threads}: {b * a.steps / secs:.2f} samples/s "
        f"({1e3 * secs / a.steps:.1f} ms/step, last loss {loss:.4f})"
    )


if __name__ == "__main__":
    main()
