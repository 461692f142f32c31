"""`SamFamily`: what InfoSAM needs to know about one family of SAM models in transformers.

Every supported family has the same prompt encoder / two-way mask decoder design, and
differs only in facts a spec records: which module classes to hook, where the first
mask token sits among the decoder's output tokens, what the LoRA targets of each preset
('encoder', 'decoder') and the bottleneck Adapter's default targets are, how the processor
maps an image onto the model input, what the decoder needs besides the image embeddings
(for the teacher cache), and a few quirks. One module per family (`sam.py`, `sam2.py`, ...)
holds its spec; `infosam_hf.models` is the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

LONGEST_SIDE_PAD = "longest_side_pad"
"""SAM's geometry: resize the long side to the model size, keep the aspect, pad bottom/right to a square."""
SQUARE = "square"
"""SAM 2's geometry: resize to the model's square size, aspect not kept, no padding."""

# The parts of every family's model, by their top-level module names (what `--lora_target_modules` checks against).
MODEL_PARTS = {"vision_encoder": "image encoder", "prompt_encoder": "prompt encoder", "mask_decoder": "mask decoder"}
# Named LoRA target presets -> the part they stay inside; each family's spec resolves them to its module names.
LORA_PRESETS = {"encoder": "vision_encoder", "decoder": "mask_decoder"}


def part_of(module_name: str) -> str | None:
    """The model part (`MODEL_PARTS` key) a module name lies in, under any wrapper prefix (`base_model.model.`)."""
    return next((part for part in module_name.split(".") if part in MODEL_PARTS), None)


def image_embeddings_only(decoder_kwargs: dict) -> dict:
    return {"image_embeddings": decoder_kwargs["image_embeddings"]}


def embeddings_as_inputs(embeddings) -> dict:
    return {"image_embeddings": embeddings}


def sam_set_image_size(config, size: int) -> None:
    # SAM / SAM-HQ: the ViT's patch grid (absolute position embedding, global-attention relative-position
    # tables) and the prompt encoder's input frame and embedding grid all follow these three fields.
    config.vision_config.image_size = size
    config.prompt_encoder_config.image_size = size
    config.prompt_encoder_config.image_embedding_size = size // config.vision_config.patch_size


def sam_size_multiple(config) -> int:
    # Windowed layers pad the token grid to whole windows, so only the patch size constrains the input.
    return int(config.vision_config.patch_size)


@dataclass(frozen=True)
class SamFamily:
    """What InfoSAM needs to know about one family of SAM models in transformers."""

    name: str
    """Human name, as cards and errors print it."""
    model_class: str
    """The image-prompted model class (what `AutoModelForMaskGeneration` returns for its configs)."""
    model_type: str
    """Its config's `model_type`: the key PEFT tuners look their default targets up by."""
    mask_decoder_class: str
    """Its mask decoder: a forward pre-hook reads z_i from its `image_embeddings` input."""
    two_way_transformer_class: str
    """The decoder's two-way transformer: output 0 holds the output tokens, z_m among them."""
    first_mask_token: int
    """Index of the first mask token among the output tokens (after IoU token, and object-score token in SAM 2)."""
    lora_target_modules: str | tuple[str, ...]
    """PEFT `target_modules` of the default LoRA (preset 'encoder'): the image encoder's attention projections
    (a tuple of names, or one regex over full module names where the names alone would match elsewhere)."""
    decoder_lora_target_modules: str
    """PEFT `target_modules` of the preset 'decoder': the mask decoder's attention projections, anchored to it."""
    geometry: str
    """`LONGEST_SIDE_PAD` or `SQUARE`: how an image maps onto the model input."""
    adapter_targets: tuple[str, str] | None = None
    """The bottleneck Adapter's defaults: (MLP modules, LayerNorm modules), each one regex over the full module
    name. None: no default (`adapter_unsupported` says why, if the Adapter cannot fit at all)."""
    adapter_unsupported: str = ""
    """Why the bottleneck Adapter cannot adapt this family (its error names it and suggests LoRA)."""
    cache_inputs: Callable[[dict], dict] = image_embeddings_only
    """Decoder keyword inputs -> the model's keyword inputs that replace `pixel_values` (teacher cache)."""
    encoding_inputs: Callable[[object], dict] = embeddings_as_inputs
    """`get_image_embeddings(pixel_values)`'s result -> the keyword inputs that replace `pixel_values` (the
    predictor's image encoding: one tensor for SAM, a list of feature levels for SAM 2, a pair for SAM-HQ)."""
    prepare_for_peft: Callable[[nn.Module], None] | None = None
    """Fix-up applied to the base model before `get_peft_model`."""
    opt_in_checkpointing: bool = False
    """The class says `supports_gradient_checkpointing = False` though its blocks are checkpointing layers."""
    processor_class: str = "SamProcessor"
    """The transformers processor of its checkpoints (the card's plain-PEFT snippet names it)."""
    example_checkpoint: str = ""
    notes: str = field(default="", compare=False)
    set_image_size: Callable[[object, int], None] | None = sam_set_image_size
    """Config fields -> another input side (`infosam_hf.resolution`); None where the family cannot change it."""
    image_size_multiple: Callable[[object], int] = sam_size_multiple
    """The input side must be a multiple of this (patch size, or the coarsest feature stride)."""

    def lora_targets(self, value: str | list[str]) -> str | list[str]:
        """`PeftArguments.lora_target_modules` as PEFT `target_modules`: a preset ('encoder', 'decoder') in this
        family's module names, else the comma-separated names (or a regex) as given."""
        if value == "encoder":
            return self.lora_target_modules
        if value == "decoder":
            return self.decoder_lora_target_modules
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return list(value)

    @staticmethod
    def channels(config) -> int:
        """Channels of z_i and z_m: the decoder width (`vision_config.output_channels` exists only on SAM/SAM-HQ)."""
        return int(config.mask_decoder_config.hidden_size)

    @staticmethod
    def image_size(config) -> int:
        """Side of the square model input."""
        size = config.prompt_encoder_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)
