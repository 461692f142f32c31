"""Synthetic segmentation domains: the built-in stand-in for real data sets.

(~520 lines: five versioned, byte-stable domain recipes sharing one drawing toolkit, plus their parquet writer;
splitting the recipes from the toolkit would only spread one generator over several files.)

"general": varied shapes (ellipses, polygons, rectangles) in clearly contrasting colours
on smooth, natural-looking backgrounds, what a pre-trained SAM handles well.
"specialised": a shifted domain in the spirit of camouflage and polyp images: objects
whose colour and texture resemble the background, separated only by a slight shift in
tint and texture frequency, with soft boundaries. A model pre-trained on "general"
transfers imperfectly, which gives fine-tuning something real to fix.

Three "paper-regime" domains where the box prompt does not say what the mask is, so the
pre-trained model fails zero-shot and fine-tuning has a real gap to close (as on the InfoSAM
paper's data sets: leaf disease, roads, camouflage/polyps):
"lesions": a large leaf on soil with many small irregular spots; the mask is the spots only.
"roads": a thin branching network of curves on a textured field background; the mask is the network.
"camouflage": one irregular blob with the background's tint and a finer texture only.
Each has its own version in `DOMAIN_VERSIONS` (part of its cache folder name), so a change to
one of them never touches the data or the name of the two original domains.

Pure numpy + PIL, deterministic under a seed. The built-in tiny SAM
(`infosam_hf/builtin/sam-tiny-general`) was pre-trained on exactly this generator's
"general" output: a change to the pixels it draws must bump `GENERATOR_VERSION` and
retrain that model (examples/pretrain_builtin_sam.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter

from .cache_dirs import cache_home, staged_folder

PAPER_DOMAINS = ("lesions", "roads", "camouflage")
DOMAINS = ("general", "specialised", *PAPER_DOMAINS)  # order matters: the index seeds each domain's generator
GENERATOR_VERSION = 3  # part of the cache folder name: a changed generator never reuses old data
# The paper-regime domains' own versions (bump one when its pixels change; GENERATOR_VERSION stays).
DOMAIN_VERSIONS = {"lesions": 1, "roads": 2, "camouflage": 1}
_ALIASES = {"specialized": "specialised"}


def _canonical_domain(domain: str) -> str:
    domain = _ALIASES.get(domain, domain)
    if domain not in DOMAINS:
        raise ValueError(f"Unknown synthetic domain {domain!r}; use one of {DOMAINS}.")
    return domain


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    image = PIL.Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), PIL.Image.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def _soft_edges(mask: np.ndarray, size: int) -> np.ndarray:
    """The mask blurred by a down- and up-sampling, (size, size, 1) in [0, 1]: the specialised domain's soft boundary."""
    return (
        np.asarray(
            PIL.Image.fromarray((mask * 255).astype(np.uint8))
            .resize((size // 2, size // 2))
            .resize((size, size), PIL.Image.BILINEAR),
            dtype=np.float32,
        )[..., None]
        / 255.0
    )


def _random_shape_mask(
    rng: np.random.Generator, size: int, area_fraction: float | None = None, min_side: float = 0.12
) -> np.ndarray:
    """A filled ellipse, polygon or rectangle covering roughly 5-40% of the image (or `area_fraction`), anywhere."""
    mask = PIL.Image.new("L", (size, size), 0)
    draw = PIL.ImageDraw.Draw(mask)
    area = (rng.uniform(0.05, 0.40) if area_fraction is None else area_fraction) * size * size
    aspect = rng.uniform(0.5, 2.0)
    w = float(np.clip(np.sqrt(area * aspect), size * min_side, size * 0.9))
    h = float(np.clip(area / w, size * min_side, size * 0.9))
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


def _draw_blob(
    draw: PIL.ImageDraw.ImageDraw, rng: np.random.Generator, centre: tuple[float, float], radius: float,
    roughness: float, vertices: tuple[int, int] = (8, 14), aspect: float = 1.0, angle: float = 0.0,
) -> None:
    """An irregular star-shaped polygon (radii jittered by +-`roughness`) filled into `draw`."""
    n = int(rng.integers(*vertices))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * (1 + roughness * rng.uniform(-1, 1, n))
    x, y = np.cos(angles) * radii * np.sqrt(aspect), np.sin(angles) * radii / np.sqrt(aspect)
    x, y = x * np.cos(angle) - y * np.sin(angle), x * np.sin(angle) + y * np.cos(angle)
    draw.polygon([(centre[0] + a, centre[1] + b) for a, b in zip(x, y)], fill=255)


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask dilated by a (2 * pixels + 1) square."""
    image = PIL.Image.fromarray((mask * 255).astype(np.uint8)).filter(PIL.ImageFilter.MaxFilter(2 * pixels + 1))
    return np.asarray(image) > 0


def _lesions(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Leaf disease: a leaf covering ~30-55% of the image on soil; the mask is its spots, not the leaf.

    The box of all spots spans most of the leaf, so a model that segments "the object in the box"
    answers with the leaf; the spots (brown, with a yellowish halo outside the mask) are plain to see.
    """
    scale = size / 128
    soil = rng.uniform(0.22, 0.42) * np.array([1.0, 0.82, 0.6]) + rng.uniform(-0.04, 0.04, 3)
    image = soil[None, None] + 0.25 * (_smooth_noise(rng, size, int(rng.integers(10, 18)))[..., None] - 0.5)
    leaf_image = PIL.Image.new("L", (size, size), 0)
    radius = size * rng.uniform(0.30, 0.40)
    centre = (size * rng.uniform(0.42, 0.58), size * rng.uniform(0.42, 0.58))
    angle = rng.uniform(0, np.pi)
    _draw_blob(PIL.ImageDraw.Draw(leaf_image), rng, centre, radius, 0.06, (18, 26), rng.uniform(1.3, 2.0), angle)
    leaf = np.asarray(leaf_image) > 0
    green = np.array([rng.uniform(0.12, 0.32), rng.uniform(0.42, 0.66), rng.uniform(0.08, 0.24)])
    shade = 1 + 0.25 * (_smooth_noise(rng, size, 5)[..., None] - 0.5)
    image = np.where(leaf[..., None], green[None, None] * shade, image)
    rib = PIL.Image.new("L", (size, size), 0)  # the midrib: a light line along the leaf, not part of the mask
    dx, dy = np.cos(angle) * radius * 1.3, np.sin(angle) * radius * 1.3
    PIL.ImageDraw.Draw(rib).line([(centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy)], fill=255,
                                 width=max(1, round(1.5 * scale)))
    image = np.where((np.asarray(rib) > 0)[..., None] & leaf[..., None], green * 1.35 + 0.05, image)
    spots_image = PIL.Image.new("L", (size, size), 0)
    draw = PIL.ImageDraw.Draw(spots_image)
    ys, xs = np.nonzero(_shrink(leaf, max(1, round(3 * scale))))
    for _ in range(int(rng.integers(8, 26))):
        i = int(rng.integers(len(xs)))
        _draw_blob(draw, rng, (xs[i], ys[i]), rng.uniform(2.5, 6.5) * scale, 0.4, (6, 11))
    spots = (np.asarray(spots_image) > 0) & leaf
    halo = _grow(spots, max(1, round(2 * scale))) & leaf & ~spots
    chlorosis = np.array([0.62, 0.64, 0.18]) + rng.uniform(-0.05, 0.05, 3)
    image = np.where(halo[..., None], 0.5 * image + 0.5 * chlorosis, image)
    brown = np.array([rng.uniform(0.32, 0.5), rng.uniform(0.18, 0.3), rng.uniform(0.04, 0.12)])
    spot_shade = 1 + 0.4 * (_smooth_noise(rng, size, 24)[..., None] - 0.5)
    image = np.where(spots[..., None], brown[None, None] * spot_shade, image)
    return image + rng.normal(0, 0.02, image.shape), spots


def _shrink(mask: np.ndarray, pixels: int) -> np.ndarray:
    return ~_grow(~mask, pixels)


def _bezier(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, size: int) -> list[tuple[float, float]]:
    """A gently curved path from start to end (a quadratic Bezier through a random control point)."""
    control = (start + end) / 2 + rng.normal(0, 0.25 * size, 2)
    t = np.linspace(0, 1, 40)[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    return [(float(x), float(y)) for x, y in points]


def _edge_point(rng: np.random.Generator, size: int, side: int) -> np.ndarray:
    along = rng.uniform(0.1, 0.9) * size
    return np.array([(along, -2), (size + 1, along), (along, size + 1), (-2, along)][side], dtype=float)


def _roads(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Remote sensing: a branching network of thin curved roads over fields; the mask is the network.

    The box of the network is nearly the whole image: it says nothing about which pixels are road.
    Roofs and yards of the roads' own grey lie beside them (version 2; version 1 had none and the
    pre-trained model found its lone grey curves zero-shot, box IoU 0.58): road is told by its shape.
    """
    scale = size / 128
    base = np.array([rng.uniform(0.28, 0.45), rng.uniform(0.36, 0.52), rng.uniform(0.18, 0.32)])
    image = base[None, None] + 0.22 * (_smooth_noise(rng, size, int(rng.integers(4, 8)))[..., None] - 0.5)
    fields = PIL.Image.new("L", (size, size), 0)  # a patchwork of fields, slightly different in tint
    draw = PIL.ImageDraw.Draw(fields)
    for value in range(1, int(rng.integers(4, 8))):
        x, y = rng.uniform(0, size, 2)
        w, h = rng.uniform(0.15, 0.45, 2) * size
        draw.rectangle([x - w / 2, y - h / 2, x + w / 2, y + h / 2], fill=value)
    patch = np.asarray(fields)
    tints = rng.uniform(-0.08, 0.08, (8, 3))
    tints[0] = 0
    image = image + tints[patch] + 0.12 * (_smooth_noise(rng, size, int(rng.integers(28, 40)))[..., None] - 0.5)
    network = PIL.Image.new("L", (size, size), 0)
    draw = PIL.ImageDraw.Draw(network)
    paths = []
    for _ in range(int(rng.integers(1, 3))):  # main roads, edge to edge
        first = int(rng.integers(4))
        second = (first + int(rng.integers(1, 4))) % 4
        paths.append(_bezier(rng, _edge_point(rng, size, first), _edge_point(rng, size, second), size))
        draw.line(paths[-1], fill=255, width=max(2, round(rng.uniform(3, 4.5) * scale)), joint="curve")
    for _ in range(int(rng.integers(2, 6))):  # branches from a point of an earlier road
        path = paths[int(rng.integers(len(paths)))]
        start = np.array(path[int(rng.integers(5, 35))])
        end = _edge_point(rng, size, int(rng.integers(4))) if rng.random() < 0.5 else rng.uniform(0.1, 0.9, 2) * size
        paths.append(_bezier(rng, start, end, size))
        draw.line(paths[-1], fill=255, width=max(2, round(rng.uniform(2.5, 3.5) * scale)), joint="curve")
    roads = np.asarray(network) > 0
    grey = rng.uniform(0.55, 0.72) + rng.uniform(-0.03, 0.03, 3)
    surface = grey[None, None] + 0.08 * (_smooth_noise(rng, size, 40)[..., None] - 0.5)
    built = PIL.Image.new("L", (size, size), 0)  # roofs and yards, drawn under the roads
    draw = PIL.ImageDraw.Draw(built)
    for _ in range(int(rng.integers(10, 25))):
        x, y = rng.uniform(0, size, 2)
        w, h = rng.uniform(3, 12, 2) * scale
        draw.rectangle([x - w / 2, y - h / 2, x + w / 2, y + h / 2], fill=255)
    roofs = grey + rng.uniform(-0.06, 0.06, 3)
    image = np.where((np.asarray(built) > 0)[..., None], roofs[None, None] * (surface / grey), image)
    image = np.where(roads[..., None], surface, image)
    return image + rng.normal(0, 0.025, image.shape), roads


def _camouflage(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Camouflage / polyp: an irregular blob of nearly the background's tint, told apart by a finer texture.

    Harder than "specialised": the tint shift is a quarter of its (0.12 vs 0.45), the outline is
    concave rather than an ellipse, polygon or rectangle, and the edges are soft.
    """
    base = rng.uniform(0.3, 0.7, 3)
    background = base[None, None] + 0.30 * (_smooth_noise(rng, size, int(rng.integers(8, 14)))[..., None] - 0.5)
    blob = PIL.Image.new("L", (size, size), 0)
    radius = size * np.sqrt(rng.uniform(0.06, 0.30) / np.pi)
    centre = tuple(rng.uniform(radius, size - radius, 2))
    aspect, angle = rng.uniform(0.6, 1.6), rng.uniform(0, np.pi)
    _draw_blob(PIL.ImageDraw.Draw(blob), rng, centre, radius, 0.45, (9, 15), aspect, angle)
    mask = np.asarray(blob) > 0
    tint = rng.normal(0, 1, 3)
    tint = 0.12 * tint / np.linalg.norm(tint)
    object_texture = _smooth_noise(rng, size, int(rng.integers(36, 52)))
    foreground = base[None, None] + tint[None, None] + 0.30 * (object_texture[..., None] - 0.5)
    soft = _soft_edges(mask, size)
    image = soft * foreground + (1 - soft) * background
    return image + rng.normal(0, 0.03, image.shape), mask


_PAPER_GENERATORS = {"lesions": _lesions, "roads": _roads, "camouflage": _camouflage}


def make_synthetic_sample(
    domain: str, image_size: int, rng: np.random.Generator
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """One (RGB image, 0/255 mask) pair of the given domain."""
    domain = _canonical_domain(domain)
    size = int(image_size)
    if domain in PAPER_DOMAINS:
        image, mask = _PAPER_GENERATORS[domain](size, rng)
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        return PIL.Image.fromarray(image), PIL.Image.fromarray((mask * 255).astype(np.uint8))
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
        soft = _soft_edges(mask, size)
        image = soft * foreground + (1 - soft) * background
        image = image + rng.normal(0, 0.03, image.shape)
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return PIL.Image.fromarray(image), PIL.Image.fromarray((mask * 255).astype(np.uint8))


MAX_OBJECTS = 6
_MIN_VISIBLE = 0.5  # an object may be covered by later ones, but at most half of it


def _instance_layout(rng: np.random.Generator, size: int, max_objects: int) -> list[np.ndarray]:
    """1..max_objects shape masks from small (~1% of the image) to large (~30%), drawn in order.

    Later objects may overlap earlier ones (they are drawn on top); a placement that would hide
    more than half of an earlier object, or leave too little of itself, is redrawn (or dropped).
    Returned masks are the *visible* parts, so they never overlap each other.
    """
    count = int(rng.integers(1, max_objects + 1))
    visible: list[np.ndarray] = []
    full_areas: list[int] = []
    min_pixels = max(12, int(0.004 * size * size))
    for _ in range(count):
        for _attempt in range(6):
            fraction = float(np.exp(rng.uniform(np.log(0.01), np.log(0.30))))
            shape = _random_shape_mask(rng, size, area_fraction=fraction, min_side=0.08)
            if shape.sum() < min_pixels:
                continue
            kept = [v & ~shape for v in visible]
            if all(k.sum() >= _MIN_VISIBLE * a and k.sum() >= min_pixels for k, a in zip(kept, full_areas)):
                visible = kept + [shape]
                full_areas.append(int(shape.sum()))
                break
    return visible


def _distinct_colour(rng: np.random.Generator, avoid: list[np.ndarray], spread: float) -> np.ndarray:
    """A colour at least `spread` (Euclidean, in [0, 1]^3) away from every colour in `avoid`, if one is found."""
    best, best_distance = None, -1.0
    for _ in range(24):
        colour = rng.uniform(0.0, 1.0, 3)
        distance = min(float(np.linalg.norm(colour - a)) for a in avoid) if avoid else np.inf
        if distance >= spread:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def make_synthetic_instances(
    domain: str, image_size: int, rng: np.random.Generator, max_objects: int = MAX_OBJECTS
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """One (RGB image, instance-id mask) pair: 0 = background, k = object k (1..max_objects).

    Each object has its own colour (general: clearly different from the background and the
    other objects; specialised: a slight tint and texture change, as in `make_synthetic_sample`),
    so a prompt on one object has a visible answer different from a prompt on another: the
    model trained on this must follow its prompt, not segment "the salient thing".
    """
    domain = _canonical_domain(domain)
    if domain in PAPER_DOMAINS:
        raise ValueError(
            f"The {domain!r} domain has one mask per image (all its spots or roads); use max_objects=1 with it."
        )
    size = int(image_size)
    objects = _instance_layout(rng, size, int(max_objects))
    ids = np.zeros((size, size), dtype=np.uint8)
    if domain == "general":
        base = rng.uniform(0.1, 0.9, 3)
        tilt = rng.uniform(-0.3, 0.3, 3)
        ramp = np.linspace(-1, 1, size, dtype=np.float32)
        image = base[None, None] + tilt[None, None] * ramp[:, None, None]
        image = image + 0.25 * (_smooth_noise(rng, size, 4)[..., None] - 0.5)
        used = [base]
        for index, mask in enumerate(objects, start=1):
            colour = _distinct_colour(rng, used, 0.45)
            used.append(colour)
            shade = 1 + 0.15 * (_smooth_noise(rng, size, 3)[..., None] - 0.5)
            image = np.where(mask[..., None], colour[None, None] * shade, image)
            ids[mask] = index
        image = image + rng.normal(0, 0.02, image.shape)
    else:
        base = rng.uniform(0.3, 0.7, 3)
        texture = _smooth_noise(rng, size, int(rng.integers(12, 20)))
        image = base[None, None] + 0.30 * (texture[..., None] - 0.5)
        for index, mask in enumerate(objects, start=1):
            tint = rng.normal(0, 1, 3)
            tint = 0.45 * tint / np.linalg.norm(tint)
            object_texture = _smooth_noise(rng, size, int(rng.integers(24, 36)))
            foreground = base[None, None] + tint[None, None] + 0.30 * (object_texture[..., None] - 0.5)
            soft = _soft_edges(mask, size)
            image = soft * foreground + (1 - soft) * image
            ids[mask] = index
        image = image + rng.normal(0, 0.03, image.shape)
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return PIL.Image.fromarray(image), PIL.Image.fromarray(ids, mode="L")


def _contiguous_shards(count: int, shards: int) -> list[range]:
    """The same split as `datasets.Dataset.shard(contiguous=True)`: the first `count % shards` get one more."""
    div, mod = divmod(count, shards)
    bounds, start = [], 0
    for index in range(shards):
        end = start + div + (1 if index < mod else 0)
        bounds.append(range(start, end))
        start = end
    return bounds


def _png(image: PIL.Image.Image) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_synthetic_dataset(
    output_dir: str | os.PathLike,
    domain: str,
    num_train: int,
    num_test: int,
    image_size: int = 128,
    seed: int = 0,
    num_shards: int = 2,
    max_objects: int = 1,
) -> Path:
    """Parquet shards `train-0000i-of-0000N.parquet` / `test-...` with `image` and `label` Image columns.

    With `max_objects` > 1 (e.g. `MAX_OBJECTS`), `label` is an instance-id PNG (0 = background, k =
    object k, 1..`max_objects` objects per image; read it with `instance_format="ids"`, or as one
    binary mask of all objects). The default, 1, writes the single-object 0/255 masks of
    `make_synthetic_sample`: the data the built-in tiny SAM was pre-trained and is fine-tuned on.

    The same arguments give byte-identical files (PNG and parquet encoding are
    deterministic for a given library version). A split with no samples writes no
    file. Existing files are never overwritten.
    """
    import datasets
    import pyarrow.parquet as pq

    domain = _canonical_domain(domain)
    if num_train < 0 or num_test < 0 or num_train + num_test == 0:
        raise ValueError(f"Need at least one sample; got num_train={num_train}, num_test={num_test}.")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
    if not 1 <= max_objects <= 255:
        raise ValueError(f"max_objects must lie in [1, 255] (ids are stored in an 8-bit PNG), got {max_objects}.")
    if max_objects > 1 and domain in PAPER_DOMAINS:
        raise ValueError(f"The {domain!r} domain has one mask per image; use max_objects=1 with it.")
    output_dir = Path(output_dir)
    plan = []
    for split, count in (("train", num_train), ("test", num_test)):
        shards = min(num_shards, count)
        for index, rows in enumerate(_contiguous_shards(count, shards) if count else []):
            path = output_dir / f"{split}-{index:05d}-of-{shards:05d}.parquet"
            if path.exists():
                raise FileExistsError(
                    f"{path} already exists; write_synthetic_dataset never overwrites. Pick an empty output_dir "
                    "or delete the old files."
                )
            plan.append((split, path, rows))
    output_dir.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    rngs = {  # one generator per split, drawn in order: shard boundaries do not change the samples
        split: np.random.default_rng([seed, offset, DOMAINS.index(domain)])
        for split, offset in (("train", 0), ("test", 1_000_003))
    }
    for split, path, rows in plan:
        images, labels = [], []
        for index in rows:
            if max_objects == 1:
                image, mask = make_synthetic_sample(domain, image_size, rngs[split])
            else:
                image, mask = make_synthetic_instances(domain, image_size, rngs[split], max_objects)
            name = f"{domain}-{split}-{index:06d}"
            images.append({"bytes": _png(image), "path": f"{name}.png"})
            labels.append({"bytes": _png(mask), "path": f"{name}_mask.png"})
        # The Arrow schema carries the `datasets` features, so readers see Image columns.
        table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).data.table
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, str(tmp))
        os.replace(tmp, path)
    return output_dir


def cache_root() -> Path:
    """Where synthetic data sets are cached: `$INFOSAM_HF_CACHE/synthetic` (default `~/.cache/infosam_hf`)."""
    return cache_home() / "synthetic"


def default_dataset_dir(
    domain: str = "specialised",
    num_train: int = 2000,
    num_test: int = 200,
    image_size: int = 128,
    seed: int = 0,
    num_shards: int = 2,
    max_objects: int = 1,
) -> Path:
    """The folder `ensure_synthetic_dataset` uses for these parameters (not created here)."""
    domain = _canonical_domain(domain)
    shards = "" if num_shards == 2 else f"-{num_shards}shards"  # the default keeps the established folder name
    objects = "" if max_objects == 1 else f"-{max_objects}objects"
    tag = f"{domain}{DOMAIN_VERSIONS[domain]}" if domain in DOMAIN_VERSIONS else domain  # e.g. "roads1"
    return cache_root() / (
        f"v{GENERATOR_VERSION}-{tag}-{image_size}px-seed{seed}-{num_train}+{num_test}{shards}{objects}"
    )


_MARKER = ".complete"


def ensure_synthetic_dataset(
    domain: str = "specialised",
    num_train: int = 2000,
    num_test: int = 200,
    image_size: int = 128,
    seed: int = 0,
    num_shards: int = 2,
    max_objects: int = 1,
) -> Path:
    """The data set's folder in the cache, written on first use and reused afterwards.

    It is generated in a temporary folder renamed into place, so processes starting
    together (one per rank) never read a half-written data set. A folder at that place
    without the completion marker is not ours: it is left untouched and reported.
    """
    params = dict(
        domain=_canonical_domain(domain),
        num_train=num_train,
        num_test=num_test,
        image_size=image_size,
        seed=seed,
        num_shards=num_shards,
        max_objects=max_objects,
    )
    folder = default_dataset_dir(**params)
    if not (folder / _MARKER).exists():
        if folder.exists():
            raise FileExistsError(
                f"{folder} exists but was not completed by ensure_synthetic_dataset; it is left untouched. "
                "Move it away, or point INFOSAM_HF_CACHE at another folder."
            )
        with staged_folder(folder, _MARKER) as staging:
            write_synthetic_dataset(staging, **{k: v for k, v in params.items()})
            (staging / _MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
    return folder
