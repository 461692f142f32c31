"""Does a SAM follow its prompts? Per-object IoU and the confusion rate on multi-object images.

A model that learned "segment the salient object" answers every prompt on an image with
the same mask: its IoU per object can still look fine on one-object data, so this
measures on images with several objects, one prompt per object, and counts a
*confusion* when the predicted mask covers more of another object than of the prompted
one. `PromptFollowingMetrics` accumulates both over an evaluation at each image's own size:
`InfoSAMTrainer`'s retention pass (through `WithPromptFollowing`) and
`infosam_hf.evaluation.evaluate_segmentation(prompt_following=True)` report them with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from .data.collator import SamSegmentationCollator
from .data.prompts import PromptSampler
from .inference import prompt_logits  # noqa: F401  (the batched decoder call; also imported from here)
from .packing import unpack_maps_per_image

# "point": one foreground pixel drawn uniformly (as in training: it may sit on the edge next to
# another object); "center_point": the SAM paper's 1-point protocol, the pixel deepest inside the object.
PROMPTS = ("box", "point", "center_point")


class CenterPointSampler(PromptSampler):
    """One foreground point at the object's centre: the maximum of its interior distance transform.

    The SAM paper (Kirillov et al. 2023, section 7.1) evaluates single points this way: a point drawn
    uniformly may land a pixel away from a touching object, where even a person could not say which
    object was meant. Image borders count as boundary; ties go to the first pixel in raster order.
    """

    def __init__(self, seed: int = 0):
        super().__init__(box_probability=0.0, num_points=1, seed=seed)  # the seed only serves an empty mask

    def points(self, mask, valid_size=None) -> tuple[np.ndarray, np.ndarray]:
        fg = self.valid_foreground(mask, valid_size)
        if not fg.any():
            return super().points(mask, valid_size)
        depth = distance_transform_edt(np.pad(fg, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return np.array([[x, y]], dtype=np.float32), np.ones(1, dtype=np.int64)


def _prompt_sampler(prompt: str, seed: int) -> tuple[PromptSampler, str]:
    if prompt == "box":
        return PromptSampler(box_probability=1.0, box_noise=0.0, seed=seed), "box"
    if prompt == "point":
        return PromptSampler(box_probability=0.0, num_points=1, seed=seed), "points"
    if prompt == "center_point":
        return CenterPointSampler(seed=seed), "points"
    raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}.")


@torch.no_grad()
def per_object_predictions(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Binary masks (B, N, S, S) for every prompt of a multi-object batch (SamModel or PeftModel)."""
    prompts = {k: batch[k] for k in ("input_boxes", "input_points", "input_labels") if k in batch}
    low = prompt_logits(model, batch["pixel_values"], **prompts).cpu()
    logits = F.interpolate(low.float(), size=batch["gt_masks"].shape[-2:], mode="bilinear", align_corners=False)
    return logits > 0


def score_objects(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, sizes: torch.Tensor) -> list[dict]:
    """One record per valid prompt: IoU with its object and whether another object of the image dominates."""
    records = []
    for b in range(pred.shape[0]):
        h, w = (int(v) for v in sizes[b])
        objects = gt[b, :, :h, :w] > 0.5
        count = int(valid[b].sum())
        for t in range(count):
            p = pred[b, t, :h, :w]
            overlaps = (p[None] & objects[:count]).flatten(1).sum(1).float()
            inter = overlaps[t].item()
            union = (p.sum() + objects[t].sum()).item() - inter
            others = torch.cat([overlaps[:t], overlaps[t + 1 :]])
            confused = bool(others.numel() and others.max().item() > inter)
            area = objects[t].sum().item() / float(h * w)
            records.append({"image": b, "iou": inter / max(union, 1.0), "confused": confused, "area": area})
    return records


class PromptFollowingMetrics:
    """IoU per object and the confusion rate over an evaluation, image by image (`score_objects` on each image's
    objects at the image's own size; a prompt's mask is logit > 0).

    `compute()` gives `object_iou` (the mean over objects of the IoU with the prompted object) and `confusion`
    (the share of prompts whose mask covers more of another object of the image than of the prompted one). Only
    floats are kept, never masks.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.records: list[dict] = []

    @property
    def num_objects(self) -> int:
        return len(self.records)

    def update_image(self, logits: Sequence[Any], masks: Sequence[Any]) -> None:
        """One image: the (h, w) logit map of every prompted object, and those objects' masks in the same order."""
        if len(logits) != len(masks):
            raise ValueError(f"{len(logits)} logit maps for {len(masks)} object masks of one image.")
        if not masks:
            return
        gt = torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for m in masks]))[None]
        pred = torch.from_numpy(np.stack([np.asarray(lg) for lg in logits]) > 0)[None]
        if pred.shape != gt.shape:
            raise ValueError(f"Logit maps {tuple(pred.shape[1:])} and object masks {tuple(gt.shape[1:])} differ.")
        every = torch.ones(gt.shape[:2], dtype=torch.bool)
        self.records += score_objects(pred, gt, every, torch.tensor([gt.shape[-2:]]))

    def compute(self) -> dict[str, float]:
        if not self.records:
            raise ValueError("PromptFollowingMetrics.compute() called before any object was scored.")
        return {"object_iou": float(np.mean([r["iou"] for r in self.records])),
                "confusion": float(np.mean([r["confused"] for r in self.records]))}


class WithPromptFollowing:
    """A Trainer `compute_metrics` for instance data, plus `PromptFollowingMetrics`' `object_iou` and `confusion`.

    `InfoSAMTrainer` packs the evaluation's logits and masks one row per image (`pack_maps_per_image`), so every
    object of an image arrives together, as the confusion rate needs. Works with and without
    `batch_eval_metrics` (`compute_result`), like the metrics it wraps.
    """

    def __init__(self, compute_metrics):
        self.compute_metrics = compute_metrics
        self.metrics = PromptFollowingMetrics()

    def __call__(self, eval_pred, compute_result: bool | None = None) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        predictions = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
        labels = labels[0] if isinstance(labels, (tuple, list)) else labels
        for logit_maps, masks in zip(unpack_maps_per_image(predictions), unpack_maps_per_image(labels)):
            self.metrics.update_image(logit_maps, masks)
        if compute_result is None:
            result = self.compute_metrics(eval_pred)
        else:
            result = self.compute_metrics(eval_pred, compute_result=compute_result)
            if not compute_result:
                return result
        try:
            return {**result, **self.metrics.compute()}
        finally:
            self.metrics.reset()


# Object size bins (share of the image): where a model's errors sit, small objects or all of them.
SIZE_BINS = (("under 2%", 0.0, 0.02), ("2-5%", 0.02, 0.05), ("over 5%", 0.05, 1.01))


def size_bin(area: float) -> str:
    return next(name for name, low, high in SIZE_BINS if low <= area < high)


def summarise_by_size(records: list[dict]) -> dict[str, dict[str, float]]:
    """IoU per object and confusion rate within each size bin (bins without objects are left out)."""
    summary = {}
    for name, _, _ in SIZE_BINS:
        chosen = [r for r in records if size_bin(r["area"]) == name]
        if chosen:
            summary[name] = {
                "objects": len(chosen),
                "iou_per_object": float(np.mean([r["iou"] for r in chosen])),
                "confusion_rate": float(np.mean([r["confused"] for r in chosen])),
            }
    return summary


def mask_resolution_ceiling(rows: list[dict[str, Any]], mask_size: int) -> dict[str, Any]:
    """The IoU per object a perfect `mask_size` x `mask_size` logit map could reach after SAM's upsampling.

    Each ground-truth mask is area-averaged down to the model's low-resolution mask size,
    bilinearly upsampled back as predictions are, and thresholded at 0.5: what is lost is
    what the mask resolution alone costs, so a model's IoU is read against this, not 1.
    """
    records = []
    for row in rows:
        gt = torch.as_tensor(np.asarray(row["gt_masks"]), dtype=torch.float32)[None]
        low = F.adaptive_avg_pool2d(gt, mask_size)
        best = F.interpolate(low, size=gt.shape[-2:], mode="bilinear", align_corners=False) > 0.5
        every = torch.ones(gt.shape[:2], dtype=torch.bool)
        records += score_objects(best, gt, every, torch.as_tensor(row["reshaped_input_sizes"])[None])
    return {"iou_per_object": float(np.mean([r["iou"] for r in records])), "objects": len(records),
            "by_size": {k: v["iou_per_object"] for k, v in summarise_by_size(records).items()}}


def evaluate_prompt_following(
    model, rows: list[dict[str, Any]], prompt: str = "box", batch_size: int = 16, seed: int = 0
) -> dict[str, float]:
    """Mean IoU per object, mean per image, confusion rate, over `rows` of `prepare_instance_dataset`."""
    sampler, kind = _prompt_sampler(prompt, seed)
    collator = SamSegmentationCollator(sampler, prompt_type=kind, max_objects_per_image=255)
    model.eval()
    every, per_image = [], []
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start : start + batch_size])
        pred = per_object_predictions(model, batch)
        records = score_objects(pred, batch["gt_masks"], batch["prompt_mask"], batch["reshaped_input_sizes"])
        every += records
        for b in sorted({r["image"] for r in records}):
            per_image.append(np.mean([r["iou"] for r in records if r["image"] == b]))
    return {
        "iou_per_object": float(np.mean([r["iou"] for r in every])),
        "iou_per_image": float(np.mean(per_image)),
        "confusion_rate": float(np.mean([r["confused"] for r in every])),
        "objects": len(every),
        "images": len(per_image),
        "by_size": summarise_by_size(every),
    }
