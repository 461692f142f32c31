"""Features used together: a pairwise covering set of family x PEFT method x teacher mode x data x processes x
after-training path (issue 27). Every single feature has its own tests; these cells catch the seams.

Each cell (tests/fixtures/combination_cell.py) evaluates the zero-shot base, trains two steps, evaluates, and then
reloads the adapter and predicts, exports the merged model and predicts, or resumes from a checkpoint. It must log
finite loss parts, change the weights, predict the same after reload (exactly) or export (to 1e-4), resume to the
straight run (1e-6), and under 2 processes train a DistributedDataParallel model whose ranks end identical.
The one-process cells run in-process; the two-process cells in one `accelerate launch` (slow).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port  # tests/ is on sys.path (conftest.py)

from infosam_hf.testing import load_script

REPO = Path(__file__).resolve().parents[1]
CELL_SCRIPT = REPO / "tests" / "fixtures" / "combination_cell.py"
cells_module = load_script(CELL_SCRIPT, "combination_cell")

FACTORS = {
    "family": ["SamModel", "SamHQModel", "Sam2Model", "Sam3TrackerModel", "EdgeTamModel"],
    "teacher": ["shared", "separate", "cache", "store", "bf16"],
    "peft": ["lora", "adapter"],
    "data": ["single", "multi"],
    "processes": [1, 2],
    "after": ["reload", "export", "resume"],
}


def allowed(cell: dict) -> bool:
    """Combinations the package refuses by design (and tests elsewhere): EdgeTAM's RepViT has no Adapter
    targets, and the bottleneck Adapter is nonlinear, so it cannot be merged for export."""
    if cell.get("family") == "EdgeTamModel" and cell.get("peft") == "adapter":
        return False
    return not (cell.get("peft") == "adapter" and cell.get("after") == "export")


def pairwise_cells(factors: dict[str, list], allowed) -> list[dict]:
    """A deterministic greedy covering set: every allowed pair of values of two factors is in some cell."""
    names = list(factors)
    uncovered = {
        ((a, va), (b, vb))
        for a, b in itertools.combinations(names, 2)
        for va in factors[a]
        for vb in factors[b]
        if allowed({a: va, b: vb})
    }
    cells = []
    while uncovered:
        # start from an uncovered pair, then fill each other factor with the value covering most new pairs
        (a, va), (b, vb) = min(uncovered, key=lambda p: (names.index(p[0][0]), names.index(p[1][0]), str(p)))
        cell = {a: va, b: vb}
        for name in names:
            if name in cell:
                continue
            def gain(value, cell=cell, name=name, uncovered=uncovered):
                trial = {**cell, name: value}
                if not allowed(trial):
                    return -1
                return sum(((n, trial[n]), (name, value)) in uncovered or ((name, value), (n, trial[n])) in uncovered
                           for n in cell)
            cell[name] = max(factors[name], key=lambda v, name=name: (gain(v), -factors[name].index(v)))
        assert allowed(cell), cell
        cells.append(cell)
        uncovered -= {((x, cell[x]), (y, cell[y])) for x, y in itertools.combinations(names, 2)}
    return cells


CELLS = pairwise_cells(FACTORS, allowed)
ONE_PROCESS = [c for c in CELLS if c["processes"] == 1]
TWO_PROCESSES = [c for c in CELLS if c["processes"] == 2]


def test_the_cells_cover_every_allowed_pair():
    names = list(FACTORS)
    for a, b in itertools.combinations(names, 2):
        for va, vb in itertools.product(FACTORS[a], FACTORS[b]):
            if allowed({a: va, b: vb}):
                assert any(c[a] == va and c[b] == vb for c in CELLS), (a, va, b, vb)
    assert all(allowed(c) for c in CELLS)
    assert len(CELLS) == len({cells_module.cell_name(c) for c in CELLS})  # no cell twice


@pytest.mark.slow
@pytest.mark.parametrize("cell", ONE_PROCESS, ids=cells_module.cell_name)
def test_one_process_cell(cell, tmp_path):
    result = cells_module.run_cell(cell, tmp_path)
    assert not cells_module.check_result(result), cells_module.check_result(result)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("combinations-ddp")
    (root / "cells.json").write_text(json.dumps(TWO_PROCESSES))
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_HOME=str(root / "hf_home"),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_CONFIG_FILE"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes",
           "2", "--main_process_port", str(free_port()), str(CELL_SCRIPT), str(root / "cells.json"), str(root)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return [json.loads((root / f"results_rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(TWO_PROCESSES)),
                         ids=[cells_module.cell_name(c) for c in TWO_PROCESSES])
def test_two_process_cell(two_process_results, index):
    import torch

    ranks = [results[index] for results in two_process_results]
    for result in ranks:
        assert "error" not in result, result
        assert not cells_module.check_result(result), cells_module.check_result(result)
    first, second = (torch.load(r["weights_file"]) for r in ranks)
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
