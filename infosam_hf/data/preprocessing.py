"""SAM's geometry for an image and its mask: longest side to the model size, pad bottom-right, normalise.

Written with PIL and numpy rather than through `SamProcessor` for two reasons: the
mask must follow exactly the same resize (nearest neighbour) and padding as the image,
which the processor does not do for training labels; and the per-sample cost matters
when a GPU waits on a 2-core data loader. The numbers match `SamProcessor`'s (tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image

from .images import decode_image, describe_source, image_size_hw, to_binary_mask, to_rgb_pil

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def longest_side_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """SAM's `ResizeLongestSide`: the (h, w) after scaling the longest side to `longest`, rounded half up."""
    scale = longest / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class SamSegmentationPreprocessor:
    """One (image, mask) -> `pixel_values`, `gt_masks`, `original_sizes`, `reshaped_input_sizes`."""

    def __init__(
        self,
        image_size: int = 1024,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        rescale_factor: float = 1 / 255,
    ):
        self.image_size = int(image_size)
        self.mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
        self.rescale_factor = float(rescale_factor)

    @classmethod
    def from_processor(cls, processor: Any) -> "SamSegmentationPreprocessor":
        """From a `SamProcessor`, its image processor, or a path/Hub id to load one from."""
        if isinstance(processor, str):
            from transformers import SamProcessor

            processor = SamProcessor.from_pretrained(processor)
        image_processor = getattr(processor, "image_processor", processor)
        size = getattr(image_processor, "size", None) or {}
        longest = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
        return cls(
            image_size=int(longest or 1024),
            image_mean=tuple(image_processor.image_mean),
            image_std=tuple(image_processor.image_std),
            rescale_factor=float(getattr(image_processor, "rescale_factor", 1 / 255)),
        )

    def __call__(self, image: Any, mask: Any = None) -> dict[str, np.ndarray]:
        if isinstance(image, dict) and mask is None and "image" in image:
            image, mask = image["image"], image.get("mask")
        source = describe_source(image)
        rgb = to_rgb_pil(decode_image(image, "image"))
        height, width = rgb.height, rgb.width
        new_h, new_w = longest_side_size(height, width, self.image_size)
        resized = np.asarray(rgb.resize((new_w, new_h), PIL.Image.BILINEAR), dtype=np.float32)
        pixels = np.zeros((3, self.image_size, self.image_size), dtype=np.float32)
        pixels[:, :new_h, :new_w] = (resized.transpose(2, 0, 1) * self.rescale_factor - self.mean) / self.std
        out = {
            "pixel_values": pixels,
            "original_sizes": np.array([height, width], dtype=np.int64),
            "reshaped_input_sizes": np.array([new_h, new_w], dtype=np.int64),
        }
        if mask is not None:
            decoded = decode_image(mask, "mask")
            mask_hw = image_size_hw(decoded)
            if mask_hw != (height, width):
                raise ValueError(
                    f"Image {source!r} is {height}x{width} but its mask {describe_source(mask)!r} is "
                    f"{mask_hw[0]}x{mask_hw[1]} (HxW). Each mask must have its image's size; re-export the mask "
                    "at the image's resolution or fix the image/mask pairing."
                )
            binary = to_binary_mask(decoded)
            resized_mask = PIL.Image.fromarray(binary * 255).resize((new_w, new_h), PIL.Image.NEAREST)
            gt = np.zeros((1, self.image_size, self.image_size), dtype=np.float32)
            gt[0, :new_h, :new_w] = np.asarray(resized_mask) > 0
            out["gt_masks"] = gt
        return out
