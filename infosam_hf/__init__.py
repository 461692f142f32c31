"""infosam-hf: InfoSAM relation distillation for fine-tuning Segment Anything, the Hugging Face way.

The public names below are imported on first use (a module `__getattr__`, as transformers and trl do):
`import infosam_hf` loads only `infosam_hf.tuners`, which registers the bottleneck Adapter with PEFT so
that adapters saved with it load through `PeftModel.from_pretrained`.
"""

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING

from .tuners import BottleneckAdapterConfig  # registers the bottleneck adapter with PEFT

__version__ = "0.1.0"

# public name -> the module (under infosam_hf) that defines it
_LAZY_NAMES = {
    "CapturedFeatures": "features",
    "InfoSAMConfig": "config",
    "InfoSAMLoss": "losses",
    "InfoSAMModelOutput": "modeling",
    "InfoSAMTrainer": "trainer",
    "RelationModule": "relation",
    "build_student": "modeling",
    "capture_sam_features": "features",
    "default_peft_config": "modeling",
    "export": "export",
    "focal_dice_iou_loss": "losses",
    "mask_generation_pipeline": "export",
    "relation_compression_loss": "losses",
    "relation_distillation_loss": "losses",
    "structure_loss": "losses",
    "InfoSAMModel": "modeling",
    "InfoSAMTrainingArguments": "training_args",
    "PeftArguments": "config",
    "Predictor": "inference",
    "load": "loading",
    "load_for_training": "loading",
}

__all__ = [  # BottleneckAdapterConfig and the keys of _LAZY_NAMES (a test checks)
    "BottleneckAdapterConfig",
    "CapturedFeatures",
    "InfoSAMConfig",
    "InfoSAMLoss",
    "InfoSAMModel",
    "InfoSAMModelOutput",
    "InfoSAMTrainer",
    "InfoSAMTrainingArguments",
    "PeftArguments",
    "Predictor",
    "RelationModule",
    "build_student",
    "capture_sam_features",
    "default_peft_config",
    "export",
    "focal_dice_iou_loss",
    "load",
    "load_for_training",
    "mask_generation_pipeline",
    "relation_compression_loss",
    "relation_distillation_loss",
    "structure_loss",
]

if TYPE_CHECKING:
    from .config import InfoSAMConfig, PeftArguments
    from .export import export, mask_generation_pipeline
    from .features import CapturedFeatures, capture_sam_features
    from .inference import Predictor
    from .loading import load, load_for_training
    from .losses import (
        InfoSAMLoss,
        focal_dice_iou_loss,
        relation_compression_loss,
        relation_distillation_loss,
        structure_loss,
    )
    from .modeling import InfoSAMModel, InfoSAMModelOutput, build_student, default_peft_config
    from .relation import RelationModule
    from .trainer import InfoSAMTrainer
    from .training_args import InfoSAMTrainingArguments


def __getattr__(name: str):
    module = _LAZY_NAMES.get(name)
    if module is None:
        if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)  # `infosam_hf.hub.x` after `import infosam_hf`
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """`infosam_hf.export` is the function (as it always was), though a submodule has the same name: Python sets a
    package attribute to each submodule it imports, which here must not replace the function."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _LAZY_NAMES.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
