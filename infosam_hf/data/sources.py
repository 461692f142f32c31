"""Image/mask datasets from the Hub or disk, streamed through `datasets`, with errors that say what to fix.

(~630 lines: one loader per layout (reference CSV, imagefolder, parquet, webdataset, Hub) with the errors each
needs, and the corrupt-sample log they share; the layouts share column handling, so they stay together.)

Every source ends up as a `datasets.IterableDataset` (or `Dataset`) with exactly two
columns, `image` and `mask`, both `datasets.Image`, so that the rest of the pipeline
(`prepare_dataset`, the collator, the Trainer) never has to know where data came from.
"""

from __future__ import annotations

import csv
import inspect
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
from datasets import Dataset, IterableDataset
from datasets import Image as ImageFeature

from .collator import ORIGINAL_MASKS_KEY
from .images import CorruptImageError, decode_image, describe_source, image_size_hw, to_binary_mask
from .preprocessing import MaskSizeMismatchError, SamSegmentationPreprocessor

logger = logging.getLogger(__name__)

_SPLIT_CSV_NAMES = {
    "validation": ("val", "validation", "valid"),
    "val": ("val", "validation", "valid"),
    "valid": ("valid", "val", "validation"),
}
_FILE_BUILDERS = {".parquet": "parquet", ".tar": "webdataset", ".arrow": "arrow"}
_SPLIT_HINT = "Pick one of them (split=...; examples/train.py: --train_split / --eval_split)."
_MAX_DEFAULT_SHARDS = 64


# --------------------------------------------------------------------------- loading


def load_segmentation_dataset(
    name_or_path: str | os.PathLike,
    split: str = "train",
    image_column: str = "image",
    mask_column: str = "label",
    streaming: bool = True,
    data_files: Any = None,
    *,
    num_shards: int | None = None,
    check_not_empty: bool = True,
    **load_kwargs: Any,
) -> IterableDataset | Dataset:
    """Load image/mask pairs as a dataset with columns `image` and `mask`.

    `name_or_path` may be:

    - a reference benchmark folder (InfoSAM / Conv-LoRA layout): `<root>/train.csv`,
      `<root>/test.csv`, ... with `image,label` columns of paths relative to `<root>`
      (also found one level down, as in `datasets/polyp/polyp/`); `split` picks the CSV
      (`"validation"` reads `val.csv`, `"test_Kvasir"` reads `test_Kvasir.csv`);
    - a single `.csv` file in that format;
    - a folder of parquet shards, an imagefolder (`metadata.jsonl` with `file_name` and
      `mask_file_name`), webdataset `.tar` shards, or a Hub dataset id: all handed to
      `datasets.load_dataset`, so `data_files`, `revision`, `token`... pass through;
    - a single `.parquet` / `.tar` file, or a builder name (`"parquet"`, `"webdataset"`,
      `"imagefolder"`) with `data_files`.

    Column names are configurable (`--image_column`, `--mask_column`; an imagefolder's
    `mask_file_name` becomes the column `mask`). A webdataset column is found by its
    name without the extension (`label` finds `label.png`). With `streaming=True`
    images are read lazily, one by one.

    `num_shards` sets the shard count of a streamed CSV layout (default: the largest
    power of two up to 64 not above the number of rows), so that data-loader workers
    and ranks can share it without reading every row (see `split_for_process`).
    """
    path = os.path.expanduser(os.fspath(name_or_path))
    if data_files is not None and not isinstance(data_files, dict):
        data_files = {split: data_files}

    csv_layout = None if data_files is not None else _find_csv_layout(path, split)
    if csv_layout is not None:
        root, csv_path = csv_layout
        dataset = _load_csv_layout(root, csv_path, image_column, mask_column, streaming, num_shards)
        source, image_column, mask_column = csv_path, "image", "mask"  # already renamed by the CSV reader
    else:
        builder_path = path
        if os.path.isfile(path):
            extension = os.path.splitext(path)[1].lower()
            if extension not in _FILE_BUILDERS:
                raise ValueError(
                    f"Cannot tell how to read {path!r}. Pass a folder, a reference CSV (image,label columns), or "
                    f".parquet / .tar (webdataset) shards."
                )
            builder_path, data_files = _FILE_BUILDERS[extension], {split: path}
        elif _looks_local(path) and not os.path.exists(path):
            raise FileNotFoundError(
                f"The dataset folder {path!r} does not exist. Check the path, or pass a Hub dataset id such as "
                "'user/dataset'."
            )
        try:
            dataset = datasets.load_dataset(
                builder_path, split=split, streaming=streaming, data_files=data_files, **load_kwargs
            )
        except ValueError as err:
            if "split" in str(err).lower():
                raise ValueError(f"{path!r} has no split {split!r}: {err}. {_SPLIT_HINT}") from err
            raise
        source = path
    dataset = _normalise_columns(dataset, image_column, mask_column, source)
    if check_not_empty:
        _raise_if_empty(dataset, source, split)
    return dataset


def _looks_local(path: str) -> bool:
    """A path the user meant on disk, not a Hub id: so that a typo fails at once instead of waiting on the Hub."""
    if path.startswith((os.sep, ".", "~")) or os.path.isabs(path):
        return True
    if os.sep in path and path.count("/") != 1:
        return True
    parent = os.path.dirname(path)
    return bool(parent) and os.path.isdir(parent)  # `data/polyp` while ./data exists


def check_local_path(path: str | os.PathLike, what: str) -> None:
    """Raise FileNotFoundError naming `what` when `path` looks local (see `_looks_local`) but does not exist."""
    text = os.path.expanduser(os.fspath(path))
    if _looks_local(os.fspath(path)) and not os.path.exists(text):
        raise FileNotFoundError(
            f"{what} {os.fspath(path)!r} not found: no such file or folder (from {os.getcwd()}). Check the path, "
            "or give a Hub id such as 'user/name'."
        )


def _split_csv_candidates(split: str) -> tuple[str, ...]:
    return _SPLIT_CSV_NAMES.get(split, (split,))


def _find_csv_layout(path: str, split: str) -> tuple[str, str] | None:
    """`(root, csv_path)` when `path` is a reference CSV layout (or one of its CSVs), else None."""
    if os.path.isfile(path) and path.lower().endswith(".csv"):
        return os.path.dirname(os.path.abspath(path)), os.path.abspath(path)
    if not os.path.isdir(path):
        return None
    roots = [path]
    # The reference downloads unpack to datasets/<name>/<name>/*.csv.
    nested = os.path.join(path, os.path.basename(os.path.normpath(path)))
    if os.path.isdir(nested):
        roots.append(nested)
    for root in roots:
        csvs = sorted(f for f in os.listdir(root) if f.lower().endswith(".csv"))
        if not csvs:
            continue
        for name in _split_csv_candidates(split):
            if f"{name}.csv" in csvs:
                return os.path.abspath(root), os.path.abspath(os.path.join(root, f"{name}.csv"))
        if any(f in csvs for f in ("train.csv", "test.csv", "val.csv")):
            available = [os.path.splitext(f)[0] for f in csvs]
            raise FileNotFoundError(
                f"{root!r} is a CSV-layout dataset without {split}.csv. Available splits: {available}. {_SPLIT_HINT}"
            )
    return None


def _default_num_shards(num_rows: int) -> int:
    shards = 1
    while shards * 2 <= min(num_rows, _MAX_DEFAULT_SHARDS):
        shards *= 2
    return shards


def _load_csv_layout(
    root: str, csv_path: str, image_column: str, mask_column: str, streaming: bool, num_shards: int | None
) -> IterableDataset | Dataset:
    """Resolve the CSV's relative paths; the images themselves stay on disk until iterated.

    The CSV is small (paths only), so it is read eagerly: a missing file is reported
    now, with its row, rather than hours into training.
    """
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        for column, flag in ((image_column, "--image_column"), (mask_column, "--mask_column")):
            if column not in header:
                raise ValueError(
                    f"{csv_path} has no column {column!r}. Available columns: {header}. Pass {flag} <one of them>."
                )
        images, masks = [], []
        for row_number, row in enumerate(reader, start=1):
            pair = []
            for column in (image_column, mask_column):
                relative = (row.get(column) or "").strip()
                resolved = os.path.normpath(os.path.join(root, relative)) if relative else ""
                if not relative or not os.path.isfile(resolved):
                    raise FileNotFoundError(
                        f"{csv_path}, line {reader.line_num} (sample row {row_number}), column {column!r}: file "
                        f"{resolved or '<empty>'!r} (from {relative!r}, relative to {root!r}) does not exist. "
                        "Fix the path in the CSV or restore the file."
                    )
                pair.append(resolved)
            images.append(pair[0])
            masks.append(pair[1])
    if not images:
        raise ValueError(f"{csv_path} lists no samples. Add image,label rows or pick another split.")
    table = Dataset.from_dict(
        {"image": images, "mask": masks},
        features=datasets.Features({"image": ImageFeature(), "mask": ImageFeature()}),
    )
    if not streaming:
        return table
    shards = num_shards or _default_num_shards(len(images))
    return table.to_iterable_dataset(num_shards=min(shards, len(images)))


def _resolve_column(columns: Sequence[str], requested: str, exclude: str | None) -> str | None:
    if requested in columns:
        return requested
    # webdataset names columns after the file extension: "label.png" for key.label.png
    by_stem = [c for c in columns if c.split(".")[0] == requested and c != exclude]
    return by_stem[0] if len(by_stem) == 1 else None


def _column_names(dataset: IterableDataset | Dataset) -> list[str] | None:
    if dataset.features is not None:
        return list(dataset.features)
    if isinstance(dataset, IterableDataset):
        return None
    return list(dataset.column_names)


def _with_columns(dataset):
    """(dataset, its column names): some streamed sources only know their columns after the first row."""
    columns = _column_names(dataset)
    if columns is None:
        dataset = dataset._resolve_features()
        columns = _column_names(dataset) or []
    return dataset, columns


def _per_sample(dataset, fn, columns: list[str]):
    """`fn` (a `_Preprocess`-like object) over every row, undecoded: streamed per row, map-style on access."""
    dataset = _without_decoding(dataset)
    if isinstance(dataset, IterableDataset):
        return dataset.map(fn.stream, batched=True, batch_size=1, with_indices=True, remove_columns=columns)
    return dataset.with_transform(fn.transform)


def _normalise_columns(dataset, image_column: str, mask_column: str, source: str):
    dataset, columns = _with_columns(dataset)
    image = _resolve_column(columns, image_column, exclude=None)
    if image is None:
        raise ValueError(
            f"{source} has no column {image_column!r} (asked for as the image column). Available columns: "
            f"{columns}. Pass --image_column <name> (image_column=... in Python)."
        )
    mask = _resolve_column(columns, mask_column, exclude=image)
    if mask is None:
        raise ValueError(
            f"{source} has no column {mask_column!r} (asked for as the mask column). Available columns: "
            f"{columns}. Pass --mask_column <name> (mask_column=... in Python)."
        )
    for column, role, flag in ((image, "image", "--image_column"), (mask, "mask", "--mask_column")):
        feature = dataset.features[column] if dataset.features is not None else None
        if isinstance(feature, datasets.ClassLabel) or (
            isinstance(feature, datasets.Value)
            and feature.dtype not in ("string", "large_string", "binary", "large_binary")
        ):
            hint = (
                " It holds class ids (an imagefolder with class sub-folders?): describe the masks in a "
                "metadata.jsonl with 'file_name' and 'mask_file_name'."
                if isinstance(feature, datasets.ClassLabel)
                else ""
            )
            raise ValueError(
                f"Column {column!r} of {source} is {feature}, not an {role}.{hint} "
                f"Available columns: {columns}. Pass {flag} <name of the {role} column>."
            )
    dataset = dataset.select_columns([image, mask])
    renames = {old: new for old, new in ((image, "image"), (mask, "mask")) if old != new}
    if renames:
        dataset = _rename_without_decoding(dataset, renames)
    for column in ("image", "mask"):
        feature = dataset.features[column] if dataset.features is not None else None
        if (
            feature is not None
            and not isinstance(feature, ImageFeature)
            and (isinstance(feature, datasets.Value) or isinstance(feature, dict))
        ):
            dataset = dataset.cast_column(column, ImageFeature())  # paths or bytes -> lazily decoded images
    return dataset


def _rename_without_decoding(dataset, renames: dict[str, str]):
    """`rename_columns`, without decoding every image and encoding it back to PNG on the way.

    `IterableDataset.rename_columns` is a `map` over decoded rows: each image was decoded
    there, re-encoded to PNG bytes (losing its file name) for the `Image(decode=False)` cast
    of `prepare_dataset`, then decoded again. Renaming the undecoded columns and restoring
    the `Image` features afterwards (a lazy cast) gives the same rows for a third of the work.
    """
    if not isinstance(dataset, IterableDataset) or dataset.features is None:
        return dataset.rename_columns(renames)
    features = dataset.features
    renamed = _without_decoding(dataset).rename_columns(renames)
    for column, feature in features.items():
        if isinstance(feature, ImageFeature) and feature.decode:
            renamed = renamed.cast_column(renames.get(column, column), feature)
    return renamed


def _without_decoding(dataset):
    if dataset.features is None:
        return dataset
    for column, feature in dataset.features.items():
        if isinstance(feature, ImageFeature) and feature.decode:
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    return dataset


def _raise_if_empty(dataset, source: str, split: str) -> None:
    if isinstance(dataset, Dataset):
        empty = len(dataset) == 0
    else:
        empty = next(iter(_without_decoding(dataset).take(1)), None) is None
    if empty:
        raise ValueError(
            f"The {split!r} split of {source} is empty. Check the path / data_files pattern, or pick another split."
        )


def shuffle_stream(dataset: IterableDataset, seed: int, buffer_size: int = 256) -> IterableDataset:
    """`dataset.shuffle(seed, buffer_size)` that fills its buffer from one shard at a time.

    Since datasets 5.0 `IterableDataset.shuffle` interleaves up to 10 shards into its buffer
    (`max_buffer_input_shards`) through `CyclingMultiSourcesExamplesIterable`, whose iterator
    ends every pass over a parquet source (the builder's `SLEEP_ON_THREADS_SHUTDOWNS`) with
    `time.sleep(datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN)`: 5 s, to let Arrow's reader
    threads wind down after its prefetch threads (apache/arrow#45214). That is 5 s per epoch
    (per data-loader worker): 4x the whole run on a 32-image set. `max_buffer_input_shards=1`,
    the library's own switch, takes the pre-5.0 path (no prefetch threads, no sleep): the shard
    order is still reshuffled every epoch (`set_epoch`) and rows are shuffled within the buffer;
    only the mixing of several shards inside one buffer is given up. Local data that fits is
    better served by `prepare_cached_dataset` (a full permutation every epoch, decoded once).
    """
    kwargs = {}
    if "max_buffer_input_shards" in inspect.signature(dataset.shuffle).parameters:  # datasets >= 5.0
        kwargs["max_buffer_input_shards"] = 1
    return dataset.shuffle(seed=seed, buffer_size=buffer_size, **kwargs)


# --------------------------------------------------------------------------- distribution


def split_for_process(dataset, rank: int | None = None, world_size: int | None = None):
    """The part of `dataset` this process reads, disjoint from every other rank's.

    Wraps `datasets.distributed.split_dataset_by_node`: a stream with a shard count
    divisible by `world_size` is split by shard (each rank opens only its files);
    otherwise each rank reads the stream and keeps every `world_size`-th sample, which
    is still disjoint but costs every rank the full read. Shuffle with the same seed
    on every rank (`dataset.shuffle(seed=...)`, `set_epoch`) so the split stays disjoint.
    `rank` / `world_size` default to `torch.distributed` or the `RANK` / `WORLD_SIZE`
    environment that `torchrun` and `accelerate launch` set.
    """
    if rank is None or world_size is None:
        env_rank, env_world = _distributed_env()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size); got rank={rank}, world_size={world_size}.")
    if world_size == 1:
        return dataset
    if isinstance(dataset, IterableDataset) and dataset.n_shards % world_size != 0:
        logger.warning(
            "The stream has %d shards, not a multiple of %d processes: every rank reads all of it and keeps "
            "1/%d. Reshard (e.g. num_shards=%d) to let each rank read only its own files.",
            dataset.n_shards,
            world_size,
            world_size,
            world_size * max(1, dataset.n_shards // world_size),
        )
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(dataset, rank=rank, world_size=world_size)


def _distributed_env() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# --------------------------------------------------------------------------- preprocessing


class PicklableWithLock:
    """Counters shared by DataLoader workers hold a lock; pickling (worker start-up) drops it, unpickling makes a new one."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


class CorruptSampleLog(PicklableWithLock):
    """Counts and names the samples skipped because their image or mask could not be decoded.

    Each skip is logged as it happens (file and fix), `report()` summarises. `InfoSAMTrainer`
    summarises the skips of its data sets that no `report()` has named yet at the end of `train()`
    and `evaluate()`, and the example scripts print the report at their end (no exit hook:
    importing infosam_hf changes nothing in the process). Data-loader workers hold their own copies:
    with `num_workers > 0` the per-skip warnings (emitted in the workers) are the record.

    `summary_by_caller=True`: whoever made the log prints `report()` itself at the end of its run
    (examples/train.py), so the trainer leaves the list to it and a run names its skipped samples once.
    """

    def __init__(self, summary_by_caller: bool = False):
        self.summary_by_caller = summary_by_caller
        self.skipped: list[str] = []
        self.reasons: list[str] = []  # why each one was skipped, in the same order
        self.reported = 0  # how many skips a report() has summarised
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.skipped)

    def add(self, source: str, error: BaseException | str = "") -> None:
        with self._lock:
            self.skipped.append(source)
            self.reasons.append(str(error))
        logger.warning("Skipping corrupt sample %s (%d skipped so far): %s", source, self.count, error)

    def unreported(self) -> list[str]:
        """The samples skipped since the last `report()` that it did not name (one met at every evaluation is new
        once): what a summary at the end of a run still has to say."""
        named = set(self.skipped[: self.reported])
        return [name for name in dict.fromkeys(self.skipped[self.reported :]) if name not in named]

    def report(self) -> str:
        self.reported = self.count
        if not self.skipped:
            return "No corrupt samples were skipped."
        names = list(dict.fromkeys(self.skipped))  # a sample met at every evaluation is named once
        return (
            f"Skipped {len(names)} corrupt sample(s): {', '.join(names)}. Re-export or remove these files "
            "(examples/train.py --validate_data lists every bad sample of both splits and stops; in Python, "
            "find_bad_samples(dataset))."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(count={self.count})"


CorruptSampleCounter = CorruptSampleLog  # the name used in the design notes


def describe_sample(image_value: Any, mask_value: Any, fallback: str) -> tuple[str, str, str]:
    """(image, mask, pair) names of a row for skip messages: the image's file, its mask's, and both (a size
    mismatch). Every reader of rows (training, evaluation, overlays) names them so, and a bad sample is listed once."""
    image_source = describe_source(image_value, fallback)
    mask_source = describe_source(mask_value, f"mask of {image_source}")
    return image_source, mask_source, f"{image_source} (mask {mask_source})"


class _Preprocess:
    """The per-sample function `prepare_dataset` maps; a class so that workers can pickle it."""

    def __init__(
        self,
        preprocessor: SamSegmentationPreprocessor,
        skip_corrupt: bool,
        log: CorruptSampleLog,
        keep_original_mask: bool = False,
    ):
        self.preprocessor = preprocessor
        self.skip_corrupt = skip_corrupt
        self.log = log
        self.keep_original_mask = keep_original_mask

    def one(self, image_value: Any, mask_value: Any, fallback_name: str) -> dict | None:
        image_source, mask_source, pair = describe_sample(image_value, mask_value, fallback_name)
        try:
            image = decode_image(image_value, "image")
        except CorruptImageError as err:
            return self._skip(image_source, err)
        try:
            mask = decode_image(mask_value, "mask") if mask_value is not None else None
        except CorruptImageError as err:
            return self._skip(mask_source, err)
        name = image_source if mask_value is None else pair
        try:
            features = self.preprocessor(image, mask, source=name)
        except MaskSizeMismatchError as err:
            return self._skip(name, err)
        if self.keep_original_mask and mask is not None:
            features[ORIGINAL_MASKS_KEY] = to_binary_mask(mask, self.preprocessor.mask_threshold)
        return features

    def _skip(self, source: str, error: CorruptImageError) -> None:
        if not self.skip_corrupt:
            raise error
        self.log.add(source, error)
        return None

    def stream(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {}
        masks = batch.get("mask", [None] * len(batch["image"]))
        for image_value, mask_value, index in zip(batch["image"], masks, indices):
            features = self.one(image_value, mask_value, f"<sample #{index} of the stream>")
            if features is None:
                continue
            for key, value in features.items():
                out.setdefault(key, []).append(value)
        if not out:  # every row of the batch was skipped: keep the column layout, no rows
            keys = ("pixel_values", "original_sizes", "reshaped_input_sizes", "gt_masks")
            out = {key: [] for key in keys + ((ORIGINAL_MASKS_KEY,) if self.keep_original_mask else ())}
        return out

    def transform(self, batch: dict[str, list]) -> dict[str, list]:
        masks = batch.get("mask", [None] * len(batch["image"]))
        rows = [self.one(i, m, "<unnamed sample>") for i, m in zip(batch["image"], masks)]
        keys = next((list(r) for r in rows if r is not None), ["pixel_values"])
        return {key: [None if r is None else r[key] for r in rows] for key in keys}


def prepare_dataset(
    dataset: IterableDataset | Dataset,
    preprocessor: SamSegmentationPreprocessor,
    skip_corrupt: bool = True,
    corrupt_log: CorruptSampleLog | None = None,
    keep_original_mask: bool = False,
) -> IterableDataset | Dataset:
    """Lazily turn `image`/`mask` rows into SAM features (see `SamSegmentationPreprocessor`).

    Decoding is taken over from `datasets` (image columns are cast to
    `Image(decode=False)`) so that a corrupt file is skipped and counted instead of
    ending the stream; a missing file still raises, since it points at a broken dataset
    rather than a bad file. A streamed dataset drops
    skipped rows; a map-style one (where rows cannot disappear) yields them with
    `pixel_values=None` and `SamSegmentationCollator` drops them. The log of skipped
    samples is `corrupt_log` (a new one by default), also reachable as
    `prepared.corrupt_log`. A mask whose size differs from its image's is a bad sample
    too (skipped, counted, named with both sizes; `find_bad_samples` checks a split up front).
    `keep_original_mask=True` adds the binary mask at the image's own size
    (`"gt_original"`), which evaluation scores against (see `InfoSAMTrainer.prediction_step`).
    """
    log = CorruptSampleLog() if corrupt_log is None else corrupt_log
    dataset, columns = _with_columns(dataset)
    if "image" not in columns:
        raise ValueError(
            f"prepare_dataset expects an 'image' column (and 'mask'); got {columns}. "
            "Load the data with load_segmentation_dataset, which normalises the column names."
        )
    prepared = _per_sample(dataset, _Preprocess(preprocessor, skip_corrupt, log, keep_original_mask), columns)
    prepared.corrupt_log = log
    return prepared


def find_bad_samples(dataset: IterableDataset | Dataset, limit: int | None = None) -> list[str]:
    """Every sample of a split that training would skip: an undecodable image or mask, or a mask whose
    size differs from its image's. One line per bad sample, naming the file and the problem.

    What `examples/train.py --validate_data` runs before a long run; it decodes every row once.
    """
    problems: list[str] = []
    dataset = _without_decoding(dataset)
    for index, row in enumerate(dataset):
        if limit is not None and index >= limit:
            break
        image_source = describe_source(row.get("image"), f"<sample #{index}>")
        mask_value = row.get("mask")
        mask_source = describe_source(mask_value, f"mask of {image_source}")
        try:
            image = decode_image(row.get("image"), "image")
        except CorruptImageError as err:
            problems.append(f"{image_source}: {err}")
            continue
        if mask_value is None:
            problems.append(f"{image_source}: no mask")
            continue
        try:
            mask = decode_image(mask_value, "mask")
        except CorruptImageError as err:
            problems.append(f"{mask_source}: {err}")
            continue
        image_hw, mask_hw = image_size_hw(image), image_size_hw(mask)
        if image_hw != mask_hw:
            problems.append(
                f"{image_source} (mask {mask_source}): image is {image_hw[1]}x{image_hw[0]} (WxH) but mask is "
                f"{mask_hw[1]}x{mask_hw[0]}"
            )
    return problems


def check_masks_not_empty(
    dataset: IterableDataset | Dataset, what: str = "training", max_samples: int = 64, max_empty_fraction: float = 0.9
) -> tuple[int, int]:
    """Refuse a split whose masks are all, or nearly all, empty: what a broken mask export gives (0/1 masks
    saved into a format that scales them away, the wrong `--mask_column`), and what no metric shows, since an
    empty prediction then scores IoU 1. Reads the first `max_samples` preprocessed rows (with `gt_masks`);
    returns (empty, read). More than `max_empty_fraction` empty raises a `ValueError` naming the fix."""
    empty = read = 0
    rows = (dataset[i] for i in range(min(len(dataset), max_samples))) if isinstance(dataset, Dataset) else dataset
    for row in rows:
        if read == max_samples:
            break
        if row is None or row.get("pixel_values") is None or row.get("gt_masks") is None:
            continue  # a skipped (corrupt) sample
        read += 1
        empty += not np.any(np.asarray(row["gt_masks"]))
    if read and empty / read > max_empty_fraction:
        share = "all" if empty == read else f"{empty}"
        raise ValueError(
            f"{share} of the first {read} {what} masks are empty (no foreground pixel). A mask export that lost its "
            "foreground gives this, and it would train and score an empty prediction as IoU 1.0: check the mask "
            "files (foreground non-zero, e.g. 0/255 or 0/1 PNGs) and --mask_column. If the data really is mostly "
            "empty, pass --allow_empty_masks true."
        )
    return empty, read
