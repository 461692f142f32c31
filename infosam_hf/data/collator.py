"""Batches of preprocessed samples -> exactly the keyword arguments of `SamModel`, plus `gt_masks`."""

from __future__ import annotations

import collections
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


def _image_fields(features: list[dict[str, Any]], gt_masks: np.ndarray) -> dict[str, torch.Tensor]:
    frame = gt_masks.shape[-2:]  # samples made elsewhere may lack the sizes: then the whole frame is valid
    reshaped = np.stack([_as_numpy(f.get("reshaped_input_sizes", frame), np.int64).reshape(2) for f in features])
    original = np.stack(
        [_as_numpy(f.get("original_sizes", r), np.int64).reshape(2) for f, r in zip(features, reshaped)]
    )
    return {
        "pixel_values": torch.from_numpy(np.stack([_as_numpy(f["pixel_values"], np.float32) for f in features])),
        "gt_masks": torch.from_numpy(gt_masks),
        "original_sizes": torch.from_numpy(original),
        "reshaped_input_sizes": torch.from_numpy(reshaped),
    }


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

    Several objects per image (`prepare_instance_dataset`, `gt_masks` (K, S, S)): with
    `max_objects_per_image=N` every image gets up to N prompts, one per object (a random
    subset when it has more), as SAM's point-batch dimension: `gt_masks` (B, N, S, S),
    `input_boxes` (B, N, 4) or `input_points` (B, N, P, 2) + `input_labels` (B, N, P), and
    `prompt_mask` (B, N) bool, False for the padding of images with fewer than N objects
    (N is the largest object count of the batch, capped at `max_objects_per_image`). A
    padded slot repeats the image's first prompt and ground truth; the loss and the
    metrics leave it out. Rows prepared with `keep_original_mask=True` add `gt_original`:
    each prompted object's mask at its image's own size, one per valid prompt, in
    `prompt_mask.nonzero()` order (image by image), for the metrics.
    """

    def __init__(
        self,
        prompt_sampler: PromptSampler | None = None,
        prompt_type: str = "mixed",
        max_objects_per_image: int | None = None,
    ):
        if prompt_type not in PROMPT_TYPES:
            raise ValueError(f"prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}.")
        if max_objects_per_image is not None and max_objects_per_image < 1:
            raise ValueError(f"max_objects_per_image must be >= 1 (or None), got {max_objects_per_image}.")
        self.prompt_sampler = prompt_sampler if prompt_sampler is not None else PromptSampler()
        self.prompt_type = prompt_type
        self.max_objects_per_image = max_objects_per_image
        self._calls = 0  # batches made in this process, and the sampler's state before each of the last few
        self._states_before_call: collections.deque = collections.deque(maxlen=16)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(prompt_sampler={self.prompt_sampler!r}, prompt_type={self.prompt_type!r}, "
            f"max_objects_per_image={self.max_objects_per_image!r})"
        )

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """What a checkpoint keeps of the collator: its prompt sampler's random state (see `InfoSAMTrainer`).

        `batches_consumed`: the state as it was before the batch after the first `batches_consumed` batches this
        collator made since it was built or loaded. A data loader collates ahead of training (accelerate fetches one
        batch in advance), so at a checkpoint the sampler has already drawn the prompts of a batch that was not
        trained on: the resumed run must draw them again.
        """
        state = self.prompt_sampler.state_dict()
        if batches_consumed is not None and batches_consumed < self._calls:
            before = dict(self._states_before_call)
            if batches_consumed not in before:
                raise RuntimeError(
                    f"The collator made {self._calls} batches but only {batches_consumed} were trained on: more than "
                    f"{self._states_before_call.maxlen} batches ahead, its random state cannot be checkpointed."
                )
            state = before[batches_consumed]
        return {"prompt_sampler": state}

    def load_state_dict(self, state: dict) -> None:
        self.prompt_sampler.load_state_dict(state["prompt_sampler"])
        self._calls = 0
        self._states_before_call.clear()

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        self._states_before_call.append((self._calls, self.prompt_sampler.state_dict()))
        self._calls += 1
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
        if self.max_objects_per_image is not None:
            return self._multi_object_batch(features)
        counts = [np.shape(f["gt_masks"])[0] if np.ndim(f["gt_masks"]) == 3 else 1 for f in features]
        if max(counts) > 1:
            raise ValueError(
                f"A sample has {max(counts)} object masks (instance data) but the collator draws one prompt per "
                "image; pass SamSegmentationCollator(max_objects_per_image=N) (examples/train.py: "
                "--max_objects_per_image N)."
            )
        gt_masks = np.stack([_as_numpy(f["gt_masks"], np.float32) for f in features])
        batch = _image_fields(features, gt_masks)
        reshaped = batch["reshaped_input_sizes"].numpy()
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

    def _multi_object_batch(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sampler = self.prompt_sampler
        objects, originals = [], []
        for f in features:
            masks = _as_numpy(f["gt_masks"], np.float32)
            masks = masks[None] if masks.ndim == 2 else masks
            keep = np.arange(masks.shape[0])
            if masks.shape[0] > self.max_objects_per_image:  # a random subset, in annotation order
                keep = np.sort(sampler.rng.choice(masks.shape[0], self.max_objects_per_image, replace=False))
                masks = masks[keep]
            objects.append(masks)
            if ORIGINAL_MASKS_KEY in f:
                original = f[ORIGINAL_MASKS_KEY]
                originals += [np.asarray(original[k]) for k in keep]
        size = objects[0].shape[-2:]
        n = max(m.shape[0] for m in objects)
        gt_masks = np.zeros((len(features), n, *size), dtype=np.float32)
        prompt_mask = np.zeros((len(features), n), dtype=bool)
        for index, masks in enumerate(objects):
            gt_masks[index, : masks.shape[0]] = masks
            gt_masks[index, masks.shape[0] :] = masks[0]  # padding repeats a real object: any prompt is valid
            prompt_mask[index, : masks.shape[0]] = True
        batch = _image_fields(features, gt_masks)
        batch["prompt_mask"] = torch.from_numpy(prompt_mask)
        if originals:
            batch[ORIGINAL_MASKS_KEY] = originals
        reshaped = batch["reshaped_input_sizes"].numpy()
        kind = sampler.choose_prompt_type() if self.prompt_type == "mixed" else self.prompt_type

        def per_image(draw, masks, hw, count):
            drawn = [draw(m, hw) for m in masks[:count]]
            return drawn + [drawn[0]] * (n - count)

        counts = [m.shape[0] for m in objects]
        if kind == "box":
            boxes = [per_image(sampler.box, m, hw, c) for m, hw, c in zip(gt_masks, reshaped, counts)]
            batch["input_boxes"] = torch.from_numpy(np.asarray(boxes, dtype=np.float32))
        else:
            drawn = [per_image(sampler.points, m, hw, c) for m, hw, c in zip(gt_masks, reshaped, counts)]
            batch["input_points"] = torch.from_numpy(np.asarray([[p for p, _ in d] for d in drawn], dtype=np.float32))
            batch["input_labels"] = torch.from_numpy(np.asarray([[lab for _, lab in d] for d in drawn], dtype=np.int64))
        return batch
