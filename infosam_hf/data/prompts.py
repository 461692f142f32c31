"""Prompts drawn from the ground truth, as SAM is fine-tuned: a jittered box or a few points.

Everything is in the padded S-pixel frame that `SamSegmentationPreprocessor` produces,
which is the frame `SamModel`'s prompt encoder expects (it adds the half-pixel
offset itself), so no coordinate rescaling happens between here and the model.

Empty masks (no foreground) are part of real data (SBU-shadow and leaf-disease images
without shadow or lesion) and are handled on purpose:

- box prompt: the whole valid (unpadded) image, `[0, 0, w-1, h-1]`, i.e. "find the
  object anywhere in this image", whose answer is the empty mask. The reference code
  returns the degenerate box `[0, 0, 0, 0]` instead, which teaches SAM to answer a
  corner pixel with nothing, a prompt never seen at test time.
- point prompt: every point is drawn uniformly from the valid image and labelled 0
  (background), as in the reference code for one point.

Masks that are all foreground (no background to put a negative point on) get their
negative points as padding points (label -10, ignored by `SamPromptEncoder`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PAD_LABEL = -10  # SamPromptEncoder ignores points with this label
PROMPT_TYPES = ("box", "points", "mixed")


def _mask_2d(mask: Any) -> np.ndarray:
    array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    while array.ndim > 2:
        if array.shape[0] != 1:
            raise ValueError(f"Expected one mask per sample, got a mask of shape {array.shape}.")
        array = array[0]
    return array > 0.5


class PromptSampler:
    """Draws SAM prompts from a ground-truth mask, reproducibly.

    Args:
        box_probability: chance that a batch is prompted with boxes rather than points
            (the reference trains 50/50).
        num_points: foreground points per point prompt (label 1).
        box_noise: box jitter scale, as a fraction of the box side.
        num_negative_points: extra background points per point prompt (label 0).
        seed: seeds the generator. Inside a `DataLoader` worker the generator is
            re-seeded from `(seed, worker seed)`: without that every worker (and every
            epoch, since workers are forked afresh from the same state) would repeat
            the same draws; with it the draws stay reproducible under `torch.manual_seed`
            (which `Trainer` sets) and differ between workers and epochs.
        max_box_noise: cap on the jitter in pixels of SAM's 1024 px input (reference: 5),
            scaled with the model's image size (`S / 1024`); `None` removes the cap.
        box_jitter: `"shift"` (reference): the whole box is translated by one offset,
            uniform within `min(box_noise * side, cap)` along each axis; `"corners"` (SAM
            paper, with `max_box_noise=20`): each coordinate gets Gaussian noise of standard
            deviation `box_noise * side`, clipped at the cap.
    """

    def __init__(
        self,
        box_probability: float = 0.5,
        num_points: int = 1,
        box_noise: float = 0.1,
        num_negative_points: int = 0,
        seed: int = 0,
        max_box_noise: float | None = 5.0,
        box_jitter: str = "shift",
    ):
        if not 0.0 <= box_probability <= 1.0:
            raise ValueError(f"box_probability must lie in [0, 1], got {box_probability}.")
        if num_points < 0 or num_negative_points < 0 or num_points + num_negative_points < 1:
            raise ValueError(
                f"Need at least one point per point prompt; got num_points={num_points}, "
                f"num_negative_points={num_negative_points}."
            )
        if box_noise < 0:
            raise ValueError(f"box_noise must be >= 0, got {box_noise}.")
        if box_jitter not in ("shift", "corners"):
            raise ValueError(f"box_jitter must be 'shift' or 'corners', got {box_jitter!r}.")
        self.box_probability = float(box_probability)
        self.num_points = int(num_points)
        self.num_negative_points = int(num_negative_points)
        self.box_noise = float(box_noise)
        self.max_box_noise = None if max_box_noise is None else float(max_box_noise)
        self.box_jitter = box_jitter
        self.seed = int(seed)
        self.reseed(self.seed)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(box_probability={self.box_probability}, num_points={self.num_points}, "
            f"box_noise={self.box_noise}, num_negative_points={self.num_negative_points}, seed={self.seed}, "
            f"max_box_noise={self.max_box_noise}, box_jitter={self.box_jitter!r})"
        )

    @property
    def total_points(self) -> int:
        return self.num_points + self.num_negative_points

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._worker_key = None

    def state_dict(self) -> dict:
        """The generator's position, so a resumed run draws the prompts the uninterrupted run would have drawn.

        The main process's generator only: a `DataLoader` worker re-seeds its own from `(seed, worker seed)`.
        """
        return {"seed": self.seed, "bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.reseed(state["seed"])
        self._rng.bit_generator.state = state["bit_generator"]

    @property
    def rng(self) -> np.random.Generator:
        try:
            from torch.utils.data import get_worker_info

            info = get_worker_info()
        except ImportError:  # pragma: no cover - torch is a dependency
            info = None
        if info is not None and self._worker_key != (info.id, info.seed):
            self._worker_key = (info.id, info.seed)
            self._rng = np.random.default_rng([self.seed, info.seed % (2**63)])
        return self._rng

    def choose_prompt_type(self) -> str:
        """One draw per batch: `SamModel` cannot mix boxes and points within one forward."""
        return "box" if self.rng.random() < self.box_probability else "points"

    @staticmethod
    def _valid_size(mask: np.ndarray, valid_size: Any) -> tuple[int, int]:
        if valid_size is None:
            return int(mask.shape[0]), int(mask.shape[1])
        height, width = (int(v) for v in np.asarray(valid_size).reshape(-1)[:2])
        return min(height, mask.shape[0]), min(width, mask.shape[1])

    def box(self, mask: Any, valid_size: Any = None) -> np.ndarray:
        """A jittered tight box `[x0, y0, x1, y1]` (inclusive pixel indices) as float32."""
        fg = _mask_2d(mask)
        frame = max(fg.shape)  # the model's input size S, which the pixel cap scales with
        height, width = self._valid_size(fg, valid_size)
        fg = fg[:height, :width]
        rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
        if rows.size == 0:
            return np.array([0, 0, width - 1, height - 1], dtype=np.float32)
        x0, x1, y0, y1 = float(cols[0]), float(cols[-1]), float(rows[0]), float(rows[-1])
        box = np.array([x0, y0, x1, y1], dtype=np.float64)
        rng = self.rng
        if self.box_noise > 0:
            sides = np.array([x1 - x0 + 1, y1 - y0 + 1, x1 - x0 + 1, y1 - y0 + 1], dtype=np.float64)
            cap = np.inf if self.max_box_noise is None else self.max_box_noise * frame / 1024
            if self.box_jitter == "shift":
                dx, dy = rng.uniform(-1.0, 1.0, size=2) * np.minimum(self.box_noise * sides[:2], cap)
                box += np.array([dx, dy, dx, dy])
            else:
                box += np.clip(rng.normal(0.0, 1.0, size=4) * self.box_noise * sides, -cap, cap)
        box[[0, 2]] = np.clip(box[[0, 2]], 0, width - 1)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, height - 1)
        box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
        return box.astype(np.float32)

    def valid_foreground(self, mask: Any, valid_size: Any = None) -> np.ndarray:
        """The boolean mask cropped to its valid (unpadded) `(height, width)`: where a point may be drawn."""
        fg = _mask_2d(mask)
        height, width = self._valid_size(fg, valid_size)
        return fg[:height, :width]

    def points(self, mask: Any, valid_size: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """`(coords (N, 2) float32 as (x, y), labels (N,) int64)`: foreground points first, then background."""
        fg = self.valid_foreground(mask, valid_size)
        height, width = fg.shape
        rng = self.rng
        n_total = self.total_points
        fg_index = np.flatnonzero(fg)
        if fg_index.size == 0:
            flat = rng.integers(0, height * width, size=n_total)
            coords = np.stack([flat % width, flat // width], axis=-1).astype(np.float32)
            return coords, np.zeros(n_total, dtype=np.int64)
        coords, labels = [], []
        if self.num_points:
            picked = fg_index[rng.integers(0, fg_index.size, size=self.num_points)]
            coords.append(np.stack([picked % width, picked // width], axis=-1))
            labels.append(np.ones(self.num_points, dtype=np.int64))
        if self.num_negative_points:
            bg_index = np.flatnonzero(~fg)
            if bg_index.size == 0:
                coords.append(np.zeros((self.num_negative_points, 2), dtype=np.int64))
                labels.append(np.full(self.num_negative_points, PAD_LABEL, dtype=np.int64))
            else:
                picked = bg_index[rng.integers(0, bg_index.size, size=self.num_negative_points)]
                coords.append(np.stack([picked % width, picked // width], axis=-1))
                labels.append(np.zeros(self.num_negative_points, dtype=np.int64))
        return np.concatenate(coords).astype(np.float32), np.concatenate(labels)
