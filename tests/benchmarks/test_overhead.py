"""benchmarks/overhead.py: its floor and efficiency columns (each mode measured against its own limit), and a run at
ViT-B proportions (random weights, tiny image) with the scale modes, figures unchecked.

Its run at the tiny default settings is in test_benchmark_scripts.py with the other benchmarks' runs.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT  # tests/ is on sys.path (conftest.py)


def load_overhead():
    path = os.path.join(ROOT, "benchmarks", "overhead.py")
    spec = importlib.util.spec_from_file_location("overhead_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_is_one_plus_the_teacher_forward_uncached_and_one_when_read_back():
    overhead = load_overhead()
    steps = {"peft": 2.0, "infosam": 3.1, "cached": 2.1, "teacher": 1.0, "teacher_bf16": 2.9, "adapter": 2.5,
             "adapter_infosam": 3.6}
    results = {mode: [{"step_s": s}, {"step_s": s + 0.5}] for mode, s in steps.items()}  # best of repeats

    def best(mode, key):
        return min(r[key] for r in results[mode])

    assert overhead.floor_and_efficiency("infosam", best, results) == pytest.approx((1.5, 1.1))
    assert overhead.floor_and_efficiency("cached", best, results) == pytest.approx((1.0, 0.1))
    # the Adapter's InfoSAM run is measured against the plain Adapter run, in units of LoRA's step
    assert overhead.floor_and_efficiency("adapter_infosam", best, results) == pytest.approx((1.75, 1.1))
    for mode in ("peft", "adapter", "teacher", "teacher_bf16"):  # no floor of their own
        assert overhead.floor_and_efficiency(mode, best, results) == (None, None)
    del results["teacher"]  # without the teacher's forward alone there is nothing to divide by
    assert overhead.floor_and_efficiency("infosam", best, results) == (None, None)


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
