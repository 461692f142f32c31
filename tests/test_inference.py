"""infosam_hf.Predictor: the same masks as a full forward + post-processing, with one image encoding per image."""

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import fine_tuned
from transformers import SamModel, SamProcessor

import infosam_hf
from infosam_hf import Predictor
from infosam_hf.builtin import BUILTIN_MODEL_PATH
from infosam_hf.data import SamSegmentationPreprocessor
from infosam_hf.inference import postprocess_logits, to_model_frame, unwrap_sam_model
from infosam_hf.testing import TINY_FAMILY_CONFIGS, tiny_family_model


def image(width: int = 80, height: int = 48, seed: int = 0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def full_forward(model, preprocessor, img, boxes=None, points=None, labels=None):
    """Today's path, written out: preprocess, map the prompts, one whole forward from pixels, post-process."""
    features = preprocessor(img)
    original = tuple(int(v) for v in features["original_sizes"])
    reshaped = tuple(int(v) for v in features["reshaped_input_sizes"])
    prompts = {}
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        prompts["input_boxes"] = to_model_frame(boxes, original, reshaped).reshape(1, len(boxes), 4)
    if points is not None:
        points = np.asarray(points, dtype=np.float32).reshape(-1, np.shape(points)[-2], 2)
        prompts["input_points"] = to_model_frame(points, original, reshaped).reshape(1, *points.shape)
        prompts["input_labels"] = torch.tensor(np.asarray(labels), dtype=torch.int64).reshape(1, *points.shape[:2])
    with torch.no_grad():
        out = unwrap_sam_model(model)(
            pixel_values=torch.from_numpy(features["pixel_values"])[None], multimask_output=False, **prompts
        )
    low = out.pred_masks[0, :, 0].float()
    full = postprocess_logits(low, original, reshaped, pad_size=preprocessor.image_size)
    return full > 0, out.iou_scores[0, :, 0].float().numpy(), low.numpy()


def assert_same(result, expected):
    masks, scores, low = expected
    assert result.masks.dtype == np.bool_
    np.testing.assert_array_equal(result.masks, masks)
    np.testing.assert_array_equal(result.scores, scores)
    np.testing.assert_array_equal(result.low_res_logits, low)


@pytest.fixture(scope="module")
def builtin():
    return SamModel.from_pretrained(BUILTIN_MODEL_PATH).eval(), SamProcessor.from_pretrained(BUILTIN_MODEL_PATH)


@pytest.mark.parametrize(
    "prompt",
    [
        {"boxes": [6, 4, 60, 40]},
        {"points": [[30, 20]], "labels": [1]},
        {"points": [[30, 20], [70, 5]], "labels": [1, 0]},
        {"boxes": [[6, 4, 60, 40], [0, 0, 20, 47], [50, 10, 79, 30]]},
        {"boxes": [6, 4, 60, 40], "points": [[30, 20]], "labels": [1]},
    ],
    ids=["box", "point", "points", "three boxes", "box and point"],
)
def test_masks_equal_the_full_forward_at_the_original_size(builtin, prompt):
    model, processor = builtin
    img = image(80, 48)  # not square: 128 x 77 inside the padded 128 x 128 input
    predictor = Predictor(model, processor)
    predictor.set_image(img)
    result = predictor.predict(**prompt)
    expected = full_forward(model, SamSegmentationPreprocessor.from_processor(processor), img, **prompt)
    objects = len(np.asarray(prompt["boxes"]).reshape(-1, 4)) if "boxes" in prompt else 1
    assert result.masks.shape == (objects, 48, 80) and result.scores.shape == (objects,)
    assert expected[0].any() and not expected[0].all()
    assert_same(result, expected)


@pytest.mark.parametrize("model_class", sorted(TINY_FAMILY_CONFIGS))
def test_every_family_gives_the_full_forwards_masks(model_class):
    model = tiny_family_model(model_class)
    img = image(70, 40, seed=1)
    predictor = Predictor(model)
    predictor.set_image(img)
    preprocessor = SamSegmentationPreprocessor.for_model(model)
    boxes = [[5, 5, 50, 35], [30, 0, 69, 39]]
    assert_same(predictor.predict(boxes=boxes), full_forward(model, preprocessor, img, boxes=boxes))
    points, labels = [[20, 20], [60, 30]], [1, 0]
    expected = full_forward(model, preprocessor, img, points=points, labels=labels)
    assert_same(predictor.predict(points=points, labels=labels), expected)
    several = predictor.predict(points=[[10, 10]], multimask_output=True)
    assert several.masks.shape == (1, 3, 40, 70) and several.scores.shape == (1, 3)


def test_set_image_encodes_once_for_several_predictions(builtin):
    model, processor = builtin
    calls = []
    handle = model.vision_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        predictor = Predictor(model, processor)
        predictor.set_image(image())
        first = predictor.predict(boxes=[6, 4, 60, 40])
        second = predictor.predict(points=[[30, 20]])
        assert len(calls) == 1
        assert not np.array_equal(first.masks, second.masks)
        predictor.set_image(image(seed=3))
        assert len(calls) == 2
    finally:
        handle.remove()


def test_peft_student_infosam_pair_and_disabled_adapter(builtin):
    _, processor = builtin
    pair = fine_tuned(0.05)
    img, box = image(), [6, 4, 60, 40]
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    by_pair = Predictor(pair, processor)
    by_pair.set_image(img)
    by_student = Predictor(pair.student, processor)
    by_student.set_image(img)
    expected = full_forward(pair.student, preprocessor, img, boxes=box)
    assert_same(by_pair.predict(boxes=box), expected)
    assert_same(by_student.predict(boxes=box), expected)
    with pair.student.disable_adapter():  # the base: set_image encodes, predict decodes, both without the adapter
        by_student.set_image(img)
        base = full_forward(pair.student, preprocessor, img, boxes=box)
        assert_same(by_student.predict(boxes=box), base)
    assert not np.array_equal(base[2], expected[2])


def test_merged_adapter_gives_the_unmerged_masks(builtin, tmp_path):
    _, processor = builtin
    fine_tuned(0.05).save_pretrained(tmp_path / "adapter", processor=processor)
    img, boxes = image(), [[6, 4, 60, 40], [0, 0, 40, 47]]
    results = []
    for merge in (False, True):
        predictor = Predictor.from_pretrained(tmp_path / "adapter", merge=merge)
        assert isinstance(predictor.model, SamModel) == merge
        predictor.set_image(img)
        results.append(predictor.predict(boxes=boxes))
    unmerged, merged = results
    np.testing.assert_array_equal(merged.masks, unmerged.masks)
    np.testing.assert_allclose(merged.low_res_logits, unmerged.low_res_logits, rtol=1e-4, atol=1e-4)
    model, loaded_processor = infosam_hf.load(tmp_path / "adapter")
    predictor = Predictor(model, loaded_processor)
    predictor.set_image(img)
    assert_same(predictor.predict(boxes=boxes), full_forward(model, predictor.preprocessor, img, boxes=boxes))


def test_from_pretrained_takes_a_plain_sam_folder(builtin):
    model, processor = builtin
    predictor = Predictor.from_pretrained(BUILTIN_MODEL_PATH)
    predictor.set_image(image())
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    expected = full_forward(model, preprocessor, image(), boxes=[6, 4, 60, 40])
    assert_same(predictor.predict(boxes=[6, 4, 60, 40]), expected)


def test_bad_calls_are_clear_errors(builtin):
    predictor = Predictor(*builtin)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(boxes=[0, 0, 10, 10])
    predictor.set_image(image())
    with pytest.raises(ValueError, match="No prompt"):
        predictor.predict()
    with pytest.raises(ValueError, match="x1 y1 x2 y2"):
        predictor.predict(boxes=[0, 0, 10])
    with pytest.raises(ValueError, match="2 boxes but points for 1 objects"):
        predictor.predict(boxes=[[0, 0, 10, 10], [5, 5, 20, 20]], points=[[3, 3]])
    with pytest.raises(ValueError, match="labels must give"):
        predictor.predict(points=[[3, 3], [4, 4]], labels=[1, 2])
