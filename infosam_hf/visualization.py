"""Pictures a person can judge a segmentation by: the mask over the image, with the prompt drawn.

PIL and NumPy only (no matplotlib, no torchvision), so rendering works wherever the
package does, in a training callback as in a prediction script.

Colours follow the Segment Anything demos: the predicted mask is filled in blue with a
solid outline, a box prompt is a green rectangle, foreground points are green dots and
background points red ones (each with a white ring, visible on any background). When the
ground truth is given (evaluation overlays) its outline is drawn in yellow, so that
misses and false alarms are visible at a glance.

Coordinates are in the pixels of the image being drawn on: ``(x, y)``, boxes as
``(x1, y1, x2, y2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

__all__ = [
    "MASK_COLOR",
    "GT_COLOR",
    "BOX_COLOR",
    "POSITIVE_POINT_COLOR",
    "NEGATIVE_POINT_COLOR",
    "OBJECT_COLORS",
    "mask_to_image",
    "mask_outline",
    "overlay_mask",
    "draw_box",
    "draw_points",
    "render_overlay",
    "render_objects",
    "image_grid",
]

MASK_COLOR = (30, 144, 255)
GT_COLOR = (255, 215, 0)
BOX_COLOR = (0, 230, 64)
POSITIVE_POINT_COLOR = (0, 230, 64)
NEGATIVE_POINT_COLOR = (240, 40, 40)
# One fill per object when an image has several (the first is MASK_COLOR); none near the prompts' green and red
# or the ground truth's yellow (nor near each other), so that no object's mask reads as a prompt or an annotation.
OBJECT_COLORS = (MASK_COLOR, (255, 0, 255), (139, 69, 19), (0, 128, 128), (0, 0, 128), (255, 160, 200))

Color = Sequence[int]


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensors, without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _as_rgb(image: Any) -> PIL.Image.Image:
    """Any image-like (PIL in any mode, HxW / HxWx3 / HxWx4 / 3xHxW arrays) -> an RGB PIL copy."""
    if isinstance(image, PIL.Image.Image):
        if image.mode == "RGB":
            return image.copy()
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            return _as_rgb(np.asarray(image))
        return image.convert("RGB")
    array = _as_array(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., :3] if array.shape[-1] != 1 else array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"Cannot draw on an array of shape {array.shape}; expected HxW, HxWx3 or HxWx4.")
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        hi = float(np.nanmax(array)) if array.size else 1.0
        array = np.clip(array * (255.0 if hi <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return PIL.Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def _as_mask(mask: Any, size_hw: tuple[int, int] | None = None, what: str = "mask") -> np.ndarray:
    """A boolean (H, W) array from bool / 0-1 / 0-255 / PIL masks; (1, H, W) and (1, 1, H, W) are squeezed."""
    if isinstance(mask, PIL.Image.Image):
        mask = np.asarray(mask.convert("L") if mask.mode not in ("1", "L", "I", "F") else mask)
    array = _as_array(mask)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"The {what} must be one (H, W) mask, got shape {array.shape}.")
    if array.dtype != np.bool_:
        unit_floats = np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) <= 1.0
        array = array > (0.5 if unit_floats else 0)
    if size_hw is not None and tuple(array.shape) != tuple(size_hw):
        raise ValueError(
            f"The {what} is {array.shape[1]}x{array.shape[0]} (WxH) but the image is {size_hw[1]}x{size_hw[0]}: "
            "resize the mask to the image first (e.g. SamProcessor.post_process_masks or "
            "infosam_hf.inference.postprocess_logits for mask logits)."
        )
    return array


def _scale(image: PIL.Image.Image) -> int:
    """Line width that stays visible from 64 px thumbnails to 4k photographs."""
    return max(1, round(min(image.size) / 160))


def mask_to_image(mask: Any) -> PIL.Image.Image:
    """A binary mask as an 8-bit grayscale PNG-ready image: 255 foreground, 0 background."""
    return PIL.Image.fromarray(_as_mask(mask).astype(np.uint8) * 255, mode="L")


def mask_outline(mask: Any, width: int = 1) -> np.ndarray:
    """The mask's inner boundary, ``width`` pixels thick (foreground pixels with a background 4-neighbour)."""
    m = _as_mask(mask)
    inner = m.copy()
    for _ in range(max(1, int(width))):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return m & ~inner


def overlay_mask(
    image: Any,
    mask: Any,
    color: Color = MASK_COLOR,
    alpha: float = 0.5,
    outline: bool = True,
    outline_color: Color | None = None,
) -> PIL.Image.Image:
    """Blend ``color`` into the image where ``mask`` is on (``alpha`` is the colour's weight).

    Pixels outside the mask (and its outline) are left exactly as they were.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    base = _as_rgb(image)
    m = _as_mask(mask, (base.height, base.width))
    pixels = np.asarray(base, dtype=np.float32).copy()
    tint = np.asarray(color[:3], dtype=np.float32)
    pixels[m] = (1.0 - alpha) * pixels[m] + alpha * tint
    if outline:
        edge = mask_outline(m, _scale(base))
        pixels[edge] = np.asarray((outline_color or color)[:3], dtype=np.float32)
    return PIL.Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8), mode="RGB")


def _draw_outline(image: PIL.Image.Image, mask: Any, color: Color) -> PIL.Image.Image:
    pixels = np.asarray(image).copy()
    edge = mask_outline(_as_mask(mask, (image.height, image.width), "ground-truth mask"), _scale(image))
    pixels[edge] = np.asarray(color[:3], dtype=np.uint8)
    return PIL.Image.fromarray(pixels, mode="RGB")


def draw_box(image: Any, box: Sequence[float], color: Color = BOX_COLOR, width: int | None = None) -> PIL.Image.Image:
    """Draw ``box`` = ``(x1, y1, x2, y2)`` (pixels of ``image``) as a rectangle outline."""
    out = _as_rgb(image)
    x1, y1, x2, y2 = (float(v) for v in np.asarray(_as_array(box), dtype=np.float64).reshape(-1)[:4])
    draw = PIL.ImageDraw.Draw(out)
    draw.rectangle(
        [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=tuple(color[:3]), width=width or _scale(out)
    )
    return out


def draw_points(
    image: Any,
    points: Any,
    labels: Sequence[int] | None = None,
    radius: int | None = None,
    positive_color: Color = POSITIVE_POINT_COLOR,
    negative_color: Color = NEGATIVE_POINT_COLOR,
) -> PIL.Image.Image:
    """Draw ``points`` (N, 2) as ``(x, y)``; label 1 (default) foreground, 0 background, others (padding) skipped."""
    out = _as_rgb(image)
    pts = np.asarray(_as_array(points), dtype=np.float64).reshape(-1, 2)
    labs = np.ones(len(pts), dtype=np.int64) if labels is None else np.asarray(_as_array(labels)).reshape(-1)
    if len(labs) != len(pts):
        raise ValueError(f"Got {len(pts)} points but {len(labs)} labels.")
    r = radius or max(2, round(min(out.size) / 40))
    ring = max(1, r // 3)
    draw = PIL.ImageDraw.Draw(out)
    for (x, y), label in zip(pts, labs):
        if label not in (0, 1):
            continue  # SAM's padding points (label -10) are not prompts
        color = tuple((positive_color if label == 1 else negative_color)[:3])
        draw.ellipse([x - r - ring, y - r - ring, x + r + ring, y + r + ring], fill=(255, 255, 255))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
    return out


def render_overlay(
    image: Any,
    mask: Any | None = None,
    *,
    box: Sequence[float] | None = None,
    points: Any | None = None,
    labels: Sequence[int] | None = None,
    gt_mask: Any | None = None,
    alpha: float = 0.5,
    color: Color = MASK_COLOR,
    gt_color: Color = GT_COLOR,
) -> PIL.Image.Image:
    """The picture to look at: predicted mask (filled), ground-truth outline, then the prompt on top.

    All geometry is in the pixels of ``image`` (the original image, for predictions
    post-processed to its size). Returns a new RGB image; ``image`` is not modified.
    """
    out = _as_rgb(image)
    if mask is not None:
        out = overlay_mask(out, mask, color=color, alpha=alpha)
    if gt_mask is not None:
        out = _draw_outline(out, gt_mask, gt_color)
    if box is not None:
        out = draw_box(out, box)
    if points is not None and len(np.asarray(_as_array(points)).reshape(-1)):
        out = draw_points(out, points, labels)
    return out


def render_objects(
    image: Any,
    masks: Any | None = None,
    *,
    boxes: Any | None = None,
    points: Any | None = None,
    labels: Any | None = None,
    gt_masks: Any | None = None,
    alpha: float = 0.5,
) -> PIL.Image.Image:
    """`render_overlay` for several objects of one image: object k's mask filled in `OBJECT_COLORS[k]`, every
    ground-truth outline in yellow, then every prompt (`boxes` (K, 4), or `points` (K, P, 2) with `labels`).

    With one object this is exactly `render_overlay`.
    """
    out = _as_rgb(image)
    for k, mask in enumerate(masks if masks is not None else ()):
        out = overlay_mask(out, mask, color=OBJECT_COLORS[k % len(OBJECT_COLORS)], alpha=alpha)
    for gt in gt_masks if gt_masks is not None else ():
        out = _draw_outline(out, gt, GT_COLOR)
    for box in boxes if boxes is not None else ():
        out = draw_box(out, box)
    if points is not None:
        point_labels = [None] * len(points) if labels is None else labels
        for object_points, object_labels in zip(points, point_labels):
            out = draw_points(out, object_points, object_labels)
    return out


def image_grid(images: Sequence[PIL.Image.Image], columns: int = 4, height: int = 256, gap: int = 4) -> PIL.Image.Image:
    """Tile images (each scaled to ``height`` pixels high) into one contact sheet, left to right, top to bottom."""
    if not images:
        raise ValueError("image_grid needs at least one image.")
    tiles = [
        _as_rgb(im).resize((max(1, round(im.width * height / im.height)), height), PIL.Image.BILINEAR) for im in images
    ]
    columns = max(1, min(columns, len(tiles)))
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    width = max(sum(t.width for t in row) + gap * (len(row) - 1) for row in rows)
    sheet = PIL.Image.new("RGB", (width, len(rows) * height + gap * (len(rows) - 1)), (255, 255, 255))
    for r, row in enumerate(rows):
        x = 0
        for tile in row:
            sheet.paste(tile, (x, r * (height + gap)))
            x += tile.width + gap
    return sheet
