"""Trainer callbacks: overlays of a few fixed samples at every evaluation, to judge a run by eye.

Numbers say how much a run improves; pictures say *how* (a mask that bleeds into a
look-alike background, a missed thin structure, a box prompt that is ignored). The
:class:`EvalOverlayCallback` predicts the same samples with the same prompts at every
evaluation and writes, under ``<output_dir>/eval_overlays/step-<N>/``:

* ``sample-00.png``, ``sample-01.png``, ...: the image at its original size with the
  predicted mask filled in blue, the ground truth outlined in yellow and the prompt
  (green box, or green/red points) drawn on top, each at the image's own size; with
  instance data (``instance_format``) every object is prompted and drawn, its mask in a
  colour of its own (``visualization.OBJECT_COLORS``);
* ``grid.png``: all samples side by side, with a legend of these colours below;
* ``scores.json``: each sample's IoU and Dice at probability 0.5 (per object, and their
  mean, for instance data), and the evaluation's metrics.

:class:`RetentionOverlayCallback` draws a few images of the retention set the same way, into
``step-<N>-retention/``, so that forgetting shows as pictures too; with ``--report_to
tensorboard`` (or trackio) both grids are logged as images beside the metrics
(``infosam_hf.tracking``).

Usage::

    raw_eval = load_segmentation_dataset(path, split="test", streaming=False)
    trainer = InfoSAMTrainer(..., callbacks=[EvalOverlayCallback(raw_eval, num_samples=4)])
    trainer.add_callback(RetentionOverlayCallback(raw_general_rows, num_samples=4))

The samples are raw ``{"image", "mask"}`` rows (what ``load_segmentation_dataset`` yields,
before ``prepare_dataset``), because the overlay is drawn on the original image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from .inference import postprocess_logits, prompt_logits, sam_low_res_logits, unwrap_sam_model
from .metrics import binary_iou_dice
from .visualization import image_grid, render_objects

__all__ = ["EvalOverlayCallback", "RetentionOverlayCallback", "sam_low_res_logits", "unwrap_sam_model"]


def with_legend(overlay, prompt: Mapping[str, Any], objects: bool = False):
    """The overlay with a strip below it naming its colours, so that a saved PNG explains itself."""
    from PIL import Image, ImageDraw

    from .visualization import BOX_COLOR, GT_COLOR, MASK_COLOR, NEGATIVE_POINT_COLOR, POSITIVE_POINT_COLOR

    prediction = "prediction (a colour per object)" if objects else "prediction"
    entries = [(MASK_COLOR, prediction), (GT_COLOR, "ground truth")]
    if "box" in prompt:
        entries.append((BOX_COLOR, "box prompt"))
    else:
        entries += [(POSITIVE_POINT_COLOR, "fg point"), (NEGATIVE_POINT_COLOR, "bg point")]
    line = 12
    strip = Image.new("RGB", (overlay.width, line * len(entries) + 4), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for row, (color, label) in enumerate(entries):
        top = 2 + row * line
        draw.rectangle([2, top + 1, 10, top + 9], fill=tuple(color))
        draw.text((14, top), label, fill=(255, 255, 255))
    out = Image.new("RGB", (overlay.width, overlay.height + strip.height))
    out.paste(overlay.convert("RGB"), (0, 0))
    out.paste(strip, (0, overlay.height))
    return out


def _metric_prefix(metrics: Mapping[str, Any] | None) -> str:
    """The evaluation's `metric_key_prefix`: the shortest `<prefix>_runtime` key's (a retention set scored beside
    the evaluation set adds its own `<prefix>_retention_runtime`, ahead of the Trainer's `<prefix>_runtime`)."""
    prefixes = [key[: -len("_runtime")] for key in metrics or {} if key.endswith("_runtime")]
    return min(prefixes, key=len) if prefixes else "eval"


def _folder_suffix(prefix: str) -> str:
    """`step-<N><suffix>`: "" for "eval", "-retention" for "eval_retention", "-zero_shot" for "zero_shot"."""
    if prefix == "eval":
        return ""
    return "-" + (prefix[len("eval_") :] if prefix.startswith("eval_") else prefix)


class EvalOverlayCallback(TrainerCallback):
    """Saves overlays of the same few samples, with the same prompts, at each evaluation.

    Args:
        samples: raw rows with an image and a mask: dicts ``{"image", "mask"}`` (``"label"``
            also accepted), ``(image, mask)`` pairs, or a ``datasets`` dataset of such rows.
            Images and masks may be PIL images, arrays or paths. The first ``num_samples``
            are taken once, at construction.
        num_samples: how many samples to draw.
        output_subdir: folder under ``args.output_dir``; each evaluation writes ``step-<N>/``
            (``step-<N>-<prefix>/`` for ``trainer.evaluate(metric_key_prefix=...)`` other than
            ``"eval"``, so a zero-shot evaluation at step 0 is kept apart).
        prompt_type: ``"box"`` (tight ground-truth box) or ``"points"``.
        num_points: foreground points per point prompt.
        seed: seed of the point draw (made once, reused at every evaluation).
        preprocessor: a ``SamSegmentationPreprocessor``; default: from the Trainer's
            ``processing_class`` (a ``SamProcessor``), else from the model's image size.
        alpha: opacity of the mask colour.
        corrupt_log: a ``CorruptSampleLog`` that counts and names the samples skipped here
            (an undecodable image or mask, or a mask not at its image's size), as training
            and evaluation skip them; the next good rows are drawn instead.
        instance_format: the layout of the mask column when it holds several objects per
            image (``"ids"``, ``"masks"``, ``"coco"``, see ``infosam_hf.data.instances``): each
            object is prompted and drawn, as evaluation scores it. ``None``: one binary mask.
        min_object_area: instance data: objects smaller than this (pixels) are left out,
            as ``prepare_instance_dataset`` leaves them out of training and evaluation.
        set_name: the samples come from the set scored beside the evaluation set under this name
            (``"retention"``: ``InfoSAMTrainer(retention_dataset=...)``'s ``eval_retention_*`` metrics): drawn
            only at evaluations that score it, into ``step-<N>-<set_name>/``. ``None``: the evaluation set.

    With ``--report_to tensorboard`` (or trackio) the grid is also logged as an image at the evaluation's
    step, tag ``<metric prefix>/overlays`` (``eval/overlays``, ``zero_shot/overlays``), beside the loss parts
    and metrics: ``InfoSAMTrainer`` links the callback to its trackers (``infosam_hf.tracking``).

    The forward runs on every process (a sharded model needs them all); only the main
    process writes.
    """

    def __init__(
        self,
        samples: Iterable[Any],
        num_samples: int = 4,
        output_subdir: str = "eval_overlays",
        prompt_type: str = "box",
        num_points: int = 1,
        seed: int = 0,
        preprocessor: Any = None,
        alpha: float = 0.5,
        corrupt_log: Any = None,
        instance_format: str | None = None,
        min_object_area: int = 4,
        set_name: str | None = None,
    ):
        from .data import INSTANCE_FORMATS

        if instance_format is not None and instance_format not in INSTANCE_FORMATS:
            raise ValueError(f"instance_format must be one of {INSTANCE_FORMATS} or None, got {instance_format!r}.")
        if prompt_type not in ("box", "points"):
            raise ValueError(f"prompt_type must be 'box' or 'points', got {prompt_type!r}.")
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
        from .data import CorruptSampleLog

        self.corrupt_log = corrupt_log if corrupt_log is not None else CorruptSampleLog()
        self.instance_format = instance_format
        self.min_object_area = int(min_object_area)
        self.samples = self._take(samples, num_samples, self.corrupt_log, instance_format, self.min_object_area)
        if not self.samples:
            raise ValueError("EvalOverlayCallback got no samples to draw.")
        self.output_subdir = output_subdir
        self.prompt_type = prompt_type
        self.num_points = num_points
        self.seed = seed
        self.preprocessor = preprocessor
        self.alpha = alpha
        self._batch: dict[str, torch.Tensor] | None = None
        self.last_output_dir: str | None = None
        self.set_name = set_name
        self._trainer_callbacks: list | None = None  # the Trainer's callbacks, for its trackers (link_trackers)

    @staticmethod
    def _take(
        samples: Iterable[Any],
        num_samples: int,
        corrupt_log: Any = None,
        instance_format: str | None = None,
        min_object_area: int = 0,
    ) -> list[tuple[Any, np.ndarray]]:
        """(RGB image, (K, H, W) bool object masks) per sample; K = 1 for a binary mask."""
        from .data import CorruptImageError, decode_image, decode_instances, to_binary_mask, to_rgb_pil
        from .data.sources import _without_decoding, describe_sample

        if hasattr(samples, "features") and hasattr(samples, "cast_column"):
            samples = _without_decoding(samples)  # decode here, so that a corrupt file is skipped, not raised
        taken = []
        for index, row in enumerate(samples):
            if isinstance(row, Mapping):
                if "image" not in row:
                    hint = (
                        " These rows are already preprocessed: pass the raw dataset (before prepare_dataset), "
                        "since the overlay is drawn on the original image."
                        if "pixel_values" in row
                        else ""
                    )
                    raise ValueError(
                        f"EvalOverlayCallback needs rows with 'image' and 'mask'; got {sorted(row)}.{hint}"
                    )
                image, mask = row["image"], row.get("mask", row.get("label"))
            else:
                image, mask = row
            if mask is None:
                raise ValueError("EvalOverlayCallback needs a ground-truth mask with every sample (column 'mask').")
            image_name, mask_name, pair_name = describe_sample(image, mask, f"<evaluation sample #{index}>")
            try:  # `name`: what a skip names, as training and evaluation name it (so a bad sample is listed once)
                name = image_name
                image = to_rgb_pil(decode_image(image, "image"))
                name = mask_name
                if instance_format is not None:
                    objects = decode_instances(mask, instance_format, (image.height, image.width), image_name)
                    objects = [m for m in objects if int(m.sum()) >= min_object_area]
                    if not objects:
                        continue  # nothing to prompt: evaluation leaves such an image out too
                    masks = np.stack(objects)
                else:
                    masks = to_binary_mask(decode_image(mask, "mask")).astype(bool)[None]
                name = pair_name
                if masks.shape[1:] != (image.height, image.width):
                    raise CorruptImageError(
                        f"Sample {name}: the mask is {masks.shape[2]}x{masks.shape[1]} but the image is "
                        f"{image.width}x{image.height} (WxH); masks must be at the image's resolution."
                    )
            except CorruptImageError as err:
                if corrupt_log is None:
                    raise
                corrupt_log.add(name, err)
                continue
            taken.append((image, masks))
            if len(taken) == num_samples:
                break  # stop before reading (and decoding) another row of a streamed dataset
        return taken

    # ------------------------------------------------------------------ preparation (once)
    def _resolve_preprocessor(self, model: torch.nn.Module, processing_class: Any):
        from .data import SamSegmentationPreprocessor

        if self.preprocessor is not None:
            return self.preprocessor
        image_processor = getattr(processing_class, "image_processor", processing_class)
        if isinstance(image_processor, SamSegmentationPreprocessor) or hasattr(image_processor, "pad_size"):
            self.preprocessor = SamSegmentationPreprocessor.from_processor(processing_class)
        else:  # the model's own size and geometry
            self.preprocessor = SamSegmentationPreprocessor.for_model(unwrap_sam_model(model))
        return self.preprocessor

    def _prepare(self, model: torch.nn.Module, processing_class: Any) -> dict[str, torch.Tensor]:
        if self._batch is not None:
            return self._batch
        from .data import PromptSampler, SamSegmentationCollator

        preprocessor = self._resolve_preprocessor(model, processing_class)
        features = []
        for image, masks in self.samples:
            one = preprocessor(image, None)
            reshaped = tuple(int(v) for v in one["reshaped_input_sizes"])
            objects = [preprocessor.preprocess_mask(m.astype(np.uint8), reshaped) for m in masks]
            one["gt_masks"] = np.concatenate(objects)
            features.append(one)
        sampler = PromptSampler(
            box_probability=1.0 if self.prompt_type == "box" else 0.0,
            num_points=self.num_points,
            box_noise=0.0,
            seed=self.seed,
        )
        # every object of an image is prompted, as evaluation prompts them (one object: the one-prompt batch)
        most = max(len(masks) for _, masks in self.samples)
        collator = SamSegmentationCollator(sampler, prompt_type=self.prompt_type, max_objects_per_image=most)
        self._batch = collator(features)
        return self._batch

    # ------------------------------------------------------------------ drawing
    @staticmethod
    def _to_original(coords: np.ndarray, original: tuple[int, int], reshaped: tuple[int, int]) -> np.ndarray:
        """Model-frame (x, y) -> original image pixels, the inverse of SamProcessor's coordinate scaling."""
        scale = np.array([original[1] / reshaped[1], original[0] / reshaped[0]])
        return coords.reshape(-1, 2) * scale

    def render(self, model: torch.nn.Module, processing_class: Any = None) -> tuple[list, list[dict]]:
        """Overlays (PIL images) and per-sample scores for the model as it is now."""
        batch = self._prepare(model, processing_class)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                prompts = {k: batch[k] for k in ("input_boxes", "input_points", "input_labels") if k in batch}
                logits = prompt_logits(model, batch["pixel_values"], **prompts).cpu()  # (B, objects, h, w)
        finally:
            model.train(was_training)
        size = batch["pixel_values"].shape[-1]
        overlays, scores = [], []
        for i, (image, gt) in enumerate(self.samples):
            count = len(gt)
            original = tuple(int(v) for v in batch["original_sizes"][i])
            reshaped = tuple(int(v) for v in batch["reshaped_input_sizes"][i])
            pred = postprocess_logits(logits[i, :count], original, reshaped, pad_size=size) > 0
            prompt: dict[str, Any] = {}
            if "input_boxes" in batch:
                boxes = batch["input_boxes"][i, :count].numpy()
                prompt["boxes"] = [self._to_original(b, original, reshaped).reshape(-1) for b in boxes]
            else:
                points = batch["input_points"][i, :count].numpy()
                prompt["points"] = [self._to_original(p, original, reshaped) for p in points]
                prompt["labels"] = batch["input_labels"][i, :count].numpy()
            overlays.append(render_objects(image, pred, gt_masks=gt, alpha=self.alpha, **prompt))
            plain = binary_iou_dice(np.where(pred, 1.0, -1.0), gt)
            score = {"sample": i, "iou@0.5": float(np.mean(plain["iou"])), "dice@0.5": float(np.mean(plain["dice"]))}
            if self.instance_format is not None:  # the sample's numbers are the mean over its objects
                score.update(objects=count, object_iou=[float(v) for v in plain["iou"]])
            scores.append(score)
        return overlays, scores

    # ------------------------------------------------------------------ TrainerCallback
    def link_trackers(self, trainer) -> None:
        """Logs the grid to the trackers of `trainer` (`--report_to tensorboard`/`trackio`) at each evaluation;
        `InfoSAMTrainer` calls it when the callback is added (see `infosam_hf.tracking`)."""
        self._trainer_callbacks = trainer.callback_handler.callbacks

    def _evaluated_prefix(self, metrics: Mapping[str, Any] | None) -> str | None:
        """The metric prefix of the set this callback draws, or None when this evaluation did not score it."""
        prefix = _metric_prefix(metrics)
        if self.set_name is None:
            return prefix
        prefix = f"{prefix}_{self.set_name}"
        return prefix if f"{prefix}_runtime" in (metrics or {}) else None

    def on_evaluate(self, args, state, control, model=None, processing_class=None, metrics=None, **kwargs):
        prefix = self._evaluated_prefix(metrics)
        if model is None or prefix is None:
            return
        overlays, scores = self.render(model, processing_class)
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, self.output_subdir, f"step-{state.global_step}{_folder_suffix(prefix)}")
        os.makedirs(folder, exist_ok=True)
        for i, overlay in enumerate(overlays):
            overlay.save(os.path.join(folder, f"sample-{i:02d}.png"))
        grid = image_grid(overlays, columns=min(4, len(overlays)))
        prompt = {"box": True} if self.prompt_type == "box" else {}
        legend = with_legend(grid, prompt, objects=self.instance_format is not None)
        legend.save(os.path.join(folder, "grid.png"))
        summary = {
            "global_step": state.global_step,
            "prompt": self.prompt_type,
            "samples": scores,
            "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
        }
        with open(os.path.join(folder, "scores.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        self.last_output_dir = folder
        if self._trainer_callbacks is not None:
            from .tracking import log_image, overlay_tag

            log_image(self._trainer_callbacks, state, overlay_tag(prefix), legend)


class RetentionOverlayCallback(EvalOverlayCallback):
    """`EvalOverlayCallback` for the retention set (`InfoSAMTrainer(retention_dataset=...)`): a few fixed images
    of what the base already segmented, drawn at each evaluation that scores that set, so that forgetting shows
    as pictures beside `eval_retention_iou`. Writes `step-<N>-retention/` (`step-0-zero_shot_retention/` for the
    zero-shot evaluation) and logs the tag `eval_retention/overlays`. A class of its own, so that the Trainer
    holds it beside the evaluation set's callback without a warning; the arguments are `EvalOverlayCallback`'s.
    """

    def __init__(self, samples: Iterable[Any], num_samples: int = 4, **kwargs: Any):
        super().__init__(samples, num_samples, set_name="retention", **kwargs)
