"""Evaluate an InfoSAM adapter against its zero-shot base model on one dataset split.

With no arguments it evaluates the built-in tiny SAM zero-shot on the built-in
"specialised" synthetic test split, and, if `examples/train.py` has written its default
adapter to `outputs/infosam-builtin`, that adapter too:

    python examples/evaluate.py
    python examples/evaluate.py --adapter outputs/infosam-builtin --output_file metrics.json
    python examples/evaluate.py --adapter user/sam-vit-base-polyp-infosam --dataset_name /data/polyp \\
        --split test_Kvasir --structure_measures --batch_size 16 --output_file kvasir.json
    python examples/evaluate.py --adapter user/sam-road-infosam --dataset_name /data/road --prompt points --num_points 5
    python examples/evaluate.py --model_name_or_path facebook/sam-vit-base --dataset_name /data/polyp   # base only

Both rows of the table are measured in one pass over the data, on the same batches with
the same prompts: the zero-shot row runs the adapter's own base weights with the adapter
switched off (`PeftModel.disable_adapter()`), so no second copy of SAM is loaded.

Metrics are measured at the ORIGINAL image size, against the dataset's own mask: the
padded-square logits are cropped to the valid region and resized to the image (as
`SamProcessor.post_process_masks` does), then scored by
`infosam_hf.metrics.SegmentationMetrics`:

* `iou`, `dice`: averaged over the binarisation thresholds (0.1, 0.3, 0.5, 0.7, 0.9) of
  the logits, then over images (the InfoSAM paper's protocol);
* `iou@0.5`, `dice@0.5`: the plain mask (probability > 0.5);
* with `--structure_measures` (polyp, camouflage sets): `s_measure`, `e_measure`,
  `weighted_f` on sigmoid(logits); `--reference_protocol` reproduces the reference
  code's variants (clipped logits, adaptive E-measure, beta^2 = 0.3).

Empty ground truth (an image without the object) is part of real data and has a defined
result: IoU = Dice = 1 when the prediction is empty too, else 0; the box prompt of such
an image is the whole image (see `infosam_hf.data.prompts`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field

if __name__ == "__main__":
    # Run as a script, this file's folder heads sys.path and would shadow the Hugging Face `evaluate`
    # library (which infosam_hf.evaluate_metric imports) with this very file.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import numpy as np
import torch
from tqdm.auto import tqdm

from infosam_hf import builtin
from infosam_hf.builtin import builtin_dataset_path
from infosam_hf.cli import ScriptArgumentParser
from infosam_hf.modeling import sam_low_res_logits
from infosam_hf.data import (
    CorruptImageError,
    CorruptSampleLog,
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    decode_image,
    load_segmentation_dataset,
    to_binary_mask,
)
from infosam_hf.data.images import image_size_hw
from infosam_hf.data.instances import INSTANCE_FORMATS, decode_instances
from infosam_hf.loading import load_model_or_base
from infosam_hf.resolution import allow_image_size_change_argument, image_size_argument
from infosam_hf.prompt_following import prompt_logits
from infosam_hf.metrics import SegmentationMetrics

logger = logging.getLogger("infosam_hf.evaluate")

ROW_LABELS = {"zero_shot": "zero-shot base", "adapter": "adapter"}
PROMPT_KEYS = ("input_boxes", "input_points", "input_labels")


@dataclass
class EvaluationArguments:
    adapter: str | None = field(
        default=None,
        metadata={"help": "Trained InfoSAM adapter: a folder written by examples/train.py or a Hub id."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Base SAM (folder or Hub id). Without --adapter only this model is evaluated (zero-shot)."},
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Load the adapter on this base instead of the one named in its adapter_config.json."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, local folder (imagefolder/parquet/webdataset) or reference CSV layout. "
            "Default: the built-in synthetic 'specialised' domain."
        },
    )
    split: str = field(default="test")
    image_column: str = field(default="image")
    mask_column: str = field(default="label")
    instance_format: str | None = field(
        default=None,
        metadata={
            "help": "Several objects per image: 'ids', 'masks' or 'coco' (see infosam_hf.data.instances); one prompt "
            "per object, metrics per object (and per image). Default: one binary mask per image (all objects "
            "together)."
        },
    )
    min_object_area: int = field(default=4, metadata={"help": "Instance data: smaller objects are not scored."})
    streaming: bool = field(default=False, metadata={"help": "Stream the split instead of loading it first."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N images only."})
    prompt: str = field(default="box", metadata={"help": "Prompt type.", "choices": ["box", "points"]})
    num_points: int = field(default=1, metadata={"help": "Foreground points per image with --prompt points."})
    box_noise: float = field(default=0.0, metadata={"help": "Box jitter (fraction of the box side); 0 = tight box."})
    seed: int = field(default=0, metadata={"help": "Seed of the prompt draw (points, box jitter)."})
    batch_size: int = field(default=8)
    num_workers: int = field(default=0, metadata={"help": "Data-loading processes."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})
    image_size: int | None = image_size_argument()
    allow_image_size_change: bool = allow_image_size_change_argument()
    dtype: str = field(
        default="float32", metadata={"help": "Model dtype.", "choices": ["float32", "bfloat16", "float16"]}
    )
    structure_measures: bool = field(
        default=False, metadata={"help": "Also report S-measure, E-measure and weighted F (polyp, camouflage)."}
    )
    reference_protocol: bool = field(
        default=False,
        metadata={
            "help": "Structure measures as the InfoSAM reference code computes them (to compare with the paper)."
        },
    )
    compare_base: bool = field(
        default=True, metadata={"help": "Also evaluate the zero-shot base model (--compare_base false to skip)."}
    )
    output_file: str | None = field(default=None, metadata={"help": "Write the results as JSON to this file."})
    disable_tqdm: bool = field(default=False)

    def __post_init__(self):
        if self.num_points < 1:
            raise ValueError(f"--num_points must be at least 1, got {self.num_points}.")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}.")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max_samples must be at least 1, got {self.max_samples}.")
        if self.reference_protocol and not self.structure_measures:
            logger.info("--reference_protocol only changes the structure measures; enabling --structure_measures.")
            self.structure_measures = True


# ------------------------------------------------------------------------------ models


def resolve_models(args: EvaluationArguments) -> tuple[str | None, str | None]:
    """(adapter, base) to evaluate. No model flag at all = the built-in default."""
    adapter, base = builtin.resolve_models(args.adapter, args.base_model, args.model_name_or_path)
    if not (args.adapter or args.base_model or args.model_name_or_path):  # the built-in default
        if adapter is not None:
            logger.info("Evaluating the built-in model and the adapter found in %s.", adapter)
        else:
            logger.info("Evaluating the built-in model zero-shot (train an adapter with examples/train.py to compare).")
    return adapter, base


def default_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------ data


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
        self.dataset = _without_decoding(dataset)
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
        image = decode_image(row["image"], "image")
        masks = decode_instances(row["mask"], self.instances, image_size_hw(image), source)
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


def _without_decoding(dataset):
    """Image columns as undecoded bytes/paths: skipped rows (other workers' images) then cost no decoding."""
    from datasets import Image as ImageFeature

    if getattr(dataset, "features", None) is None:
        return dataset
    for column, feature in dataset.features.items():
        if isinstance(feature, ImageFeature) and feature.decode:
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    return dataset


class EvaluationCollator:
    """Stacks features and samples the prompt (the same one for both models); keeps the original masks as a list."""

    def __init__(self, prompt: str, num_points: int, box_noise: float, seed: int, instances: bool = False):
        sampler = PromptSampler(
            box_probability=1.0 if prompt == "box" else 0.0, num_points=num_points, box_noise=box_noise, seed=seed
        )
        # instance data: every object of an image is prompted (one mask per prompt)
        self.collator = SamSegmentationCollator(sampler, prompt_type=prompt, max_objects_per_image=255 if instances else None)

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


# ------------------------------------------------------------------------------ evaluation


def evaluate(model, loader, runs: dict, metric_kwargs: dict, total: int | None, disable_tqdm: bool = False):
    """One pass over the data; every run (zero-shot, adapter) scores the same batch, prompts included."""
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


def per_image_means(accumulator) -> dict[str, float]:
    """Instance data: each image's mean over its objects, then the mean over images."""
    image = np.asarray(accumulator.image_of_object)
    return {
        key: float(np.mean([values[image == i].mean() for i in np.unique(image)]))
        for key, values in accumulator.per_image().items()
    }


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


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    (args,) = ScriptArgumentParser(EvaluationArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    adapter, base = resolve_models(args)
    device = default_device(args.device)
    dtype = getattr(torch, args.dtype)
    model, processor = load_model_or_base(adapter, base, device=device, dtype=dtype, image_size=args.image_size,
                                          allow_image_size_change=args.allow_image_size_change)
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)

    source = args.dataset_name or builtin_dataset_path("specialised")
    dataset = load_segmentation_dataset(
        source, split=args.split, image_column=args.image_column, mask_column=args.mask_column, streaming=args.streaming
    )
    dataset, total = first_samples(dataset, args.max_samples)
    corrupt_log = CorruptSampleLog()
    instances = instance_format(args)
    stream = EvaluationStream(dataset, preprocessor, corrupt_log, instances, args.min_object_area)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=args.batch_size,
        collate_fn=EvaluationCollator(args.prompt, args.num_points, args.box_noise, args.seed, instances is not None),
        num_workers=args.num_workers,
    )

    runs = {}  # row name -> context the forward runs in
    if adapter is None:
        runs["zero_shot"] = contextlib.nullcontext
    else:
        if args.compare_base:
            runs["zero_shot"] = model.disable_adapter  # the adapter's own base weights, adapter switched off
        runs["adapter"] = contextlib.nullcontext

    if args.reference_protocol:
        metric_kwargs = dict(
            structure_measures=True, structure_input="clip", e_measure_mode="adaptive", wf_beta2=0.3
        )
    else:
        metric_kwargs = dict(structure_measures=args.structure_measures)
    accumulators = evaluate(model, loader, runs, metric_kwargs, total, args.disable_tqdm)
    num_images = next(iter(accumulators.values())).num_images  # objects, with instance data
    if instances:
        num_objects, num_images = num_images, len(set(next(iter(accumulators.values())).image_of_object))
    if num_images == 0:
        why = f" Every sample was skipped: {' | '.join(corrupt_log.reasons)}" if corrupt_log.count else ""
        raise ValueError(f"The {args.split!r} split of {source} gave no images to evaluate.{why}")
    scores = {name: acc.compute() for name, acc in accumulators.items()}
    for name, values in scores.items():
        bad = {k: v for k, v in values.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)}
        if bad:  # a broken metric must never reach a results table
            raise RuntimeError(f"Metrics of the {ROW_LABELS[name]} out of [0, 1]: {bad}.")

    reference = accumulators[next(iter(accumulators))]
    result = {
        "dataset": str(source),
        "split": args.split,
        "num_images": num_images,
        "models": {
            **({"zero_shot": base_name(model, base)} if "zero_shot" in runs else {}),
            **({"adapter": adapter} if adapter is not None else {}),
        },
        "prompt": {"type": args.prompt, "num_points": args.num_points if args.prompt == "points" else None,
                   "box_noise": args.box_noise, "seed": args.seed},
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
    if instances:  # `metrics` are per object (mean over objects); these are per image (mean of each image's objects)
        result["metrics_per"] = "object"
        result["num_objects"] = num_objects
        result["images_without_objects"] = stream.images_without_objects
        result["metrics_per_image"] = {name: per_image_means(acc) for name, acc in accumulators.items()}
    if "zero_shot" in scores and "adapter" in scores:
        result["improvement"] = {k: scores["adapter"][k] - scores["zero_shot"][k] for k in scores["adapter"]}

    if instances:
        print(f"\n{source} [{args.split}], {num_images} images, {num_objects} objects, one {describe_prompt(args)} "
              "per object; per object:\n")
        print(format_table(scores, num_images))
        print("\nper image (mean of its objects):\n")
        print(format_table(result["metrics_per_image"], num_images))
    else:
        print(f"\n{source} [{args.split}], {num_images} images, {describe_prompt(args)}:\n")
        print(format_table(scores, num_images))
    if corrupt_log.count:
        print(f"\n{corrupt_log.report()}")
        result["skipped_samples"] = list(corrupt_log.skipped)
    if args.output_file:
        directory = os.path.dirname(os.path.abspath(args.output_file))
        os.makedirs(directory, exist_ok=True)
        with open(args.output_file, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"\nWrote {args.output_file}")
    return result


def instance_format(args: EvaluationArguments) -> str | None:
    if args.instance_format in (None, "") or args.instance_format.lower() == "none":
        return None
    if args.instance_format not in INSTANCE_FORMATS:
        raise ValueError(f"--instance_format must be one of {INSTANCE_FORMATS} or 'none', got {args.instance_format!r}.")
    return args.instance_format


def base_name(model, base: str | None) -> str | None:
    if base is not None:
        return base
    config = getattr(model, "peft_config", {}).get("default")
    return getattr(config, "base_model_name_or_path", None)


def describe_prompt(args: EvaluationArguments) -> str:
    if args.prompt == "box":
        return "box prompt" + (f" (jitter {args.box_noise})" if args.box_noise else "")
    return f"{args.num_points} point{'s' if args.num_points > 1 else ''} per image"


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from error
