"""The built-in SAM follows its prompts; the confusion measure; predict.py with several boxes per image."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import SamModel

from infosam_hf.builtin import BUILTIN_IMAGE_SIZE, BUILTIN_MODEL_PATH, BUILTIN_SAM2_PATH
from infosam_hf.data import SamSegmentationPreprocessor
from infosam_hf.models import load_sam_model
from infosam_hf.prompt_following import (
    CenterPointSampler,
    mask_resolution_ceiling,
    prompt_logits,
    score_objects,
    summarise_by_size,
)
from infosam_hf.synthetic import make_synthetic_instances
from infosam_hf.testing import load_script


def test_confusion_counts_a_mask_that_covers_another_object():
    gt = torch.zeros(1, 2, 8, 8)
    gt[0, 0, :4] = 1  # object 0: top half
    gt[0, 1, 4:] = 1  # object 1: bottom half
    right = gt.clone().bool()
    swapped = gt.flip(1).bool()  # each prompt answered with the other object
    valid = torch.ones(1, 2, dtype=torch.bool)
    sizes = torch.tensor([[8, 8]])
    assert [r["confused"] for r in score_objects(right, gt, valid, sizes)] == [False, False]
    assert [r["iou"] for r in score_objects(right, gt, valid, sizes)] == [1.0, 1.0]
    assert [r["confused"] for r in score_objects(swapped, gt, valid, sizes)] == [True, True]
    # a padded prompt is not scored
    assert len(score_objects(right, gt, torch.tensor([[True, False]]), sizes)) == 1


def test_errors_are_split_by_object_size():
    gt = torch.zeros(1, 2, 10, 10)
    gt[0, 0, :5] = 1  # 50% of the image
    gt[0, 1, 9, 9] = 1  # 1%
    pred = gt.clone().bool()
    pred[0, 1] = False  # the small object missed, the big one right
    records = score_objects(pred, gt, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[10, 10]]))
    assert [r["area"] for r in records] == [0.5, 0.01]
    summary = summarise_by_size(records)
    assert summary["over 5%"] == {"objects": 1, "iou_per_object": 1.0, "confusion_rate": 0.0}
    assert summary["under 2%"]["iou_per_object"] == 0.0 and "2-5%" not in summary


def test_mask_resolution_ceiling_is_what_a_perfect_low_resolution_mask_reaches():
    gt = np.zeros((2, 16, 16), dtype=np.float32)
    gt[0, :8, :8] = 1  # aligned with the 4x4 grid cells
    gt[1, 5, 5] = 1  # one pixel: a 4x4 grid cannot hold it
    row = {"gt_masks": gt, "reshaped_input_sizes": [16, 16]}
    assert mask_resolution_ceiling([row], 16)["iou_per_object"] == 1.0
    coarse = mask_resolution_ceiling([row], 4)
    assert coarse["objects"] == 2 and coarse["by_size"]["under 2%"] == 0.0  # the pixel is lost
    assert 0.95 < coarse["by_size"]["over 5%"] < 1.0  # the block keeps all but its bilinear edge


def test_center_point_is_the_deepest_pixel_inside_the_object():
    """The SAM paper's 1-point protocol: not the centroid (outside a ring), and the image border is a boundary."""
    yy, xx = np.mgrid[:32, :32]
    ring = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 12**2) & ((yy - 16) ** 2 + (xx - 16) ** 2 >= 6**2)
    coords, labels = CenterPointSampler().points(ring)
    (x, y), = coords
    assert ring[int(y), int(x)] and labels.tolist() == [1]
    radius = np.hypot(x - 16, y - 16)
    assert 8 <= radius <= 10  # midway between the inner (6) and outer (12) edge, not at the centroid (16, 16)
    left_half = np.zeros((20, 20), dtype=bool)
    left_half[:, :10] = True  # touches the top, left and bottom borders
    (x, y), = CenterPointSampler().points(left_half)[0]
    assert x in (4.0, 5.0) and 4 <= y <= 15  # mid-way across the half, not against the image border
    # the point respects the valid (unpadded) region of a padded mask
    padded = np.zeros((20, 20), dtype=bool)
    padded[:10, :] = True  # the object fills the valid 10 x 20 region; rows 10+ are padding
    (x, y), = CenterPointSampler().points(padded, valid_size=(10, 20))[0]
    assert y in (4.0, 5.0) and 4 <= x <= 15


def test_prompt_following_benchmark_reports_sizes_and_ceiling(capsys):
    bench = load_script(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "prompt_following.py"), "pf_bench")
    results = bench.main(["--images", "3", "--domains", "general"])
    assert results["general/ceiling"]["objects"] == results["general/box"]["objects"] > 0
    assert results["general/ceiling"]["iou_per_object"] > 0.9  # 64x64 masks of the built-in SAM: little lost
    assert results["general/center_point"]["objects"] == results["general/point"]["objects"]
    out = capsys.readouterr().out
    assert "mask-resolution ceiling" in out and "| general | center point |" in out


def _two_object_image():
    """A built-in "general" image with at least two objects of >= 4% of the image each."""
    for seed in range(100):
        image, ids = make_synthetic_instances("general", BUILTIN_IMAGE_SIZE, np.random.default_rng(seed))
        ids = np.asarray(ids)
        big = [k for k in range(1, ids.max() + 1) if (ids == k).mean() >= 0.04]
        if len(big) >= 2:
            return image, [ids == k for k in big[:2]]
    raise AssertionError("no two-object image found")


def _box(mask):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def _iou(a, b):
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("path", [BUILTIN_MODEL_PATH, BUILTIN_SAM2_PATH], ids=["sam", "sam2"])
def test_two_boxes_on_one_builtin_image_give_the_two_different_objects(path):
    image, (first, second) = _two_object_image()
    model = load_sam_model(path).eval()
    features = SamSegmentationPreprocessor.for_model(model)(image)
    boxes = torch.tensor([[_box(first), _box(second)]])
    logits = prompt_logits(model, torch.from_numpy(features["pixel_values"])[None], input_boxes=boxes)
    full = torch.nn.functional.interpolate(logits, size=(BUILTIN_IMAGE_SIZE,) * 2, mode="bilinear")[0] > 0
    masks = [m.numpy() for m in full]
    assert _iou(masks[0], first) > 0.7 and _iou(masks[1], second) > 0.7
    assert _iou(masks[0], first) > _iou(masks[0], second) and _iou(masks[1], second) > _iou(masks[1], first)
    assert _iou(masks[0], masks[1]) < 0.3  # not one salient mask for every prompt


def _pretrain_script():
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "pretrain_builtin_sam.py")
    return load_script(path, "pretrain_builtin_sam_script")


def test_pretraining_draws_the_prompt_position_encoding_as_sam_does():
    """transformers draws SAM's Fourier matrix with std hidden_size // 2 (48 here): prompts become unreadable."""
    sam = _pretrain_script().fresh_builtin_sam()
    matrix = sam.shared_image_embedding.positional_embedding
    assert sam.prompt_encoder.shared_embedding.positional_embedding is matrix  # prompts and grid share it
    assert 0.8 < float(matrix.std()) < 1.2 and not matrix.requires_grad
    # the committed built-in model was pre-trained from such an encoding (the prompt-blind v2 had std ~51)
    committed = SamModel.from_pretrained(BUILTIN_MODEL_PATH).shared_image_embedding.positional_embedding
    assert 0.8 < float(committed.detach().std()) < 1.2


def test_pretraining_on_from_saved_weights_keeps_the_prompt_position_encoding_fixed():
    """`--init_from`: transformers loads the matrix as a trainable parameter; going on must not train it."""
    sam = _pretrain_script().sam_to_pretrain(BUILTIN_MODEL_PATH)
    assert not sam.shared_image_embedding.positional_embedding.requires_grad
    assert sum(p.requires_grad for p in sam.parameters()) == len(list(sam.parameters())) - 1  # all else trains


def test_predict_writes_one_mask_per_box_and_one_overlay(tmp_path, capsys):
    predict = load_script(os.path.join(os.path.dirname(__file__), "..", "examples", "predict.py"), "predict_script")
    image, (first, second) = _two_object_image()
    path = tmp_path / "two.png"
    image.save(path)
    out = tmp_path / "preds"
    results = predict.main(
        ["--model_name_or_path", BUILTIN_MODEL_PATH, "--images", str(path), "--output_dir", str(out),
         "--box", *map(str, _box(first) + _box(second))]
    )
    assert sorted(os.listdir(out)) == ["two_mask_1.png", "two_mask_2.png", "two_overlay.png"]
    masks = [np.asarray(PIL.Image.open(out / f"two_mask_{k}.png")) > 0 for k in (1, 2)]
    assert results[0]["mask_pixels"] == [int(m.sum()) for m in masks]
    # the masks are those of one encoder pass with both boxes: same as predicting each box alone
    alone = predict.main(
        ["--model_name_or_path", BUILTIN_MODEL_PATH, "--images", str(path), "--output_dir", str(tmp_path / "one"),
         "--box", *map(str, _box(second))]
    )
    assert np.array_equal(np.asarray(PIL.Image.open(alone[0]["mask"])) > 0, masks[1])
