"""Where image/mask pairs come from, all through `datasets`, streamed by default.

- a Hub dataset id or a local folder `load_dataset` understands (imagefolder with
  `metadata.jsonl`, parquet, webdataset tar shards);
- the CSV layout of the reference InfoSAM / Conv-LoRA benchmark folders
  (`<root>/train.csv`, `<root>/test.csv`, columns `image,label` of paths relative to root).

Columns are normalised to `image` and `mask`. Image columns are read undecoded, so a
corrupt file reaches our decoder, which names it, and `prepare_dataset` can skip and
count it instead of the whole stream failing inside `datasets`.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
from typing import Any

from .images import CorruptImageError
from .preprocessing import SamSegmentationPreprocessor

logger = logging.getLogger(__name__)


def _is_csv_layout(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "train.csv")) or os.path.isfile(os.path.join(path, "test.csv"))
    )


def _csv_rows(root: str, split: str, image_column: str, mask_column: str) -> list[dict[str, str]]:
    path = os.path.join(root, f"{split}.csv")
    if not os.path.isfile(path):
        available = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(root, "*.csv")))
        raise FileNotFoundError(f"{path} does not exist; splits available in {root}: {available}. Pass --train_split/--eval_split.")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for column, flag in ((image_column, "--image_column"), (mask_column, "--mask_column")):
            if column not in columns:
                raise ValueError(f"{path} has no column {column!r}; its columns are {columns}. Pass {flag} <name>.")
        rows = []
        for line, row in enumerate(reader, start=2):
            pair = {}
            for column, key in ((image_column, "image"), (mask_column, "mask")):
                file = os.path.join(root, row[column])
                if not os.path.isfile(file):
                    raise FileNotFoundError(
                        f"{path}, line {line}: the {column} file {row[column]!r} does not exist under {root}. "
                        "Fix the path (paths are relative to the folder holding the CSV) or remove the row."
                    )
                pair[key] = file
            rows.append(pair)
    if not rows:
        raise ValueError(f"{path} lists no samples; add rows `image,label` of relative paths.")
    return rows


def load_segmentation_dataset(
    name_or_path: str,
    split: str = "train",
    image_column: str = "image",
    mask_column: str = "label",
    streaming: bool = True,
    data_files: Any = None,
    **load_kwargs,
):
    """A (streamed) dataset of `image`, `mask` columns from any supported source."""
    from datasets import Dataset, Image, IterableDataset, load_dataset

    if _is_csv_layout(name_or_path):
        rows = _csv_rows(name_or_path, split, image_column, mask_column)
        dataset = Dataset.from_list(rows)
        return dataset.to_iterable_dataset(num_shards=min(len(rows), 8)) if streaming else dataset
    if os.path.isdir(name_or_path) and data_files is None:
        parquet = sorted(glob.glob(os.path.join(name_or_path, f"{split}-*.parquet")))
        if parquet:
            name_or_path, data_files = "parquet", {split: parquet}
    dataset = load_dataset(name_or_path, data_files=data_files, split=split, streaming=streaming, **load_kwargs)
    columns = list(dataset.column_names or (dataset.features or {}).keys())
    for column, flag in ((image_column, "--image_column"), (mask_column, "--mask_column")):
        if columns and column not in columns:
            raise ValueError(
                f"The dataset {name_or_path!r} (split {split!r}) has no column {column!r}; its columns are {columns}. "
                f"Pass {flag} <name>."
            )
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    if mask_column != "mask":
        dataset = dataset.rename_column(mask_column, "mask")
    features = dataset.features or {}
    for column in ("image", "mask"):
        if isinstance(features.get(column), Image):
            dataset = dataset.cast_column(column, Image(decode=False))
    extra = [c for c in (dataset.column_names or []) if c not in ("image", "mask")]
    if extra:
        dataset = dataset.remove_columns(extra)
    if not streaming and isinstance(dataset, Dataset) and len(dataset) == 0:
        raise ValueError(f"The dataset {name_or_path!r} split {split!r} is empty.")
    return dataset


class CorruptSampleLog:
    """Counts and names the samples a stream skipped, for the report at the end of a run."""

    def __init__(self):
        self.skipped: list[str] = []

    def add(self, message: str) -> None:
        self.skipped.append(message)
        logger.warning("Skipped a corrupt sample (%d so far): %s", len(self.skipped), message)

    def report(self) -> str:
        if not self.skipped:
            return "No corrupt samples were skipped."
        return f"{len(self.skipped)} corrupt sample(s) skipped:\n" + "\n".join(f"  - {m}" for m in self.skipped)


def prepare_dataset(dataset, preprocessor: SamSegmentationPreprocessor, skip_corrupt: bool = True, corrupt_log=None):
    """Lazily maps `image`/`mask` rows to model inputs; corrupt samples are skipped and logged (or raise)."""
    log = corrupt_log if corrupt_log is not None else CorruptSampleLog()

    def generate(rows):
        for row in rows:
            try:
                yield preprocessor(row["image"], row["mask"])
            except CorruptImageError as err:
                if not skip_corrupt:
                    raise
                log.add(str(err))

    from datasets import Dataset, IterableDataset

    def transform(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = list(generate(rows))
        keys = ("pixel_values", "gt_masks", "original_sizes", "reshaped_input_sizes")
        return {k: [o[k] for o in out] for k in keys}

    if isinstance(dataset, Dataset):
        # Map-style data is transformed lazily on access: nothing is preprocessed (or held in memory) ahead of use.
        # A corrupt file raises here, naming it: a map-style dataset cannot drop an index.
        def on_access(batch):
            out = [preprocessor(image, mask) for image, mask in zip(batch["image"], batch["mask"])]
            return {k: [o[k] for o in out] for k in out[0]} if out else {}

        return dataset.with_transform(on_access)
    mapped = dataset.map(transform, batched=True, batch_size=8, remove_columns=dataset.column_names)
    mapped.corrupt_log = log
    return mapped
