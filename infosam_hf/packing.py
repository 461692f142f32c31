"""Stacks of 2-D maps (mask logits, masks): one (B, H, W) layout for any input, and ragged rows for the gather.

Metrics, post-processing and the Trainer's evaluation all take maps as NumPy arrays or torch tensors in
several layouts; `as_batch` brings them to (B, H, W) once. Maps at each image's own size cannot be stacked,
so `InfoSAMTrainer` evaluation packs them into padded rows (`pack_maps`, `pack_maps_per_image`) that the
Trainer's gathering (pad along dimension 1, concatenate along 0) carries across processes; `unpack_maps`
gives them back to `compute_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "PACKED_PAD_VALUE",
    "as_batch",
    "binarize",
    "is_packed",
    "pack_maps",
    "pack_maps_per_image",
    "to_numpy",
    "unpack_maps",
    "unpack_maps_per_image",
]

# Per-image maps of different sizes travel through the Trainer's gathering (which pads and
# concatenates along dimension 1 only) as rows: [height, width, h*w values, padding...].
PACKED_PAD_VALUE = -100.0


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device or float dtype) or array-like as a NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def as_batch(x: Any, name: str) -> np.ndarray:
    """Bring one image or a batch to ``(B, H, W)`` so that every metric is written once, batched."""
    a = to_numpy(x)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim == 5 and a.shape[1] == 1 and a.shape[2] == 1:
        return a[:, 0, 0]
    raise ValueError(
        f"{name} must be shaped (H, W), (B, H, W), (B, 1, H, W) or (B, 1, 1, H, W); got {tuple(a.shape)}. "
        "With several masks per image (multimask output or several prompts) select one per image "
        "first, e.g. the one with the highest iou_scores."
    )


def binarize(mask: np.ndarray) -> np.ndarray:
    """Ground truth as booleans: `mask > 0.5`, so 0/1, bool and 0/255 masks all work."""
    return mask if mask.dtype == np.bool_ else mask > 0.5


def pack_maps(maps: Sequence[Any]) -> torch.Tensor:
    """2-D maps of any sizes -> one float32 (B, 2 + max h*w) tensor (see `unpack_maps`)."""
    flat = [torch.as_tensor(np.asarray(m, dtype=np.float32)) for m in maps]
    length = max(m.numel() for m in flat)
    out = torch.full((len(flat), 2 + length), PACKED_PAD_VALUE, dtype=torch.float32)
    for row, m in zip(out, flat):
        row[0], row[1] = m.shape[-2], m.shape[-1]
        row[2 : 2 + m.numel()] = m.reshape(-1)
    return out


def pack_maps_per_image(maps: Sequence[Any], counts: Sequence[int]) -> torch.Tensor:
    """Maps of several objects per image -> one row per image: [-(k+1), h1, w1, values1, ..., hk, wk, valuesk, pad].

    The Trainer gathers and trims evaluation outputs across processes by rows, one row per sample (image): rows
    per object would differ in number between ranks (a collective mismatch under DDP) and be trimmed wrongly at
    the end of the set. The negative first value (-1 for an image without objects) tells these rows from
    `pack_maps` rows, which start with a height.
    """
    flat = [torch.as_tensor(np.asarray(m, dtype=np.float32)) for m in maps]
    if sum(counts) != len(flat):
        raise ValueError(f"{len(flat)} maps for {sum(counts)} objects ({list(counts)} per image)")
    rows, start = [], 0
    for count in counts:
        parts = [torch.tensor([-float(count + 1)])]
        for m in flat[start : start + count]:
            parts += [torch.tensor([float(m.shape[-2]), float(m.shape[-1])]), m.reshape(-1)]
        rows.append(torch.cat(parts))
        start += count
    out = torch.full((len(rows), max(r.numel() for r in rows)), PACKED_PAD_VALUE, dtype=torch.float32)
    for row, values in zip(out, rows):
        row[: values.numel()] = values
    return out


def unpack_maps(packed: Any) -> list[np.ndarray]:
    """The inverse of `pack_maps` and `pack_maps_per_image`: the (h, w) maps in order, padding dropped."""
    return [m for maps in unpack_maps_per_image(packed) for m in maps]


def unpack_maps_per_image(packed: Any) -> list[list[np.ndarray]]:
    """The maps row by row: each `pack_maps_per_image` row gives its image's objects together (prompt following
    compares them), each `pack_maps` row one map."""
    images = []
    for row in to_numpy(packed):
        if row[0] >= 0:
            images.append([row[2 : 2 + int(row[0]) * int(row[1])].reshape(int(row[0]), int(row[1]))])
            continue
        maps, at = [], 1
        for _ in range(int(-row[0]) - 1):
            h, w = int(row[at]), int(row[at + 1])
            maps.append(row[at + 2 : at + 2 + h * w].reshape(h, w))
            at += 2 + h * w
        images.append(maps)
    return images


def is_packed(array: Any) -> bool:
    """Whether `compute_metrics` got packed rows (2-D) rather than a stack of maps."""
    return getattr(array, "ndim", None) == 2
