"""Answers toprl's calibration parity test with LeRobot's own code (lerobot 0.4.4).

Reads a JSON request on stdin and prints a JSON answer:
- "cases": [{"cal": MotorCalibration fields, "mode": "DEGREES" | "RANGE_M100_100" | "RANGE_0_100",
  "raw": [int], "norm_bits": [f64 bits as int]}] -> per case "normalized_bits" (FeetechMotorsBus._normalize
  of each raw value, f64 bits) and "unnormalized" (FeetechMotorsBus._unnormalize of each value, or null
  when LeRobot raises).
- "load": a calibration file path LeRobot loads (draccus, as Robot._load_calibration) and "dump": a path
  it saves the loaded calibration to (as Robot._save_calibration).
- "calibration_root": LeRobot's HF_LEROBOT_CALIBRATION under this process's environment.
"""

import json
import struct
import sys

import draccus
from lerobot.motors import Motor, MotorCalibration, MotorNormMode
from lerobot.motors.feetech import FeetechMotorsBus
from lerobot.utils import constants


def bits_to_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def float_to_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def main() -> None:
    request = json.load(sys.stdin)
    answer = {"cases": [], "calibration_root": str(constants.HF_LEROBOT_CALIBRATION)}
    for case in request.get("cases", []):
        mode = MotorNormMode[case["mode"]]
        cal = MotorCalibration(**case["cal"])
        bus = FeetechMotorsBus(
            port="/dev/null",
            motors={"m": Motor(cal.id, "sts3215", mode)},
            calibration={"m": cal},
        )
        normalized = [float_to_bits(bus._normalize({cal.id: raw})[cal.id]) for raw in case["raw"]]
        unnormalized = []
        for bits in case["norm_bits"]:
            try:
                unnormalized.append(bus._unnormalize({cal.id: bits_to_float(bits)})[cal.id])
            except (ValueError, OverflowError):
                unnormalized.append(None)
        answer["cases"].append({"normalized_bits": normalized, "unnormalized": unnormalized})
    if "load" in request:
        with open(request["load"]) as f, draccus.config_type("json"):
            loaded = draccus.load(dict[str, MotorCalibration], f)
        with open(request["dump"], "w") as f, draccus.config_type("json"):
            draccus.dump(loaded, f, indent=4)
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
