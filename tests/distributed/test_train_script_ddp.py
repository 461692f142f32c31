"""`accelerate launch examples/train.py` as a user launches it: 2 gloo processes against 1 process, same global batch.

The script runs whole (zero-shot evaluation before training included) through
`tests/fixtures/train_script_recorder.py`, which only records, per rank, the model class the
Trainer trained, the summary train.py returned, the log history and the trainable weights.
Prompts are fixed (box, no jitter) so that both runs see the same prompts for the same images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port  # tests/ is on sys.path (conftest.py)
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
RECORDER = REPO / "tests" / "fixtures" / "train_script_recorder.py"
CPU_CONFIG = REPO / "examples" / "accelerate_configs" / "cpu.yaml"
WORLD_SIZE, PER_DEVICE_BATCH, STEPS = 2, 2, 2
FLAGS = ["--max_steps", str(STEPS), "--box_prompt_probability", "1", "--box_noise", "0", "--logging_steps", "1",
         "--eval_overlays", "0", "--max_eval_samples", "4", "--disable_tqdm", "true"]
# ||w_ddp - w_single|| / ||w_single - w_initial|| (float32 reductions in another order on 2 processes)
UPDATE_RTOL = 1e-3
LOSS_RTOL = 1e-4

pytestmark = pytest.mark.slow


def run_train_script(root: Path, name: str, processes: int, extra: list[str] = ()) -> dict:
    out, res = root / name / "out", root / name / "res"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf_home"),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    for key in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_CONFIG_FILE"):
        env.pop(key, None)  # the config file alone must give a data-parallel run, as for a user
    script = [str(RECORDER), str(res), "--output_dir", str(out), *FLAGS, *extra]
    if processes == 1:
        cmd = [sys.executable, *script, "--per_device_train_batch_size", str(PER_DEVICE_BATCH * WORLD_SIZE)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(CPU_CONFIG),
               "--main_process_port", str(free_port()), *script, "--per_device_train_batch_size", str(PER_DEVICE_BATCH)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name}: {proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    ranks = [json.loads((res / f"rank{r}.json").read_text()) for r in range(processes)]
    weights = [load_file(res / f"weights_rank{r}.safetensors") for r in range(processes)]
    return {"ranks": ranks, "weights": weights, "initial": load_file(res / "initial_rank0.safetensors"),
            "stdout": proc.stdout, "card": (out / "README.md").read_text()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_script_ddp")
    return {"ddp": run_train_script(root, "ddp", WORLD_SIZE), "single": run_train_script(root, "single", 1)}


def update_mismatch(weights: dict, reference: dict, initial: dict) -> float:
    num = sum(((weights[k].double() - reference[k].double()) ** 2).sum() for k in reference)
    den = sum(((reference[k].double() - initial[k].double()) ** 2).sum() for k in reference)
    return float((num / den).sqrt())


def test_the_script_trains_one_ddp_wrapped_model_on_every_rank(runs):
    ddp = runs["ddp"]
    assert [r["world_size"] for r in ddp["ranks"]] == [WORLD_SIZE] * WORLD_SIZE
    assert [r["trained_model_class"] for r in ddp["ranks"]] == ["DistributedDataParallel"] * WORLD_SIZE
    first, second = ddp["weights"]
    assert first.keys() == second.keys() and len(first) > 0
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differing, f"{len(differing)} of {len(first)} trainable tensors differ between the ranks"
    assert any(not torch.equal(first[k], ddp["initial"][k]) for k in first), "training changed nothing"


def test_two_processes_train_what_one_process_trains_on_the_same_global_batch(runs):
    ddp, single = runs["ddp"], runs["single"]
    mismatch = update_mismatch(ddp["weights"][0], single["weights"][0], single["initial"])
    assert mismatch < UPDATE_RTOL, mismatch
    for key, value in single["initial"].items():  # the same seed builds the same adapter in both runs
        assert torch.equal(ddp["initial"][key], value), key


def test_logged_loss_parts_are_the_global_batch_values(runs):
    """Each logged part is the mean over the ranks (as the Trainer logs `loss`), so it equals the one-process log."""
    def train_logs(run):
        return [h for h in run["ranks"][0]["log_history"] if "loss" in h]

    ddp_logs, single_logs = train_logs(runs["ddp"]), train_logs(runs["single"])
    assert [h["step"] for h in ddp_logs] == [h["step"] for h in single_logs] == list(range(1, STEPS + 1))
    for ours, reference in zip(ddp_logs, single_logs):
        for key in ("loss", "loss_seg", "loss_r", "loss_d"):
            assert abs(ours[key] - reference[key]) <= LOSS_RTOL * max(abs(reference[key]), 1e-3), (key, ours, reference)
        assert abs(ours["loss_seg"] + ours["loss_r"] + 0.5 * ours["loss_d"] - ours["loss"]) < 1e-4, ours


def test_the_summary_and_the_card_say_how_many_processes_trained_and_that_they_were_in_sync(runs):
    ddp, single = runs["ddp"], runs["single"]
    line = ("2 processes trained one model (DistributedDataParallel: gradients synchronised every step; trainable "
            "weights identical on every rank after training, checked)")
    assert ddp["ranks"][0]["summary"]["data_parallel"] == line
    assert ddp["stdout"].count(line[0].upper() + line[1:]) == 1  # printed once, by rank 0
    assert f"| data parallel | {line} |" in ddp["card"]
    assert single["ranks"][0]["summary"]["data_parallel"] is None
    assert "data parallel" not in single["card"]


def test_several_objects_per_image_train_and_evaluate_under_two_processes(tmp_path):
    """Ranks hold different numbers of objects: evaluation gathers them per image (was a gloo collective mismatch)."""
    from infosam_hf.builtin import builtin_dataset_path

    data = builtin_dataset_path("specialised", max_objects=6)
    run = run_train_script(tmp_path, "instances", WORLD_SIZE,
                           ["--dataset_name", data, "--instance_format", "ids", "--max_objects_per_image", "3"])
    summary = run["ranks"][0]["summary"]
    assert summary["metrics_per"] == "object" and 0.0 <= summary["iou"] <= 1.0
    assert [r["trained_model_class"] for r in run["ranks"]] == ["DistributedDataParallel"] * WORLD_SIZE
    first, second = run["weights"]
    assert all(torch.equal(first[k], second[k]) for k in first)
