"""benchmarks/paper_regime.py: the selection criteria that need no training, and what zero-shot segments instead."""

import os

import numpy as np
import pytest
from helpers import ROOT  # tests/ is on sys.path (conftest.py)
from PIL import Image

from infosam_hf.testing import load_script


def paper_regime():
    return load_script(os.path.join(ROOT, "benchmarks", "paper_regime.py"), "paper_regime_benchmark")


class FixedAnswer:
    """A predictor that answers every box with a fixed mask (the Predictor's set_image / predict interface)."""

    def __init__(self, mask):
        self.mask = mask

    def set_image(self, image):
        assert image.mode == "RGB"

    def predict(self, boxes):
        assert boxes.shape == (4,)
        return type("Prediction", (), {"masks": self.mask[None]})


def test_footprint_is_the_answer_area_over_the_box_and_the_share_of_the_truth_it_covers():
    truth = np.zeros((20, 20), dtype=bool)
    truth[5:15, 5:15] = True  # a 10 x 10 box, fully the mask
    row = {"image": Image.new("RGB", (20, 20)), "mask": Image.fromarray(truth.astype(np.uint8) * 255)}
    f = paper_regime()
    assert f.zero_shot_footprint([row], FixedAnswer(truth)) == {"predicted_over_box": 1.0, "truth_covered": 1.0}
    leaf = np.zeros_like(truth)
    leaf[5:15, 5:10] = True  # half the box, half the truth
    assert f.zero_shot_footprint([row], FixedAnswer(leaf)) == pytest.approx(
        {"predicted_over_box": 0.5, "truth_covered": 0.5})
    outside = np.zeros_like(truth)
    outside[:4, :] = True  # 80 pixels outside the box: area counts against the box, covers nothing
    assert f.zero_shot_footprint([row], FixedAnswer(outside)) == pytest.approx(
        {"predicted_over_box": 0.8, "truth_covered": 0.0})


@pytest.mark.slow
def test_the_table_row_of_a_domain_on_a_few_images(capsys):
    results = paper_regime().main(["--domains", "lesions", "--images", "4", "--threads", "1"])
    row = results["lesions"]
    assert row["images"] == 4
    for key in ("zero_shot_box_iou", "ceiling", "mask_over_box", "truth_covered"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["predicted_over_box"] > 0  # may pass 1: an answer can spill out of its box
    assert "| lesions | 4 |" in capsys.readouterr().out
