"""Batches of preprocessed samples -> exactly the keyword arguments of `SamModel`, plus `gt_masks`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .prompts import PROMPT_TYPES, PromptSampler

# Evaluation rows prepared with `prepare_dataset(..., keep_original_mask=True)` carry the mask at the
# image's own size under this key; the collator passes them on as a list (sizes differ) for the metrics.
ORIGINAL_MASKS_KEY = "gt_original"


def _as_numpy(value: Any, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


class SamSegmentationCollator:
    """Stacks samples and draws one prompt per image.

    Output keys: `pixel_values` (B, 3, S, S) float32, `gt_masks` (B, 1, S, S) float32,
    `original_sizes` / `reshaped_input_sizes` (B, 2) int64, and either `input_boxes`
    (B, 1, 4) float32 or `input_points` (B, 1, N, 2) float32 + `input_labels` (B, 1, N)
    int64. Nothing else, so that `SamModel(**batch_without_gt_masks)` works as is.

    `prompt_type="mixed"` draws boxes or points once per batch with the sampler's
    `box_probability` (training); `"box"` or `"points"` fixes it (evaluation).

    Samples that `prepare_dataset` marked as corrupt in a map-style dataset arrive with
    `pixel_values=None` and are dropped here (a map-style dataset cannot drop rows).
    """

    def __init__(self, prompt_sampler: PromptSampler | None = None, prompt_type: str = "mixed"):
        if prompt_type not in PROMPT_TYPES:
            raise ValueError(f"prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}.")
        self.prompt_sampler = prompt_sampler if prompt_sampler is not None else PromptSampler()
        self.prompt_type = prompt_type

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prompt_sampler={self.prompt_sampler!r}, prompt_type={self.prompt_type!r})"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        features = [f for f in features if f is not None and f.get("pixel_values") is not None]
        if not features:
            raise ValueError(
                "Every sample of this batch was corrupt or missing (see the warnings naming the files); "
                "fix or remove those files."
            )
        missing = [key for key in ("pixel_values", "gt_masks") if key not in features[0]]
        if missing:
            raise KeyError(
                f"The collator needs preprocessed samples with {missing}; got keys {sorted(features[0])}. "
                "Run the dataset through infosam_hf.data.prepare_dataset(dataset, preprocessor) first."
            )
        gt_masks = np.stack([_as_numpy(f["gt_masks"], np.float32) for f in features])
        frame = gt_masks.shape[-2:]  # samples made elsewhere may lack the sizes: then the whole frame is valid
        reshaped = np.stack([_as_numpy(f.get("reshaped_input_sizes", frame), np.int64).reshape(2) for f in features])
        original = np.stack(
            [_as_numpy(f.get("original_sizes", r), np.int64).reshape(2) for f, r in zip(features, reshaped)]
        )
        batch = {
            "pixel_values": torch.from_numpy(np.stack([_as_numpy(f["pixel_values"], np.float32) for f in features])),
            "gt_masks": torch.from_numpy(gt_masks),
            "original_sizes": torch.from_numpy(original),
            "reshaped_input_sizes": torch.from_numpy(reshaped),
        }
        if ORIGINAL_MASKS_KEY in features[0]:
            batch[ORIGINAL_MASKS_KEY] = [np.asarray(f[ORIGINAL_MASKS_KEY]) for f in features]
        sampler = self.prompt_sampler
        kind = sampler.choose_prompt_type() if self.prompt_type == "mixed" else self.prompt_type
        if kind == "box":
            boxes = np.stack([sampler.box(m, hw) for m, hw in zip(gt_masks, reshaped)])
            batch["input_boxes"] = torch.from_numpy(boxes[:, None, :])
        else:
            drawn = [sampler.points(m, hw) for m, hw in zip(gt_masks, reshaped)]
            batch["input_points"] = torch.from_numpy(np.stack([c for c, _ in drawn])[:, None])
            batch["input_labels"] = torch.from_numpy(np.stack([labels for _, labels in drawn])[:, None])
        return batch
