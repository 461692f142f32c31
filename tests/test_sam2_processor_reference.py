"""Our SAM 2 geometry (square resize, no padding) against the real Sam2Processor's output, kept in a fixture.

Sam2Processor needs torchvision, which has no CPU build here: tests/fixtures/make_sam2_processor_reference.py
ran it once in a side environment (transformers 5.24, torch 2.14.1, torchvision 0.29.1) on three non-square
images (two downscaled, one upscaled) with a box and a point prompt each, on an x86 CPU (torchvision's uint8 resize).
"""

import os

import numpy as np
import pytest

from infosam_hf.data import SamSegmentationPreprocessor
from infosam_hf.data.preprocessing import IMAGENET_STD

REFERENCE = os.path.join(os.path.dirname(__file__), "fixtures", "sam2_processor_reference.npz")
ONE_GREY_LEVEL = 1 / 255 / min(IMAGENET_STD)  # one uint8 step after normalisation


def to_model_frame(xy: np.ndarray, original_hw) -> np.ndarray:
    """Original pixels -> the square model input, as examples/predict.py scales prompts."""
    h, w = original_hw
    return xy.reshape(-1, 2) * np.array([size / w, size / h], dtype=np.float32)


ref = np.load(REFERENCE)
size = int(ref["size"])
CASES = range(sum(1 for key in ref.files if key.startswith("image_")))


@pytest.mark.parametrize("i", CASES)
def test_square_geometry_matches_the_real_sam2_processor(i):
    image = ref[f"image_{i}"]
    features = SamSegmentationPreprocessor(image_size=size, geometry="square")(image)
    expected = ref[f"pixel_values_{i}"]
    assert features["pixel_values"].shape == expected.shape == (3, size, size)
    assert tuple(features["reshaped_input_sizes"]) == (size, size)  # no padding
    # The same torch resize as the processor's torchvision backend: the same bytes, whichever Pillow is installed
    # (Pillow's bilinear put 17 pixels of image 0 one grey level off under Pillow 12, 673 of image 1 under Pillow 13).
    np.testing.assert_allclose(features["pixel_values"], expected, atol=1e-6, rtol=0)
    original = image.shape[:2]
    np.testing.assert_allclose(to_model_frame(ref[f"box_{i}"], original).reshape(4), ref[f"input_boxes_{i}"], atol=1e-5)
    np.testing.assert_allclose(to_model_frame(ref[f"point_{i}"], original)[0], ref[f"input_points_{i}"], atol=1e-5)


def test_the_longest_side_geometry_does_not_match_sam2():
    """The comparison can fail: SAM's own geometry (long side resized, padded) is far from SAM 2's output."""
    image = ref["image_0"]
    features = SamSegmentationPreprocessor(image_size=size)(image)
    assert np.abs(features["pixel_values"] - ref["pixel_values_0"]).max() > 10 * ONE_GREY_LEVEL


@pytest.mark.parametrize("geometry", ["square", "longest_side_pad"])
def test_preprocessing_never_resizes_through_pillow(monkeypatch, geometry):
    """Pillow's resamplers change between releases (12 -> 13 moved the reference test off by 0.0038 on average);
    model inputs must not depend on the installed Pillow, for either geometry."""
    import PIL.Image

    def no_pillow_resize(*args, **kwargs):
        raise AssertionError("the image was resized through Pillow")

    monkeypatch.setattr(PIL.Image.Image, "resize", no_pillow_resize)
    image = ref["image_1"]
    features = SamSegmentationPreprocessor(image_size=size, geometry=geometry)(image)
    assert features["pixel_values"].shape == (3, size, size)
