"""Retention: what fine-tuning cost, measured on what the base already segmented well (issue 30).

One or more retention sets are scored beside the target set, adapter against zero-shot base: by `InfoSAMTrainer`
at every `evaluate()` (`retention_dataset=`), and by examples/evaluate_adapter.py for an adapter that exists
(`--retention_dataset`). This module holds what both share, so that they report the same numbers under the same
names: how a set is prompted (`retention_collator`), how several sets' metrics become one family
(`merge_retention_metrics`), and the summary (`retention_summary`, `retention_lines`).

Metric names (`eval_` in the Trainer's logs, `zero_shot_` before training):

* `retention_iou`, `retention_dice`, `retention_iou@0.5`, `retention_dice@0.5`: the target set's metrics on the
  retention set (per object on instance data);
* on instance data, the prompt following of `infosam_hf.prompt_following` (every object prompted):
  `retention_object_iou`, the mean IoU per object of the mask at logit 0, and `retention_confusion`, the share of
  prompts whose mask covers more of another object of the image than of the prompted one (lower is better).

Where two sets give the same metric, the first set's value is kept: the built-in run scores the general domain's
one-mask split (IoU, Dice) and then its multi-object variant (prompt following).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

# What a set of several objects per image adds (`infosam_hf.prompt_following.PromptFollowingMetrics`).
PROMPT_FOLLOWING_KEYS = ("object_iou", "confusion")
# every object of an image prompted at once, as evaluation does (`build_collators`)
ALL_OBJECTS = 255


def retention_sets(retention_dataset) -> list:
    """`retention_dataset` as a list: None -> [], one set -> [it], a list or tuple as given."""
    if retention_dataset is None:
        return []
    return list(retention_dataset) if isinstance(retention_dataset, (list, tuple)) else [retention_dataset]


def is_instance_set(dataset) -> bool:
    """A set prepared by `prepare_instance_dataset` (several objects per image): scored per object, with prompt
    following."""
    return getattr(dataset, "instance_stats", None) is not None


def retention_collator(collator, dataset):
    """The evaluation collator for one retention set: a copy, so that the target's prompt sampler does not advance,
    with its sampler reseeded, so that every evaluation prompts the set alike (the prompts examples/evaluate_adapter.py
    draws with the same --seed); every object prompted on instance data, one prompt per image otherwise."""
    collator = copy.deepcopy(collator)
    sampler = getattr(collator, "prompt_sampler", None)
    if sampler is not None and hasattr(sampler, "reseed"):
        sampler.reseed(sampler.seed)
    if hasattr(collator, "max_objects_per_image"):
        collator.max_objects_per_image = ALL_OBJECTS if is_instance_set(dataset) else None
    return collator


def merge_retention_metrics(merged: dict, metrics: Mapping) -> dict:
    """Adds one set's metrics to those of the sets before it; a name an earlier set gave keeps its value."""
    for name, value in metrics.items():
        merged.setdefault(name, value)
    return merged


def retention_summary(before: Mapping, after: Mapping, before_prefix: str = "zero_shot",
                      after_prefix: str = "eval") -> dict:
    """The retention pairs of a run's summary (iou_before_after.json): `zero_shot_retention_<m>` and
    `retention_<m>` for IoU, Dice and, where measured, prompt following; empty without a retention set."""
    summary = {}
    for name in ("iou", "dice", *PROMPT_FOLLOWING_KEYS):
        key = f"retention_{name}"
        if f"{after_prefix}_{key}" in after:
            summary[f"zero_shot_{key}"] = before.get(f"{before_prefix}_{key}")
            summary[key] = after[f"{after_prefix}_{key}"]
    return summary


def retention_lines(summary: Mapping, name: str | None = None, per_object: bool = False) -> list[str]:
    """The before -> after lines of a run's retention set(s), as examples/train.py prints them."""
    name = name or "retention set"
    lines = []
    if "retention_iou" in summary:
        lines.append(
            f"{name} (retention) {'per-object ' if per_object else ''}IoU before "
            f"{summary['zero_shot_retention_iou']:.4f} -> after {summary['retention_iou']:.4f} (Dice "
            f"{summary['zero_shot_retention_dice']:.4f} -> {summary['retention_dice']:.4f})"
        )
    if "retention_object_iou" in summary:
        lines.append(
            f"{name} prompt following: IoU per object {summary['zero_shot_retention_object_iou']:.4f} -> "
            f"{summary['retention_object_iou']:.4f}, confusion {100 * summary['zero_shot_retention_confusion']:.1f}% "
            f"-> {100 * summary['retention_confusion']:.1f}%"
        )
    return lines


def evaluate_retention(model, processor, specs, image_column: str = "image", mask_column: str = "label",
                       corrupt_log=None, **evaluate_kwargs) -> dict | None:
    """The retention table of an adapter that exists (examples/evaluate_adapter.py): every `RetentionSpec` scored by
    `infosam_hf.evaluation.evaluate_segmentation` (instance sets with prompt following), the rows merged as the
    trainer merges its sets. `evaluate_kwargs`: the prompt and batch settings of `evaluate_segmentation`.

    Returns None without specs, else `sets` (what each set is and how much of it was scored), `metrics` (row ->
    metric -> value, rows `zero_shot` and `adapter` as `evaluate_segmentation`'s) and `improvement` when both rows
    ran."""
    from .data import load_segmentation_dataset
    from .evaluation import evaluate_segmentation

    if not specs:
        return None
    sets, rows = [], {}
    for spec in specs:
        raw = load_segmentation_dataset(spec.source, split=spec.split, streaming=False, image_column=image_column,
                                        mask_column=mask_column)
        scores = evaluate_segmentation(
            model, processor, raw, max_samples=spec.max_samples, instance_format=spec.instance_format,
            prompt_following=spec.instance_format is not None, corrupt_log=corrupt_log,
            dataset_description=f"The retention set {spec.source} [{spec.split}]", **evaluate_kwargs,
        )
        for row, values in scores["metrics"].items():
            merge_retention_metrics(rows.setdefault(row, {}), values)
        sets.append({"dataset": str(spec.source), "split": spec.split, "instance_format": spec.instance_format,
                     "num_images": scores["num_images"],
                     **({"num_objects": scores["num_objects"]} if spec.instance_format else {})})
    result = {"sets": sets, "metrics": rows}
    if "zero_shot" in rows and "adapter" in rows:
        result["improvement"] = {k: rows["adapter"][k] - rows["zero_shot"][k] for k in rows["adapter"]}
    return result


def describe_retention_sets(sets: list[dict]) -> str:
    """One line naming the scored retention sets, above the retention table."""
    parts = []
    for index, one in enumerate(sets):
        what = f"{one['dataset']} [{one['split']}], {one['num_images']} images"
        if one["instance_format"]:
            what += f", {one['num_objects']} objects, one prompt per object" + (
                " (prompt following)" if index else " (metrics per object, with prompt following)")
        parts.append(what)
    return "Retention: " + "; ".join(parts)
