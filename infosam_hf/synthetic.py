"""Two synthetic segmentation domains: the built-in stand-in for real data sets.

"general": varied shapes (ellipses, polygons, rectangles) in clearly contrasting colours
on smooth, natural-looking backgrounds, what a pre-trained SAM handles well.
"specialised": a shifted domain in the spirit of camouflage and polyp images: objects
whose colour and texture resemble the background, separated only by a slight shift in
tint and texture frequency, with soft boundaries. A model pre-trained on "general"
transfers imperfectly, which gives fine-tuning something real to fix.

Pure numpy + PIL, deterministic under a seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

DOMAINS = ("general", "specialised")
GENERATOR_VERSION = 2  # part of the cache folder name: a changed generator never reuses old data


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    image = PIL.Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), PIL.Image.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def _random_shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A filled ellipse, polygon or rectangle covering roughly 5-40% of the image, anywhere."""
    mask = PIL.Image.new("L", (size, size), 0)
    draw = PIL.ImageDraw.Draw(mask)
    area = rng.uniform(0.05, 0.40) * size * size
    aspect = rng.uniform(0.5, 2.0)
    w = float(np.clip(np.sqrt(area * aspect), size * 0.12, size * 0.9))
    h = float(np.clip(area / w, size * 0.12, size * 0.9))
    cx, cy = rng.uniform(w / 2, size - w / 2), rng.uniform(h / 2, size - h / 2)
    kind = rng.integers(3)
    if kind == 0:
        draw.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=255)
    elif kind == 1:
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.6, 1.0, n)
        points = [(cx + np.cos(a) * r * w / 2, cy + np.sin(a) * r * h / 2) for a, r in zip(angles, radii)]
        draw.polygon(points, fill=255)
    else:
        draw.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=255)
    return np.asarray(mask) > 0


def make_synthetic_sample(
    domain: str, image_size: int, rng: np.random.Generator
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """One (RGB image, 0/255 mask) pair of the given domain."""
    if domain not in DOMAINS:
        raise ValueError(f"Unknown synthetic domain {domain!r}; use one of {DOMAINS}.")
    size = image_size
    mask = _random_shape_mask(rng, size)
    if domain == "general":
        base = rng.uniform(0.1, 0.9, 3)
        tilt = rng.uniform(-0.3, 0.3, 3)
        ramp = np.linspace(-1, 1, size, dtype=np.float32)
        background = base[None, None] + tilt[None, None] * ramp[:, None, None]
        background = background + 0.25 * (_smooth_noise(rng, size, 4)[..., None] - 0.5)
        colour = (base + rng.choice([-1, 1], 3) * rng.uniform(0.35, 0.6, 3)) % 1.0
        shade = 1 + 0.15 * (_smooth_noise(rng, size, 3)[..., None] - 0.5)
        image = np.where(mask[..., None], colour[None, None] * shade, background)
        image = image + rng.normal(0, 0.02, image.shape)
    else:
        base = rng.uniform(0.3, 0.7, 3)
        texture = _smooth_noise(rng, size, int(rng.integers(12, 20)))
        background = base[None, None] + 0.30 * (texture[..., None] - 0.5)
        tint = rng.normal(0, 1, 3)
        tint = 0.45 * tint / np.linalg.norm(tint)  # enough for the pre-trained model to find ~20% IoU zero-shot
        object_texture = _smooth_noise(rng, size, int(rng.integers(24, 36)))
        foreground = base[None, None] + tint[None, None] + 0.30 * (object_texture[..., None] - 0.5)
        soft = np.asarray(
            PIL.Image.fromarray((mask * 255).astype(np.uint8)).resize((size // 2, size // 2)).resize((size, size), PIL.Image.BILINEAR),
            dtype=np.float32,
        )[..., None] / 255.0
        image = soft * foreground + (1 - soft) * background
        image = image + rng.normal(0, 0.03, image.shape)
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return PIL.Image.fromarray(image), PIL.Image.fromarray((mask * 255).astype(np.uint8))


def write_synthetic_dataset(
    output_dir: str | os.PathLike,
    domain: str,
    num_train: int,
    num_test: int,
    image_size: int = 128,
    seed: int = 0,
    num_shards: int = 2,
) -> Path:
    """Parquet shards `train-0000i-of-0000N.parquet` / `test-...` with `image` and `label` columns."""
    from datasets import Dataset, Features, Image

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    features = Features({"image": Image(), "label": Image()})
    for split, count, offset in (("train", num_train, 0), ("test", num_test, 1_000_003)):
        rng = np.random.default_rng([seed, offset, DOMAINS.index(domain)])
        rows = [make_synthetic_sample(domain, image_size, rng) for _ in range(count)]
        dataset = Dataset.from_dict({"image": [r[0] for r in rows], "label": [r[1] for r in rows]}, features=features)
        shards = max(1, min(num_shards, count))
        for index in range(shards):
            shard = dataset.shard(num_shards=shards, index=index, contiguous=True)
            shard.to_parquet(str(output_dir / f"{split}-{index:05d}-of-{shards:05d}.parquet"))
    return output_dir


def cache_root() -> Path:
    return Path(os.environ.get("INFOSAM_HF_CACHE", Path.home() / ".cache" / "infosam_hf")) / "synthetic"


def ensure_synthetic_dataset(
    domain: str, num_train: int = 2000, num_test: int = 200, image_size: int = 128, seed: int = 0
) -> Path:
    """The dataset's folder in the cache, written on first use; an existing folder is reused, never rewritten."""
    folder = cache_root() / f"v{GENERATOR_VERSION}-{domain}-{image_size}px-seed{seed}-{num_train}+{num_test}"
    done = folder / ".complete"
    if not done.exists():
        tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
        write_synthetic_dataset(tmp, domain, num_train, num_test, image_size, seed)
        (tmp / ".complete").write_text("ok\n")
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep theirs
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder
