"""The benchmark scripts still run and print their ratio lines (tiny settings; the figures are not checked)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], capture_output=True,
                         text=True, check=False, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def ratios(line):
    return {key: float(value) for key, value in re.findall(r"(\w+)=([0-9.]+)", line)}


@pytest.mark.slow
def test_overhead_benchmark_runs_and_prints_its_ratios():
    # "--repeats 2" (not "--repeats=2") once reached the workers as a stray argument
    line = run("overhead.py", "--steps", "2", "--repeats", "2", "--distinct_batches", "1", "--batch_size", "2",
               "--modes", "peft,infosam")
    values = ratios(line)
    assert set(values) == {"time_ratio", "memory_ratio"} and all(v > 0 for v in values.values())


@pytest.mark.slow
def test_teacher_forward_benchmark_runs_and_prints_its_ratios():
    values = ratios(run("teacher_forward.py", "--batch_size", "2", "--repeats", "1", "--rounds", "1"))
    assert set(values) == {"full_ratio", "cached_ratio"} and all(v > 0 for v in values.values())


@pytest.mark.slow
def test_small_data_benchmark_runs_and_prints_its_ratio():
    values = ratios(run("small_data.py", "--steps", "4", "--warmup", "1", "--repeats", "1", "--threads", "1"))
    assert set(values) == {"ratio"} and values["ratio"] > 0
