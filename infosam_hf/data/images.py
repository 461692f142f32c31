"""Turning whatever a dataset row holds into an RGB uint8 array and a binary mask.

Segmentation data arrives in every shape: PIL images in any mode, numpy arrays,
`datasets.Image` dicts (`{"bytes", "path"}`), plain paths. The conversions here are
the single place where those are reconciled, so that the preprocessor, the loaders
and the error messages agree on what an image and a mask are.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import PIL.Image

# Lossy formats blur a hard 0/255 mask into a ramp of values near the edges and
# sprinkle small non-zero values over the background, so "any non-zero value" would
# be wrong for them; half the range is the threshold such masks were meant with.
_LOSSY_FORMATS = {"JPEG", "MPO", "WEBP"}


class CorruptImageError(ValueError):
    """An image or mask that exists but cannot be decoded (truncated, not an image, ...)."""


def describe_source(value: Any, fallback: str = "<in-memory sample>") -> str:
    """A human-readable name for where a sample came from, for error messages."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    filename = getattr(value, "filename", None)
    if filename:
        return str(filename)
    return fallback


def decode_image(value: Any, what: str = "image") -> PIL.Image.Image | np.ndarray:
    """Decode a dataset cell exactly as `datasets.Image` would, but raise errors we can act on.

    The loaders cast image columns to `Image(decode=False)` so that a corrupt file
    reaches this function (and can be skipped) instead of breaking the stream inside
    `datasets`. Decoding goes through `datasets.Image.decode_example` so that EXIF
    orientation and remote (`hf://`) paths behave as they do for any other dataset.
    """
    if isinstance(value, (PIL.Image.Image, np.ndarray)):
        return value
    if hasattr(value, "numpy") and callable(value.numpy):  # torch tensors
        return np.asarray(value.numpy())
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = {"bytes": bytes(value), "path": None}
    elif isinstance(value, (str, os.PathLike)):
        value = {"bytes": None, "path": os.fspath(value)}
    if not isinstance(value, dict) or ("bytes" not in value and "path" not in value):
        raise TypeError(
            f"Cannot read the {what} column value of type {type(value).__name__}; expected a PIL image, a numpy "
            "array, a path, bytes, or a datasets.Image dict with 'bytes'/'path'."
        )
    value = {"bytes": value.get("bytes"), "path": value.get("path")}
    source = describe_source(value)
    path = value["path"]
    if value["bytes"] is None and path and "://" not in path and not os.path.exists(path):
        raise FileNotFoundError(
            f"The {what} file {path!r} does not exist. Restore the file, or remove its row from the dataset "
            "(for a CSV layout, fix the relative path in the CSV)."
        )
    from datasets import Image as ImageFeature

    try:
        return ImageFeature().decode_example(value)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        # PIL reports truncated and non-image files as OSError/UnidentifiedImageError,
        # and some broken headers as SyntaxError or ValueError.
        raise CorruptImageError(
            f"Cannot decode the {what} {source!r}: {err}. The file is corrupt or not an image; re-export it "
            "(e.g. open and re-save it as PNG) or remove it from the dataset."
        ) from err


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map any numeric image to 0..255, keeping the full range of its storage type.

    16-bit images are divided by 257 (so 65535 -> 255) rather than clipped at 255
    as `PIL.Image.convert("RGB")` does, which turns most 16-bit photos white.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        finite_max = float(np.nanmax(array)) if array.size else 0.0
        scale = 255.0 if finite_max <= 1.0 else 1.0  # floats in [0, 1] are the common convention
        return np.clip(np.nan_to_num(array) * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        max_value = int(array.max()) if array.size else 0
        if array.dtype.itemsize == 1 or max_value <= 255:
            return np.clip(array, 0, 255).astype(np.uint8)
        if max_value <= 65535:
            return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return (array.astype(np.float64) / max_value * 255.0 + 0.5).astype(np.uint8)
    raise TypeError(f"Unsupported image dtype {array.dtype}.")


def to_rgb_pil(image: PIL.Image.Image | np.ndarray) -> PIL.Image.Image:
    """RGB, 8-bit, as a PIL image: the form both SAM's processor and ours resize from.

    Alpha is dropped (not composited) because SAM's processor does the same, and the
    pixel values must match it.
    """
    if isinstance(image, PIL.Image.Image):
        if image.mode == "RGB":
            return image
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            return to_rgb_pil(np.asarray(image))
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first, as torch tensors come
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim == 2:
        array = np.repeat(_scale_to_uint8(array)[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 3:
        array = _scale_to_uint8(array)
    else:
        raise ValueError(f"Cannot interpret an array of shape {array.shape} as an image; expected HxW, HxWx3 or HxWx4.")
    return PIL.Image.fromarray(np.ascontiguousarray(array))


def image_size_hw(image: PIL.Image.Image | np.ndarray) -> tuple[int, int]:
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        return int(array.shape[1]), int(array.shape[2])
    return int(array.shape[0]), int(array.shape[1])


def to_binary_mask(mask: PIL.Image.Image | np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Foreground as a `(H, W)` uint8 array of 0/1.

    Foreground is every value above `threshold`. The default (`None`) is "any non-zero
    value" for lossless masks (0/1, 0/255, label ids, 16-bit, palette indices, RGB
    masks), half the range for JPEG/WebP masks whose compression noise would otherwise
    turn the background into foreground, and 0.5 for float masks in [0, 1].

    Palette ("P") masks are read by palette index, not by colour: index 0 is the
    background in VOC/DAVIS-style annotations whatever colour the palette gives it.
    """
    lossy = isinstance(mask, PIL.Image.Image) and (mask.format or "").upper() in _LOSSY_FORMATS
    if isinstance(mask, PIL.Image.Image):
        if mask.mode == "LA":
            mask = mask.getchannel("L")
        elif mask.mode in ("RGBA", "RGBa", "PA"):
            mask = mask.convert("RGB") if mask.mode != "PA" else mask.getchannel(0)
        elif mask.mode not in ("1", "L", "P", "RGB", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            mask = mask.convert("RGB")
        array = np.asarray(mask)
    else:
        array = np.asarray(mask)
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)
    if array.ndim == 3:
        array = array[..., : min(array.shape[-1], 3)].max(axis=-1)  # any coloured pixel is foreground
    if array.ndim != 2:
        raise ValueError(f"Cannot interpret an array of shape {array.shape} as a mask; expected HxW or HxWxC.")
    if threshold is None:
        if array.dtype == bool:
            return array.astype(np.uint8)
        if np.issubdtype(array.dtype, np.floating):
            threshold = 0.5 if (array.size == 0 or float(np.nanmax(array)) <= 1.0) else 127.5
        elif lossy:
            threshold = 127
        else:
            threshold = 0
    return (array > threshold).view(np.uint8)


def encode_png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
