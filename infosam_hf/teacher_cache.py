"""A cache of the frozen teacher's image embeddings, keyed by the exact image content.

The teacher's image encoder is the most expensive part of InfoSAM's overhead (a whole
extra ViT forward per step), and for a frozen teacher its output depends on the
pixels alone. Keying by a hash of the preprocessed pixel tensor makes the cache exact
whatever the data pipeline does: an augmented image simply misses and is computed.
From the second epoch on (without random augmentation) only the teacher's small
mask decoder runs.

It is exact only if the teacher's image encoder never changes: a separate frozen
teacher, or the shared-weights teacher when the student trains the encoder through
adapters only (LoRA etc., which `disable_adapter()` switches off). `for_model` refuses
the configuration where the student's `modules_to_save` would copy encoder layers.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn


def content_key(pixels: torch.Tensor) -> str:
    """A collision-resistant digest of one image's preprocessed pixels (dtype and shape included)."""
    data = pixels.detach().contiguous().cpu()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.dtype == torch.bfloat16 else data.numpy().tobytes())
    return digest.hexdigest()


def _map(fn, encoding):
    """`fn` on every tensor of an encoding: a tensor, or a dict / list of them (SAM 2's feature levels,
    SAM-HQ's intermediate embeddings), the structure kept."""
    if isinstance(encoding, dict):
        return {k: _map(fn, v) for k, v in encoding.items()}
    if isinstance(encoding, (list, tuple)):
        return [_map(fn, v) for v in encoding]
    return fn(encoding)


def _stack(entries: list):
    first = entries[0]
    if isinstance(first, dict):
        return {k: _stack([e[k] for e in entries]) for k in first}
    if isinstance(first, (list, tuple)):
        return [_stack([e[i] for e in entries]) for i in range(len(first))]
    return torch.stack(entries)


def flatten_entry(entry) -> dict[str, torch.Tensor]:
    """One image's entry as flat named tensors for the disk store: a list under `name` becomes `name.0`, `name.1`..."""
    if isinstance(entry, torch.Tensor):
        return {"image_embeddings": entry}
    flat = {}
    for name, value in entry.items():
        if isinstance(value, (list, tuple)):
            flat.update({f"{name}.{i}": t for i, t in enumerate(value)})
        else:
            flat[name] = value
    return flat


def unflatten_entry(flat: dict[str, torch.Tensor]) -> dict:
    """The inverse of `flatten_entry` (always a dict: what `model(**entry)` takes)."""
    entry: dict = {}
    for name in sorted(flat, key=lambda n: (n.rsplit(".", 1)[0], int(n.rsplit(".", 1)[1]) if "." in n else -1)):
        base, _, index = name.rpartition(".")
        if base and index.isdigit():
            entry.setdefault(base, []).append(flat[name])
        else:
            entry[name] = flat[name]
    return entry


class TeacherEmbeddingCache:
    """In-memory LRU cache (on the CPU by default) of teacher image embeddings, one entry per image.

    An entry is whatever the teacher's family needs in place of the pixels: a tensor, or a dict /
    list of per-batch tensors (see `SamFamily.cache_inputs`); `lookup` returns the structure `store` got."""

    def __init__(
        self, max_items: int | None = None, storage_device: str | torch.device = "cpu", disk_store=None
    ):
        """`disk_store`: an optional `TeacherEmbeddingStore` behind the memory (read on a miss, written on store)."""
        self.max_items = max_items
        self.disk_store = disk_store
        self.storage_device = torch.device(storage_device)
        self._entries: OrderedDict[str, object] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs) -> "TeacherEmbeddingCache":
        if getattr(model, "teacher", None) is None:
            shadowed = [
                name
                for name, param in model.student.named_parameters()
                if "vision_encoder" in name and "modules_to_save" in name
            ]
            if shadowed:
                raise ValueError(
                    "cache_teacher_embeddings cannot be exact here: the student trains image-encoder weights in full "
                    f"through modules_to_save (e.g. {shadowed[0]}), so the shared-weights teacher would see them. "
                    "Train the encoder through adapters only, pass a separate teacher model, or turn the cache off."
                )
        return cls(**kwargs)

    def lookup(self, pixel_values: torch.Tensor) -> tuple[object | None, list[str]]:
        """(embeddings, keys): the batch's embeddings if every image is cached, else None (the teacher runs).

        Memory first, then the disk store (an entry read from disk is kept in memory too).
        """
        keys = [content_key(p) for p in pixel_values]
        found = {}
        for key in keys:
            if key in self._entries:
                found[key] = self._entries[key]
            elif self.disk_store is not None and (entry := self.disk_store.get(key)) is not None:
                found[key] = unflatten_entry(entry)
                self._remember(key, found[key])
        if len(found) < len(set(keys)):
            self.misses += 1
            return None, keys
        self.hits += 1
        for key in keys:
            if key in self._entries:
                self._entries.move_to_end(key)
        stacked = _stack([found[k] for k in keys])
        return _map(lambda t: t.to(pixel_values.device), stacked), keys

    def store(self, keys: list[str], embeddings) -> None:
        for i, key in enumerate(keys):
            entry = _map(lambda t: t[i].detach(), embeddings)
            self._remember(key, entry)
            if self.disk_store is not None:
                self.disk_store.put(key, flatten_entry(entry))

    def _remember(self, key: str, entry) -> None:
        self._entries[key] = _map(lambda t: t.to(self.storage_device, copy=True), entry)
        self._entries.move_to_end(key)
        while self.max_items is not None and len(self._entries) > self.max_items:
            self._entries.popitem(last=False)
