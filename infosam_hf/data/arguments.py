"""The data flags of examples/train.py and examples/evaluate_adapter.py, declared once.

`DatasetArguments` holds what both scripts read the same way (where the data is, its columns, its
instance layout, the structure measures), `RetentionArguments` the retention sets both score beside it;
`DataArguments` adds training's splits, streaming and evaluation-during-training flags. The evaluation script's own flags (`--split`, `--max_samples`,
`--streaming` as a plain switch) keep their names and live beside its model flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .instances import INSTANCE_FORMATS


def instance_format(value: str | None, flag: str = "--instance_format") -> str | None:
    """The instance layout of a mask column (one of `INSTANCE_FORMATS`), or None for one binary mask per image.

    `None`, `""` and `"none"` (any case) all mean one binary mask per image; anything else unknown is a
    `ValueError` naming the flag."""
    if value in (None, "") or value.lower() == "none":
        return None
    if value not in INSTANCE_FORMATS:
        raise ValueError(f"{flag} must be one of {INSTANCE_FORMATS} or 'none', got {value!r}.")
    return value


@dataclass(frozen=True)
class RetentionSpec:
    """One retention set to read: where, which split, how many images at most, and its instance layout (None: one
    mask per image; a layout: one prompt per object, with prompt following measured)."""

    source: str
    split: str = "test"
    max_samples: int | None = None
    instance_format: str | None = None


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
        getattr(super(), "__post_init__", lambda: None)()  # the other mixins' checks (RetentionArguments)

    @property
    def source(self) -> str:
        """The dataset to read: --dataset_name, else the built-in 'specialised' domain (written on first use)."""
        from ..builtin import builtin_dataset_path

        return self.dataset_name or builtin_dataset_path("specialised")


@dataclass
class RetentionArguments:
    """What fine-tuning must not forget: the retention flags of examples/train.py and examples/evaluate_adapter.py.

    Each retention set is scored beside the target set (train.py: at every evaluation, evaluate_adapter.py: a second
    table), adapter against zero-shot base. Metric names: `retention_iou`, `retention_dice`, ... (per object on
    instance data) and, on instance data, the prompt following of `infosam_hf.prompt_following`:
    `retention_object_iou` (IoU per object of the mask at logit 0) and `retention_confusion` (the share of prompts
    whose mask covers more of another object than of the prompted one).
    """

    retention_dataset: str | None = field(
        default=None,
        metadata={
            "help": "What fine-tuning must not forget, scored beside the target set (same layouts as --dataset_name) "
            "and logged as eval_retention_iou, eval_retention_dice (and, with --retention_instance_format, "
            "eval_retention_object_iou, eval_retention_confusion). Default: the built-in 'general' domain, one "
            "mask per image and its multi-object variant, when the data is the built-in one, else none; 'none' "
            "turns it off."
        },
    )
    retention_split: str = field(default="test", metadata={"help": "The --retention_dataset split to score."})
    retention_max_samples: int | None = field(
        default=64, metadata={"help": "Score at most this many --retention_dataset images (bounds its cost)."}
    )
    retention_instance_format: str | None = field(
        default=None,
        metadata={
            "help": "The --retention_dataset's mask layout when it holds several objects per image: 'ids', "
            "'masks' or 'coco', as --instance_format. Every object is prompted; metrics per object, plus prompt "
            "following (retention_object_iou, retention_confusion). Default: one binary mask per image."
        },
    )
    retention_object_images: int = field(
        default=32,
        metadata={
            "help": "The built-in default's multi-object retention set: prompt following on this many images of "
            "the general domain's multi-object test split (0: none). --retention_dataset replaces it."
        },
    )

    def __post_init__(self):
        self.retention_instance_format = instance_format(self.retention_instance_format, "--retention_instance_format")
        if self.retention_max_samples is not None and self.retention_max_samples < 1:
            raise ValueError(f"--retention_max_samples must be at least 1, got {self.retention_max_samples}.")
        if self.retention_instance_format and (self.retention_dataset is None or self.retention_off):
            raise ValueError(f"--retention_instance_format {self.retention_instance_format} names the layout of "
                             "--retention_dataset's masks: pass --retention_dataset <folder or Hub id> too (the "
                             "built-in default already scores the general domain's multi-object variant).")
        if self.retention_object_images < 0:
            raise ValueError(f"--retention_object_images must be 0 (none) or more, got {self.retention_object_images}.")
        getattr(super(), "__post_init__", lambda: None)()

    @property
    def retention_off(self) -> bool:
        return self.retention_dataset is not None and self.retention_dataset.lower() in ("", "none")

    def retention_specs(self, dataset_name: str | None) -> list[RetentionSpec]:
        """The retention sets to score: --retention_dataset's, or, for a run on the built-in data
        (`dataset_name` None), the built-in 'general' domain the built-in base was pre-trained on: its one-mask
        test split, and its multi-object variant for prompt following. Empty when there is none or 'none'."""
        from ..builtin import builtin_dataset_path
        from ..synthetic import MAX_OBJECTS

        if self.retention_off:
            return []
        split, most = self.retention_split, self.retention_max_samples
        if self.retention_dataset is not None:
            return [RetentionSpec(self.retention_dataset, split, most, self.retention_instance_format)]
        if dataset_name is not None:
            return []
        specs = [RetentionSpec(builtin_dataset_path("general"), split, most)]
        if self.retention_object_images:
            specs.append(RetentionSpec(builtin_dataset_path("general", max_objects=MAX_OBJECTS), split,
                                       min(self.retention_object_images, most or self.retention_object_images),
                                       "ids"))
        return specs


@dataclass
class DataArguments(RetentionArguments, DatasetArguments):
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

    @property
    def retention_source(self) -> str | None:
        """The first retention set's source (None without one): what the summary and the card name."""
        specs = self.retention_specs(self.dataset_name)
        return specs[0].source if specs else None
