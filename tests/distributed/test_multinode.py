"""Two "machines" x one process each on 127.0.0.1: the multi-node launch path, checked like the 2-process run.

`accelerate launch --num_machines 2 --machine_rank {0,1} --main_process_ip 127.0.0.1` starts one
torchrun node per machine rank; the two nodes meet at the static rendezvous and form one gloo
group of world size 2. What must hold is what tests/distributed/test_trainer_ddp.py checks for one machine:
both ranks end with identical weights, the gathered InfoSAM terms and the trained weights equal a
single process on the global batch, and only the global rank 0 writes the checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from helpers import (  # tests/ is on sys.path (conftest.py)
    CONFIGS,
    PER_DEVICE_BATCH,
    REPO,
    STEPS,
    TIMEOUT_S,
    UPDATE_RTOL,
    WORKER,
    WORLD_SIZE,
    Run,
    free_port,
    launch,
    rel_close,
    subprocess_env,
    update_mismatch,
)


def launch_two_machines(root: Path) -> Run:
    out, res = root / "out", root / "res"
    root.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    worker_args = [str(WORKER), "--output-dir", str(out), "--result-dir", str(res), "--gather",
                   "--per-device-batch-size", str(PER_DEVICE_BATCH), "--max-steps", str(STEPS)]
    env = subprocess_env(root / "hf_home", use_cpu_env=True)
    procs = []
    for machine_rank in range(WORLD_SIZE):
        cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
               "--num_machines", str(WORLD_SIZE), "--num_processes", str(WORLD_SIZE),
               "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1",
               "--main_process_port", port, "--rdzv_backend", "static", *worker_args]
        log = open(root / f"machine{machine_rank}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    failures = []
    for machine_rank, (proc, log) in enumerate(procs):
        try:
            code = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other, _ in procs:
                other.kill()
            code = "timeout"
        log.close()
        if code != 0:
            failures.append(f"machine {machine_rank} exited with {code}:\n"
                            f"{(root / f'machine{machine_rank}.log').read_text()[-4000:]}")
    if failures:
        pytest.fail("\n".join(failures))
    return Run(out, res, WORLD_SIZE)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    return {
        "single": launch(root, "single", distributed=False),
        "two_machines": launch_two_machines(root / "two_machines"),
    }


def test_multi_node_config_parses():
    config = load_config_from_file(str(CONFIGS / "multi_node.yaml"))
    assert (config.num_machines, config.machine_rank, str(config.distributed_type.value)) == (2, 0, "MULTI_GPU")
    assert config.num_processes % config.num_machines == 0, "num_processes is the total over all machines"
    assert config.main_process_port != 0, "the other machines must know the port"


@pytest.mark.slow
def test_two_machines_form_one_group_and_train_like_one_process(runs):
    run, single = runs["two_machines"], runs["single"]
    assert [(r["rank"], r["world_size"], r["backend"]) for r in run.ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert len({r["pid"] for r in run.ranks}) == WORLD_SIZE
    # disjoint samples per rank, together the single-process batch
    for step in range(STEPS):
        local = [run.records(rank)[step]["index"] for rank in range(WORLD_SIZE)]
        assert not set(local[0]) & set(local[1]), local
        assert set(local[0]) | set(local[1]) == set(single.records(0)[step]["index"])
        ref = single.records(0)[step]
        for part in ("loss_r", "loss_d"):  # gathered over both machines: the global batch's value
            for record in (run.records(0)[step], run.records(1)[step]):
                assert rel_close(record[part], ref[part]), (step, part, record[part], ref[part])
    # identical ranks, equal to one process on the global batch
    for key in run.weights[0]:
        assert torch.equal(run.weights[0][key], run.weights[1][key]), key
    assert update_mismatch(run.weights[0], single.weights[0], single.initial[0]) < UPDATE_RTOL


@pytest.mark.slow
def test_only_the_global_rank_zero_writes_the_checkpoint(runs):
    run = runs["two_machines"]
    assert sorted(os.listdir(run.output_dir)) == [f"checkpoint-{STEPS}"]
    written_by_rank1 = set(run.ranks[1]["writes"])
    assert written_by_rank1 == {f"checkpoint-{STEPS}/rng_state_1.safetensors"}, written_by_rank1
    assert f"checkpoint-{STEPS}/adapter_model.safetensors" in run.ranks[0]["writes"]
