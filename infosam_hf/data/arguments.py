"""The data flags of examples/train.py and examples/evaluate_adapter.py, declared once.

`DatasetArguments` holds what both scripts read the same way (where the data is, its columns, its
instance layout, the structure measures); `DataArguments` adds training's splits, streaming and
evaluation-during-training flags. The evaluation script's own flags (`--split`, `--max_samples`,
`--streaming` as a plain switch) keep their names and live beside its model flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .instances import INSTANCE_FORMATS


def instance_format(value: str | None) -> str | None:
    """The instance layout of a mask column (one of `INSTANCE_FORMATS`), or None for one binary mask per image.

    `None`, `""` and `"none"` (any case) all mean one binary mask per image; anything else unknown is a
    `ValueError` naming the flag."""
    if value in (None, "") or value.lower() == "none":
        return None
    if value not in INSTANCE_FORMATS:
        raise ValueError(f"--instance_format must be one of {INSTANCE_FORMATS} or 'none', got {value!r}.")
    return value


@dataclass
class DatasetArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, local folder (imagefolder/parquet/webdataset) or a reference CSV-layout root "
            "(<root>/train.csv, <root>/test.csv). Default: the built-in synthetic 'specialised' domain."
        },
    )
    image_column: str = field(default="image")
    mask_column: str = field(default="label")
    instance_format: str | None = field(
        default=None,
        metadata={
            "help": "Several objects per image in the mask column: 'ids' (instance-id PNG, 0 = background, k = "
            "object k), 'masks' (a list of binary masks), 'coco' (COCO polygons / RLE); one prompt per object, "
            "metrics per object. Default: 'ids' for the one binary mask per image (all objects together)."
        },
    )
    min_object_area: int = field(
        default=4, metadata={"help": "Instance data: objects smaller than this (pixels) are skipped and counted."}
    )
    structure_measures: bool = field(
        default=False, metadata={"help": "Also report S-measure, E-measure and weighted F (polyp, camouflage)."}
    )

    def __post_init__(self):
        # checked when the flags are parsed, before any model or data loads; None = one binary mask per image
        self.instance_format = instance_format(self.instance_format)

    @property
    def source(self) -> str:
        """The dataset to read: --dataset_name, else the built-in 'specialised' domain (written on first use)."""
        from ..builtin import builtin_dataset_path

        return self.dataset_name or builtin_dataset_path("specialised")


@dataclass
class DataArguments(DatasetArguments):
    """examples/train.py's data flags: the shared ones plus its splits, data mode and evaluation during training."""

    train_split: str = field(default="train")
    eval_split: str = field(default="test")
    streaming: str = field(
        default="auto",
        metadata={
            "help": "auto: local data that fits under --preprocess_cache_max_gb is decoded and resized once into a "
            "cache reused by every epoch and run, anything else is streamed (the run prints which and why); "
            "true: stream; false: preprocess once into the cache at any size."
        },
    )
    preprocess_cache_max_gb: float = field(
        default=4.0, metadata={"help": "--streaming auto caches local data up to this preprocessed size."}
    )
    max_eval_samples: int | None = field(default=64, metadata={"help": "Evaluate on at most this many images."})
    eval_prompt: str = field(default="box", metadata={"help": "Prompt for evaluation: box or points."})
    eval_num_points: int = field(default=1, metadata={"help": "Foreground points per evaluation point prompt."})
    validate_data: bool = field(
        default=False,
        metadata={
            "help": "Scan the train and eval splits before training: report every sample training would skip "
            "(undecodable image or mask, mask not at its image's size) and exit non-zero if there is any."
        },
    )
    max_objects_per_image: int = field(
        default=2,  # each prompt costs a mask-decoder pass
        metadata={"help": "Instance data: prompts (objects) per image per training step, a random subset if more."},
    )
    allow_empty_masks: bool = field(
        default=False,
        metadata={"help": "Train even when (nearly) every mask of the first 64 rows of a split is empty, which "
                  "otherwise stops the run as the sign of a broken mask export."},
    )
    eval_overlays: int = field(
        default=4,
        metadata={
            "help": "Save overlays of this many evaluation images (same prompts each time) under "
            "<output_dir>/eval_overlays/step-<N>/ at every evaluation, and of as many retention images under "
            "step-<N>-retention/; with --report_to tensorboard (or trackio) each grid is logged as an image too; "
            "0 to turn off."
        },
    )
    retention_dataset: str | None = field(
        default=None,
        metadata={
            "help": "What fine-tuning must not forget, scored beside the target set at every evaluation and logged "
            "as eval_retention_iou, eval_retention_dice (same layouts as --dataset_name, one mask per image). "
            "Default: the built-in 'general' domain when the run uses the built-in data, else none; 'none' turns "
            "it off."
        },
    )
    retention_split: str = field(default="test", metadata={"help": "The --retention_dataset split to score."})
    retention_max_samples: int | None = field(
        default=64, metadata={"help": "Score at most this many --retention_dataset images (bounds its cost)."}
    )

    @property
    def retention_source(self) -> str | None:
        """The retention set to read: --retention_dataset, or the built-in 'general' domain (the built-in base's
        pre-training data) for a run on the built-in data; None when there is none or 'none'."""
        from ..builtin import builtin_dataset_path

        if self.retention_dataset is not None:
            return None if self.retention_dataset.lower() in ("", "none") else self.retention_dataset
        return None if self.dataset_name or self.instance_format else builtin_dataset_path("general")
