"""Masks from any supported SAM, adapter or not: a `SamPredictor`-shaped API and the batched helpers under it.

    from infosam_hf import Predictor

    predictor = Predictor.from_pretrained("outputs/infosam-builtin")      # or Predictor(model, processor)
    predictor.set_image(image)                                           # PIL image or (H, W, 3) uint8 array
    boxes = predictor.predict(boxes=[[10, 20, 90, 110], [5, 5, 40, 40]])  # one image encoding, two objects
    points = predictor.predict(points=[[50, 60]], labels=[1])
    boxes.masks  # (2, H, W) bool at the image's own size; .scores (2,) predicted IoU; .low_res_logits

Everything reads SAM's frames the same way: prompts in original-image pixels go to the model input frame
as `SamProcessor` scales them (`to_model_frame`); the decoder's low-resolution logits come back to the
original image by `postprocess_logits` (upsample to the input side, crop the padding, resize). The batched
path (`prompt_logits`, `sam_low_res_logits`, `original_size_predictions`) is what evaluation, the Trainer,
the overlay callback and prompt following use on collated batches; `Predictor` is the one-image path on top
of the same decoder call, with the image encoding kept between prompts. Any family in `infosam_hf.models`,
a bare SAM, a `PeftModel` over one (adapters as enabled), a merged adapter, or an `InfoSAMModel` (its student).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data.preprocessing import SamSegmentationPreprocessor
from .models import family_of
from .packing import as_batch, binarize, pack_maps, to_numpy

__all__ = [
    "Prediction",
    "Predictor",
    "encode_image",
    "original_size_predictions",
    "postprocess_logits",
    "prompt_logits",
    "sam_low_res_logits",
    "sizes_per_image",
    "to_model_frame",
    "unwrap_sam_model",
]


# --------------------------------------------------------------------------------------
# the decoder call every path shares
# --------------------------------------------------------------------------------------


def unwrap_sam_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose forward is SamModel's: the student of an InfoSAMModel, else the model itself."""
    model = getattr(model, "module", model)  # DDP / DataParallel
    student = getattr(model, "student", None)
    return student if student is not None and hasattr(model, "relation_module") else model


def _on_model(sam: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    param = next(sam.parameters())
    return pixel_values.to(param.device, dtype=param.dtype if param.is_floating_point() else None)


@torch.no_grad()
def encode_image(model: torch.nn.Module, pixel_values: torch.Tensor) -> dict[str, Any]:
    """The image encoding as the keyword inputs that replace `pixel_values` in the model's forward.

    What the decoder needs besides the prompts, computed once (adapters as currently enabled): the image
    embeddings, plus SAM-HQ's intermediate ViT features, or SAM 2's feature levels (a list, finest first, as that
    forward's `image_embeddings=` takes them): each family's spec says which (`SamFamily.encoding_inputs`).
    """
    sam = unwrap_sam_model(model)
    return family_of(sam).encoding_inputs(sam.get_image_embeddings(_on_model(sam, pixel_values)))


@torch.no_grad()
def _decode(model: torch.nn.Module, image: dict[str, Any], prompts: dict, multimask_output: bool = False):
    """One forward from `image` (`{"pixel_values": ...}` or an `encode_image` result), prompts in the model frame."""
    sam = unwrap_sam_model(model)
    param = next(sam.parameters())
    prompts = {k: v.to(param.device) for k, v in prompts.items() if v is not None}
    if "input_boxes" not in prompts and "input_points" not in prompts:
        raise ValueError("SAM needs a prompt: pass input_boxes (B, N, 4) or input_points (B, N, P, 2).")
    if "pixel_values" in image:
        image = {"pixel_values": _on_model(sam, image["pixel_values"])}
    try:
        return sam(**image, multimask_output=multimask_output, **prompts)
    except torch.OutOfMemoryError as err:
        first = prompts.get("input_boxes", prompts.get("input_points"))
        raise torch.OutOfMemoryError(
            f"Out of memory decoding {first.shape[1]} prompts per image for {first.shape[0]} images: lower "
            "max_objects_per_image or the batch size."
        ) from err


@torch.no_grad()
def prompt_logits(model: torch.nn.Module, pixel_values: torch.Tensor, **prompts) -> torch.Tensor:
    """Low-resolution mask logits (B, N, h, w), float32, one per prompt: N prompts per image, one encoder pass.

    The batched path for collated batches (evaluation, the overlay callback, prompt following): prompts as
    `SamSegmentationCollator` gives them, in the padded model-input frame (`input_boxes` (B, N, 4),
    `input_points` (B, N, P, 2), `input_labels` (B, N, P)). Bring the logits to each image's own size with
    `postprocess_logits(..., pad_size=pixel_values.shape[-1])` or `original_size_predictions`.
    """
    return _decode(model, {"pixel_values": pixel_values}, prompts).pred_masks[:, :, 0].float()


@torch.no_grad()
def sam_low_res_logits(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    input_boxes: torch.Tensor | None = None,
    input_points: torch.Tensor | None = None,
    input_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask logits ``(B, h, w)`` (float32, decoder resolution) for one prompt and one mask per image.

    `prompt_logits` with N = 1: ``input_boxes`` (B, 1, 4) or ``input_points`` (B, 1, P, 2), in the padded
    model-input frame, as ``SamProcessor`` and ``SamSegmentationCollator`` give them.
    """
    prompts = {"input_boxes": input_boxes, "input_points": input_points, "input_labels": input_labels}
    return prompt_logits(model, pixel_values, **prompts)[:, 0]


def to_model_frame(coords: Any, original: tuple[int, int], reshaped: tuple[int, int]) -> torch.Tensor:
    """(x, y) pairs in original-image pixels -> the resized model input, as `SamProcessor` scales prompts: (K, 2)."""
    xy = torch.tensor(np.asarray(coords, dtype=np.float32)).reshape(-1, 2)
    return xy * torch.tensor([reshaped[1] / original[1], reshaped[0] / original[0]], dtype=torch.float32)


# --------------------------------------------------------------------------------------
# back to the original image
# --------------------------------------------------------------------------------------


def _hw(size: Any, name: str) -> tuple[int, int]:
    if isinstance(size, Mapping):
        return int(size["height"]), int(size["width"])
    if getattr(size, "height", None) is not None and getattr(size, "width", None) is not None:
        return int(size.height), int(size.width)  # the processor's SizeDict
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    v = to_numpy(size).reshape(-1)
    if v.size != 2:
        raise ValueError(f"{name} must be (height, width), got {size!r}")
    return int(v[0]), int(v[1])


def _longest_edge_shape(original: tuple[int, int], longest_edge: int) -> tuple[int, int]:
    # Same rounding as SamImageProcessor._get_preprocess_shape and the reference postprocess_masks.
    scale = longest_edge * 1.0 / max(original)
    return int(original[0] * scale + 0.5), int(original[1] * scale + 0.5)


def postprocess_logits(
    logits: Any,
    original_size: Any,
    reshaped_input_size: Any | None = None,
    pad_size: Any | None = None,
) -> np.ndarray:
    """Crop the valid region of padded-square mask logits and resize them to the original image.

    Metrics must be measured where the labels live: SAM's logits cover the padded, resized
    square, so padding would count as background and the image is at the wrong scale.
    Mirrors ``SamImageProcessor.post_process_masks(binarize=False)`` (bilinear,
    ``align_corners=False``): upsample to ``pad_size`` if given (e.g. 1024 for 256 x 256
    ``pred_masks``), crop ``reshaped_input_size`` (default: SAM's longest-edge resize of
    ``original_size`` to the square's side), resize to ``original_size``.
    Returns float32 logits of shape (B, h, w).
    """
    x = torch.from_numpy(np.ascontiguousarray(as_batch(logits, "logits"), dtype=np.float32))[:, None]
    if pad_size is not None:
        pad = _hw(pad_size, "pad_size")
        if tuple(x.shape[-2:]) != pad:
            x = F.interpolate(x, pad, mode="bilinear", align_corners=False)
    original = _hw(original_size, "original_size")
    if reshaped_input_size is None:
        side_h, side_w = x.shape[-2:]
        if side_h != side_w:
            raise ValueError(
                f"logits of shape {tuple(x.shape[-2:])} are not square: pass reshaped_input_size= "
                "(the valid region inside the padded input) explicitly"
            )
        reshaped = _longest_edge_shape(original, side_h)
    else:
        reshaped = _hw(reshaped_input_size, "reshaped_input_size")
    if reshaped[0] > x.shape[-2] or reshaped[1] > x.shape[-1]:
        raise ValueError(
            f"reshaped_input_size {reshaped} is larger than the logits {tuple(x.shape[-2:])}; "
            "pass pad_size= when the logits are at a lower resolution than the model input"
        )
    x = x[..., : reshaped[0], : reshaped[1]]
    x = F.interpolate(x, original, mode="bilinear", align_corners=False)
    return x[:, 0].numpy()


def sizes_per_image(size: Any, batch: int, name: str) -> list[tuple[int, int]] | None:
    """One (h, w) per image from one size for the batch, a list of sizes, or a (B, 2) tensor/array."""
    if size is None:
        return None
    if isinstance(size, (Mapping, int, np.integer)) or hasattr(size, "height"):
        return [_hw(size, name)] * batch
    if isinstance(size, (torch.Tensor, np.ndarray)):
        arr = to_numpy(size)
        if arr.ndim == 1:
            return [_hw(arr, name)] * batch
        rows = [_hw(r, name) for r in arr]
    elif len(size) == 2 and all(isinstance(v, (int, np.integer)) for v in size):
        return [_hw(size, name)] * batch
    else:
        rows = [_hw(r, name) for r in size]
    if len(rows) != batch:
        raise ValueError(f"{name} gives {len(rows)} sizes for a batch of {batch} images")
    return rows


def original_size_predictions(
    logits: torch.Tensor,
    original_masks: list[Any],
    original_sizes: Any,
    reshaped_input_sizes: Any,
    prompt_mask: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-frame logits (B, 1, S, S) -> packed logits and masks at each image's own size.

    The one definition of the evaluation frame, shared by `InfoSAMTrainer` evaluation (and
    so train.py and the model card) and the evaluation script: the padding is cropped and
    the valid region resized to the original image, as `postprocess_logits` does.
    With several prompts per image, `logits` hold one row per valid prompt and `prompt_mask`
    (images, prompts) says which image each row belongs to (the sizes are per image).
    """
    if prompt_mask is not None:
        image = torch.as_tensor(prompt_mask).nonzero()[:, 0].cpu()
        original_sizes = torch.as_tensor(original_sizes).cpu()[image]
        reshaped_input_sizes = torch.as_tensor(reshaped_input_sizes).cpu()[image]
    originals = sizes_per_image(original_sizes, logits.shape[0], "original_sizes")
    reshaped = sizes_per_image(reshaped_input_sizes, logits.shape[0], "reshaped_input_sizes")
    lg = logits.detach().float().cpu()
    maps = [postprocess_logits(lg[i : i + 1, 0], originals[i], reshaped[i])[0] for i in range(lg.shape[0])]
    masks = [binarize(to_numpy(m)).astype(np.float32) for m in original_masks]
    return pack_maps(maps), pack_maps(masks)


# --------------------------------------------------------------------------------------
# one image, several prompts
# --------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """What `Predictor.predict` returns, one entry per object (prompt); arrays on the CPU.

    masks: bool (N, H, W) at the original image size (N, 3, H, W with `multimask_output=True`).
    scores: float32 (N,) (or (N, 3)): the decoder's predicted IoU of each mask.
    low_res_logits: float32 (N, h, w) (or (N, 3, h, w)): the decoder's logits in the model-input frame
        (padding included), before post-processing.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


class Predictor:
    """`segment_anything.SamPredictor` for any supported SAM: `set_image` once, then `predict` per prompt set.

    `set_image` runs the image encoder and keeps its output; each `predict` runs only the prompt encoder and
    the mask decoder, so several prompts on one image cost one encoder pass. An adapter's state (enabled or
    `disable_adapter()`) applies to the encoder when `set_image` runs and to the decoder when `predict` runs:
    after switching, call both again.

    Args:
        model: a SAM model of any family, a `PeftModel` over one, a merged adapter, or an `InfoSAMModel`.
        processor: the checkpoint's processor (what `infosam_hf.load` returns), its image processor, or a
            `SamSegmentationPreprocessor`; by default the family's geometry at the model's input size.
        mask_threshold: masks are `logits > mask_threshold` (0 = probability 0.5, as `SamPredictor`).
    """

    def __init__(self, model: torch.nn.Module, processor: Any = None, mask_threshold: float = 0.0):
        self.model = model
        self.mask_threshold = float(mask_threshold)
        if processor is None:
            self.preprocessor = SamSegmentationPreprocessor.for_model(unwrap_sam_model(model))
        else:
            self.preprocessor = SamSegmentationPreprocessor.from_processor(processor)
        self.reset_image()

    @classmethod
    def from_pretrained(cls, adapter_or_base: str | os.PathLike, *, mask_threshold: float = 0.0, **load_kwargs):
        """A predictor over an InfoSAM adapter (folder or Hub id, loaded by `infosam_hf.load`; `merge=True`,
        `device=`, `base_model=` ... go there), or over a local folder holding a plain SAM checkpoint."""
        path = os.fspath(adapter_or_base)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "adapter_config.json")):
            from .loading import load_model_or_base

            model, processor = load_model_or_base(None, path, **load_kwargs)
        else:
            from . import load

            model, processor = load(path, **load_kwargs)
        return cls(model, processor, mask_threshold=mask_threshold)

    def reset_image(self) -> None:
        self._encoding = None
        self.original_size = self.reshaped_size = None

    @property
    def is_image_set(self) -> bool:
        return self._encoding is not None

    def set_image(self, image: Any) -> None:
        """Preprocess `image` (PIL, (H, W, 3) uint8 array, path or bytes) as the processor does and encode it."""
        features = self.preprocessor(image)
        self.original_size = tuple(int(v) for v in features["original_sizes"])
        self.reshaped_size = tuple(int(v) for v in features["reshaped_input_sizes"])
        self._encoding = encode_image(self.model, torch.from_numpy(features["pixel_values"])[None])

    def _prompts(self, boxes: Any, points: Any, labels: Any) -> dict[str, torch.Tensor]:
        """Original-pixel prompts -> model-frame tensors with one image and N objects."""
        prompts, count = {}, None
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float32)
            if boxes.ndim not in (1, 2) or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be x1 y1 x2 y2, shaped (4,) or (N, 4); got shape {boxes.shape}.")
            boxes = boxes.reshape(-1, 4)
            count = len(boxes)
            frame = to_model_frame(boxes, self.original_size, self.reshaped_size)
            prompts["input_boxes"] = frame.reshape(1, count, 4)
        if points is not None:
            points = np.asarray(points, dtype=np.float32)
            if points.ndim not in (2, 3) or points.shape[-1] != 2:
                raise ValueError(f"points must be (x, y) pairs shaped (P, 2) or (N, P, 2); got shape {points.shape}.")
            points = points.reshape(-1, *points.shape[-2:])
            if count is not None and len(points) != count:
                raise ValueError(f"{count} boxes but points for {len(points)} objects: give one point set per box.")
            count, per_object = len(points), points.shape[1]
            labels = np.ones(points.shape[:2], dtype=np.int64) if labels is None else np.asarray(labels)
            if labels.size != count * per_object or not np.isin(labels, (0, 1)).all():
                raise ValueError(
                    f"labels must give 1 (foreground) or 0 (background) for each of the {per_object} points of "
                    f"each of the {count} objects; got {labels.tolist()}."
                )
            frame = to_model_frame(points, self.original_size, self.reshaped_size)
            prompts["input_points"] = frame.reshape(1, count, per_object, 2)
            prompts["input_labels"] = torch.tensor(labels.astype(np.int64)).reshape(1, count, per_object)
        elif labels is not None:
            raise ValueError("labels were given without points.")
        if not prompts:
            raise ValueError("No prompt: pass boxes=[x1, y1, x2, y2] and/or points=[[x, y], ...].")
        return prompts

    def predict(
        self, boxes: Any = None, points: Any = None, labels: Any = None, multimask_output: bool = False
    ) -> Prediction:
        """Masks for the prompts, in original-image pixels (x right, y down), on the image of `set_image`.

        boxes: (4,) or (N, 4) x1 y1 x2 y2, one object per box. points: (P, 2) for one object or (N, P, 2),
        with labels (P,) / (N, P) of 1 (foreground, the default) or 0 (background). Boxes and points together
        describe the same N objects.
        """
        if self._encoding is None:
            raise RuntimeError("No image set: call predictor.set_image(image) before predict().")
        outputs = _decode(self.model, self._encoding, self._prompts(boxes, points, labels), multimask_output)
        low = outputs.pred_masks[0].float().cpu()  # (N, M, h, w)
        objects, per_object = low.shape[:2]
        full = postprocess_logits(
            low.reshape(objects * per_object, *low.shape[-2:]),
            self.original_size,
            self.reshaped_size,
            pad_size=self.preprocessor.image_size,
        )
        masks = (full > self.mask_threshold).reshape(objects, per_object, *full.shape[-2:])
        scores = outputs.iou_scores[0].float().cpu().numpy()
        low = low.numpy()
        if not multimask_output:
            masks, scores, low = masks[:, 0], scores[:, 0], low[:, 0]
        return Prediction(masks=masks, scores=scores, low_res_logits=low)
