"""Prompts sampled from the ground truth, as InfoSAM's reference training does.

A batch is prompted either with jittered boxes or with foreground points (SamModel
cannot mix the two in one forward); which one is drawn per batch with
`box_probability`. Everything is drawn from one `numpy` generator seeded at
construction, so the same seed and the same batches give the same prompts.

Empty masks (no foreground) are handled on purpose: the box is the whole valid image
region and the point is a random background point labelled 0 ("not this"), so the
model learns to predict nothing there instead of the batch crashing.
"""

from __future__ import annotations

import numpy as np

PAD_LABEL = -10


class PromptSampler:
    def __init__(
        self,
        box_probability: float = 0.5,
        num_points: int = 1,
        box_noise: float = 0.1,
        num_negative_points: int = 0,
        seed: int = 0,
    ):
        if not 0.0 <= box_probability <= 1.0:
            raise ValueError(f"box_probability must lie in [0, 1], got {box_probability}.")
        if num_points < 1:
            raise ValueError(f"num_points must be at least 1, got {num_points}.")
        self.box_probability = box_probability
        self.num_points = num_points
        self.box_noise = box_noise
        self.num_negative_points = num_negative_points
        self.rng = np.random.default_rng(seed)

    def choose_box(self) -> bool:
        return bool(self.rng.random() < self.box_probability)

    def box(self, mask: np.ndarray, valid_hw: tuple[int, int] | None = None) -> np.ndarray:
        """Tight XYXY box of the foreground, each side moved by up to `box_noise` x the box side, clipped."""
        mask = np.asarray(mask).reshape(mask.shape[-2:])
        h, w = valid_hw or mask.shape
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return np.array([0, 0, w - 1, h - 1], dtype=np.float32)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        jitter = self.rng.uniform(-1, 1, 4) * self.box_noise * np.array([bw, bh, bw, bh])
        box = np.array([x0, y0, x1, y1], dtype=np.float64) + jitter
        box[[0, 2]] = np.clip(box[[0, 2]], 0, w - 1)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, h - 1)
        box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
        return box.astype(np.float32)

    def points(self, mask: np.ndarray, valid_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`num_points` foreground points (label 1) + `num_negative_points` background points (label 0), (x, y)."""
        mask = np.asarray(mask).reshape(mask.shape[-2:])
        h, w = valid_hw or mask.shape
        region = mask[:h, :w] > 0
        coords, labels = [], []
        fg = np.argwhere(region)
        bg = np.argwhere(~region)
        if len(fg) == 0:
            picks = bg[self.rng.integers(len(bg), size=self.num_points + self.num_negative_points)]
            coords += [(x, y) for y, x in picks]
            labels += [0] * len(picks)
        else:
            picks = fg[self.rng.integers(len(fg), size=self.num_points)]
            coords += [(x, y) for y, x in picks]
            labels += [1] * len(picks)
            if self.num_negative_points and len(bg):
                picks = bg[self.rng.integers(len(bg), size=self.num_negative_points)]
                coords += [(x, y) for y, x in picks]
                labels += [0] * len(picks)
        # pixel centres, as SAM's processor places clicks
        return np.asarray(coords, dtype=np.float32) + 0.5, np.asarray(labels, dtype=np.int64)
