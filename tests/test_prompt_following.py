"""The built-in SAM follows its prompts; the confusion measure; predict.py with several boxes per image."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import torch
from transformers import SamModel

from infosam_hf.builtin import BUILTIN_IMAGE_SIZE, BUILTIN_MODEL_PATH
from infosam_hf.data import SamSegmentationPreprocessor
from infosam_hf.prompt_following import prompt_logits, score_objects
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


def test_two_boxes_on_one_builtin_image_give_the_two_different_objects():
    image, (first, second) = _two_object_image()
    model = SamModel.from_pretrained(BUILTIN_MODEL_PATH).eval()
    features = SamSegmentationPreprocessor(image_size=BUILTIN_IMAGE_SIZE)(image)
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
