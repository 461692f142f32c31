"""Streaming segmentation data for SAM: loading, SAM preprocessing, prompt sampling, batching.

The flow is `load_segmentation_dataset` -> `split_for_process` (multi-process runs)
-> `prepare_dataset(dataset, SamSegmentationPreprocessor.from_processor(processor))`
-> `DataLoader(..., collate_fn=SamSegmentationCollator(PromptSampler(seed=...)))`.
Local data that fits is better read through `prepare_cached_dataset` (decoded once, cached on
disk, see `cache.py`); `choose_data_mode` picks between the two, streams go through `shuffle_stream`.
"""

from .cache import DataMode, choose_data_mode, prepare_cached_dataset
from .collator import SamSegmentationCollator
from .images import CorruptImageError, decode_image, to_binary_mask, to_rgb_pil
from .instances import INSTANCE_FORMATS, InstanceStats, decode_instances, prepare_instance_dataset
from .preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MaskSizeMismatchError,
    SamSegmentationPreprocessor,
    longest_side_size,
)
from .prompts import PAD_LABEL, PROMPT_TYPES, PromptSampler
from .sources import (
    CorruptSampleCounter,
    CorruptSampleLog,
    check_masks_not_empty,
    find_bad_samples,
    load_segmentation_dataset,
    prepare_dataset,
    shuffle_stream,
    split_for_process,
)

__all__ = [
    "CorruptImageError",
    "CorruptSampleCounter",
    "CorruptSampleLog",
    "DataMode",
    "IMAGENET_MEAN",
    "INSTANCE_FORMATS",
    "InstanceStats",
    "IMAGENET_STD",
    "MaskSizeMismatchError",
    "PAD_LABEL",
    "PROMPT_TYPES",
    "PromptSampler",
    "SamSegmentationCollator",
    "SamSegmentationPreprocessor",
    "check_masks_not_empty",
    "choose_data_mode",
    "decode_image",
    "decode_instances",
    "find_bad_samples",
    "load_segmentation_dataset",
    "prepare_cached_dataset",
    "prepare_dataset",
    "prepare_instance_dataset",
    "longest_side_size",
    "shuffle_stream",
    "split_for_process",
    "to_binary_mask",
    "to_rgb_pil",
]
