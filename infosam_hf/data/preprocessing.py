"""SAM's image geometry, done once per sample on the CPU.

`SamProcessor` does the same resize / normalise / pad, but converts every image to
float64, normalises channel by channel through generic helpers and cannot carry
a binary mask at the image resolution (it resizes masks to 256 px for its own
decoder-resolution labels). Training needs the mask at the *input* resolution, next
to the image, and the data loader must keep a GPU fed, so this module redoes the
geometry with the same PIL resampling (bit-for-bit the same resized pixels) and a
fused float32 normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from .images import CorruptImageError, decode_image, describe_source, image_size_hw, to_binary_mask, to_rgb_pil


class MaskSizeMismatchError(CorruptImageError):
    """A mask not at its image's resolution: a bad sample, skipped and counted like an undecodable file."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def longest_side_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """SAM's `ResizeLongestSide` shape, with its round-half-up, as `SamImageProcessor` computes it."""
    scale = longest_edge * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


# PIL resample codes (what processor configs store) -> torch's interpolate modes, as transformers'
# `pil_torch_interpolation_mapping`; other filters (box, hamming, lanczos) have no torch kernel and stay on PIL.
_TORCH_MODES = {PIL.Image.NEAREST: "nearest-exact", PIL.Image.BILINEAR: "bilinear", PIL.Image.BICUBIC: "bicubic"}


def resize_uint8(image: np.ndarray, size_hw: tuple[int, int], resample: int = PIL.Image.BILINEAR) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, h, w) uint8, resized as `SamImageProcessor` / `Sam2ImageProcessor` resize.

    Their torchvision backend calls torch's antialiased `interpolate` on the uint8 tensor (on CPUs torchvision
    reports as AVX2; elsewhere it casts to float32 and rounds, one grey level off on some pixels). This is that
    call, always: the same bytes as the real processor recorded in tests/test_sam2_processor_reference.py, on
    any x86 machine and whatever Pillow is installed.
    """
    mode = _TORCH_MODES.get(int(resample))
    if mode is None:
        resized = PIL.Image.fromarray(image).resize(size_hw[::-1], resample=int(resample))
        return np.asarray(resized).transpose(2, 0, 1)
    smooth = mode in ("bilinear", "bicubic")
    image = np.ascontiguousarray(image)
    tensor = torch.from_numpy(image if image.flags.writeable else image.copy()).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(
        tensor, size=tuple(size_hw), mode=mode, antialias=smooth, align_corners=False if smooth else None
    )
    return resized[0].numpy()


class SamSegmentationPreprocessor:
    """Image + mask -> the tensors SAM trains on, in SAM's padded `image_size` frame.

    Output (numpy, so that rows travel cheaply between data-loader workers):
    `pixel_values` float32 (3, S, S), `gt_masks` float32 (1, S, S) in {0, 1} (only when a
    mask is given), `original_sizes` int64 (h, w), `reshaped_input_sizes` int64 (h, w).
    Padding is bottom-right, with 0 in normalised space for the image (as SAM) and 0
    (background) for the mask.

    `mask_threshold=None` binarises masks by their kind (see `to_binary_mask`); pass a
    number to force "foreground = value > threshold".

    `geometry="square"` follows SAM 2's processors instead (SAM 2, SAM 3 tracker, EdgeTAM):
    resize to S x S, aspect not kept, no padding (`reshaped_input_sizes` is then (S, S)).
    `for_model` picks the geometry from the model's family.
    """

    def __init__(
        self,
        image_size: int = 1024,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        rescale_factor: float = 1 / 255,
        resample: int = PIL.Image.BILINEAR,
        mask_threshold: float | None = None,
        geometry: str = "longest_side_pad",
    ):
        if geometry not in ("longest_side_pad", "square"):
            raise ValueError(f"geometry must be 'longest_side_pad' (SAM) or 'square' (SAM 2), got {geometry!r}.")
        self.geometry = geometry
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}.")
        self.image_size = int(image_size)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.rescale_factor = float(rescale_factor)
        self.resample = int(resample)
        self.mask_threshold = mask_threshold
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need one value per RGB channel.")
        # (x * rescale - mean) / std == x * scale - shift, one multiply-subtract per pixel.
        std = np.asarray(self.image_std, dtype=np.float64)
        self._scale = (self.rescale_factor / std).astype(np.float32)
        self._shift = (np.asarray(self.image_mean, dtype=np.float64) / std).astype(np.float32)

    @classmethod
    def from_processor(cls, processor_or_path: Any, **kwargs) -> SamSegmentationPreprocessor:
        """Read mean, std, size and resampling from a `SamProcessor`, its image processor, or a path/Hub id.

        Using the checkpoint's own processor settings keeps training inputs identical to
        what the model saw in pre-training and what `SamProcessor` gives at inference.
        """
        processor = processor_or_path
        if isinstance(processor_or_path, SamSegmentationPreprocessor):
            return processor_or_path if not kwargs else cls(**{**processor_or_path._params(), **kwargs})
        if isinstance(processor_or_path, str):
            processor = _image_processor_config(processor_or_path)
        image_processor = getattr(processor, "image_processor", processor)
        if isinstance(image_processor, dict):  # a config read as JSON (SAM 2's processors need torchvision)
            from types import SimpleNamespace

            image_processor = SimpleNamespace(**image_processor)
        size = getattr(image_processor, "size", None) or {}
        longest_edge = size.get("longest_edge") if hasattr(size, "get") else getattr(size, "longest_edge", None)
        square = (size.get("height"), size.get("width")) if hasattr(size, "get") else (None, None)
        if longest_edge is None and square[0] is not None and square[0] == square[1]:
            # SAM 2's processors resize to a square, no padding.
            kwargs.setdefault("geometry", "square")
            longest_edge = square[0]
        if longest_edge is None:
            raise ValueError(
                f"{type(image_processor).__name__} has no size['longest_edge']; SAM's geometry needs one. "
                "Pass a SamProcessor / SamImageProcessor or build SamSegmentationPreprocessor(image_size=...) directly."
            )
        pad_size = getattr(image_processor, "pad_size", None) or {}
        pad_h = pad_size.get("height") if hasattr(pad_size, "get") else getattr(pad_size, "height", None)
        if pad_h is not None and int(pad_h) != int(longest_edge):
            raise ValueError(
                f"The processor pads to {pad_h} but resizes to {longest_edge}; SAM expects both equal to the model's "
                "image size. Fix the processor config (pad_size / size.longest_edge)."
            )
        resample = getattr(image_processor, "resample", PIL.Image.BILINEAR)
        params = dict(
            image_size=int(longest_edge),
            image_mean=image_processor.image_mean,
            image_std=image_processor.image_std,
            rescale_factor=getattr(image_processor, "rescale_factor", 1 / 255),
            resample=int(resample) if resample is not None else PIL.Image.BILINEAR,
        )
        params.update(kwargs)
        return cls(**params)

    @classmethod
    def for_model(cls, model: Any, **kwargs) -> SamSegmentationPreprocessor:
        """SAM's default normalisation at `model`'s input size, in its family's geometry (no processor needed)."""
        from ..models import family_of

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        family = family_of(base)
        params = dict(image_size=family.image_size(base.config), geometry=family.geometry)
        params.update(kwargs)
        return cls(**params)

    def save_pretrained(self, save_directory: str, **_unused) -> None:
        """An image-processor config transformers and `from_processor` read back: SamImageProcessor's for
        SAM's geometry, SAM 2's (square `size`, no padding) otherwise. Lets the Trainer save it as its
        `processing_class` where the family's own processor cannot be built (SAM 2's needs torchvision)."""
        import json
        import os

        square = self.geometry == "square"
        config = {
            "image_processor_type": "Sam2ImageProcessor" if square else "SamImageProcessor",
            "do_resize": True,
            "size": {"height": self.image_size, "width": self.image_size}
            if square
            else {"longest_edge": self.image_size},
            "resample": self.resample,
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_pad": not square,
        }
        if not square:
            config["pad_size"] = {"height": self.image_size, "width": self.image_size}
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, "preprocessor_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)

    def _params(self) -> dict:
        return dict(
            image_size=self.image_size,
            image_mean=self.image_mean,
            image_std=self.image_std,
            rescale_factor=self.rescale_factor,
            resample=self.resample,
            mask_threshold=self.mask_threshold,
            geometry=self.geometry,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, image_mean={self.image_mean}, "
            f"image_std={self.image_std}, mask_threshold={self.mask_threshold}, geometry={self.geometry!r})"
        )

    def preprocess_image(
        self, image: PIL.Image.Image | np.ndarray
    ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        rgb = to_rgb_pil(image)
        height, width = rgb.height, rgb.width
        if self.geometry == "square":
            new_h = new_w = self.image_size
        else:
            new_h, new_w = longest_side_size(height, width, self.image_size)
        if (new_h, new_w) != (height, width):
            bands = resize_uint8(np.asarray(rgb), (new_h, new_w), self.resample)
        else:
            bands = np.asarray(rgb).transpose(2, 0, 1)
        size = self.image_size
        pixel_values = np.zeros((3, size, size), dtype=np.float32)
        for channel, band in enumerate(bands):
            view = pixel_values[channel, :new_h, :new_w]
            np.multiply(band, self._scale[channel], out=view)
            view -= self._shift[channel]
        return pixel_values, (height, width), (new_h, new_w)

    def preprocess_mask(self, mask: PIL.Image.Image | np.ndarray, reshaped_size: tuple[int, int]) -> np.ndarray:
        binary = to_binary_mask(mask, self.mask_threshold)
        new_h, new_w = reshaped_size
        if binary.shape != (new_h, new_w):
            binary = np.asarray(PIL.Image.fromarray(binary).resize((new_w, new_h), resample=PIL.Image.NEAREST))
        gt_masks = np.zeros((1, self.image_size, self.image_size), dtype=np.float32)
        gt_masks[0, :new_h, :new_w] = binary
        return gt_masks

    def __call__(
        self,
        image: Any,
        mask: Any = None,
        source: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Preprocess one sample; `source` (a file name or sample id) only feeds error messages.

        `image` / `mask` may also be paths, bytes or `datasets.Image` dicts, and `image`
        a whole row `{"image": ..., "mask": ...}`.
        """
        if isinstance(image, dict) and mask is None and "image" in image:
            image, mask = image["image"], image.get("mask")
        if source is None and not isinstance(image, np.ndarray):
            source = describe_source(image)
        image = decode_image(image, "image")
        if mask is not None:
            mask = decode_image(mask, "mask")
            image_hw, mask_hw = image_size_hw(image), image_size_hw(mask)
            if image_hw != mask_hw:
                raise MaskSizeMismatchError(
                    f"Image and mask sizes differ for sample {source or '<unnamed>'}: image is {image_hw[1]}x"
                    f"{image_hw[0]} (WxH) but mask is {mask_hw[1]}x{mask_hw[0]}. Masks must be annotated at the "
                    "image's resolution: resize the mask with nearest-neighbour to the image size (or re-export "
                    "the pair), or drop the sample."
                )
        pixel_values, original_size, reshaped_size = self.preprocess_image(image)
        features = {
            "pixel_values": pixel_values,
            "original_sizes": np.asarray(original_size, dtype=np.int64),
            "reshaped_input_sizes": np.asarray(reshaped_size, dtype=np.int64),
        }
        if mask is not None:
            features["gt_masks"] = self.preprocess_mask(mask, reshaped_size)
        return features


def _image_processor_config(path: str):
    """A processor from a folder or Hub id; SAM 2's processors import torchvision, so where that fails
    their JSON config is read instead (the geometry and normalisation are all this module needs)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path)
    except (ImportError, OSError, ValueError, AttributeError) as err:
        import json
        import os

        for name in ("preprocessor_config.json", "processor_config.json"):
            file = os.path.join(path, name)
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as f:
                    config = json.load(f)
                return config.get("image_processor", config)
        raise err
