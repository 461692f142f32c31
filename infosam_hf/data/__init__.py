"""Streaming segmentation data for SAM fine-tuning: sources, SAM preprocessing, prompts, collator."""

from .collator import PROMPT_TYPES, SamSegmentationCollator
from .images import CorruptImageError, decode_image, to_binary_mask, to_rgb_pil
from .preprocessing import SamSegmentationPreprocessor, longest_side_size
from .prompts import PromptSampler
from .sources import CorruptSampleLog, load_segmentation_dataset, prepare_dataset


def split_for_process(dataset, rank: int, world_size: int):
    """Each rank's disjoint part of a (streamed) dataset: by shard when shards divide evenly, else by example."""
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(dataset, rank=rank, world_size=world_size)


__all__ = [
    "PROMPT_TYPES",
    "CorruptImageError",
    "CorruptSampleLog",
    "PromptSampler",
    "SamSegmentationCollator",
    "SamSegmentationPreprocessor",
    "decode_image",
    "load_segmentation_dataset",
    "longest_side_size",
    "prepare_dataset",
    "split_for_process",
    "to_binary_mask",
    "to_rgb_pil",
]
