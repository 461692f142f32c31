"""The benchmark scripts still run, and each ratio they print is the quotient of the figures they print beside it
(tiny settings; the figures themselves are load-dependent and not checked)."""

import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT  # tests/ is on sys.path (conftest.py)


def run(script, *args):
    """Every line the script printed."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], capture_output=True,
                         text=True, check=False, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()


def ratios(line):
    return {key: float(value) for key, value in re.findall(r"(\w+)=([0-9.]+)", line)}


def row(lines, name):
    """The numbers of the table row that starts with `name`."""
    (found,) = [line for line in lines if line.split()[:1] == [name]]
    return [float(v) for v in found.split()[1:]]


@pytest.mark.slow
def test_overhead_benchmark_runs_and_prints_its_ratios():
    # "--repeats 2" (not "--repeats=2") once reached the workers as a stray argument
    lines = run("overhead.py", "--steps", "2", "--repeats", "2", "--distinct_batches", "1", "--batch_size", "2",
                "--modes", "peft,infosam")
    values = ratios(lines[-1])
    assert set(values) == {"time_ratio", "memory_ratio"}
    (peft_step, _, peft_mb, peft_time_x, peft_mem_x) = row(lines, "peft")
    (infosam_step, _, infosam_mb, infosam_time_x, infosam_mem_x) = row(lines, "infosam")
    assert peft_time_x == 1.0 and peft_mem_x == 1.0  # the baseline column is relative to itself
    assert values["time_ratio"] == pytest.approx(infosam_step / peft_step, rel=2e-3, abs=2e-3)
    assert values["memory_ratio"] == pytest.approx(infosam_mb / peft_mb, rel=2e-3, abs=2e-3)
    assert (infosam_time_x, infosam_mem_x) == (values["time_ratio"], values["memory_ratio"])


@pytest.mark.slow
def test_teacher_forward_benchmark_runs_and_prints_its_ratios():
    lines = run("teacher_forward.py", "--batch_size", "2", "--repeats", "1", "--rounds", "1")
    values = ratios(lines[-1])
    assert set(values) == {"full_ratio", "cached_ratio"}
    for key, what in (("full_ratio", "encoder + decoder"), ("cached_ratio", "decoder only (cached embeddings)")):
        (line,) = [line for line in lines if line.startswith(what)]
        whole, stopped = (float(v) for v in re.findall(r"(?:whole|stopped) ([0-9.]+)s", line))
        assert values[key] == pytest.approx(stopped / whole, rel=0.02, abs=2e-3), (key, line)


@pytest.mark.slow
def test_synthetic_speed_benchmark_runs_and_prints_its_ratio():
    lines = run("synthetic_speed.py", "--num_samples", "8", "--rounds", "1")
    generated, preprocessed = (float(v) for v in re.findall(r"([0-9]+) samples/s", lines[-2]))
    assert ratios(lines[-1])["time_ratio"] == pytest.approx(preprocessed / generated, rel=0.02)


@pytest.mark.slow
def test_small_data_benchmark_runs_and_prints_its_ratio():
    lines = run("small_data.py", "--steps", "4", "--warmup", "1", "--repeats", "1", "--threads", "1")
    values = ratios(lines[-1])
    assert set(values) == {"ratio"}
    # the ratio is the quotient of the table's two figures, not merely positive
    (row,) = [line for line in lines if line.startswith("| ") and line.count("|") == 6 and "s/step" not in line
              and "---" not in line]
    small, full, printed = (float(v) for v in row.split("|")[2:5])
    assert printed == pytest.approx(values["ratio"], abs=1e-3)
    assert values["ratio"] == pytest.approx(small / full, rel=0.02, abs=2e-3)


def test_quality_methods_pick_by_word_or_by_whole_name():
    from infosam_hf.testing import load_script

    quality = load_script(os.path.join(ROOT, "benchmarks", "quality.py"), "quality_bench")
    variants = quality.MAIN_VARIANTS
    assert list(quality.select_variants(variants, ["LoRA"])) == ["LoRA (no distillation)"]
    assert list(quality.select_variants(variants, ["Adapter"])) == [
        "Adapter (no distillation)", "Adapter + InfoSAM (λ1=1, λ2=0.5)"]
    # a whole name: that variant only, not the Adapter one that contains it
    assert list(quality.select_variants(variants, ["LoRA", "InfoSAM (λ1=1, λ2=0.5)"])) == [
        "LoRA (no distillation)", "InfoSAM (λ1=1, λ2=0.5)"]


@pytest.mark.slow
def test_retention_cost_benchmark_times_both_runs_and_prints_their_ratio():
    lines = run("retention_cost.py", "--repeats", "1", "--no_warmup", "--", "--max_steps", "2",
                "--max_eval_samples", "4", "--retention_max_samples", "4", "--eval_overlays", "0")
    walls = {line.split()[2]: float(line.split()[3]) for line in lines if line.startswith("repeat 0")}
    assert set(walls) == {"retention", "none"}
    # the printed walls are rounded to 0.01 s and the ratio to 0.001: the quotient of the printed walls may differ
    # from the printed ratio by what that rounding allows, however short (and so coarse) the runs are
    quotient = walls["retention"] / walls["none"]
    rounding = quotient * (0.005 / walls["retention"] + 0.005 / walls["none"]) + 0.0005
    assert abs(ratios(lines[-1])["wall_ratio"] - quotient) <= rounding * 1.01
    (metrics_line,) = [line for line in lines if line.startswith("retention metrics of the last run:")]
    assert "retention_iou" in metrics_line  # the run with a retention set scored it; the other one did not run it
