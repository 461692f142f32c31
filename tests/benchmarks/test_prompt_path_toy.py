"""benchmarks/prompt_path_toy.py: the "mask is the box" diagnostic for pre-training from scratch."""

import os

import pytest
import torch
from helpers import ROOT  # tests/ is on sys.path (conftest.py)

from infosam_hf.testing import load_script

TOY = load_script(os.path.join(ROOT, "benchmarks", "prompt_path_toy.py"), "prompt_path_toy")


def test_targets_are_the_filled_boxes():
    _, boxes, target = TOY.box_batch(torch.Generator().manual_seed(0), batch_size=2, boxes_per_image=3)
    for b in range(2):
        for k in range(3):
            x0, y0, x1, y1 = boxes[b, k].tolist()
            ys, xs = torch.nonzero(target[b, k], as_tuple=True)
            assert xs.min() >= x0 - 0.5 and xs.max() <= x1 - 0.5 and ys.min() >= y0 - 0.5 and ys.max() <= y1 - 0.5
            assert abs(target[b, k].sum().item() - (x1 - x0) * (y1 - y0)) <= 2 * ((x1 - x0) + (y1 - y0)) + 4
    perfect = target * 20 - 10  # logits that are right everywhere
    assert TOY.mean_iou(perfect, target) == 1.0 and TOY.mean_iou(-perfect, target) == 0.0
    assert TOY.bce_dice(perfect, target) < 0.01 < TOY.bce_dice(-perfect, target)


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_trains_each_built_in_architecture(family):
    history = TOY.main(["--family", family, "--steps", "2", "--batch_size", "2", "--log_every", "1"])
    assert [h["step"] for h in history] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert history[0]["loss"] != history[2]["loss"]  # the optimiser moved the model
