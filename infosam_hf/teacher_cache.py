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


class TeacherEmbeddingCache:
    """In-memory LRU cache (on the CPU by default) of teacher image embeddings, one entry per image."""

    def __init__(
        self, max_items: int | None = None, storage_device: str | torch.device = "cpu", disk_store=None
    ):
        """`disk_store`: an optional `TeacherEmbeddingStore` behind the memory (read on a miss, written on store)."""
        self.max_items = max_items
        self.disk_store = disk_store
        self.storage_device = torch.device(storage_device)
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
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

    def lookup(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor | None, list[str]]:
        """(embeddings, keys): the batch's embeddings if every image is cached, else None (the teacher runs).

        Memory first, then the disk store (an entry read from disk is kept in memory too).
        """
        keys = [content_key(p) for p in pixel_values]
        found = {}
        for key in keys:
            if key in self._entries:
                found[key] = self._entries[key]
            elif self.disk_store is not None and (entry := self.disk_store.get(key)) is not None:
                found[key] = entry["image_embeddings"]
                self._remember(key, found[key])
        if len(found) < len(set(keys)):
            self.misses += 1
            return None, keys
        self.hits += 1
        for key in keys:
            if key in self._entries:
                self._entries.move_to_end(key)
        return torch.stack([found[k] for k in keys]).to(pixel_values.device), keys

    def store(self, keys: list[str], embeddings: torch.Tensor) -> None:
        for key, embedding in zip(keys, embeddings.detach()):
            self._remember(key, embedding)
            if self.disk_store is not None:
                self.disk_store.put(key, {"image_embeddings": embedding})

    def _remember(self, key: str, embedding: torch.Tensor) -> None:
        self._entries[key] = embedding.to(self.storage_device, copy=True)
        self._entries.move_to_end(key)
        while self.max_items is not None and len(self._entries) > self.max_items:
            self._entries.popitem(last=False)
