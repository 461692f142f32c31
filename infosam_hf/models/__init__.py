"""One small spec per Segment Anything family that transformers ships: all the rest of the package reads these.

Every supported family has the same prompt encoder / two-way mask decoder design, and
differs only in facts the spec records: which module classes to hook, where the first
mask token sits among the decoder's output tokens, what the LoRA targets of each preset
('encoder', 'decoder') are, how the processor maps an image onto the model input, what
the decoder needs besides the image embeddings (for the teacher cache), and a few quirks.
Adding a family is adding a spec to `FAMILIES`; code outside this package never names a family.

Out of scope: the video models (`Sam2VideoModel`, `EdgeTamVideoModel`,
`Sam3TrackerVideoModel`: they run under `inference_mode`, memory bank included) and
`Sam3Model` (DETR-style concept segmentation, no mask token to distil).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

LONGEST_SIDE_PAD = "longest_side_pad"
"""SAM's geometry: resize the long side to the model size, keep the aspect, pad bottom/right to a square."""
SQUARE = "square"
"""SAM 2's geometry: resize to the model's square size, aspect not kept, no padding."""


def _image_embeddings_only(decoder_kwargs: dict) -> dict:
    return {"image_embeddings": decoder_kwargs["image_embeddings"]}


def _with_intermediate_embeddings(decoder_kwargs: dict) -> dict:
    # SAM-HQ's decoder fuses early ViT features into its HQ token: they are part of the image encoding.
    return {
        "image_embeddings": decoder_kwargs["image_embeddings"],
        "intermediate_embeddings": list(decoder_kwargs["intermediate_embeddings"]),
    }


def _feature_levels(decoder_kwargs: dict) -> dict:
    # The SAM 2 decoder gets the stride-16 level as `image_embeddings` and the two higher-resolution
    # levels (already projected) as `high_resolution_features`; the model's `image_embeddings=` takes
    # all three, finest first.
    return {"image_embeddings": [*decoder_kwargs["high_resolution_features"], decoder_kwargs["image_embeddings"]]}


def _sam_set_image_size(config, size: int) -> None:
    # SAM / SAM-HQ: the ViT's patch grid (absolute position embedding, global-attention relative-position
    # tables) and the prompt encoder's input frame and embedding grid all follow these three fields.
    config.vision_config.image_size = size
    config.prompt_encoder_config.image_size = size
    config.prompt_encoder_config.image_embedding_size = size // config.vision_config.patch_size


def _sam_size_multiple(config) -> int:
    # Windowed layers pad the token grid to whole windows, so only the patch size constrains the input.
    return int(config.vision_config.patch_size)


def _feature_pyramid_set_image_size(config, size: int) -> None:
    # SAM 2 / SAM 3 tracker / EdgeTAM: the image encoder interpolates its position embeddings (or is a
    # convolution network), so only the recorded input side and the feature-level sizes change.
    old = SamFamily.image_size(config)
    config.vision_config.backbone_feature_sizes = [
        [int(side) * size // old for side in level] for level in config.vision_config.backbone_feature_sizes
    ]
    backbone = getattr(config.vision_config, "backbone_config", None)
    if backbone is not None and hasattr(backbone, "image_size"):
        backbone.image_size = [size, size] if isinstance(backbone.image_size, (list, tuple)) else size
    config.prompt_encoder_config.image_size = size


def _feature_pyramid_size_multiple(config) -> int:
    # Twice the stride of the coarsest level the decoder reads: one more 2x pooling stage sits above it.
    coarsest = min(int(level[0]) for level in config.vision_config.backbone_feature_sizes)
    return 2 * (SamFamily.image_size(config) // coarsest)


# The parts of every family's model, by their top-level module names (what `--lora_target_modules` checks against).
MODEL_PARTS = {"vision_encoder": "image encoder", "prompt_encoder": "prompt encoder", "mask_decoder": "mask decoder"}
# Named LoRA target presets -> the part they stay inside; each family's spec resolves them to its module names.
LORA_PRESETS = {"encoder": "vision_encoder", "decoder": "mask_decoder"}

# The two-way transformer's attention projections (token self-attention, both cross-attentions, the final one).
_SAM_DECODER_ATTENTION = r".*mask_decoder\.transformer\..*\.(q_proj|k_proj|v_proj|out_proj)"
_SAM2_DECODER_ATTENTION = r".*mask_decoder\.transformer\..*\.(q_proj|k_proj|v_proj|o_proj)"  # SAM 2 names it o_proj


def part_of(module_name: str) -> str | None:
    """The model part (`MODEL_PARTS` key) a module name lies in, under any wrapper prefix (`base_model.model.`)."""
    return next((part for part in module_name.split(".") if part in MODEL_PARTS), None)


def _untie_for_peft(model: nn.Module) -> None:
    # EdgeTamModel declares `_tied_weights_keys = {}`; get_peft_model fails on it unless it is None.
    model._tied_weights_keys = None


@dataclass(frozen=True)
class SamFamily:
    """What InfoSAM needs to know about one family of SAM models in transformers."""

    name: str
    """Human name, as cards and errors print it."""
    model_class: str
    """The image-prompted model class (what `AutoModelForMaskGeneration` returns for its configs)."""
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
    cache_inputs: Callable[[dict], dict] = _image_embeddings_only
    """Decoder keyword inputs -> the model's keyword inputs that replace `pixel_values` (teacher cache)."""
    prepare_for_peft: Callable[[nn.Module], None] | None = None
    """Fix-up applied to the base model before `get_peft_model`."""
    opt_in_checkpointing: bool = False
    """The class says `supports_gradient_checkpointing = False` though its blocks are checkpointing layers."""
    processor_class: str = "SamProcessor"
    """The transformers processor of its checkpoints (the card's plain-PEFT snippet names it)."""
    example_checkpoint: str = ""
    notes: str = field(default="", compare=False)
    set_image_size: Callable[[object, int], None] | None = _sam_set_image_size
    """Config fields -> another input side (`infosam_hf.resolution`); None where the family cannot change it."""
    image_size_multiple: Callable[[object], int] = _sam_size_multiple
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


SAM = SamFamily(
    name="SAM",
    model_class="SamModel",
    mask_decoder_class="SamMaskDecoder",
    two_way_transformer_class="SamTwoWayTransformer",
    first_mask_token=1,
    lora_target_modules=("qkv",),
    decoder_lora_target_modules=_SAM_DECODER_ATTENTION,
    geometry=LONGEST_SIDE_PAD,
    example_checkpoint="facebook/sam-vit-base",
)
SAM_HQ = SamFamily(
    processor_class="SamHQProcessor",
    name="SAM-HQ",
    model_class="SamHQModel",
    mask_decoder_class="SamHQMaskDecoder",
    two_way_transformer_class="SamHQTwoWayTransformer",
    first_mask_token=1,
    lora_target_modules=("qkv",),
    decoder_lora_target_modules=_SAM_DECODER_ATTENTION,
    geometry=LONGEST_SIDE_PAD,
    cache_inputs=_with_intermediate_embeddings,
    example_checkpoint="syscv-community/sam-hq-vit-base",
)
SAM2 = SamFamily(
    set_image_size=_feature_pyramid_set_image_size,
    image_size_multiple=_feature_pyramid_size_multiple,
    processor_class="Sam2Processor",
    name="SAM 2",
    model_class="Sam2Model",
    mask_decoder_class="Sam2MaskDecoder",
    two_way_transformer_class="Sam2TwoWayTransformer",
    first_mask_token=2,
    lora_target_modules=("qkv",),  # Hiera's fused attention projection
    decoder_lora_target_modules=_SAM2_DECODER_ATTENTION,
    geometry=SQUARE,
    cache_inputs=_feature_levels,
    opt_in_checkpointing=True,
    example_checkpoint="facebook/sam2.1-hiera-base-plus",
)
SAM3_TRACKER = SamFamily(
    set_image_size=_feature_pyramid_set_image_size,
    image_size_multiple=_feature_pyramid_size_multiple,
    processor_class="Sam3TrackerProcessor",
    name="SAM 3 tracker",
    model_class="Sam3TrackerModel",
    mask_decoder_class="Sam3TrackerMaskDecoder",
    two_way_transformer_class="Sam3TrackerTwoWayTransformer",
    first_mask_token=2,
    # The ViT's projections share their names with the decoder's: anchor them to the image encoder.
    lora_target_modules=r".*vision_encoder\.backbone\.layers\.\d+\.attention\.(q_proj|k_proj|v_proj)",
    decoder_lora_target_modules=_SAM2_DECODER_ATTENTION,
    geometry=SQUARE,
    cache_inputs=_feature_levels,
    opt_in_checkpointing=True,
    example_checkpoint="facebook/sam3",
)
EDGETAM = SamFamily(
    set_image_size=_feature_pyramid_set_image_size,
    image_size_multiple=_feature_pyramid_size_multiple,
    processor_class="Sam2Processor",
    name="EdgeTAM",
    model_class="EdgeTamModel",
    mask_decoder_class="EdgeTamMaskDecoder",
    two_way_transformer_class="EdgeTamTwoWayTransformer",
    first_mask_token=2,
    # RepViT has no attention: LoRA on its channel-mixer 1x1 convolutions.
    lora_target_modules=r".*vision_encoder\.backbone\..*channel_mixer\.conv[12]\.c",
    decoder_lora_target_modules=_SAM2_DECODER_ATTENTION,
    geometry=SQUARE,
    cache_inputs=_feature_levels,
    prepare_for_peft=_untie_for_peft,
    example_checkpoint="yonigozlan/EdgeTAM-hf",
    notes="needs timm (its RepViT image encoder is a timm model)",
)

FAMILIES: tuple[SamFamily, ...] = (SAM, SAM_HQ, SAM2, SAM3_TRACKER, EDGETAM)
_BY_DECODER = {family.mask_decoder_class: family for family in FAMILIES}


def supported_models() -> str:
    return ", ".join(family.model_class for family in FAMILIES)


def find_family(model: nn.Module) -> SamFamily | None:
    """The family of the first supported mask decoder found under `model` (a model, PeftModel, InfoSAM pair)."""
    for module in model.modules():
        family = _BY_DECODER.get(type(module).__name__)
        if family is not None:
            return family
    return None


def family_of(model: object, what: str = "model") -> SamFamily:
    """`find_family`, or a TypeError that lists the supported classes and says what is out of scope."""
    family = find_family(model) if isinstance(model, nn.Module) else None
    if family is None:
        raise TypeError(
            f"The {what} must be one of transformers' image SAM models ({supported_models()}) or a PeftModel "
            f"wrapping one; got {type(model).__name__}. Video models and Sam3Model are not supported. Load one "
            "with infosam_hf.models.load_sam_model('facebook/sam-vit-base') (any mask-generation checkpoint)."
        )
    return family


def load_sam_model(name_or_path: str, **kwargs) -> nn.Module:
    """Any supported SAM checkpoint (local or Hub), through the mask-generation Auto class."""
    from transformers import AutoModelForMaskGeneration

    model = AutoModelForMaskGeneration.from_pretrained(name_or_path, **kwargs)
    family_of(model, f"checkpoint {name_or_path!r}")
    return model


def prepare_for_peft(model: nn.Module) -> nn.Module:
    """The base model, fixed up (in place) for `get_peft_model` / `PeftModel.from_pretrained` where its family needs it."""
    family = family_of(model, "base model")
    if family.prepare_for_peft is not None:
        family.prepare_for_peft(model)
    return model


def enable_checkpointing(model: nn.Module, **kwargs) -> None:
    """`activation_checkpointing_enable` on a base model, opting in where the class refuses but its layers can."""
    if family_of(model).opt_in_checkpointing and not model.supports_gradient_checkpointing:
        model.supports_gradient_checkpointing = True  # instance attribute: the class is left as it is
    model.activation_checkpointing_enable(**kwargs)


__all__ = [
    "EDGETAM",
    "FAMILIES",
    "LORA_PRESETS",
    "MODEL_PARTS",
    "LONGEST_SIDE_PAD",
    "SAM",
    "SAM2",
    "SAM3_TRACKER",
    "SAM_HQ",
    "SQUARE",
    "SamFamily",
    "enable_checkpointing",
    "family_of",
    "find_family",
    "load_sam_model",
    "part_of",
    "prepare_for_peft",
]
