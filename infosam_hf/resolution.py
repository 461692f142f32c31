"""Run a SAM checkpoint at another input resolution than the one it was trained at.

Why: the ViT's global attention grows with the square of the token count, so fine-tuning at
512 or 256 px instead of SAM's 1024 is what makes it affordable (SAMed trains ViT-B at 512).
A checkpoint's config fixes the size, though, and several weights are laid out on its token
grid. This module is the one place where a base model is moved to another size:

- the config fields that carry the size are changed by the family's hook
  (`SamFamily.set_image_size`: ViT and prompt-encoder sizes, SAM 2's feature-level sizes);
- the model is rebuilt from that config (so every size-derived attribute and non-persistent
  buffer, e.g. SAM 3's RoPE positions, is computed by transformers itself) and gets the old
  weights, where a weight's shape follows the token grid resized: the absolute position
  embedding bicubically (timm's `resample_abs_pos_embed`, antialiased when shrinking), the
  global-attention relative-position tables linearly (what SAM's `get_rel_pos` does on the fly
  when the table does not fit, so the result is the same as SAM's own interpolation);
- the processor's resize/pad size (and with it SAM's mask post-processing, which reads the
  pad size) is set by `adapt_processor`.

Adapting a model to its own size returns it untouched. The teacher of an InfoSAM pair gets
the same adaptation (the shared-weights teacher is the same module; a separate teacher is
adapted by `InfoSAMModel`), so z_i has the student's grid.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .models import family_of

logger = logging.getLogger(__name__)


def model_image_size(model: nn.Module) -> int:
    """Side of the square input of a SAM model (or PeftModel over one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return family_of(base).image_size(base.config)


def check_image_size(model: nn.Module, image_size: int, *, allow_upscaling: bool = False, field: str = "image_size") -> int:
    """`image_size` as an int, or a ValueError naming `field` and the fix."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = family_of(base)
    native = family.image_size(base.config)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"{field} must be a positive number of pixels, got {image_size!r}.")
    if image_size == native:
        return image_size
    if family.set_image_size is None:
        raise ValueError(
            f"{field}={image_size}: {family.name} models cannot run at another size than their checkpoint's "
            f"({native} px). Leave {field} unset."
        )
    multiple = family.image_size_multiple(base.config)
    if image_size % multiple:
        lower, upper = image_size // multiple * multiple, (image_size // multiple + 1) * multiple
        raise ValueError(
            f"{field}={image_size} is not a multiple of {multiple}, the {family.name} image encoder's patch size "
            f"(or coarsest feature stride) for this checkpoint; use e.g. {lower or multiple} or {upper}."
        )
    if image_size > native and not allow_upscaling:
        raise ValueError(
            f"{field}={image_size} is larger than the checkpoint's {native} px: its position embeddings would be "
            f"interpolated beyond what it was trained on, at {(image_size / native) ** 2:.1f}x the compute. Use "
            f"{field}<={native}, or allow it explicitly (allow_image_upscaling=True, --allow_image_upscaling)."
        )
    return image_size


def resize_abs_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, H, W, C) -> (1, h, w, C), bicubic; antialiased when shrinking (timm's `resample_abs_pos_embed`)."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    shrink = grid[0] < pos_embed.shape[1] or grid[1] < pos_embed.shape[2]
    image = pos_embed.float().permute(0, 3, 1, 2)
    resized = F.interpolate(image, size=grid, mode="bicubic", align_corners=False, antialias=shrink)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(2S-1, C) -> (length, C), linear: exactly what SAM's `get_rel_pos` does when a table does not fit."""
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.float().t().unsqueeze(0), size=length, mode="linear")
    return resized[0].t().to(rel_pos.dtype).contiguous()


def _resize_weight(name: str, old: torch.Tensor, new_shape: torch.Size) -> torch.Tensor:
    if name.endswith("pos_embed") and old.dim() == 4 and new_shape[0] == old.shape[0] and new_shape[3] == old.shape[3]:
        return resize_abs_pos_embed(old, (new_shape[1], new_shape[2]))
    if name.endswith(("rel_pos_h", "rel_pos_w")) and old.dim() == 2 and new_shape[1] == old.shape[1]:
        return resize_rel_pos(old, new_shape[0])
    raise ValueError(
        f"Cannot adapt {name} from {tuple(old.shape)} to {tuple(new_shape)} for another image size: no resizing rule "
        "for this weight. Leave image_size unset for this checkpoint."
    )


def adapt_model(model: nn.Module, image_size: int | None, *, allow_upscaling: bool = False) -> nn.Module:
    """`model` rebuilt for `image_size` px inputs (config, size-dependent weights); `model` itself at its own size.

    A base model only: wrap it with PEFT afterwards, so the adapter is trained on the grid it will run on.
    The random number generators are left as they were (rebuilding draws no random weights).
    """
    if image_size is None:
        return model
    if hasattr(model, "get_base_model") or hasattr(model, "relation_module"):
        raise TypeError(
            "adapt_model takes the base SAM model; adapt it before wrapping it with PEFT or InfoSAMModel "
            "(InfoSAMConfig.image_size does this for you in InfoSAMTrainer)."
        )
    family = family_of(model)
    native = family.image_size(model.config)
    image_size = check_image_size(model, image_size, allow_upscaling=allow_upscaling)
    if image_size == native:
        return model
    from transformers.initialization import no_init_weights

    config = copy.deepcopy(model.config)
    family.set_image_size(config, image_size)
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]), no_init_weights():
        adapted = type(model)(config)
    old_state = model.state_dict()
    new_state = adapted.state_dict()
    resized = []
    for name, target in new_state.items():
        old = old_state.get(name)
        if old is None:
            continue  # only non-persistent or freshly derived entries (none today)
        if old.shape != target.shape:
            old = _resize_weight(name, old, target.shape)
            resized.append(name)
        new_state[name] = old
    adapted.load_state_dict(new_state, strict=True)  # copies into the new model's float32 parameters
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    adapted.to(device=param.device, dtype=dtypes.pop() if len(dtypes) == 1 else None)
    adapted.train(model.training)
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in adapted.named_parameters():
        p.requires_grad_(trainable.get(name, True))
    adapted.config._name_or_path = model.config._name_or_path
    logger.warning(
        "Adapted the %s checkpoint %s from %d px to %d px inputs (resized: %s).",
        family.name,
        model.config._name_or_path or type(model).__name__,
        native,
        image_size,
        ", ".join(sorted({n.rsplit(".", 1)[-1] for n in resized})) or "no weight, only the config",
    )
    return adapted


def adapt_processor(processor, image_size: int | None):
    """A copy of `processor` that resizes and pads to `image_size` (SAM's mask post-processing reads the pad size)."""
    if image_size is None:
        return processor
    from .data.preprocessing import SamSegmentationPreprocessor

    if isinstance(processor, SamSegmentationPreprocessor):
        return processor if processor.image_size == image_size else SamSegmentationPreprocessor.from_processor(
            processor, image_size=image_size
        )
    adapted = copy.deepcopy(processor)
    image_processor = getattr(adapted, "image_processor", adapted)
    size = dict(image_processor.size or {})
    if "longest_edge" in size:
        image_processor.size = {"longest_edge": image_size}
        image_processor.pad_size = {"height": image_size, "width": image_size}
        if getattr(image_processor, "mask_size", None):
            image_processor.mask_size = {"longest_edge": image_size // 4}
            image_processor.mask_pad_size = {"height": image_size // 4, "width": image_size // 4}
    else:
        image_processor.size = {"height": image_size, "width": image_size}
    return adapted


def processor_image_size(processor) -> int | None:
    image_processor = getattr(processor, "image_processor", processor)
    if hasattr(image_processor, "image_size") and not hasattr(image_processor, "size"):
        return int(image_processor.image_size)
    size = dict(getattr(image_processor, "size", None) or {})
    side = size.get("longest_edge", size.get("height"))
    return None if side is None else int(side)


def recorded_image_size(folder: str) -> int | None:
    """The training resolution an adapter folder records (`infosam_config.json` image_size); None: the base's own."""
    import json
    import os

    from .config import INFOSAM_CONFIG_NAME

    path = os.path.join(folder, INFOSAM_CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        size = json.load(f).get("image_size")
    return None if size is None else int(size)


def adapter_image_size(
    base: nn.Module, folder: str, image_size: int | None = None, *, allow_change: bool = False, source: str | None = None
) -> int | None:
    """The size to build an adapter's base at: the recorded one unless another is asked for (and allowed).

    None: the base's own size, nothing to adapt.
    """
    recorded = recorded_image_size(folder)
    trained = recorded or model_image_size(base)
    source = source or folder
    if image_size is None:
        if recorded is not None:
            logger.warning("The adapter %s was trained at %d px (infosam_config.json image_size): building its base at %d px.",
                           source, recorded, recorded)
        return recorded
    if image_size != trained and not allow_change:
        where = "infosam_config.json image_size" if recorded is not None else "its base checkpoint's size"
        raise ValueError(
            f"The adapter {source} was trained at {trained} px ({where}) but image_size={image_size} was asked. Omit "
            f"image_size (--image_size) to run it at {trained} px, or pass allow_image_size_change=True "
            f"(--allow_image_size_change) to run it at {image_size} px; its masks then differ from those it was "
            "trained and evaluated with."
        )
    if image_size != trained:
        logger.warning("Running the adapter %s, trained at %d px, at %d px as asked (allow_image_size_change).",
                       source, trained, image_size)
    return image_size


def image_size_argument():
    """The `--image_size` field of the evaluation and prediction scripts' argument dataclasses."""
    from dataclasses import field

    return field(
        default=None,
        metadata={"help": "Input side in pixels. Default: the adapter's training size (its infosam_config.json "
                  "image_size), else the checkpoint's. Another size than the adapter's needs --allow_image_size_change."},
    )


def allow_image_size_change_argument():
    from dataclasses import field

    return field(
        default=False,
        metadata={"help": "Run an adapter at another --image_size than it was trained at (or a base above its own)."},
    )
