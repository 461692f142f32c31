"""benchmarks/overhead.py at ViT-B proportions (random weights, tiny image) with the scale modes; figures unchecked."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_vit_b_overhead_runs_every_scale_mode_and_reports_the_store_size():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "overhead.py"), "--model", "vit-b", "--image_size", "64",
         "--steps", "1", "--repeats", "1", "--distinct_batches", "1", "--batch_size", "2",
         "--modes", "peft,infosam,stored,teacher_bf16,teacher"],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    values = dict(re.findall(r"(\w+)=(-?[0-9.]+)", out.stdout))
    assert {"time_ratio", "memory_ratio", "stored_time_ratio", "teacher_bf16_time_ratio", "teacher_overhead",
            "store_bytes_per_image"} <= set(values), out.stdout
    # ViT-B's 256-channel embedding on a 4 x 4 grid (64 px / 16), float32, plus the safetensors header
    assert 256 * 4 * 4 * 4 < float(values["store_bytes_per_image"]) < 256 * 4 * 4 * 4 + 512
