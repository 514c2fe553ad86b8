"""LeRobot 0.4.4's prediction for one raw observation, the reference `so101 policy predict` is checked against.

Loads a SmolVLA checkpoint folder the way LeRobot users do (`SmolVLAPolicy.from_pretrained` and the saved
`policy_preprocessor.json` / `policy_postprocessor.json` pipelines with their statistics), runs
preprocessor -> `predict_action_chunk(batch, noise=...)` -> postprocessor, and prints
`{"actions": [[...], ...]}` on stdout, the un-normalised action chunk.

    HF_HUB_OFFLINE=1 .venv-lerobot/bin/python scripts/lerobot_smolvla_predict.py \
        --policy DIR --observation OBS.safetensors --noise NOISE.safetensors --task TEXT

OBS holds `observation.state` [state_dim] and `observation.images.<camera>` [3, H, W] in [0, 1]; NOISE
holds `noise` [chunk_size, max_action_dim]. A relative `vlm_model_name` resolves against the working
directory, as in LeRobot.
"""

import argparse
import contextlib
import json
import sys

import torch
from safetensors.torch import load_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--observation", required=True)
    parser.add_argument("--noise", required=True)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()

    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import (
        batch_to_transition,
        policy_action_to_transition,
        transition_to_batch,
        transition_to_policy_action,
    )

    # LeRobot prints progress on stdout while loading; keep stdout for the JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        return predict(args, SmolVLAPolicy, PolicyProcessorPipeline, batch_to_transition, transition_to_batch,
                       policy_action_to_transition, transition_to_policy_action)


def predict(args, SmolVLAPolicy, PolicyProcessorPipeline, batch_to_transition, transition_to_batch,
            policy_action_to_transition, transition_to_policy_action) -> int:
    policy = SmolVLAPolicy.from_pretrained(args.policy)
    policy.eval()
    preprocessor = PolicyProcessorPipeline.from_pretrained(
        args.policy,
        config_filename="policy_preprocessor.json",
        to_transition=batch_to_transition,
        to_output=transition_to_batch,
    )
    postprocessor = PolicyProcessorPipeline.from_pretrained(
        args.policy,
        config_filename="policy_postprocessor.json",
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    )
    observation = load_file(args.observation)
    noise = load_file(args.noise)["noise"]
    if noise.ndim == 2:
        noise = noise[None]
    with torch.no_grad():
        batch = preprocessor({**observation, "task": args.task})
        chunk = policy.predict_action_chunk(batch, noise=noise)
        actions = postprocessor(chunk)
    sys.__stdout__.write(json.dumps({"actions": actions[0].tolist()}) + "\n")
    sys.__stdout__.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
