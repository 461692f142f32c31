"""Overlay rendering (infosam_hf.visualization): what is drawn where, and what is left alone."""

import numpy as np
import PIL.Image
import pytest
import torch

from infosam_hf.visualization import (
    BOX_COLOR,
    GT_COLOR,
    MASK_COLOR,
    NEGATIVE_POINT_COLOR,
    POSITIVE_POINT_COLOR,
    draw_box,
    draw_points,
    image_grid,
    mask_outline,
    mask_to_image,
    overlay_mask,
    render_overlay,
)


def grey_image(width=80, height=60, value=100):
    return PIL.Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8))


def square_mask(width=80, height=60, box=(20, 10, 50, 40)):
    mask = np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


def test_overlay_tints_the_mask_and_leaves_the_rest_untouched():
    image, mask = grey_image(), square_mask()
    out = np.asarray(overlay_mask(image, mask, alpha=0.5))
    original = np.asarray(image)
    assert out.shape == original.shape and out.dtype == np.uint8
    inside = out[25, 35]  # deep inside the mask: 50/50 blend of grey and the mask colour
    assert np.allclose(inside, 0.5 * 100 + 0.5 * np.asarray(MASK_COLOR), atol=1)
    assert (out[~mask] == original[~mask]).all()  # outline is drawn inside the mask, never outside
    edge = mask_outline(mask)
    assert (out[edge] == np.asarray(MASK_COLOR)).all()
    assert (np.asarray(image) == 100).all()  # the input is not modified


def test_overlay_alpha_extremes_and_validation():
    image, mask = grey_image(), square_mask()
    assert (np.asarray(overlay_mask(image, mask, alpha=0.0, outline=False)) == np.asarray(image)).all()
    full = np.asarray(overlay_mask(image, mask, alpha=1.0, outline=False))
    assert (full[mask] == np.asarray(MASK_COLOR)).all()
    with pytest.raises(ValueError, match="alpha"):
        overlay_mask(image, mask, alpha=1.5)


def test_mask_of_another_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"mask is 40x30 \(WxH\) but the image is 80x60"):
        overlay_mask(grey_image(), np.ones((30, 40), dtype=bool))


@pytest.mark.parametrize(
    "mask",
    [
        square_mask().astype(np.uint8) * 255,  # 0/255 PNG-style
        square_mask().astype(np.float32),  # 0/1 floats
        torch.from_numpy(square_mask())[None],  # (1, H, W) tensor
        PIL.Image.fromarray(square_mask().astype(np.uint8) * 255),
    ],
)
def test_mask_inputs_of_every_kind_mean_the_same(mask):
    expected = np.asarray(overlay_mask(grey_image(), square_mask()))
    assert (np.asarray(overlay_mask(grey_image(), mask)) == expected).all()


def test_image_inputs_arrays_and_grey():
    array = np.full((60, 80, 3), 100, dtype=np.uint8)
    expected = np.asarray(overlay_mask(grey_image(), square_mask()))
    assert (np.asarray(overlay_mask(array, square_mask())) == expected).all()
    assert (np.asarray(overlay_mask(np.full((60, 80), 100, dtype=np.uint8), square_mask())) == expected).all()
    assert (np.asarray(overlay_mask(torch.full((3, 60, 80), 100 / 255.0), square_mask())) == expected).all()


def test_box_and_points_are_drawn_where_asked():
    image = grey_image()
    boxed = np.asarray(draw_box(image, (10, 5, 60, 50)))
    assert (boxed[5, 30] == BOX_COLOR).all() and (boxed[50, 30] == BOX_COLOR).all()
    assert (boxed[25, 30] == 100).all()  # the box is an outline, not filled
    dotted = np.asarray(draw_points(image, [[20, 20], [60, 40], [5, 5]], labels=[1, 0, -10]))
    assert (dotted[20, 20] == POSITIVE_POINT_COLOR).all()
    assert (dotted[40, 60] == NEGATIVE_POINT_COLOR).all()
    assert (dotted[5, 5] == 100).all()  # SAM padding points (label -10) are not prompts: not drawn
    with pytest.raises(ValueError, match="2 labels"):
        draw_points(image, [[1, 1], [2, 2], [3, 3]], labels=[1, 0])


def test_render_overlay_layers_prediction_ground_truth_and_prompt():
    image, pred = grey_image(), square_mask()
    gt = square_mask(box=(30, 20, 70, 55))
    out = np.asarray(render_overlay(image, pred, gt_mask=gt, box=(20, 10, 49, 39), points=[[35, 25]]))
    assert out.shape == (60, 80, 3)
    assert (out[mask_outline(gt) & ~pred] == GT_COLOR).all()  # ground truth outlined where not covered
    assert (out[25, 35] == POSITIVE_POINT_COLOR).all()  # the prompt is drawn on top of the mask
    assert (out[10, 35] == BOX_COLOR).all()
    assert (out[0:5, 0:15] == 100).all()  # far from everything
    plain = np.asarray(render_overlay(image))
    assert (plain == np.asarray(image)).all()


def test_mask_to_image_is_binary_grayscale():
    png = mask_to_image(square_mask())
    assert png.mode == "L" and png.size == (80, 60)
    assert set(np.unique(np.asarray(png))) == {0, 255}


def test_image_grid_tiles_at_a_common_height():
    sheet = image_grid([grey_image(80, 60), grey_image(40, 60), grey_image(60, 30)], columns=2, height=30, gap=2)
    assert sheet.height == 2 * 30 + 2
    assert sheet.width == 40 + 2 + 20  # first row: 80x60 -> 40x30 and 40x60 -> 20x30
    with pytest.raises(ValueError):
        image_grid([])
