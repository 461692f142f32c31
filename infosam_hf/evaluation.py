"""Scoring a SAM model (with or without its InfoSAM adapter) on a segmentation dataset, at the original image size.

    from infosam_hf import load
    from infosam_hf.data import load_segmentation_dataset
    from infosam_hf.evaluation import evaluate_segmentation

    model, processor = load("user/sam-vit-base-polyp-infosam")
    dataset = load_segmentation_dataset("/data/polyp", split="test")
    result = evaluate_segmentation(model, processor, dataset)   # {"metrics": {"zero_shot": ..., "adapter": ...}, ...}

Both rows are measured in one pass over the data, on the same batches with the same prompts: the
zero-shot row runs the adapter's own base weights with the adapter switched off
(`PeftModel.disable_adapter()`), so no second copy of SAM is loaded. The padded-square logits are
cropped to the valid region and resized to each image (as `SamProcessor.post_process_masks` does),
then scored by `infosam_hf.metrics.SegmentationMetrics` against the dataset's own mask.
`examples/evaluate_adapter.py` is the command line over `evaluate_segmentation`.
"""

from __future__ import annotations

import contextlib
import logging
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import (
    CorruptImageError,
    CorruptSampleLog,
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    decode_image,
    to_binary_mask,
)
from .data.images import image_size_hw
from .data.instances import decode_instances
from .data.sources import _without_decoding
from .inference import postprocess_logits, prompt_logits, sam_low_res_logits
from .metrics import SegmentationMetrics
from .prompt_following import PromptFollowingMetrics

logger = logging.getLogger("infosam_hf.evaluate")

ROW_LABELS = {"zero_shot": "zero-shot base", "adapter": "adapter"}
PROMPT_KEYS = ("input_boxes", "input_points", "input_labels")
# The InfoSAM reference code's structure measures (clipped logits, adaptive E-measure, beta^2 = 0.3).
REFERENCE_PROTOCOL = dict(structure_measures=True, structure_input="clip", e_measure_mode="adaptive", wf_beta2=0.3)


class EvaluationStream(torch.utils.data.IterableDataset):
    """Raw `{image, mask}` rows -> model features plus the binary mask at the original size.

    The ground truth is scored at the image's own resolution, so the original mask
    travels beside the preprocessed tensors. With several workers, a streamed
    `datasets.IterableDataset` splits itself between them (by shard); any other dataset
    is split here, each worker taking every `num_workers`-th image (decoded only by the
    worker that keeps it).
    """

    def __init__(self, dataset, preprocessor: SamSegmentationPreprocessor, corrupt_log: CorruptSampleLog | None = None,
                 instances=None, min_object_area=4):
        # Image columns as undecoded bytes/paths: skipped rows (other workers' images) then cost no decoding.
        self.dataset = dataset if getattr(dataset, "features", None) is None else _without_decoding(dataset)
        self.preprocessor = preprocessor
        self.corrupt_log = corrupt_log if corrupt_log is not None else CorruptSampleLog()
        self.instances = instances
        self.min_object_area = min_object_area
        self.images_without_objects = 0  # counted in the main process only (num_workers=0)

    def __iter__(self):
        from datasets import IterableDataset

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if isinstance(self.dataset, IterableDataset):
            worker, workers = 0, 1  # it already yields only this worker's shards
        for index, row in enumerate(self.dataset):
            if index % workers != worker:
                continue
            if self.instances:
                features = self._instances(row, index)
                if features is not None:
                    yield features
                continue
            name = _source_name(row["image"], index)
            try:  # a bad sample is skipped, counted and named, as in training
                image, mask = decode_image(row["image"], "image"), decode_image(row["mask"], "mask")
                features = self.preprocessor(image, mask, source=name)
            except CorruptImageError as err:
                self.corrupt_log.add(name, err)
                continue
            features["gt_original"] = to_binary_mask(mask, self.preprocessor.mask_threshold)
            yield features

    def _instances(self, row, index: int):
        """One prompt per object; an image without any object has nothing to prompt: counted and left out."""
        source = _source_name(row["image"], index)
        try:  # a bad sample is skipped, counted and named, as in training
            image = decode_image(row["image"], "image")
            masks = decode_instances(row["mask"], self.instances, image_size_hw(image), source)
        except CorruptImageError as err:
            self.corrupt_log.add(source, err)
            return None
        masks = [m for m in masks if int(m.sum()) >= self.min_object_area]
        if not masks:
            self.images_without_objects += 1
            logger.warning("%s has no object to prompt: left out of the per-object metrics.", source)
            return None
        features = self.preprocessor(image, None, source=source)
        reshaped = tuple(int(v) for v in features["reshaped_input_sizes"])
        features["gt_masks"] = np.concatenate([self.preprocessor.preprocess_mask(m, reshaped) for m in masks])
        features["gt_original"] = [m.astype(np.uint8) for m in masks]
        return features


def _source_name(value, index: int) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"<sample #{index}>"


class EvaluationCollator:
    """Stacks features and samples the prompt (the same one for both models); keeps the original masks as a list."""

    def __init__(self, prompt: str, num_points: int, box_noise: float, seed: int, instances: bool = False):
        sampler = PromptSampler(
            box_probability=1.0 if prompt == "box" else 0.0, num_points=num_points, box_noise=box_noise, seed=seed
        )
        # instance data: every object of an image is prompted (one mask per prompt)
        self.collator = SamSegmentationCollator(sampler, prompt_type=prompt,
                                                max_objects_per_image=255 if instances else None)

    def __call__(self, features):
        originals = [f.pop("gt_original") for f in features]
        batch = self.collator(features)
        batch["gt_original"] = originals
        return batch


def first_samples(dataset, max_samples: int | None):
    """The first `max_samples` rows (all without it), and their number when it is known."""
    from datasets import IterableDataset

    if isinstance(dataset, IterableDataset):
        if max_samples is None:
            return dataset, None
        return dataset.take(max_samples), max_samples  # a streamed split may hold fewer: the bar then stops early
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    return dataset, len(dataset)


def score_batches(model, loader, runs: dict, metric_kwargs: dict, total: int | None, disable_tqdm: bool = False,
                  prompt_following: dict | None = None):
    """One pass over the data; every run (zero-shot, adapter) scores the same batch, prompts included.

    `prompt_following` (instance data): run name -> `PromptFollowingMetrics`, fed each image's objects together."""
    metrics = {name: SegmentationMetrics(**metric_kwargs) for name in runs}
    metrics_image_of_object = []  # instance data: the image of every scored object, in update order
    images_seen = 0
    with tqdm(total=total, unit="img", desc="evaluating", disable=disable_tqdm) as progress:
        for batch in loader:
            prompts = {k: batch[k] for k in PROMPT_KEYS if k in batch}
            size = batch["pixel_values"].shape[-1]
            if "prompt_mask" in batch:
                valid = batch["prompt_mask"]
                image = valid.nonzero()[:, 0]
                metrics_image_of_object.extend((image + images_seen).tolist())
                images_seen += len(batch["gt_original"])
                gts = [m for masks in batch["gt_original"] for m in masks]
                for name, context in runs.items():
                    with context():
                        logits = prompt_logits(model, batch["pixel_values"], **prompts).cpu()[valid]
                    if prompt_following is not None:
                        _score_objects_of_images(metrics[name], prompt_following[name], logits, gts, image, batch)
                        continue
                    metrics[name].update(
                        logits,
                        gts,
                        original_size=batch["original_sizes"][image],
                        reshaped_input_size=batch["reshaped_input_sizes"][image],
                        pad_size=size,
                    )
                progress.update(len(batch["gt_original"]))
                continue
            for name, context in runs.items():
                with context():
                    logits = sam_low_res_logits(model, batch["pixel_values"], **prompts).cpu()
                metrics[name].update(
                    logits,
                    batch["gt_original"],
                    original_size=batch["original_sizes"],
                    reshaped_input_size=batch["reshaped_input_sizes"],
                    pad_size=size,
                )
            progress.update(len(batch["gt_original"]))
    for accumulator in metrics.values():
        accumulator.image_of_object = metrics_image_of_object
    return metrics


def _score_objects_of_images(metrics: SegmentationMetrics, following, logits, gts, image, batch) -> None:
    """Each object's logits at its image's own size, scored as `SegmentationMetrics.update` scores them, and each
    image's objects together for prompt following."""
    size, image_of = batch["pixel_values"].shape[-1], image.tolist()
    maps = [postprocess_logits(logits[i : i + 1], batch["original_sizes"][j], batch["reshaped_input_sizes"][j],
                               size)[0] for i, j in enumerate(image_of)]
    objects_of: dict[int, list[int]] = {}  # image -> its objects, in batch order
    for i, (logit_map, gt, j) in enumerate(zip(maps, gts, image_of)):
        metrics.update(logit_map[None], gt[None])
        objects_of.setdefault(j, []).append(i)
    for objects in objects_of.values():
        following.update_image([maps[i] for i in objects], [gts[i] for i in objects])


def per_image_means(accumulator) -> dict[str, float]:
    """Instance data: each image's mean over its objects, then the mean over images."""
    image = np.asarray(accumulator.image_of_object)
    return {
        key: float(np.mean([values[image == i].mean() for i in np.unique(image)]))
        for key, values in accumulator.per_image().items()
    }


def evaluate_segmentation(
    model,
    processor,
    dataset,
    *,
    prompt: str = "box",
    num_points: int = 1,
    box_noise: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    num_workers: int = 0,
    max_samples: int | None = None,
    instance_format: str | None = None,
    min_object_area: int = 4,
    structure_measures: bool = False,
    reference_protocol: bool = False,
    compare_base: bool = True,
    disable_tqdm: bool = False,
    corrupt_log: CorruptSampleLog | None = None,
    dataset_description: str = "The dataset",
    prompt_following: bool = False,
) -> dict:
    """Scores `model` on `dataset` (rows with `image` and `mask`, as `load_segmentation_dataset` returns them).

    A PEFT model (an InfoSAM adapter) gives the row "adapter" and, with `compare_base`, the row "zero_shot" (its
    base, adapter switched off, same prompts); any other model the row "zero_shot" only. `instance_format`
    ('ids', 'masks', 'coco'): one prompt per object and metrics per object, plus per image under
    `metrics_per_image`; with `prompt_following`, each row adds `object_iou` and `confusion`
    (`infosam_hf.prompt_following.PromptFollowingMetrics`, as `InfoSAMTrainer`'s retention pass reports them).
    `reference_protocol`: structure measures as the InfoSAM reference code computes them.
    Returns `num_images`, `prompt`, `protocol`, `metrics` (row -> name -> value), `improvement` (adapter - base)
    when both rows ran, and `skipped_samples` (undecodable rows, skipped and counted in `corrupt_log` as in
    training). `dataset_description` starts the error raised when no image could be scored.
    """
    from peft import PeftModel

    dataset, total = first_samples(dataset, max_samples)
    corrupt_log = corrupt_log if corrupt_log is not None else CorruptSampleLog()
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    stream = EvaluationStream(dataset, preprocessor, corrupt_log, instance_format, min_object_area)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=batch_size,
        collate_fn=EvaluationCollator(prompt, num_points, box_noise, seed, instance_format is not None),
        num_workers=num_workers,
    )
    runs = {}  # row name -> context the forward runs in
    if not isinstance(model, PeftModel):
        runs["zero_shot"] = contextlib.nullcontext
    else:
        if compare_base:
            runs["zero_shot"] = model.disable_adapter  # the adapter's own base weights, adapter switched off
        runs["adapter"] = contextlib.nullcontext
    metric_kwargs = REFERENCE_PROTOCOL if reference_protocol else dict(structure_measures=structure_measures)

    following = {name: PromptFollowingMetrics() for name in runs} if prompt_following and instance_format else None
    accumulators = score_batches(model, loader, runs, metric_kwargs, total, disable_tqdm, following)
    reference = next(iter(accumulators.values()))
    num_images = reference.num_images  # objects, with instance data
    if instance_format:
        num_objects, num_images = num_images, len(set(reference.image_of_object))
    if num_images == 0:
        why = f" Every sample was skipped: {' | '.join(corrupt_log.reasons)}" if corrupt_log.count else ""
        raise ValueError(f"{dataset_description} gave no images to evaluate.{why}")
    scores = {name: acc.compute() for name, acc in accumulators.items()}
    for name, accumulator in (following or {}).items():
        scores[name].update(accumulator.compute())
    for name, values in scores.items():
        bad = {k: v for k, v in values.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)}
        if bad:  # a broken metric must never reach a results table
            raise RuntimeError(f"Metrics of the {ROW_LABELS[name]} out of [0, 1]: {bad}.")

    result = {
        "num_images": num_images,
        "prompt": {"type": prompt, "num_points": num_points if prompt == "points" else None,
                   "box_noise": box_noise, "seed": seed},
        "protocol": {
            "thresholds": list(reference.thresholds),
            "threshold_on": reference.threshold_on,
            "structure_measures": reference.structure_measures,
            "structure_input": reference.structure_input,
            "e_measure_mode": reference.e_measure_mode,
            "wf_beta2": reference.wf_beta2,
            "size": "original image",
        },
        "metrics": scores,
    }
    if instance_format:  # `metrics` are per object (mean over objects); these are per image (mean of its objects)
        result["metrics_per"] = "object"
        result["num_objects"] = num_objects
        result["images_without_objects"] = stream.images_without_objects
        result["metrics_per_image"] = {name: per_image_means(acc) for name, acc in accumulators.items()}
    if "zero_shot" in scores and "adapter" in scores:
        result["improvement"] = {k: scores["adapter"][k] - scores["zero_shot"][k] for k in scores["adapter"]}
    if corrupt_log.count:
        result["skipped_samples"] = list(corrupt_log.skipped)
    return result


def base_name(model, base: str | None) -> str | None:
    """The base model's name for the results: the one given, else the one the adapter records."""
    if base is not None:
        return base
    config = getattr(model, "peft_config", {}).get("default")
    return getattr(config, "base_model_name_or_path", None)


def describe_prompt(prompt: str, num_points: int = 1, box_noise: float = 0.0) -> str:
    if prompt == "box":
        return "box prompt" + (f" (jitter {box_noise})" if box_noise else "")
    return f"{num_points} point{'s' if num_points > 1 else ''} per image"


def format_table(results: dict[str, dict[str, float]], num_images: int) -> str:
    """A Markdown table: one row per model, and the adapter's gain over the base when both were run."""
    keys = list(next(iter(results.values())))
    header = ["model", "images", *keys]
    rows = [
        [ROW_LABELS.get(name, name), str(num_images), *(f"{values[k]:.4f}" for k in keys)]
        for name, values in results.items()
    ]
    if "zero_shot" in results and "adapter" in results:
        rows.append(
            ["adapter - base", "", *(f"{results['adapter'][k] - results['zero_shot'][k]:+.4f}" for k in keys)]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), separator, *(line(r) for r in rows)])
