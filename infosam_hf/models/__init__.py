"""The registry of SAM families: one spec per family transformers ships (`sam.py`, `sam2.py`, ...); all the rest
of the package, the bottleneck Adapter's default targets included, reads these.

Adding a family is writing its `SamFamily` in a module here and listing it in `FAMILIES` (or calling
`register_family` from outside the package); code outside this package never names a family.

Out of scope: the video models (`Sam2VideoModel`, `EdgeTamVideoModel`,
`Sam3TrackerVideoModel`: they run under `inference_mode`, memory bank included) and
`Sam3Model` (DETR-style concept segmentation, no mask token to distil).
"""

from __future__ import annotations

from torch import nn

from .edgetam import EDGETAM
from .family import LONGEST_SIDE_PAD, LORA_PRESETS, MODEL_PARTS, SQUARE, SamFamily, part_of
from .sam import SAM
from .sam2 import SAM2
from .sam3_tracker import SAM3_TRACKER
from .sam_hq import SAM_HQ

FAMILIES: tuple[SamFamily, ...] = (SAM, SAM_HQ, SAM2, SAM3_TRACKER, EDGETAM)


def register_family(family: SamFamily) -> None:
    """Add a family to `FAMILIES`: every lookup below, and the Adapter's defaults, read the registry when called."""
    global FAMILIES
    for known in FAMILIES:
        for key in ("name", "model_class", "model_type", "mask_decoder_class"):
            if getattr(known, key) == getattr(family, key):
                raise ValueError(
                    f"Cannot register the SAM family {family.name!r}: its {key} {getattr(family, key)!r} is already "
                    f"the {known.name}'s. Give it its own {key}."
                )
    FAMILIES = (*FAMILIES, family)


def supported_models() -> str:
    return ", ".join(family.model_class for family in FAMILIES)


def find_family(model: nn.Module) -> SamFamily | None:
    """The family of the first supported mask decoder found under `model` (a model, PeftModel, InfoSAM pair)."""
    by_decoder = {family.mask_decoder_class: family for family in FAMILIES}
    for module in model.modules():
        family = by_decoder.get(type(module).__name__)
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


def family_for_model_type(model_type: str | None) -> SamFamily | None:
    """The family whose configs have this `model_type` (what PEFT tuners see of a model), else None."""
    return next((family for family in FAMILIES if family.model_type == model_type), None)


def adapter_default_targets() -> dict[str, tuple[str, str]]:
    """model_type -> the bottleneck Adapter's (MLP modules, LayerNorm modules), for the families that have them."""
    return {family.model_type: family.adapter_targets for family in FAMILIES if family.adapter_targets}


def load_sam_model(name_or_path: str, **kwargs) -> nn.Module:
    """Any supported SAM checkpoint (local or Hub), through the mask-generation Auto class."""
    from transformers import AutoModelForMaskGeneration

    model = AutoModelForMaskGeneration.from_pretrained(name_or_path, **kwargs)
    family_of(model, f"checkpoint {name_or_path!r}")
    return model


def prepare_for_peft(model: nn.Module) -> nn.Module:
    """The base model, fixed up (in place) for `get_peft_model` / `PeftModel.from_pretrained` where its family
    needs it."""
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
    "adapter_default_targets",
    "enable_checkpointing",
    "family_for_model_type",
    "family_of",
    "find_family",
    "load_sam_model",
    "part_of",
    "prepare_for_peft",
    "register_family",
]
