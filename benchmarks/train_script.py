"""examples/train.py as a user runs it, for the benchmarks that measure its runs (quality, resolution, paper).

A separate process, so that each run starts as the command line's does (same seed, nothing left over from the
previous run); under `accelerate launch` the process inherits its rank. Its summary is what the run writes to
`<output_dir>/iou_before_after.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "train.py")


def run_train_script(argv: list[str]) -> dict:
    """Runs `python examples/train.py *argv` (its output passes through) and returns the run's summary."""
    subprocess.run([sys.executable, TRAIN_SCRIPT, *argv], check=True)
    output_dir = argv[len(argv) - 1 - argv[::-1].index("--output_dir") + 1]  # the last --output_dir wins
    with open(os.path.join(output_dir, "iou_before_after.json"), encoding="utf-8") as f:
        return json.load(f)
