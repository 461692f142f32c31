"""Batches exactly as `SamModel` takes them, plus the ground truth under `gt_masks`.

The ground truth is not called `labels` on purpose: `SamModel.forward` takes `**kwargs`,
so the Trainer would assume the model scales its own loss for gradient accumulation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .prompts import PAD_LABEL, PromptSampler

PROMPT_TYPES = ("mixed", "box", "points")


class SamSegmentationCollator:
    """Stacks preprocessed samples and samples one prompt per image from its mask.

    `prompt_type="mixed"` draws boxes or points per batch with the sampler's
    `box_probability` (training); "box" / "points" fix it (evaluation).
    """

    def __init__(self, prompt_sampler: PromptSampler | None = None, prompt_type: str = "mixed"):
        if prompt_type not in PROMPT_TYPES:
            raise ValueError(f"prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}.")
        self.prompt_sampler = prompt_sampler or PromptSampler()
        self.prompt_type = prompt_type

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Cannot collate an empty list of samples.")
        missing = [k for k in ("pixel_values", "gt_masks") if k not in features[0]]
        if missing:
            raise KeyError(
                f"Samples lack {missing}; run the dataset through infosam_hf.data.prepare_dataset (or "
                f"SamSegmentationPreprocessor) first. Got keys {sorted(features[0])}."
            )
        batch = {
            "pixel_values": torch.stack([torch.as_tensor(np.asarray(f["pixel_values"]), dtype=torch.float32) for f in features]),
            "gt_masks": torch.stack([torch.as_tensor(np.asarray(f["gt_masks"]), dtype=torch.float32) for f in features]),
        }
        size = batch["pixel_values"].shape[-1]
        for key in ("original_sizes", "reshaped_input_sizes"):
            if key in features[0]:
                batch[key] = torch.stack([torch.as_tensor(np.asarray(f[key]), dtype=torch.int64) for f in features])
        valid = batch.get("reshaped_input_sizes", torch.tensor([[size, size]] * len(features)))
        masks = batch["gt_masks"][:, 0].numpy()
        sampler = self.prompt_sampler
        use_box = self.prompt_type == "box" or (self.prompt_type == "mixed" and sampler.choose_box())
        if use_box:
            boxes = [sampler.box(m, tuple(int(v) for v in hw)) for m, hw in zip(masks, valid)]
            batch["input_boxes"] = torch.from_numpy(np.stack(boxes))[:, None, :]
        else:
            sampled = [sampler.points(m, tuple(int(v) for v in hw)) for m, hw in zip(masks, valid)]
            n = max(len(labels) for _, labels in sampled)
            points = np.zeros((len(sampled), 1, n, 2), dtype=np.float32)
            labels = np.full((len(sampled), 1, n), PAD_LABEL, dtype=np.int64)
            for i, (coords, lab) in enumerate(sampled):
                points[i, 0, : len(lab)] = coords
                labels[i, 0, : len(lab)] = lab
            batch["input_points"] = torch.from_numpy(points)
            batch["input_labels"] = torch.from_numpy(labels)
        return batch
