"""benchmarks/overhead.py's floor and efficiency columns: each mode measured against its own limit."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
