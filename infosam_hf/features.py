"""Capture InfoSAM's two features from an ordinary SAM forward (any family in `infosam_hf.models`).

InfoSAM needs the image-encoder output z_i and the first mask token z_m after the
mask decoder's two-way transformer. Neither the mask tokens nor (for a normal call)
the image embeddings are in the model's outputs, and re-implementing the forward
would fork transformers' code. Hooks, registered only for the duration of a `with`
block, read them as the unmodified model runs: z_i is the mask decoder's
`image_embeddings` input (a forward pre-hook; in SAM 2 that is the stride-16 level
with the no-memory embedding added, whether the forward got pixels or cached
embeddings), the tokens are the two-way transformer's output 0. Which classes to hook
and where the first mask token sits come from the family's spec. Hooking every decoder
and two-way transformer found under the model makes this work on a plain model, a
`PeftModel`, and a mask decoder duplicated by `modules_to_save` (the original copy
runs under `disable_adapter()`, the trainable copy otherwise: both are hooked, and
whichever ran last is what we read).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .models import family_of, find_family


@dataclass
class CapturedFeatures:
    """What the hooks saw during the last forward inside `capture_sam_features`."""

    image_embeddings: torch.Tensor | None = None  # (B, C, h, w)
    mask_decoder_tokens: torch.Tensor | None = None  # (B, point_batch, num_tokens, C)
    first_mask_token: int = 1  # index among the output tokens (the family's spec says)
    decoder_inputs: dict | None = None  # the mask decoder's keyword inputs (what the teacher cache keeps)

    @property
    def image_feats(self) -> torch.Tensor:
        """z_i flattened to (B, h*w, C), as the relation module takes it."""
        if self.image_embeddings is None:
            raise RuntimeError(
                "No image embeddings were captured: the forward did not run the mask decoder."
            )
        return flatten_image_embeddings(self.image_embeddings)

    @property
    def mask_token(self) -> torch.Tensor:
        """z_m: the first mask token (index 1 after the IoU token; 2 where an object-score token leads), (B, 1, C)."""
        if self.mask_decoder_tokens is None:
            raise RuntimeError("No mask-decoder tokens were captured: the forward did not run the mask decoder.")
        tokens = self.mask_decoder_tokens
        if tokens.shape[1] != 1:
            raise ValueError(
                f"InfoSAM expects one prompt per image (point_batch_size 1), got {tokens.shape[1]}; "
                "pass input_boxes of shape (B, 1, 4) or input_points of shape (B, 1, N, 2)."
            )
        return tokens[:, 0, self.first_mask_token : self.first_mask_token + 1, :]

    @property
    def prompt_mask_tokens(self) -> torch.Tensor:
        """z_m of every prompt (SAM's point-batch dimension, several objects per image): (B, N, C)."""
        if self.mask_decoder_tokens is None:
            raise RuntimeError("No mask-decoder tokens were captured: the forward did not run the mask decoder.")
        return self.mask_decoder_tokens[:, :, self.first_mask_token, :]


def flatten_image_embeddings(image_embeddings: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C), the layout of the reference implementation."""
    if image_embeddings.dim() != 4:
        raise ValueError(f"Expected image embeddings of shape (B, C, h, w), got {tuple(image_embeddings.shape)}.")
    batch, channels = image_embeddings.shape[:2]
    return image_embeddings.permute(0, 2, 3, 1).reshape(batch, -1, channels)


def _modules_of(model: nn.Module, class_name: str) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == class_name]


def is_sam_model(model: nn.Module) -> bool:
    family = find_family(model)
    return family is not None and bool(_modules_of(model, family.two_way_transformer_class))


def check_is_sam_model(model: object, what: str = "model") -> None:
    family_of(model, what)


class _TokensCaptured(Exception):
    """Raised by the hook to end a forward whose remaining work (mask upscaling, IoU head) is not wanted."""


@contextmanager
def capture_sam_features(model: nn.Module, stop_after_tokens: bool = False) -> Iterator[CapturedFeatures]:
    """Within the block, every forward of `model` records z_i and the decoder tokens.

    Usage::

        with capture_sam_features(model) as feats:
            outputs = model(pixel_values=..., input_boxes=..., multimask_output=False)
        z_i, z_m = feats.image_feats, feats.mask_token

    `stop_after_tokens=True` ends the forward as soon as the tokens are read (the rest of
    the block is skipped and the model returns nothing): what the teacher needs, minus
    the mask upscaling. Not under `torch.compile` tracing, where the forward runs whole.
    """
    family = family_of(model)
    captured = CapturedFeatures(first_mask_token=family.first_mask_token)

    def on_decoder(_module, args, kwargs):
        captured.decoder_inputs = kwargs
        captured.image_embeddings = kwargs["image_embeddings"] if "image_embeddings" in kwargs else args[0]

    def on_transformer(_module, _inputs, output):
        captured.mask_decoder_tokens = output[0]
        if stop_after_tokens and not torch.compiler.is_compiling():
            raise _TokensCaptured

    handles = [
        m.register_forward_pre_hook(on_decoder, with_kwargs=True)
        for m in _modules_of(model, family.mask_decoder_class)
    ]
    handles += [m.register_forward_hook(on_transformer) for m in _modules_of(model, family.two_way_transformer_class)]
    try:
        yield captured
    except _TokensCaptured:
        pass
    finally:
        for handle in handles:
            handle.remove()
