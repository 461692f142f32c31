"""Streaming segmentation data for SAM: loading, SAM preprocessing, prompt sampling, batching.

The flow is `load_segmentation_dataset` -> `split_for_process` (multi-process runs)
-> `prepare_dataset(dataset, SamSegmentationPreprocessor.from_processor(processor))`
-> `DataLoader(..., collate_fn=SamSegmentationCollator(PromptSampler(seed=...)))`.
"""

from .collator import SamSegmentationCollator
from .images import CorruptImageError, decode_image, to_binary_mask, to_rgb_pil
from .instances import INSTANCE_FORMATS, InstanceStats, decode_instances, prepare_instance_dataset
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, SamSegmentationPreprocessor, longest_side_size
from .prompts import PAD_LABEL, PROMPT_TYPES, PromptSampler
from .sources import (
    CorruptSampleCounter,
    CorruptSampleLog,
    load_segmentation_dataset,
    prepare_dataset,
    split_for_process,
)

__all__ = [
    "CorruptImageError",
    "CorruptSampleCounter",
    "CorruptSampleLog",
    "IMAGENET_MEAN",
    "INSTANCE_FORMATS",
    "InstanceStats",
    "IMAGENET_STD",
    "PAD_LABEL",
    "PROMPT_TYPES",
    "PromptSampler",
    "SamSegmentationCollator",
    "SamSegmentationPreprocessor",
    "decode_image",
    "decode_instances",
    "load_segmentation_dataset",
    "prepare_dataset",
    "prepare_instance_dataset",
    "longest_side_size",
    "split_for_process",
    "to_binary_mask",
    "to_rgb_pil",
]
