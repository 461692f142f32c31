"""Segment images with an InfoSAM adapter (or a plain SAM) from box / point prompts.

For every image it writes `<output_dir>/<name>_mask.png` (the binary mask, 0/255, at the
image's original size) and `<output_dir>/<name>_overlay.png` (the mask over the image in
blue with the prompt drawn: box in green, foreground points green, background points red).

    python examples/predict.py --adapter outputs/infosam-builtin --images photo.png --box 12 20 90 110
    python examples/predict.py --adapter user/sam-polyp-infosam --images scans/ --points 120,88 --output_dir preds
    python examples/predict.py --model_name_or_path facebook/sam-vit-base --prompts prompts.json

Prompt coordinates are pixels of the ORIGINAL image (x to the right, y down), as you read
them in an image viewer; they are mapped to the model's input frame exactly as
`SamProcessor` maps them. `--box` / `--points` / `--negative_points` apply to every image;
`--prompts prompts.json` gives one prompt per image, keyed by file name (or path), or a list
of prompts for several objects of one image:

    {"a.png": {"box": [10, 20, 110, 140]},
     "b.jpg": {"points": [[40, 52], [60, 70]], "labels": [1, 0]},
     "c.png": [{"box": [5, 5, 40, 40]}, {"box": [60, 50, 120, 110]}, {"points": [[80, 20]]}]}

Several prompts on one image (a list there, or `--box` with 4k numbers for k boxes) give one
mask per prompt, `<name>_mask_1.png`, `<name>_mask_2.png`, ..., and one combined overlay
(a colour per object); the image is encoded once for all its prompts (`infosam_hf.Predictor`).

(a list of `{"image": "a.png", "box": ...}` objects works too; with no `--images`, the
images listed there are read, relative to the JSON file). A prompt may combine a box and
points. Existing outputs are never overwritten unless `--overwrite` is given.
Without --adapter and --model_name_or_path the built-in tiny SAM is used, with the adapter
in outputs/infosam-builtin if examples/train.py has written one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from infosam_hf import builtin
from infosam_hf.cli import ScriptArgumentParser
from infosam_hf.data import CorruptImageError, CorruptSampleLog, decode_image, to_rgb_pil
from infosam_hf.inference import Predictor
from infosam_hf.loading import load_model_or_base
from infosam_hf.resolution import allow_image_size_change_argument, image_size_argument
from infosam_hf.visualization import OBJECT_COLORS, mask_to_image, render_overlay

logger = logging.getLogger("infosam_hf.predict")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
OUTPUT_SUFFIXES = ("_mask", "_overlay")


@dataclass
class PredictionArguments:
    images: list[str] = field(
        default_factory=list, metadata={"help": "Image files and/or folders (every image inside, not recursive)."}
    )
    adapter: str | None = field(default=None, metadata={"help": "InfoSAM adapter: a folder or a Hub id."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Plain SAM (folder or Hub id), used when no --adapter is given."}
    )
    base_model: str | None = field(
        default=None, metadata={"help": "Load the adapter on this base instead of the one in its adapter_config.json."}
    )
    box: list[float] | None = field(
        default=None,
        metadata={"help": "Box prompt x1 y1 x2 y2 in original image pixels; 4k numbers = k boxes, one mask each."},
    )
    points: list[str] | None = field(
        default=None, metadata={"help": "Foreground points, each as x,y in original image pixels."}
    )
    negative_points: list[str] | None = field(default=None, metadata={"help": "Background points, each as x,y."})
    prompts: str | None = field(default=None, metadata={"help": "JSON file with one prompt per image."})
    output_dir: str = field(default="predictions")
    overwrite: bool = field(default=False, metadata={"help": "Replace existing output files."})
    threshold: float = field(default=0.0, metadata={"help": "Mask logit threshold (0 = probability 0.5)."})
    alpha: float = field(default=0.5, metadata={"help": "Opacity of the mask in the overlay."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})
    image_size: int | None = image_size_argument()
    allow_image_size_change: bool = allow_image_size_change_argument()


@dataclass
class Prompt:
    box: list[float] | None = None
    points: list[list[float]] | None = None
    labels: list[int] | None = None

    def validate(self, width: int, height: int, where: str) -> None:
        """Coordinates must lie on the image (0..width, 0..height); boxes must have x1 <= x2, y1 <= y2."""
        if self.box is None and not self.points:
            raise ValueError(f"{where}: no prompt. Give a box and/or points.")
        if self.box is not None:
            if len(self.box) != 4:
                raise ValueError(f"{where}: a box is x1 y1 x2 y2, got {self.box}.")
            x1, y1, x2, y2 = self.box
            if x1 > x2 or y1 > y2:
                raise ValueError(f"{where}: box {self.box} is not x1 y1 x2 y2 with x1 <= x2 and y1 <= y2.")
            _check_inside([[x1, y1], [x2, y2]], width, height, f"{where}: box {self.box}")
        if self.points:
            labels = self.labels if self.labels is not None else [1] * len(self.points)
            if len(labels) != len(self.points):
                raise ValueError(f"{where}: {len(self.points)} points but {len(labels)} labels.")
            if any(label not in (0, 1) for label in labels):
                raise ValueError(f"{where}: point labels must be 1 (foreground) or 0 (background), got {labels}.")
            self.labels = [int(label) for label in labels]
            _check_inside(self.points, width, height, f"{where}: points")


def _check_inside(points, width: int, height: int, what: str) -> None:
    for point in points:
        if len(point) != 2:
            raise ValueError(f"{what}: a point is (x, y), got {point}.")
        x, y = point
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
            raise ValueError(
                f"{what}: ({x:g}, {y:g}) lies outside the image, which is {width}x{height} (WxH); prompt "
                "coordinates are pixels of the original image, x in [0, width], y in [0, height]."
            )


def parse_point(text: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return [float(parts[0]), float(parts[1])]
    except ValueError:
        raise ValueError(f"A point is written x,y (e.g. 120,88), got {text!r}.") from None


def cli_prompt(args: PredictionArguments) -> Prompt | None:
    positives = [parse_point(p) for p in args.points or []]
    negatives = [parse_point(p) for p in args.negative_points or []]
    if args.box is None and not positives and not negatives:
        return None
    points = positives + negatives
    if args.box is not None and len(args.box) > 4 and len(args.box) % 4 == 0:
        if points:
            raise ValueError("Several --box prompts cannot be combined with --points; use --prompts prompts.json.")
        return [Prompt(box=list(args.box[i : i + 4])) for i in range(0, len(args.box), 4)]
    return Prompt(
        box=list(args.box) if args.box is not None else None,
        points=points or None,
        labels=[1] * len(positives) + [0] * len(negatives) if points else None,
    )


def _prompt_from_json(entry, where: str) -> Prompt | list[Prompt]:
    if isinstance(entry, list):  # several objects of one image
        if not entry:
            raise ValueError(f"{where}: an empty list of prompts.")
        return [_prompt_from_json(e, f"{where}, prompt {i}") for i, e in enumerate(entry)]
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with 'box' and/or 'points', got {entry!r}.")
    unknown = set(entry) - {"image", "box", "points", "labels"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; use 'box', 'points' and 'labels'.")
    points = entry.get("points")
    if points is not None:
        points = [[float(v) for v in p] for p in points]
    box = entry.get("box")
    return Prompt(box=[float(v) for v in box] if box is not None else None, points=points, labels=entry.get("labels"))


def read_prompt_file(path: str) -> dict[str, Prompt]:
    """`{image name or path: Prompt}` from the JSON file (an object keyed by image, or a list of objects)."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
    if isinstance(data, list):
        entries = {}
        for i, entry in enumerate(data):
            if not isinstance(entry, dict) or "image" not in entry:
                raise ValueError(f"{path}, entry {i}: a list entry needs an 'image' key.")
            entries[str(entry["image"])] = entry
    elif isinstance(data, dict):
        entries = data
    else:
        raise ValueError(f"{path} must hold an object keyed by image name or a list of objects.")
    return {name: _prompt_from_json(entry, f"{path}, {name!r}") for name, entry in entries.items()}


def collect_images(paths: list[str]) -> list[str]:
    images = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and not os.path.splitext(name)[0].endswith(OUTPUT_SUFFIXES)  # our own outputs, from an earlier run
            )
            if not found:
                raise ValueError(f"The folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
            images.extend(found)
        elif os.path.isfile(path):
            images.append(path)
        else:
            raise FileNotFoundError(f"The image {path} does not exist.")
    return images


def match_prompts(images: list[str], table: dict[str, Prompt], prompt_file: str) -> list[Prompt]:
    base = os.path.dirname(os.path.abspath(prompt_file))
    by_path = {os.path.normpath(os.path.join(base, name)): p for name, p in table.items()}
    prompts, missing = [], []
    for image in images:
        prompt = (
            table.get(image)
            or by_path.get(os.path.normpath(os.path.abspath(image)))
            or table.get(os.path.basename(image))
        )
        if prompt is None:
            missing.append(image)
        prompts.append(prompt)
    if missing:
        raise ValueError(f"{prompt_file} has no prompt for {', '.join(missing)} (keys are file names or paths).")
    return prompts


def output_paths(
    images: list[str], output_dir: str, overwrite: bool, counts: list[int] | None = None
) -> list[tuple[str | list[str], str]]:
    """`(mask path, overlay path)` per image; refuses clashes and (without overwrite) existing files, up front.

    An image with `counts[i] > 1` prompts gets a list of mask paths, `<stem>_mask_<k>.png`.
    """
    stems: dict[str, str] = {}
    paths = []
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        if stem in stems:
            raise ValueError(
                f"{image} and {stems[stem]} would both be saved as {stem}_mask.png; rename one of them or run them "
                "separately with different --output_dir."
            )
        stems[stem] = image
        count = 1 if counts is None else counts[len(paths)]
        masks = (
            os.path.join(output_dir, f"{stem}_mask.png")
            if count == 1
            else [os.path.join(output_dir, f"{stem}_mask_{k}.png") for k in range(1, count + 1)]
        )
        paths.append((masks, os.path.join(output_dir, f"{stem}_overlay.png")))
    if not overwrite:
        flat = [p for masks, overlay in paths for p in ([masks] if isinstance(masks, str) else masks) + [overlay]]
        existing = [p for p in flat if os.path.exists(p)]
        if existing:
            shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
            raise FileExistsError(
                f"Refusing to overwrite {shown}. Pass --overwrite to replace them, or choose another --output_dir."
            )
    return paths


def load_model(args: PredictionArguments, device: torch.device):
    adapter, base = builtin.resolve_models(args.adapter, args.base_model, args.model_name_or_path)
    what = f"adapter {adapter} on {base or base_named_by(adapter)}" if adapter else f"{base} (no adapter)"
    logger.info("Loading %s", what)
    return load_model_or_base(adapter, base, device=device, image_size=args.image_size,
                              allow_image_size_change=args.allow_image_size_change)


def base_named_by(adapter: str) -> str:
    """The base model an adapter names in its adapter_config.json (read when loading), for the log line."""
    from infosam_hf.loading import base_model_id_of

    try:
        return base_model_id_of(adapter)
    except (OSError, ValueError):  # a Hub id, not downloaded yet
        return "the base model its adapter_config.json names"


def predict_masks(predictor: Predictor, image, prompts: list[Prompt]) -> list[np.ndarray]:
    """One boolean mask per prompt, at the image's original size; the image is encoded once.

    Several box-only prompts are decoded together, as SAM's point batch; any other prompt on its own.
    """
    predictor.set_image(image)
    if len(prompts) > 1 and all(p.box is not None and not p.points for p in prompts):
        return list(predictor.predict(boxes=[p.box for p in prompts]).masks)
    return [
        predictor.predict(boxes=p.box, points=p.points or None, labels=p.labels if p.points else None).masks[0]
        for p in prompts
    ]


def save_several(image, masks, prompts, mask_paths, overlay_path, alpha: float) -> None:
    from infosam_hf.visualization import overlay_mask

    overlay = image
    for k, (mask, _prompt, path) in enumerate(zip(masks, prompts, mask_paths)):
        mask_to_image(mask).save(path)
        overlay = overlay_mask(overlay, mask, color=OBJECT_COLORS[k % len(OBJECT_COLORS)], alpha=alpha)
    for prompt in prompts:
        overlay = render_overlay(overlay, None, box=prompt.box, points=prompt.points, labels=prompt.labels)
    overlay.save(overlay_path)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    (args,) = ScriptArgumentParser(PredictionArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    shared = cli_prompt(args)
    if args.prompts and shared is not None:
        raise ValueError("Give either --prompts (one prompt per image) or --box/--points (one for all), not both.")
    if args.prompts:
        table = read_prompt_file(args.prompts)
        if args.images:
            images = collect_images(args.images)
        else:
            base = os.path.dirname(os.path.abspath(args.prompts))
            images = collect_images([name if os.path.isabs(name) else os.path.join(base, name) for name in table])
        prompts = match_prompts(images, table, args.prompts)
    else:
        if shared is None:
            raise ValueError("No prompt: give --box x1 y1 x2 y2, --points x,y ... or --prompts prompts.json.")
        images = collect_images(args.images)
        prompts = [shared] * len(images)
    if not images:
        raise ValueError("No images: give --images (files or folders) or list them in --prompts.")

    # Everything that can be checked without the model is checked first: no half-written output folder.
    counts = [len(p) if isinstance(p, list) else 1 for p in prompts]
    outputs = output_paths(images, args.output_dir, args.overwrite, counts)
    decoded, checked, kept, corrupt_log = [], [], [], CorruptSampleLog()
    for index, (path, prompt) in enumerate(zip(images, prompts)):
        try:  # a corrupt image is skipped, counted and named, as in training and evaluation
            image = to_rgb_pil(decode_image(path, "image"))
        except CorruptImageError as err:
            corrupt_log.add(path, err)
            continue
        kept.append(index)
        several = []
        for one in prompt if isinstance(prompt, list) else [prompt]:
            one = Prompt(one.box, one.points, one.labels)  # a copy per image: validate fills in labels
            one.validate(image.width, image.height, path)
            several.append(one)
        decoded.append(image)
        checked.append(several if isinstance(prompt, list) else several[0])
    if not kept:
        raise ValueError(corrupt_log.report())
    images, outputs = [images[i] for i in kept], [outputs[i] for i in kept]

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    predictor = Predictor(*load_model(args, device), mask_threshold=args.threshold)
    os.makedirs(args.output_dir, exist_ok=True)
    results = []
    for path, image, prompt, (mask_path, overlay_path) in zip(images, decoded, checked, outputs):
        if isinstance(prompt, list):
            masks = predict_masks(predictor, image, prompt)
            paths = mask_path if isinstance(mask_path, list) else [mask_path]
            save_several(image, masks, prompt, paths, overlay_path, args.alpha)
            areas = [int(m.sum()) for m in masks]
            print(f"{path}: {len(masks)} masks ({', '.join(f'{a} px' for a in areas)}) -> {', '.join(paths)}, {overlay_path}")
            results.append({"image": path, "masks": paths, "overlay": overlay_path, "mask_pixels": areas})
            continue
        (mask,) = predict_masks(predictor, image, [prompt])
        mask_to_image(mask).save(mask_path)
        render_overlay(image, mask, box=prompt.box, points=prompt.points, labels=prompt.labels, alpha=args.alpha).save(
            overlay_path
        )
        area = int(mask.sum())
        print(f"{path}: mask {area} px ({100.0 * area / mask.size:.1f}%) -> {mask_path}, {overlay_path}")
        results.append({"image": path, "mask": mask_path, "overlay": overlay_path, "mask_pixels": area})
    if corrupt_log.count:
        print(corrupt_log.report())
    return results


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise SystemExit(f"error: {error}") from error
