"""A persistent, on-disk store of the frozen teacher's image embeddings, shared by later runs.

Why: the in-memory `TeacherEmbeddingCache` lives for one run and in RAM (ViT-B at 1024 px:
4 MB per image in fp32, 40 GB for 10k images). A hyper-parameter sweep over the same data
and base pays the teacher's image encoder again in every run. The store writes each image's
embeddings once, as a safetensors file, and any later run with the same teacher reads them.

What makes an entry valid, so that nothing stale is ever reused:
- the folder is `<root>/<fingerprint>/`, where the fingerprint hashes the teacher's frozen
  image-encoder weights (names and values, adapters excluded as PEFT declares them: the
  teacher runs with them off), the model class and config, and the precision the embeddings
  were computed in. A changed teacher or precision lands in another folder.
- the file name is the content hash of the preprocessed pixels (`content_key`), so a changed
  preprocessing (size, normalisation, augmentation) simply misses.
- files are written to a temporary name and renamed into place (a crash leaves no half file);
  each carries its key, fingerprint and an XXH3-64 checksum of its tensor data in the
  safetensors metadata. A file that does not read back, whose metadata disagrees, or whose
  data no longer matches its checksum (bytes flipped on disk, intact header) is deleted and
  recomputed (counted in `rebuilt`, one warning naming it). Verifying costs one hash pass
  over the bytes read (BENCHMARKS.md, "Teacher store: checksum cost on read").
- format 2 added the checksum. The format is hashed into the fingerprint, so a format-1 store
  (no checksums) is never read as verified: its folder is simply not looked at (delete it).

A store that cannot be written (a read-only mount or folder, shared by a team) is used read-only
when it already holds this teacher's folder: its entries are read, the images it lacks are
computed in every run and not stored (one warning), and a corrupted entry is skipped, not
deleted. One that cannot be written and holds nothing for this teacher is an error, one line,
and `check_store_root` makes that check at start-up, before any model or data is loaded.

Disk use is bounded: `max_bytes` stops new writes (with one warning) once reached; `estimate`
gives the size before a precompute starts. Entries are dicts of tensors, so any SAM family's
decoder inputs (one tensor, or several feature levels) fit.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
import xxhash  # a dependency of datasets too
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

logger = logging.getLogger(__name__)

STORE_FORMAT = 2  # 2: a checksum of the tensor data in each entry's metadata
_META_NAME = "store.json"


def _hash_tensor(digest, tensor: torch.Tensor) -> None:
    data = tensor.detach().contiguous().cpu()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.numpy().tobytes())


def entry_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """XXH3-64 over an entry's names, dtypes, shapes and bytes: catches flipped or zeroed bytes on disk (not
    tampering). XXH3 rather than zlib's CRC-32: a 4 MB read verifies in a third of the time (BENCHMARKS.md)."""
    digest = xxhash.xxh3_64()
    for name in sorted(tensors):
        data = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        digest.update(data.numpy().reshape(-1).view("u1"))  # the tensor's own buffer, no copy
    return digest.hexdigest()


def teacher_fingerprint(encoder: nn.Module, model_config=None, precision: str = "float32") -> str:
    """A digest of what determines the teacher's image embeddings.

    Adapter weights are left out (the teacher runs with its adapters disabled), and a wrapped
    module's frozen weight (`...base_layer.weight`, `...original_module.weight`) is normalised to
    the plain name, so a shared-weights teacher and a separate copy of the same base agree.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"format{STORE_FORMAT}|{precision}|".encode())
    if model_config is not None:
        digest.update(json.dumps(model_config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(_frozen_encoder_tensors(encoder).items()):
        digest.update(name.encode())
        _hash_tensor(digest, tensor)
    return digest.hexdigest()


def _adapter_prefixes(encoder: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of adapter state, as PEFT declares it: each tuner layer's (and `modules_to_save`
    wrapper's) `adapter_layer_names` + `other_param_names`, so any PEFT method, ours included, is covered."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    prefixes = []
    for name, module in encoder.named_modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            for attribute in (*module.adapter_layer_names, *getattr(module, "other_param_names", ())):
                prefixes.append(f"{name}.{attribute}." if name else f"{attribute}.")
    return tuple(prefixes)


def _frozen_encoder_tensors(encoder: nn.Module) -> dict[str, torch.Tensor]:
    adapter = _adapter_prefixes(encoder)
    tensors = {}
    for name, tensor in encoder.state_dict().items():
        if adapter and name.startswith(adapter):
            continue  # adapter state: off while the teacher runs
        parts = name.split(".")
        tensors[".".join(p for p in parts if p not in ("base_layer", "original_module"))] = tensor
    return tensors


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _writable(folder: Path) -> bool:
    """Whether files can be created in `folder` (created if missing): tried, since permission bits, ACLs and
    read-only mounts all have their say (and `os.access` answers for the real, not the effective user)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError as err:
        if err.errno in _NOT_WRITABLE:
            return False
        raise ValueError(f"Teacher store {folder} cannot be used as a folder ({err.strerror}); point it at a folder.") from err


def _fix(flag: str) -> str:
    return f"make it writable (chmod -R u+w) or point {flag} at a writable folder"


def check_store_root(root: str | os.PathLike, *, write: bool = False, flag: str = "--teacher_store") -> bool:
    """The start-up check of a store folder, before any model or data is loaded (the folder is known from the flags).

    True: it can be written. False: it cannot, but holds stores to read from (the run reads them read-only;
    whether this teacher's entries are among them is known once the model is loaded). A ValueError naming the
    folder and the fix otherwise, or whenever `write` is asked (a precompute, which only writes).
    """
    root = Path(root)
    if _writable(root):
        return True
    if write:
        raise ValueError(f"Teacher store {root} is not writable, and filling it writes; {_fix(flag)}.")
    if not any(root.glob(f"*/{_META_NAME}")):
        raise ValueError(f"Teacher store {root} is not writable and holds no store to read; {_fix(flag)}.")
    return False


class TeacherEmbeddingStore:
    """Safetensors files of teacher embeddings under `<root>/<fingerprint>/<key[:2]>/<key>.safetensors`."""

    def __init__(self, root: str | os.PathLike, fingerprint: str, max_bytes: int | None = None, verify: bool = True):
        """`verify=False` skips the checksum on read (for measuring its cost); entries are written with one always."""
        self.root = Path(root)
        self.verify = verify
        self.fingerprint = fingerprint
        self.folder = self.root / fingerprint
        self.max_bytes = max_bytes
        self.hits = self.misses = self.writes = self.rebuilt = 0
        self._bytes = None
        self._full_warned = False
        self._unusable: set[str] = set()  # corrupted entries a read-only store cannot delete: skipped, not re-read
        meta = self.folder / _META_NAME
        self.read_only = not _writable(self.folder)
        if not self.read_only and not meta.exists():
            meta.write_text(json.dumps({"format": STORE_FORMAT, "fingerprint": fingerprint}) + "\n")
        if self.read_only:
            if not meta.is_file():
                raise ValueError(
                    f"Teacher store {self.root} is not writable and holds nothing for this teacher and precision "
                    f"({self.folder.name}); {_fix('teacher_store (--teacher_store)')}."
                )
            logger.warning(
                "Teacher store %s is read-only: its %d entries are read; images it lacks are computed in every run "
                "and not stored (make it writable to fill it).", self.folder, len(self),
            )

    @classmethod
    def for_teacher(
        cls, root: str | os.PathLike, encoder: nn.Module, model_config=None, precision: str = "float32", **kwargs
    ) -> TeacherEmbeddingStore:
        return cls(root, teacher_fingerprint(encoder, model_config, precision), **kwargs)

    def path_of(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def disk_bytes(self) -> int:
        if self._bytes is None:
            self._bytes = sum(p.stat().st_size for p in self.folder.glob("*/*.safetensors"))
        return self._bytes

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.safetensors"))

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self.path_of(key)
        if key in self._unusable or not path.exists():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != key or meta.get("fingerprint") != self.fingerprint:
                    raise ValueError(f"metadata {meta} does not match key {key}")
                entry = {name: f.get_tensor(name) for name in f.keys()}
            if self.verify and meta.get("xxh3_64") != entry_checksum(entry):
                raise ValueError(f"its data does not match its checksum (xxh3_64 {meta.get('xxh3_64')})")
        except Exception as err:  # a truncated, corrupted or foreign file: never used, recomputed
            fate = "skipped (the store is read-only)" if self.read_only else "deleted"
            logger.warning("Teacher store: %s is unreadable, corrupted or not ours (%s); it is %s and recomputed.",
                           path, err, fate)
            if self.read_only:
                self._unusable.add(key)
            else:
                path.unlink(missing_ok=True)
            self._bytes = None
            self.rebuilt += 1
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: str, entry: dict[str, torch.Tensor]) -> bool:
        """Writes one image's entry unless it is there already, the store is read-only or the size bound is reached."""
        path = self.path_of(key)
        if self.read_only or path.exists():
            return False
        size = sum(t.numel() * t.element_size() for t in entry.values())
        if self.max_bytes is not None and self.disk_bytes() + size > self.max_bytes:
            if not self._full_warned:
                logger.warning(
                    "Teacher store %s reached max_bytes=%d; further embeddings are computed but not stored.",
                    self.folder, self.max_bytes,
                )
                self._full_warned = True
            return False
        try:
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        except OSError as err:  # made read-only while running, or one sub-folder is: read what is there
            if err.errno not in _NOT_WRITABLE:
                raise
            self.read_only = True
            logger.warning("Teacher store %s cannot be written (%s); from now on it is only read.", path.parent, err)
            return False
        os.close(fd)
        try:
            tensors = {name: t.detach().contiguous().cpu() for name, t in entry.items()}
            metadata = {"key": key, "fingerprint": self.fingerprint, "xxh3_64": entry_checksum(tensors)}
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if self._bytes is not None:
            self._bytes += path.stat().st_size
        self.writes += 1
        return True


def estimate_bytes(num_images: int, embedding_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
    """Disk the store needs for `num_images` (one entry per image; file headers add a few hundred bytes)."""
    per_image = torch.Size(embedding_shape).numel() * torch.empty((), dtype=dtype).element_size() + 256
    return num_images * per_image


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} GB"
