"""LeRobot's own SO-101 follower driver on toprl's simulated bus (`so101 sim-bus`).

Usage: python so101_follower_on_sim_bus.py PORT CALIBRATION_DIR ROBOT_ID
Connects lerobot 0.4.4's SOFollower (so101_follower config) with the calibration file
CALIBRATION_DIR/ROBOT_ID.json, reads the arm, commands shoulder_pan 15 degrees further and the gripper to
60 for two seconds, reads again, disconnects (torque off), and prints one JSON line
{"before": {...}, "after": {...}, "sent": {...}} with the positions LeRobot read.
"""

import json
import sys
import time
from pathlib import Path

from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig


def main() -> None:
    port, calibration_dir, robot_id = sys.argv[1:4]
    config = SO101FollowerConfig(port=port, id=robot_id, calibration_dir=Path(calibration_dir))
    robot = SO101Follower(config)
    # The sim bus starts with the file's registers, so connect() finds the arm calibrated and asks nothing.
    robot.connect(calibrate=False)
    if not robot.is_calibrated:
        raise SystemExit("LeRobot sees the simulated arm as not calibrated")
    before = robot.get_observation()
    goal = dict(before)
    goal["shoulder_pan.pos"] = before["shoulder_pan.pos"] + 15.0
    goal["gripper.pos"] = 60.0
    sent = {}
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        sent = robot.send_action(goal)
        time.sleep(1 / 30)
    after = robot.get_observation()
    robot.disconnect()
    print(json.dumps({"before": before, "after": after, "sent": sent}))


if __name__ == "__main__":
    main()
