"""Evaluate an InfoSAM adapter against its zero-shot base model on one dataset split.

With no arguments it evaluates the built-in tiny SAM zero-shot on the built-in
"specialised" synthetic test split, and, if `examples/train.py` has written its default
adapter to `outputs/infosam-builtin`, that adapter too:

    python examples/evaluate_adapter.py
    python examples/evaluate_adapter.py --adapter outputs/infosam-builtin --output_file metrics.json
    python examples/evaluate_adapter.py --adapter user/sam-vit-base-polyp-infosam --dataset_name /data/polyp \\
        --split test_Kvasir --structure_measures --batch_size 16 --output_file kvasir.json
    python examples/evaluate_adapter.py --adapter user/sam-road-infosam --dataset_name /data/road --prompt points \\
        --num_points 5
    python examples/evaluate_adapter.py --model_name_or_path facebook/sam-vit-base --dataset_name /data/polyp  # base
    python examples/evaluate_adapter.py --adapter user/sam-vit-base-polyp-infosam --dataset_name /data/polyp \\
        --retention_dataset /data/coco-sam-500 --retention_instance_format coco   # what fine-tuning cost

On instance data (`--instance_format`, several objects per image) the table also has prompt following: `object_iou`
(IoU of each prompt's mask with its own object) and `confusion` (the share of prompts whose mask covers another object
more than the prompted one), as `infosam_hf.prompt_following` computes them.

A retention set (`--retention_dataset`, by default the built-in "general" domain when the data is the built-in
one, as examples/train.py scores it) gets a second table, adapter against zero-shot base, with the names and
numbers train.py logs for it (`infosam_hf.retention`): IoU and Dice, and on instance data
(`--retention_instance_format`) prompt following, `object_iou` and `confusion`.

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
an image is the whole image (see `infosam_hf.data.prompts`). In Python:
`infosam_hf.evaluation.evaluate_segmentation(model, processor, dataset)`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import torch

from infosam_hf import builtin
from infosam_hf.cli import ScriptArgumentParser
from infosam_hf.data import CorruptSampleLog, load_segmentation_dataset
from infosam_hf.data.arguments import DatasetArguments, RetentionArguments
from infosam_hf.data.sources import check_local_path
from infosam_hf.evaluation import base_name, describe_prompt, evaluate_segmentation, format_table
from infosam_hf.loading import load_model_or_base
from infosam_hf.resolution import allow_image_size_change_argument, image_size_argument
from infosam_hf.retention import describe_retention_sets, evaluate_retention

logger = logging.getLogger("infosam_hf.evaluate")


@dataclass
class EvaluationArguments(DatasetArguments, RetentionArguments):
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
    split: str = field(default="test")
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
        super().__post_init__()
        if self.num_points < 1:
            raise ValueError(f"--num_points must be at least 1, got {self.num_points}.")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}.")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max_samples must be at least 1, got {self.max_samples}.")
        if self.reference_protocol and not self.structure_measures:
            logger.info("--reference_protocol only changes the structure measures; enabling --structure_measures.")
            self.structure_measures = True


def resolve_models(args: EvaluationArguments) -> tuple[str | None, str | None]:
    """(adapter, base) to evaluate. No model flag at all = the built-in default."""
    adapter, base = builtin.resolve_models(args.adapter, args.base_model, args.model_name_or_path)
    if not (args.adapter or args.base_model or args.model_name_or_path):  # the built-in default
        if adapter is not None:
            logger.info("Evaluating the built-in model and the adapter found in %s.", adapter)
        else:
            logger.info("Evaluating the built-in model zero-shot (train an adapter with examples/train.py to "
                        "compare).")
    return adapter, base


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    (args,) = ScriptArgumentParser(EvaluationArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    # a missing local path fails before any model loads
    for path, flag in ((args.dataset_name, "--dataset_name"),
                       (None if args.retention_off else args.retention_dataset, "--retention_dataset")):
        if path:
            check_local_path(path, flag)
    adapter, base = resolve_models(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, processor = load_model_or_base(adapter, base, device=device, dtype=getattr(torch, args.dtype),
                                          image_size=args.image_size,
                                          allow_image_size_change=args.allow_image_size_change)
    source = args.source
    dataset = load_segmentation_dataset(source, split=args.split, image_column=args.image_column,
                                        mask_column=args.mask_column, streaming=args.streaming)
    corrupt_log = CorruptSampleLog()
    # the settings both tables share: the retention table is scored as train.py scores its retention sets
    settings = dict(prompt=args.prompt, num_points=args.num_points, box_noise=args.box_noise, seed=args.seed,
                    batch_size=args.batch_size, num_workers=args.num_workers, min_object_area=args.min_object_area,
                    structure_measures=args.structure_measures, reference_protocol=args.reference_protocol,
                    compare_base=args.compare_base, disable_tqdm=args.disable_tqdm)
    scores = evaluate_segmentation(
        model, processor, dataset, max_samples=args.max_samples, instance_format=args.instance_format,
        corrupt_log=corrupt_log, dataset_description=f"The {args.split!r} split of {source}",
        prompt_following=bool(args.instance_format),  # several objects per image: does each prompt get its own?
        **settings,
    )
    retention = evaluate_retention(model, processor, args.retention_specs(args.dataset_name),
                                   image_column=args.image_column, mask_column=args.mask_column,
                                   corrupt_log=corrupt_log, **settings)
    rows = scores["metrics"]
    result = {
        "dataset": str(source),
        "split": args.split,
        "num_images": scores["num_images"],
        "models": {
            **({"zero_shot": base_name(model, base)} if "zero_shot" in rows else {}),
            **({"adapter": adapter} if adapter is not None else {}),
        },
        **{k: v for k, v in scores.items() if k != "num_images"},
        **({"retention": retention} if retention else {}),
    }
    if corrupt_log.count:  # both tables' skipped samples
        result["skipped_samples"] = list(corrupt_log.skipped)

    prompt = describe_prompt(args.prompt, args.num_points, args.box_noise)
    if args.instance_format:
        print(f"\n{source} [{args.split}], {result['num_images']} images, {result['num_objects']} objects, one "
              f"{prompt} per object; per object:\n")
        print(format_table(rows, result["num_images"]))
        print("\nper image (mean of its objects):\n")
        print(format_table(result["metrics_per_image"], result["num_images"]))
    else:
        print(f"\n{source} [{args.split}], {result['num_images']} images, {prompt}:\n")
        print(format_table(rows, result["num_images"]))
    if retention:
        print(f"\n{describe_retention_sets(retention['sets'])}:\n")
        print(format_table(retention["metrics"], retention["sets"][0]["num_images"]))
    if corrupt_log.count:
        print(f"\n{corrupt_log.report()}")
    if args.output_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
        with open(args.output_file, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"\nWrote {args.output_file}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from error
