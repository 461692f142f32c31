"""Decode and preprocess a data set once, keep the result on disk, read it back every epoch.

The paper's regime is 10-20 epochs over a few hundred to a few thousand images. Streamed,
every epoch decodes the same PNG/JPEG files and resizes them again, and that costs more than
the training step of a small model. Here the preprocessed samples are written once, in
SAM's geometry, into an Arrow file (`datasets.Dataset.from_file`, memory-mapped) keyed by
the source's files and the preprocessing settings, and every later epoch and run reads
them back: a copy and a multiply-add per image. Prompts are still drawn per step by the
collator, so nothing random is frozen into the cache.

Storage is compact and exact: the normalised image is kept as the resized uint8 RGB
crop (un-padded) and rebuilt with the very operations `SamSegmentationPreprocessor` uses,
masks as uint8; every row is checked at write time to come back bit for bit, else it is
stored as raw float32. A 1024 px image costs about 4 MB on disk.

`choose_data_mode` decides between this and streaming for `examples/train.py --streaming auto`.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import Dataset, IterableDataset

from ..cache_dirs import cache_home, staged_folder
from . import images as _images_module
from .sources import CorruptSampleLog, _find_csv_layout, _Preprocess, _without_decoding, load_segmentation_dataset

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1  # part of every cache key: a changed layout never reads old files
DEFAULT_MAX_CACHE_GB = 4.0  # about 1000 images at 1024 px
_MARKER = ".complete"
_DATA_FILE = "data.arrow"
_INFO_FILE = "info.json"
_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
_WRITER_BATCH_SIZE = 32  # rows per Arrow record batch: 32 x 4 MB stays far below Arrow's 2 GB limits
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def preprocessed_cache_dir() -> Path:
    """`$INFOSAM_HF_CACHE/preprocessed` (default `~/.cache/infosam_hf/preprocessed`)."""
    return cache_home() / "preprocessed"


# --------------------------------------------------------------------------- choosing the mode


@dataclass(frozen=True)
class DataMode:
    """How the training data is read, and why (printed by `examples/train.py`)."""

    streaming: bool
    reason: str

    def __str__(self) -> str:
        how = "streamed" if self.streaming else "preprocessed once into a cache (map-style)"
        return f"Training data {how}: {self.reason}"


def choose_data_mode(
    name_or_path: str | os.PathLike,
    streaming: bool | str = "auto",
    *,
    split: str = "train",
    image_size: int = 1024,
    max_cache_gb: float = DEFAULT_MAX_CACHE_GB,
    cache_dir: str | os.PathLike | None = None,
    instance_format: str | None = None,
) -> DataMode:
    """Stream, or preprocess once? `streaming="auto"` picks what is fastest for the data at hand.

    Local data whose preprocessed form (estimated as rows x 4 x `image_size`^2 bytes: uint8 RGB
    plus mask) stays below `max_cache_gb` and half the free disk is preprocessed once
    (`prepare_cached_dataset`); anything else (Hub ids, large or uncountable local data) is
    streamed. `True` / `"true"` always streams, `False` / `"false"` always caches, at any size.
    Instance data (`instance_format`) is always streamed: the cache holds one mask per image.
    """
    choice = str(streaming).strip().lower()
    if choice not in (*_TRUE, *_FALSE, "auto"):
        raise ValueError(f"streaming must be 'auto', 'true' or 'false'; got {streaming!r}.")
    if instance_format is not None:
        ignored = f" (--streaming {streaming} does not apply)" if choice in _FALSE else ""
        return DataMode(True, f"instance data (--instance_format {instance_format}) is decoded as it streams: the "
                              f"preprocessed cache holds one mask per image{ignored}.")
    if choice in _TRUE:
        return DataMode(True, "--streaming true was passed (decoded again every epoch).")
    if choice in _FALSE:
        return DataMode(False, "--streaming false was passed: decoded and resized once, whatever the size.")
    path = os.path.expanduser(os.fspath(name_or_path))
    if not os.path.exists(path):
        return DataMode(
            True,
            f"{path!r} is not a local path (a Hub dataset id?), so it is streamed without downloading it first. "
            "--streaming false downloads it and preprocesses it once.",
        )
    rows = estimate_rows(path, split)
    if rows is None:
        return DataMode(
            True, f"the rows of {path!r} cannot be counted cheaply. --streaming false preprocesses it once anyway."
        )
    estimate = rows * 4 * int(image_size) ** 2
    size = f"~{rows} rows, ~{_human_bytes(estimate)} preprocessed at {image_size} px"
    limit = float(max_cache_gb) * 2**30
    if estimate > limit:
        return DataMode(
            True,
            f"{size}, above the {max_cache_gb:g} GB threshold (--preprocess_cache_max_gb). --streaming false "
            "preprocesses it once anyway.",
        )
    folder = Path(cache_dir) if cache_dir is not None else preprocessed_cache_dir()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path(os.sep))
    free = shutil.disk_usage(existing).free
    if estimate > free / 2:
        return DataMode(True, f"{size}, but only {_human_bytes(free)} free under {existing}.")
    return DataMode(
        False,
        f"local data, {size} (below the {max_cache_gb:g} GB threshold): each image is decoded and resized once into "
        f"{folder} and reused by every epoch and run. --streaming true streams instead.",
    )


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _local_files(path: str) -> list[str]:
    """Every non-hidden file a local source may read (a CSV layout's whole folder, images included)."""
    if os.path.isfile(path):
        if not path.lower().endswith(".csv"):
            return [os.path.abspath(path)]
        path = os.path.dirname(os.path.abspath(path))
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return found


def estimate_rows(path: str | os.PathLike, split: str = "train") -> int | None:
    """Rows of a local source without reading its images; None when that cannot be done cheaply.

    A CSV layout counts its split's CSV; otherwise parquet/Arrow metadata and `.tar` members
    are counted over the whole folder (every split: an over-estimate, on the safe side), and
    loose image files count half a row each (image + mask).
    """
    path = os.path.expanduser(os.fspath(path))
    try:
        layout = _find_csv_layout(path, split)
    except (OSError, ValueError):
        return None
    if layout is not None:
        with open(layout[1], newline="", encoding="utf-8-sig") as handle:
            return max(0, sum(1 for _ in csv.reader(handle)) - 1)
    rows, loose_images = 0, 0
    for file in _local_files(path):
        extension = os.path.splitext(file)[1].lower()
        try:
            if extension == ".parquet":
                import pyarrow.parquet as pq

                rows += pq.read_metadata(file).num_rows
            elif extension == ".arrow":
                rows += Dataset.from_file(file).num_rows
            elif extension == ".tar":
                import tarfile

                with tarfile.open(file) as archive:
                    loose_images += sum(1 for member in archive if member.isfile())
            elif extension in _IMAGE_EXTENSIONS:
                loose_images += 1
        except Exception as err:  # an unreadable file: let the loader report it, just stop estimating
            logger.debug("Cannot count the rows of %s: %s", file, err)
            return None
    rows += (loose_images + 1) // 2
    return rows or None


# --------------------------------------------------------------------------- keys


def source_fingerprint(path: str | os.PathLike) -> str:
    """A hash of the source's files (relative path, size, modification time): a changed file, a new cache."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    base = path if os.path.isdir(path) else os.path.dirname(path)
    digest = hashlib.sha256(path.encode())
    for file in _local_files(path):
        stat = os.stat(file)
        digest.update(f"{os.path.relpath(file, base)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def preprocessing_signature(preprocessor: Any) -> dict:
    """What the cached tensors depend on: the preprocessor's settings and the code that applies them.

    Public attributes are the settings (size, mean, std, resampling, mask threshold, and
    whatever a subclass adds); the source of the preprocessor's module and of the decoding
    module is hashed too, so that a fixed bug in the geometry never serves stale tensors.
    """
    cls = type(preprocessor)
    code = hashlib.sha256()
    for module in (inspect.getmodule(cls), _images_module):
        try:
            code.update(Path(inspect.getsourcefile(module)).read_bytes())
        except (TypeError, OSError):
            from .. import __version__

            code.update(f"{getattr(module, '__name__', module)}-{__version__}".encode())
    settings = {k: v for k, v in sorted(vars(preprocessor).items()) if not k.startswith("_")}
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "settings": settings, "code": code.hexdigest()}


def cache_key(fingerprint: Any, preprocessor: Any, skip_corrupt: bool = True) -> str:
    payload = {
        "format": CACHE_FORMAT_VERSION,
        "source": fingerprint,
        "preprocessing": preprocessing_signature(preprocessor),
        "skip_corrupt": bool(skip_corrupt),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- building and reading


def prepare_cached_dataset(
    name_or_path: str | os.PathLike,
    preprocessor: Any,
    split: str = "train",
    image_column: str = "image",
    mask_column: str = "label",
    data_files: Any = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    skip_corrupt: bool = True,
    corrupt_log: CorruptSampleLog | None = None,
    **load_kwargs: Any,
) -> Dataset:
    """`prepare_dataset(load_segmentation_dataset(...), preprocessor)`, decoded once and cached on disk.

    Same arguments and same rows as the streamed pipeline, but map-style (shuffled per epoch
    by the Trainer, sharded per rank by accelerate) and read from the cache from the second
    epoch and the second run on. Local sources are read once as a stream (no extra copy) and
    keyed by their files; a Hub id is loaded by `datasets` (downloaded, its Arrow cache
    fingerprinted) and keyed by that fingerprint.
    """
    path = os.path.expanduser(os.fspath(name_or_path))
    local = os.path.exists(path)
    raw = load_segmentation_dataset(
        path, split, image_column, mask_column, streaming=local, data_files=data_files, **load_kwargs
    )
    fingerprint = {
        "source": source_fingerprint(path) if local else getattr(raw, "_fingerprint", None) or repr(path),
        "split": split,
        "columns": [image_column, mask_column],
        "data_files": data_files,
        "load_kwargs": {k: repr(v) for k, v in sorted(load_kwargs.items())},
    }
    return cache_preprocessed(
        raw, preprocessor, fingerprint, cache_dir=cache_dir, skip_corrupt=skip_corrupt, corrupt_log=corrupt_log,
        description=f"{path} ({split})",
    )


def cache_preprocessed(
    dataset: IterableDataset | Dataset,
    preprocessor: Any,
    fingerprint: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    skip_corrupt: bool = True,
    corrupt_log: CorruptSampleLog | None = None,
    description: str = "the dataset",
) -> Dataset:
    """Preprocess `dataset` (columns `image`, `mask`) once into `cache_dir/<key>/` and return the cached rows.

    `fingerprint` identifies the source (any JSON-able value); with the preprocessing
    signature it forms the key. The folder is written under a temporary name and renamed
    when complete, so processes starting together (one per rank) never read half a cache.
    Corrupt samples are skipped once, at build time, and listed again on every reuse.
    """
    log = CorruptSampleLog() if corrupt_log is None else corrupt_log
    root = Path(cache_dir) if cache_dir is not None else preprocessed_cache_dir()
    folder = root / cache_key(fingerprint, preprocessor, skip_corrupt)
    if not (folder / _MARKER).exists():
        if folder.exists():
            raise FileExistsError(
                f"{folder} exists but was not completed by cache_preprocessed; it is left untouched. Move it away, "
                "or point INFOSAM_HF_CACHE (cache_dir=...) at another folder."
            )
        _build(dataset, preprocessor, folder, skip_corrupt, log, description)
    return _open(folder, log)


def _build(dataset, preprocessor, folder: Path, skip_corrupt: bool, log: CorruptSampleLog, description: str) -> None:
    from datasets.arrow_writer import ArrowWriter

    start, rows, skipped_before = time.perf_counter(), 0, log.count
    logger.info("Preprocessing %s once into %s", description, folder)
    with staged_folder(folder, _MARKER) as staging:
        codec = _Codec.for_preprocessor(preprocessor)
        preprocess = _Preprocess(preprocessor, skip_corrupt, log)
        writer, keys = None, None
        try:
            for index, row in enumerate(_without_decoding(dataset)):
                features = preprocess.one(row["image"], row.get("mask"), f"<sample #{index} of {description}>")
                if features is None:
                    continue
                if keys is None:
                    keys = sorted(features)
                    schema = {key: datasets.Value("large_binary") for key in keys}
                    writer = ArrowWriter(
                        path=str(staging / _DATA_FILE),
                        features=datasets.Features({**schema, "layout": datasets.Value("string")}),
                        writer_batch_size=_WRITER_BATCH_SIZE,
                    )
                elif sorted(features) != keys:
                    raise ValueError(
                        f"Sample #{index} of {description} has the features {sorted(features)}, the first sample "
                        f"had {keys}; the preprocessor must return the same keys for every sample."
                    )
                writer.write(codec.encode(features))
                rows += 1
            if writer is None:
                raise ValueError(
                    f"{description} has no sample that could be preprocessed ({log.count - skipped_before} "
                    "corrupt); nothing to cache."
                )
            writer.finalize()
        finally:
            if writer is not None:
                writer.close()
        info = {
            "format": CACHE_FORMAT_VERSION,
            "description": description,
            "rows": rows,
            "skipped": log.skipped[skipped_before:],
            "codec": codec.to_json(),
        }
        (staging / _INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        (staging / _MARKER).write_text("")
    logger.info("Cached %d preprocessed samples of %s in %.1f s", rows, description, time.perf_counter() - start)


def _open(folder: Path, log: CorruptSampleLog) -> Dataset:
    info = json.loads((folder / _INFO_FILE).read_text())
    if info.get("skipped") and not log.count:
        log.skipped.extend(info["skipped"])
        logger.warning("The cache %s was built without %d corrupt sample(s): %s", folder, log.count, log.report())
    table = Dataset.from_file(str(folder / _DATA_FILE))
    prepared = table.with_transform(_Decode(_Codec.from_json(info["codec"])))
    prepared.corrupt_log = log
    prepared.cache_folder = str(folder)
    return prepared


class _Decode:
    """The `with_transform` function of a cached dataset; a class so that data-loader workers can pickle it."""

    def __init__(self, codec: _Codec):
        self.codec = codec

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rows = [self.codec.decode({k: batch[k][i] for k in batch}) for i in range(len(batch["layout"]))]
        return {key: [row[key] for row in rows] for key in (rows[0] if rows else ())}


class _Codec:
    """Preprocessed arrays <-> compact bytes, exact to the bit (checked for every row as it is written).

    `pixel_values` are stored as the uint8 values they were normalised from, when the
    preprocessor's affine normalisation (`x * scale - shift` per channel, in float32) is
    known and reproduces them exactly; float arrays holding small integers (binary masks)
    as uint8; anything else raw. Arrays in the padded `S x S` frame keep only their
    un-padded crop when the padding is all zeros.
    """

    def __init__(self, scale: np.ndarray | None, shift: np.ndarray | None):
        self.scale, self.shift = scale, shift

    @classmethod
    def for_preprocessor(cls, preprocessor: Any) -> _Codec:
        scale, shift = getattr(preprocessor, "_scale", None), getattr(preprocessor, "_shift", None)
        if scale is None or shift is None:
            return cls(None, None)
        return cls(np.asarray(scale, dtype=np.float32), np.asarray(shift, dtype=np.float32))

    def to_json(self) -> dict:
        as_list = (lambda a: None if a is None else [float(v) for v in a])  # float32 -> float64: exact
        return {"scale": as_list(self.scale), "shift": as_list(self.shift)}

    @classmethod
    def from_json(cls, state: dict) -> _Codec:
        as_array = (lambda v: None if v is None else np.asarray(v, dtype=np.float32))
        return cls(as_array(state["scale"]), as_array(state["shift"]))

    def _normalise(self, values: np.ndarray, out: np.ndarray) -> None:
        # The same ufunc calls, dtypes and order as SamSegmentationPreprocessor.preprocess_image.
        for channel in range(values.shape[0]):
            np.multiply(values[channel], self.scale[channel], out=out[channel])
            out[channel] -= self.shift[channel]

    def encode(self, features: dict[str, Any]) -> dict[str, Any]:
        sizes = features.get("reshaped_input_sizes")
        crop = tuple(int(v) for v in np.asarray(sizes).reshape(-1)[:2]) if sizes is not None else None
        layout, out = {}, {}
        for key, value in features.items():
            array = np.asarray(value)
            if array.dtype == object:
                raise TypeError(f"Cannot cache the feature {key!r} of type {type(value).__name__}; expected arrays.")
            spec = {"dtype": array.dtype.str, "shape": list(array.shape), "crop": None, "codec": "raw"}
            part = array
            if crop is not None and array.ndim >= 2 and crop[0] <= array.shape[-2] and crop[1] <= array.shape[-1]:
                h, w = crop
                if (h, w) != array.shape[-2:] and not array[..., h:, :].any() and not array[..., :h, w:].any():
                    part, spec["crop"] = array[..., :h, :w], [h, w]
            stored = part
            if key == "pixel_values" and self.scale is not None and part.ndim == 3 and part.shape[0] == len(self.scale):
                values = np.rint((part + self.shift[:, None, None]) / self.scale[:, None, None])
                values = np.clip(values, 0, 255).astype(np.uint8)
                rebuilt = np.empty(part.shape, dtype=np.float32)
                self._normalise(values, rebuilt)
                if array.dtype == np.float32 and np.array_equal(rebuilt, part):
                    stored, spec["codec"] = values, "affine_u8"
            elif array.dtype.kind == "f" and part.size and part.min() >= 0 and part.max() <= 255:
                values = part.astype(np.uint8)
                if np.array_equal(values.astype(array.dtype), part):
                    stored, spec["codec"] = values, "u8"
            layout[key] = spec
            out[key] = np.ascontiguousarray(stored).tobytes()
        out["layout"] = json.dumps(layout)
        return out

    def decode(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        decoded = {}
        for key, spec in json.loads(row["layout"]).items():
            array = np.zeros(spec["shape"], dtype=np.dtype(spec["dtype"]))
            target = array[..., : spec["crop"][0], : spec["crop"][1]] if spec["crop"] else array
            stored_dtype = np.uint8 if spec["codec"] != "raw" else array.dtype
            values = np.frombuffer(row[key], dtype=stored_dtype).reshape(target.shape)
            if spec["codec"] == "affine_u8":
                self._normalise(values, target)
            else:
                target[...] = values
            decoded[key] = array
        return decoded
