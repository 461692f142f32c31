"""Several objects per image: instance annotations -> one binary mask per object, in SAM's frame.

Real segmentation data (cells, buildings, polyps, leaves, COCO-like sets) annotates many
objects per image. SAM encodes an image once and decodes one mask per prompt, so rather
than duplicating an image per object, a sample carries all its object masks
(`gt_masks` of shape `(K, S, S)`) and `SamSegmentationCollator(max_objects_per_image=N)`
draws up to N of them as prompts of the same image.

Three layouts of the `mask` column are read (`instance_format`):

- `"ids"`: an instance-id image (PNG, 8/16-bit or palette): 0 = background, k = object k.
- `"masks"`: a list of binary masks per image (images or arrays), one per object.
- `"coco"`: a list of COCO-style segmentations per image, each a polygon list
  (`[[x0, y0, x1, y1, ...], ...]` or one flat list) or an RLE dict
  (`{"size": [h, w], "counts": [...] or "compressed string"}`); `{"segmentation": ...}`
  wrappers (whole COCO annotations) are accepted too.

Objects smaller than `min_object_area` pixels (at the original resolution) are skipped and
counted; images left without any object are skipped and counted (`InstanceStats`), since a
sample without a prompt can neither train nor be scored (evaluation reports the count).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .collator import ORIGINAL_MASKS_KEY
from .images import CorruptImageError, decode_image, describe_source, image_size_hw, to_binary_mask
from .preprocessing import SamSegmentationPreprocessor
from .sources import CorruptSampleLog, PicklableWithLock, _per_sample, _Preprocess, _with_columns

logger = logging.getLogger(__name__)

INSTANCE_FORMATS = ("ids", "masks", "coco")
DEFAULT_MIN_OBJECT_AREA = 4  # pixels at the original resolution: below this a "object" is annotation noise


class InstanceStats(PicklableWithLock):
    """Counts what `prepare_instance_dataset` left out: objects below the minimum area, images with no object."""

    def __init__(self):
        self.images = 0
        self.objects = 0
        self.small_objects_skipped = 0
        self.images_without_objects: list[str] = []
        self._lock = threading.Lock()

    def add(self, source: str, kept: int, small: int) -> None:
        with self._lock:
            self.images += 1
            self.objects += kept
            self.small_objects_skipped += small
            if kept == 0:
                self.images_without_objects.append(source)
        if kept == 0:
            logger.warning(
                "Skipping %s: no object of at least the minimum area (%d below it); %d image(s) without objects so far.",
                source,
                small,
                len(self.images_without_objects),
            )

    def report(self) -> str:
        return (
            f"{self.images} image(s) read, {self.objects} object(s) kept, {self.small_objects_skipped} object(s) "
            f"below min_object_area skipped, {len(self.images_without_objects)} image(s) without objects skipped."
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(images={self.images}, objects={self.objects}, "
            f"small_objects_skipped={self.small_objects_skipped}, "
            f"images_without_objects={len(self.images_without_objects)})"
        )


# --------------------------------------------------------------------------- decoding the layouts


def _ids_masks(value: Any, source: str) -> list[np.ndarray]:
    image = decode_image(value, "mask") if not isinstance(value, np.ndarray) else value
    if isinstance(image, PIL.Image.Image):
        if image.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            raise ValueError(
                f"The instance mask of {source} is a {image.mode} image; an instance-id mask has one channel "
                "(0 = background, k = object k). Save it as an 8- or 16-bit grayscale or palette PNG, or use "
                "instance_format='masks' for a list of binary masks."
            )
        array = np.asarray(image)
    else:
        array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(
            f"The instance mask of {source} has shape {array.shape}; an instance-id mask is H x W with 0 = "
            "background and k = object k."
        )
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(
                f"The instance mask of {source} holds non-integer values (e.g. {array[array != np.round(array)][:3]}); "
                "instance ids must be integers (0 = background, k = object k). Was it resized with interpolation? "
                "Resize id masks with nearest-neighbour only."
            )
        array = array.astype(np.int64)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    ids = np.unique(array)
    return [array == k for k in ids if k != 0]


def _list_masks(value: Any, source: str) -> list[np.ndarray]:
    if value is None or isinstance(value, (str, bytes, dict)):
        raise ValueError(
            f"instance_format='masks' expects a list of binary masks for {source}, got {type(value).__name__}."
        )
    masks = []
    for index, item in enumerate(value):
        mask = decode_image(item, "mask") if not isinstance(item, np.ndarray) else item
        masks.append(to_binary_mask(mask).astype(bool))
        if masks[-1].shape != masks[0].shape:
            raise ValueError(
                f"Object mask {index} of {source} is {masks[-1].shape[::-1]} (WxH) but object mask 0 is "
                f"{masks[0].shape[::-1]}; every object mask of an image has the image's size."
            )
    return masks


def _decode_rle_counts(counts: str) -> list[int]:
    """COCO's compressed RLE string (pycocotools' `rleFrString`) -> run lengths."""
    runs: list[int] = []
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    position = 0
    while position < len(data):
        value, shift, more = 0, 0, True
        while more:
            char = data[position] - 48
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _rle_mask(rle: dict, source: str, index: int) -> np.ndarray:
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"Object {index} of {source}: an RLE needs 'size' [h, w] and 'counts'; got {rle!r}.") from err
    runs = _decode_rle_counts(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    if sum(runs) != height * width or min(runs, default=0) < 0:
        raise ValueError(
            f"Object {index} of {source}: the RLE runs sum to {sum(runs)} pixels but its size {height}x{width} has "
            f"{height * width}; the RLE is corrupt or belongs to another image."
        )
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for run in runs:
        if value:
            flat[position : position + run] = True
        position += run
        value = not value
    return flat.reshape(width, height).T  # COCO RLE is column-major


def _polygon_mask(polygons: Sequence, height: int, width: int, source: str, index: int) -> np.ndarray:
    if len(polygons) and not isinstance(polygons[0], (list, tuple, np.ndarray)):
        polygons = [polygons]  # one flat polygon
    canvas = PIL.Image.new("L", (width, height), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    for polygon in polygons:
        coords = np.asarray(polygon, dtype=np.float64).reshape(-1)
        if coords.size < 6 or coords.size % 2:
            raise ValueError(
                f"Object {index} of {source}: a polygon needs at least 3 (x, y) points as a flat list "
                f"[x0, y0, x1, y1, ...]; got {coords.size} numbers."
            )
        xy = coords.reshape(-1, 2)
        # COCO polygons trace pixel borders, so a vertex may sit at x = width exactly.
        outside = (xy[:, 0] < -0.5) | (xy[:, 1] < -0.5) | (xy[:, 0] > width + 0.5) | (xy[:, 1] > height + 0.5)
        if outside.any():
            x, y = xy[outside][0]
            raise ValueError(
                f"Object {index} of {source}: polygon point ({x:g}, {y:g}) lies outside the {width}x{height} (WxH) "
                "image. Are the coordinates for another image size, or (y, x) instead of (x, y)? Fix the annotation "
                "or drop the object."
            )
        draw.polygon([tuple(p) for p in xy], fill=1, outline=1)
    return np.asarray(canvas) > 0


def _coco_masks(value: Any, image_hw: tuple[int, int], source: str) -> list[np.ndarray]:
    if value is None or isinstance(value, (str, bytes)):
        raise ValueError(
            f"instance_format='coco' expects a list of segmentations (polygons or RLE dicts) for {source}, got "
            f"{type(value).__name__}."
        )
    if isinstance(value, dict):  # one object, or a whole annotation
        value = [value]
    height, width = image_hw
    masks = []
    for index, item in enumerate(value):
        if isinstance(item, dict) and "segmentation" in item:
            item = item["segmentation"]
        if isinstance(item, dict):
            mask = _rle_mask(item, source, index)
            if mask.shape != (height, width):
                raise ValueError(
                    f"Object {index} of {source}: the RLE is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image is "
                    f"{width}x{height}."
                )
        else:
            mask = _polygon_mask(item, height, width, source, index)
        masks.append(mask)
    return masks


def decode_instances(
    value: Any, instance_format: str, image_hw: tuple[int, int], source: str = "<sample>"
) -> list[np.ndarray]:
    """One boolean (H, W) mask per object of a `mask` cell in the given layout."""
    if instance_format not in INSTANCE_FORMATS:
        raise ValueError(f"instance_format must be one of {INSTANCE_FORMATS}, got {instance_format!r}.")
    if instance_format == "ids":
        masks = _ids_masks(value, source)
    elif instance_format == "masks":
        masks = _list_masks(value, source)
    else:
        masks = _coco_masks(value, image_hw, source)
    for mask in masks[:1]:
        if mask.shape != tuple(image_hw):
            raise ValueError(
                f"The object masks of {source} are {mask.shape[1]}x{mask.shape[0]} (WxH) but the image is "
                f"{image_hw[1]}x{image_hw[0]}; annotate at the image's resolution (resize ids with nearest-neighbour)."
            )
    return masks


# --------------------------------------------------------------------------- preprocessing


class _PreprocessInstances(_Preprocess):
    """`prepare_dataset`'s per-sample function, for instance layouts: `gt_masks` becomes (K, S, S) uint8."""

    def __init__(self, preprocessor, skip_corrupt, log, instance_format, min_object_area, stats,
                 keep_original_mask=False):
        super().__init__(preprocessor, skip_corrupt, log, keep_original_mask)
        self.instance_format = instance_format
        self.min_object_area = int(min_object_area)
        self.stats = stats

    def one(self, image_value: Any, mask_value: Any, fallback_name: str) -> dict | None:
        image_source = describe_source(image_value, fallback_name)
        try:
            image = decode_image(image_value, "image")
        except CorruptImageError as err:
            return self._skip(image_source, err)
        try:
            masks = decode_instances(mask_value, self.instance_format, image_size_hw(image), image_source)
        except CorruptImageError as err:
            return self._skip(f"mask of {image_source}", err)
        kept = [m for m in masks if int(m.sum()) >= self.min_object_area]
        self.stats.add(image_source, len(kept), len(masks) - len(kept))
        if not kept:
            return None
        features = self.preprocessor(image, None, source=image_source)
        reshaped = tuple(int(v) for v in features["reshaped_input_sizes"])
        stacked = [self.preprocessor.preprocess_mask(m.astype(np.uint8), reshaped) for m in kept]
        features["gt_masks"] = np.concatenate(stacked).astype(np.uint8)
        if self.keep_original_mask:
            features[ORIGINAL_MASKS_KEY] = np.stack(kept).astype(np.uint8)
        return features


def prepare_instance_dataset(
    dataset,
    preprocessor: SamSegmentationPreprocessor,
    instance_format: str = "ids",
    min_object_area: int = DEFAULT_MIN_OBJECT_AREA,
    skip_corrupt: bool = True,
    corrupt_log: CorruptSampleLog | None = None,
    stats: InstanceStats | None = None,
    keep_original_mask: bool = False,
):
    """Like `prepare_dataset`, for instance data: each row yields `gt_masks` (K, S, S), one mask per object.

    `keep_original_mask=True` adds the object masks at the image's own size (`gt_original`, (K, H, W)), which
    evaluation scores against, as for one mask per image.

    Feed it to `SamSegmentationCollator(max_objects_per_image=N)`. The counts of skipped
    objects and images are in `prepared.instance_stats` (per process; data-loader workers
    keep their own copies and log each empty image as they meet it).
    """
    if instance_format not in INSTANCE_FORMATS:
        raise ValueError(f"instance_format must be one of {INSTANCE_FORMATS}, got {instance_format!r}.")
    if min_object_area < 0:
        raise ValueError(f"min_object_area must be >= 0, got {min_object_area}.")
    log = CorruptSampleLog() if corrupt_log is None else corrupt_log
    stats = InstanceStats() if stats is None else stats
    dataset, columns = _with_columns(dataset)
    if "image" not in columns or "mask" not in columns:
        raise ValueError(
            f"prepare_instance_dataset expects 'image' and 'mask' columns; got {columns}. Load the data with "
            "load_segmentation_dataset(..., mask_column=<the instance column>)."
        )
    fn = _PreprocessInstances(preprocessor, skip_corrupt, log, instance_format, min_object_area, stats,
                              keep_original_mask)
    prepared = _per_sample(dataset, fn, columns)
    prepared.corrupt_log = log
    prepared.instance_stats = stats
    return prepared
